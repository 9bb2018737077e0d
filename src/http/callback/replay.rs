//! The WeCom callback signatures seen lately, so that a captured callback replayed inside the
//! freshness window does not wake the sync loop again.
//!
//! A `msg_signature` covers the timestamp, the nonce and the ciphertext: a replay repeats it
//! exactly, and nothing else can produce it without the token. A callback is accepted while
//! its timestamp is within [`MAX_TIMESTAMP_SKEW_SECS`] of our clock, i.e. for at most twice
//! that from the moment we first see it, so each signature is remembered for
//! [`REMEMBER_FOR`]. A replay is still answered `success` (WeCom retries a callback it has
//! no answer to, and those retries must be acked) but wakes nothing.
//!
//! Bounded: per account at most [`MAX_REMEMBERED`] signatures (only authenticated callbacks
//! are remembered, so there is at most one table per configured WeCom account), 20 bytes each plus their place in
//! the expiry queue; when full, the oldest is forgotten first — a replay of it can then wake
//! the loop once more, which the sync hub's wake coalescing still bounds.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::auth::MAX_TIMESTAMP_SKEW_SECS;

/// How long a signature is remembered: the longest a callback can stay fresh.
pub const REMEMBER_FOR: Duration = Duration::from_secs(2 * MAX_TIMESTAMP_SKEW_SECS as u64);
/// Signatures remembered per account: ten minutes of 27 callbacks a second, ~1 MiB.
pub const MAX_REMEMBERED: usize = 16_384;

type Digest = [u8; 20];

#[derive(Debug, Default)]
struct Seen {
    set: HashSet<Digest>,
    /// First sightings, oldest first.
    order: VecDeque<(Instant, Digest)>,
}

/// Per account, the callback signatures seen within [`REMEMBER_FOR`].
#[derive(Debug)]
pub struct ReplayCache {
    accounts: Mutex<HashMap<String, Seen>>,
    max: usize,
}

impl Default for ReplayCache {
    fn default() -> Self {
        Self::with_capacity(MAX_REMEMBERED)
    }
}

impl ReplayCache {
    fn with_capacity(max: usize) -> Self {
        Self {
            accounts: Mutex::new(HashMap::new()),
            max: max.max(1),
        }
    }

    /// True the first time `signature` (a `msg_signature` that authenticated a callback of
    /// `account`: call this only after the signature check) is seen within
    /// [`REMEMBER_FOR`]; false for a replay. A signature that is not 40 hex digits is never
    /// taken for a replay.
    pub fn first_sighting(&self, account: &str, signature: &str, now: Instant) -> bool {
        let mut d: Digest = [0; 20];
        if hex::decode_to_slice(signature.trim().to_ascii_lowercase(), &mut d).is_err() {
            return true;
        }
        let mut all = self.accounts.lock().unwrap_or_else(|p| p.into_inner());
        if !all.contains_key(account) {
            all.insert(account.to_owned(), Seen::default());
        }
        let Some(s) = all.get_mut(account) else {
            return true;
        };
        while let Some(&(at, old)) = s.order.front() {
            if now.saturating_duration_since(at) < REMEMBER_FOR && s.order.len() < self.max {
                break;
            }
            s.order.pop_front();
            s.set.remove(&old);
        }
        if !s.set.insert(d) {
            return false;
        }
        s.order.push_back((now, d));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sig(i: u32) -> String {
        format!("{i:040x}")
    }

    #[test]
    fn a_signature_is_a_replay_within_the_window_only_and_per_account() {
        let c = ReplayCache::default();
        let now = Instant::now();
        assert!(c.first_sighting("kf", &sig(1), now));
        assert!(!c.first_sighting("kf", &sig(1), now + Duration::from_secs(1)));
        assert!(!c.first_sighting("kf", &sig(1).to_uppercase(), now));
        assert!(c.first_sighting("kf2", &sig(1), now), "per account");
        assert!(c.first_sighting("kf", &sig(2), now));
        let later = now + REMEMBER_FOR;
        assert!(
            c.first_sighting("kf", &sig(1), later),
            "forgotten after the window"
        );
        // Malformed signatures are never replays (and never stored).
        assert!(c.first_sighting("kf", "xyz", now));
        assert!(c.first_sighting("kf", "xyz", now));
    }

    #[test]
    fn the_table_is_bounded_and_forgets_the_oldest_first() {
        let c = ReplayCache::with_capacity(4);
        let now = Instant::now();
        for i in 0..6 {
            assert!(c.first_sighting("kf", &sig(i), now));
        }
        let len = c.accounts.lock().unwrap()["kf"].set.len();
        assert!(len <= 4, "{len}");
        assert!(!c.first_sighting("kf", &sig(5), now), "the newest is kept");
        assert!(
            c.first_sighting("kf", &sig(0), now),
            "the oldest was forgotten"
        );
    }
}
