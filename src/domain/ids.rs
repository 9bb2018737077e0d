//! Identifiers: the rules for the ids a job carries, and the ids wxdispatch makes itself.

use std::borrow::Cow;

use sha1::{Digest, Sha1};

/// Longest job id, in bytes (the charset is ASCII). Producers already have ids (UUIDs are 36
/// chars with hyphens, ULIDs 26, database keys with a prefix often more); 128 takes them all
/// and stays far below AMQP's 255-byte `message_id` (a shortstr), so a job id always fits the
/// property it may travel in (issue 15.3; CONTRACT.md §4 used to say 32).
pub const MAX_JOB_ID_LEN: usize = 128;
/// Longest WeCom `msgid`: "at most 32 bytes of `[0-9a-zA-Z_-]`" (kf/send_msg,
/// send_msg_on_event). A job id that does not fit is sent as [`wecom_msgid`]'s digest.
pub const MAX_WECOM_MSGID_LEN: usize = 32;
/// The first character of a derived WeCom msgid ([`wecom_msgid`]). An underscore, because
/// generated and upstream ids almost never start with one, so a derived msgid is easy to tell
/// from an id sent as itself.
const DERIVED_MSGID_PREFIX: char = '_';
/// Longest recipient (`to`), in characters. Real openids are 28 chars and external_userids 32;
/// 128 leaves room for other id schemes without letting pasted garbage through.
pub const MAX_RECIPIENT_CHARS: usize = 128;

/// The characters a job id may have: `[0-9A-Za-z_.:-]`. UUIDs and ULIDs need only
/// alphanumerics and `-`; `.` and `:` let namespaced ids through (`crm:ticket.42`). All of them
/// are safe as an AMQP `message_id`, in a header, in a URL path segment (`GET /v1/jobs/{id}`)
/// and in a shell argument; no whitespace, no `/`, no `%`, nothing a log line must escape.
pub fn job_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':')
}

/// 1..=[`MAX_JOB_ID_LEN`] of `[0-9A-Za-z_.:-]` ([`job_id_char`]).
pub fn valid_job_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_JOB_ID_LEN && s.bytes().all(job_id_char)
}

/// What WeCom accepts as a `msgid`: 1..=32 of `[0-9a-zA-Z_-]`.
pub fn valid_wecom_msgid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_WECOM_MSGID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The `msgid` a WeCom request carries for `job_id`: the id itself when WeCom accepts it
/// ([`valid_wecom_msgid`]), else `_` + the first 31 hex digits of SHA-256(job_id) (32 chars,
/// 124 bits). Deterministic, so every retry and redelivery of a job sends the same msgid.
///
/// Why not a UUID's 32 hex digits without its hyphens: that is a valid job id of its own, and
/// the two would share a msgid. A digest of the whole id never aliases two different ids (a
/// collision would need a SHA-256 prefix match), and an id sent as itself can only equal a
/// derived one if it starts with `_` and is 31 hex digits after it, the same odds.
pub fn wecom_msgid(job_id: &str) -> Cow<'_, str> {
    if valid_wecom_msgid(job_id) {
        return Cow::Borrowed(job_id);
    }
    use sha2::Digest as _;
    let hex = hex::encode(sha2::Sha256::digest(job_id.as_bytes()));
    let mut id = String::with_capacity(MAX_WECOM_MSGID_LEN);
    id.push(DERIVED_MSGID_PREFIX);
    id.push_str(&hex[..MAX_WECOM_MSGID_LEN - 1]);
    Cow::Owned(id)
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
/// SHA-1(broadcast_id ‖ "\n" ‖ recipient). A valid job id of exactly 32 chars whatever the
/// broadcast id's length (up to [`MAX_JOB_ID_LEN`]), the same in every run and process, 124
/// bits wide (collisions are out of reach for any number of recipients), and a valid WeCom
/// msgid as it is. The newline cannot occur in a job id, so (broadcast_id, recipient) pairs
/// never alias.
pub fn derive_job_id(broadcast_id: &str, recipient: &str) -> String {
    let mut h = Sha1::new();
    h.update(broadcast_id.as_bytes());
    h.update(b"\n");
    h.update(recipient.as_bytes());
    let hex = hex::encode(h.finalize());
    let mut id = String::with_capacity(MAX_WECOM_MSGID_LEN);
    id.push('b');
    id.push_str(&hex[..MAX_WECOM_MSGID_LEN - 1]);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_that_fits_wecom_is_its_own_msgid() {
        for id in ["r-1", "01ARZ3NDEKTSV4RRFFQ69G5FAV", &"x".repeat(32)] {
            assert_eq!(wecom_msgid(id), id);
        }
    }

    #[test]
    fn a_longer_or_wider_id_gets_a_stable_32_char_digest() {
        let uuid = "0b9a8c8e-3f4a-4d39-9a3e-2a5d1f0c7b61";
        let m = wecom_msgid(uuid);
        // Pinned: changing it would give a redelivered job a new msgid.
        assert_eq!(m, "_eb14b264a4e6b2cf82cec320d209e5d");
        assert!(valid_wecom_msgid(&m));
        assert_eq!(m, wecom_msgid(uuid));
        // The UUID's hyphen-less form is a job id of its own, and keeps its own msgid.
        let bare = uuid.replace('-', "");
        assert_eq!(wecom_msgid(&bare), bare);
        assert_ne!(wecom_msgid(&bare), m);
        for id in [&"x".repeat(33), &"y".repeat(128), "crm:ticket.42"] {
            let m = wecom_msgid(id);
            assert!(valid_wecom_msgid(&m), "{id} -> {m}");
            assert_eq!(m.len(), MAX_WECOM_MSGID_LEN);
            assert!(m.starts_with('_'));
        }
        assert_ne!(wecom_msgid(&"x".repeat(33)), wecom_msgid(&"x".repeat(34)));
    }

    #[test]
    fn broadcast_ids_of_any_valid_length_derive_valid_recipient_ids() {
        let long = "b".repeat(MAX_JOB_ID_LEN);
        let id = derive_job_id(&long, "u1");
        assert!(valid_job_id(&id) && valid_wecom_msgid(&id));
        assert_eq!(wecom_msgid(&id), id);
        assert_ne!(id, derive_job_id(&long, "u2"));
    }
}
