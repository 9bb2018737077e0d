//! Identifiers: the rules for the ids a job carries, and the ids wxdispatch makes itself.

use sha1::{Digest, Sha1};

/// Longest job id. The job id is sent as WeCom's `msgid`, which is "at most 32 bytes of
/// `[0-9a-zA-Z_-]`" (kf/send_msg); CONTRACT.md §4 adopts the same rule for both channels.
pub const MAX_JOB_ID_LEN: usize = 32;
/// Longest recipient (`to`), in characters. Real openids are 28 chars and external_userids 32;
/// 128 leaves room for other id schemes without letting pasted garbage through.
pub const MAX_RECIPIENT_CHARS: usize = 128;

/// 1..=32 of `[0-9A-Za-z_-]`.
pub fn valid_job_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_JOB_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A plausible recipient id: 1..=[`MAX_RECIPIENT_CHARS`] characters, no whitespace and no
/// invisible character ([`crate::text::is_invisible`]: controls, format characters such as
/// U+200B or U+202E, line/paragraph separators; no platform id has them, they only come from
/// upstream bugs or from someone hiding one id inside another). Used for `to` by
/// [`crate::domain::job::parse`], and by the broadcast fan-out for each recipient.
pub fn valid_recipient(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_RECIPIENT_CHARS
        && !s
            .chars()
            .any(|c| c.is_whitespace() || crate::text::is_invisible(c))
}

/// Deterministic per-recipient job id of a broadcast: `"b"` + the first 31 hex digits of
/// SHA-1(broadcast_id ‖ "\n" ‖ recipient). A valid job id of exactly 32 chars, the same in every
/// run and process, 124 bits wide (collisions are out of reach for any number of recipients).
/// The newline cannot occur in a job id, so (broadcast_id, recipient) pairs never alias.
pub fn derive_job_id(broadcast_id: &str, recipient: &str) -> String {
    let mut h = Sha1::new();
    h.update(broadcast_id.as_bytes());
    h.update(b"\n");
    h.update(recipient.as_bytes());
    let hex = hex::encode(h.finalize());
    let mut id = String::with_capacity(MAX_JOB_ID_LEN);
    id.push('b');
    id.push_str(&hex[..MAX_JOB_ID_LEN - 1]);
    id
}

/// A job id for jobs published without one: time-ordered and unique enough per publisher.
pub fn generate_job_id() -> String {
    let now = chrono::Utc::now();
    let r: u32 = rand::random();
    format!("j-{}-{:08x}", now.format("%Y%m%d%H%M%S%3f"), r)
}

/// A broadcast id for broadcasts published without one: `b-` and the time-ordered part of a
/// generated job id.
pub fn generate_broadcast_id() -> String {
    let id = generate_job_id();
    format!("b-{}", id.strip_prefix("j-").unwrap_or(&id))
}
