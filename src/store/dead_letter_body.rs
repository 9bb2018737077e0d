//! Recording a dead letter in `dead_letters`: its body whole up to
//! `worker.dead_letter_body_bytes`, else its first bytes ([`StoredBody`]); the whole body's
//! size and sha256 either way. The whole body is in the `wxdispatch.dead` queue.

use anyhow::Context;
use sqlx::PgPool;

use super::deliveries::DeadLetter;

/// What `dead_letters` keeps of a body: all of it up to `max` bytes, else its first `max`
/// bytes; and the whole body's size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBody<'a> {
    pub kept: &'a [u8],
    pub bytes: i64,
    /// Lowercase hex.
    pub sha256: String,
    pub truncated: bool,
}

impl<'a> StoredBody<'a> {
    pub fn of(body: &'a [u8], max: usize) -> Self {
        use sha2::Digest;
        let truncated = body.len() > max;
        Self {
            kept: &body[..body.len().min(max)],
            bytes: i64::try_from(body.len()).unwrap_or(i64::MAX),
            sha256: hex::encode(sha2::Sha256::digest(body)),
            truncated,
        }
    }
}

/// Record a dead letter, its body cut to `max_body` bytes ([`StoredBody`]).
pub(super) async fn insert(pool: &PgPool, d: &DeadLetter, max_body: usize) -> anyhow::Result<()> {
    let body = StoredBody::of(&d.body, max_body);
    sqlx::query(
        "INSERT INTO dead_letters (job_id, account, reason, errcode, errmsg, attempts, body,
                                   body_bytes, body_sha256, body_truncated, message_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&d.job_id)
    .bind(&d.account)
    .bind(&d.reason)
    .bind(d.errcode)
    .bind(&d.errmsg)
    .bind(d.attempts)
    .bind(body.kept)
    .bind(body.bytes)
    .bind(&body.sha256)
    .bind(body.truncated)
    .bind(&d.message_id)
    .execute(pool)
    .await
    .context("recording a dead letter")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::StoredBody;

    #[test]
    fn a_body_over_the_limit_keeps_its_first_bytes_and_the_whole_bodys_size_and_digest() {
        let small = StoredBody::of(b"abc", 3);
        assert_eq!(
            (small.kept, small.bytes, small.truncated),
            (&b"abc"[..], 3, false)
        );
        assert_eq!(
            small.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let big = StoredBody::of(b"abcd", 3);
        assert_eq!((big.kept, big.bytes, big.truncated), (&b"abc"[..], 4, true));
        assert_eq!(
            big.sha256,
            "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589"
        );
    }
}
