//! Small helpers every part of the simulator uses: the poison-ignoring lock, random ids, the
//! clock, URL encoding. A leaf: it imports nothing of the simulator.

use std::sync::{Mutex, MutexGuard};

use rand::Rng as _;
use rand::distr::Alphanumeric;

/// Length of generated msgids, codes and sync tokens.
pub(crate) const ID_LEN: usize = 32;

/// Lock a mutex, ignoring poisoning: no code here panics while holding a lock, and a
/// simulator that keeps serving is more useful than one that cascades a test's panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn random_id(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Percent-encode everything but unreserved characters (base64's `+`, `/`, `=` included).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
