//! The operator's statements on `dead_letters` (and, for a replay, on the dead letters'
//! `deliveries` rows): list with filters, and the steps of a replay. Recording a dead letter is
//! the worker's ([`Store::record_dead_letter`], [`super::dead_letter_body`]).
//!
//! What a replay does in which order, and why that is safe, is told in `ops::dlq`; here are
//! its statements: [`try_replay_lock`], [`reset_for_replay`] (one transaction),
//! [`mark_replayed`], and [`put_back`] when publishing failed.

use std::collections::HashMap;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres, Row};

use super::Store;

/// Key of the advisory lock that lets one `dlq replay` run at a time.
const REPLAY_LOCK: &str = "wxdispatch.dlq.replay";
/// The `deliveries.error` of a row reset by a replay.
const REPLAYED_ERROR: &str = "replayed";
/// `dead_letters` may not be migrated yet: say what to do.
pub(super) const NOT_MIGRATED_HINT: &str = "reading dead letters (has `wxdispatch migrate` run?)";

/// What the operator's statements run on: the worker's [`Store`], or a bare pool opened by a
/// one-shot command ([`super::connect_pool`]) or a test. Sealed: only the store implements
/// it, so the use cases above it name no database type.
pub trait Db: sealed::Pg + Sync {}

impl<T: sealed::Pg + Sync> Db for T {}

mod sealed {
    /// The pool behind a [`super::Db`].
    pub trait Pg {
        fn pg(&self) -> &sqlx::PgPool;
    }
}

use sealed::Pg;

impl Pg for PgPool {
    fn pg(&self) -> &PgPool {
        self
    }
}

impl Pg for Store {
    fn pg(&self) -> &PgPool {
        self.pool()
    }
}

/// Which dead letters a statement works on. All given fields must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only this account (the routing key the job was published with).
    pub account: Option<String>,
    /// Only this reason word, e.g. `config_error`.
    pub reason: Option<String>,
    /// Only this platform errcode.
    pub errcode: Option<i64>,
    /// Only dead letters recorded since then.
    pub since: Option<DateTime<Utc>>,
}

/// One row of `dead_letters` (without the body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRow {
    pub id: i64,
    /// `None` when the body could not be read as a job (it cannot be replayed).
    pub job_id: Option<String>,
    /// The AMQP `message_id` it was published with (`None` for rows recorded before migration
    /// 0017 or published without one). How a job rejected before it had a valid id is found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    pub account: String,
    pub reason: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: i32,
    pub dead_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
    /// The body's size and digest, when read ([`body_digests`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<BodyDigest>,
}

impl DeadLetterRow {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            job_id: r.try_get("job_id")?,
            message_id: r.try_get("message_id")?,
            account: r.try_get("account")?,
            reason: r.try_get("reason")?,
            errcode: r.try_get("errcode")?,
            errmsg: r.try_get("errmsg")?,
            attempts: r.try_get("attempts")?,
            dead_at: r.try_get("dead_at")?,
            replayed_at: r.try_get("replayed_at")?,
            body: None,
        })
    }
}

fn rows_of(rows: &[sqlx::postgres::PgRow]) -> anyhow::Result<Vec<DeadLetterRow>> {
    rows.iter()
        .map(DeadLetterRow::from_row)
        .collect::<Result<_, _>>()
        .context("reading dead letters")
}

/// A dead letter's body as `dlq list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BodyDigest {
    /// The whole body's size.
    pub bytes: i64,
    /// The whole body's sha256, lowercase hex (`None` for a row recorded without one).
    pub sha256: Option<String>,
    /// Only the first bytes are in the row; the whole body is in the `wxdispatch.dead` queue.
    pub truncated: bool,
}

/// The body digests of these dead letters, by id.
pub async fn body_digests(db: &impl Db, ids: &[i64]) -> anyhow::Result<HashMap<i64, BodyDigest>> {
    sqlx::query(
        "SELECT id, coalesce(body_bytes, octet_length(body)::bigint) AS bytes, body_sha256,
                body_truncated
         FROM dead_letters WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(db.pg())
    .await
    .context(NOT_MIGRATED_HINT)?
    .iter()
    .map(|r| {
        Ok((
            r.try_get("id")?,
            BodyDigest {
                bytes: r.try_get("bytes")?,
                sha256: r.try_get("body_sha256")?,
                truncated: r.try_get("body_truncated")?,
            },
        ))
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("reading the dead letters' body digests")
}

/// Fill in `rows`' body digests.
pub async fn with_body_digests(
    db: &impl Db,
    mut rows: Vec<DeadLetterRow>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    let mut digests = body_digests(db, &ids).await?;
    for r in &mut rows {
        r.body = digests.remove(&r.id);
    }
    Ok(rows)
}

/// Dead letters matching `filter`, newest first, at most `limit` (all when `None`).
pub async fn list(
    db: &impl Db,
    filter: &DeadLetterFilter,
    include_replayed: bool,
    limit: Option<i64>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(
        "SELECT id, job_id, message_id, account, reason, errcode, errmsg, attempts, dead_at, replayed_at
         FROM dead_letters
         WHERE ($1::text IS NULL OR account = $1)
           AND ($2::text IS NULL OR reason = $2)
           AND ($3::bigint IS NULL OR errcode = $3)
           AND ($4::timestamptz IS NULL OR dead_at >= $4)
           AND ($5 OR replayed_at IS NULL)
         ORDER BY dead_at DESC, id DESC
         LIMIT $6",
    )
    .bind(&filter.account)
    .bind(&filter.reason)
    .bind(filter.errcode)
    .bind(filter.since)
    .bind(include_replayed)
    .bind(limit)
    .fetch_all(db.pg())
    .await
    .context(NOT_MIGRATED_HINT)?;
    rows_of(&rows)
}

/// Unreplayed dead letters matching `filter`, oldest first (the order a replay publishes
/// them in), at most `limit` (all when `None`).
pub async fn unreplayed(
    db: &impl Db,
    filter: &DeadLetterFilter,
    limit: Option<i64>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(
        "SELECT id, job_id, message_id, account, reason, errcode, errmsg, attempts, dead_at, replayed_at
         FROM dead_letters
         WHERE replayed_at IS NULL
           AND ($1::text IS NULL OR account = $1)
           AND ($2::text IS NULL OR reason = $2)
           AND ($3::bigint IS NULL OR errcode = $3)
           AND ($4::timestamptz IS NULL OR dead_at >= $4)
         ORDER BY dead_at, id
         LIMIT $5",
    )
    .bind(&filter.account)
    .bind(&filter.reason)
    .bind(filter.errcode)
    .bind(filter.since)
    .bind(limit)
    .fetch_all(db.pg())
    .await
    .context(NOT_MIGRATED_HINT)?;
    rows_of(&rows)
}

/// The dead letters of a job that has no delivery row because it was rejected before it had a
/// valid id: those published with AMQP `message_id` = `id`, or recorded with job id `id`, on
/// `account` (every account when `None`), newest first.
pub async fn rejected_by_id(
    db: &impl Db,
    id: &str,
    account: Option<&str>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(
        "SELECT id, job_id, message_id, account, reason, errcode, errmsg, attempts, dead_at, replayed_at
         FROM dead_letters
         WHERE (message_id = $1 OR job_id = $1) AND ($2::text IS NULL OR account = $2)
         ORDER BY dead_at DESC, id DESC",
    )
    .bind(id)
    .bind(account)
    .fetch_all(db.pg())
    .await
    .context(NOT_MIGRATED_HINT)?;
    rows_of(&rows)
}

/// Every account that has a dead letter, sorted.
pub async fn accounts(db: &impl Db) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT account FROM dead_letters ORDER BY 1")
        .fetch_all(db.pg())
        .await
        .context(NOT_MIGRATED_HINT)
}

/// Every reason a dead letter has, sorted.
pub async fn reasons(db: &impl Db) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT reason FROM dead_letters ORDER BY 1")
        .fetch_all(db.pg())
        .await
        .context(NOT_MIGRATED_HINT)
}

/// The `deliveries.status` of each of these jobs, `(account, job id)`, that has a row.
pub async fn delivery_statuses(
    db: &impl Db,
    jobs: &[(&str, &str)],
) -> anyhow::Result<HashMap<(String, String), String>> {
    let (accounts, job_ids): (Vec<&str>, Vec<&str>) = jobs.iter().copied().unzip();
    sqlx::query(
        "SELECT d.account, d.job_id, d.status
         FROM UNNEST($1::text[], $2::text[]) AS t(account, job_id)
         JOIN deliveries d ON d.job_id = t.job_id AND d.account = t.account",
    )
    .bind(&accounts)
    .bind(&job_ids)
    .fetch_all(db.pg())
    .await
    .context("reading the dead letters' deliveries")?
    .iter()
    .map(|r| {
        Ok((
            (r.try_get("account")?, r.try_get("job_id")?),
            r.try_get("status")?,
        ))
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("reading the dead letters' deliveries")
}

/// The replay lock, held on its own connection until [`ReplayLock::unlock`].
pub struct ReplayLock(PoolConnection<Postgres>);

/// Take the replay lock; `None` when another replay holds it.
pub async fn try_replay_lock(db: &impl Db) -> anyhow::Result<Option<ReplayLock>> {
    let mut conn = db
        .pg()
        .acquire()
        .await
        .context("connecting to the database")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(REPLAY_LOCK)
        .fetch_one(&mut *conn)
        .await
        .context("taking the replay lock")?;
    Ok(locked.then_some(ReplayLock(conn)))
}

impl ReplayLock {
    /// Also released when the connection closes; unlock so a pooled connection does not keep
    /// it.
    pub async fn unlock(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(REPLAY_LOCK)
            .execute(&mut *self.0)
            .await;
    }
}

/// The delivery row as it was before a replay reset it (to put back if publishing fails).
#[derive(Debug)]
pub struct Before {
    error: Option<String>,
    errcode: Option<i64>,
    first_attempt_at: Option<DateTime<Utc>>,
}

/// What [`reset_for_replay`] found and did.
#[derive(Debug)]
pub enum Reset<S> {
    /// The dead letter was replayed meanwhile, or deleted.
    Gone,
    /// The delivery's status forbids a replay (the caller's verdict); nothing changed.
    Skip(S),
    /// Ready to publish `body`. `before` is the row a `dead` delivery was reset from (`None`
    /// when there was no row, or it was `accepted`/`retrying`: an interrupted replay).
    Ready {
        body: Vec<u8>,
        before: Option<Before>,
    },
}

/// Step 1 of a replay, in one transaction: lock the dead letter and its delivery row (the
/// dead letter's account and job id), ask `verdict` about the delivery's status (`Some`
/// skips), and reset a `dead` row to `retrying` with a fresh retry budget, recorded in
/// `delivery_events`.
pub async fn reset_for_replay<S>(
    db: &impl Db,
    dead_letter: i64,
    account: &str,
    job_id: &str,
    verdict: impl FnOnce(&str) -> Option<S>,
) -> anyhow::Result<Reset<S>> {
    let mut tx = db.pg().begin().await?;
    let row = sqlx::query("SELECT body, replayed_at FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(dead_letter)
        .fetch_optional(&mut *tx)
        .await?;
    let Some(row) = row else {
        return Ok(Reset::Gone);
    };
    if row
        .try_get::<Option<DateTime<Utc>>, _>("replayed_at")?
        .is_some()
    {
        return Ok(Reset::Gone);
    }
    let body: Vec<u8> = row.try_get("body")?;
    let delivery = sqlx::query(
        "SELECT status, attempts, error, errcode, first_attempt_at FROM deliveries
         WHERE job_id = $1 AND account = $2 FOR UPDATE",
    )
    .bind(job_id)
    .bind(account)
    .fetch_optional(&mut *tx)
    .await?;
    let mut before = None;
    if let Some(d) = delivery {
        let status: String = d.try_get("status")?;
        if let Some(skip) = verdict(&status) {
            return Ok(Reset::Skip(skip));
        }
        if status == super::Status::Dead.as_str() {
            let attempts: i32 = d.try_get("attempts")?;
            before = Some(Before {
                error: d.try_get("error")?,
                errcode: d.try_get("errcode")?,
                first_attempt_at: d.try_get("first_attempt_at")?,
            });
            // The claim treats `dead` as done; `retrying` makes the worker send it again,
            // with a fresh retry budget.
            sqlx::query(
                "UPDATE deliveries SET status = 'retrying', error = $2, errcode = NULL,
                        first_attempt_at = now(), updated_at = now()
                 WHERE job_id = $1 AND account = $3 AND status = 'dead'",
            )
            .bind(job_id)
            .bind(REPLAYED_ERROR)
            .bind(account)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO delivery_events (job_id, account, status, attempts, error)
                 VALUES ($1, $4, 'retrying', $2, $3)",
            )
            .bind(job_id)
            .bind(attempts)
            .bind(format!("replayed from dead letter {dead_letter}"))
            .bind(account)
            .execute(&mut *tx)
            .await?;
        }
        // accepted/retrying: a replay interrupted after its reset; publish again.
    }
    tx.commit().await?;
    Ok(Reset::Ready { body, before })
}

/// Step 3 of a replay: the dead letter was re-published.
pub async fn mark_replayed(db: &impl Db, dead_letter: i64) -> anyhow::Result<()> {
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(dead_letter)
        .execute(db.pg())
        .await?;
    Ok(())
}

/// Publishing failed after the reset: make the row `dead` again (if no one changed it since),
/// recorded in `delivery_events`.
pub async fn put_back(
    db: &impl Db,
    account: &str,
    job_id: &str,
    dead_letter: i64,
    b: Before,
) -> anyhow::Result<()> {
    let mut tx = db.pg().begin().await?;
    let updated = sqlx::query(
        "UPDATE deliveries SET status = 'dead', error = $2, errcode = $3, first_attempt_at = $4,
                updated_at = now()
         WHERE job_id = $1 AND account = $6 AND status = 'retrying' AND error = $5",
    )
    .bind(job_id)
    .bind(&b.error)
    .bind(b.errcode)
    .bind(b.first_attempt_at)
    .bind(REPLAYED_ERROR)
    .bind(account)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() > 0 {
        sqlx::query(
            "INSERT INTO delivery_events (job_id, account, status, attempts, errcode, error)
             SELECT job_id, account, 'dead', attempts, errcode, $2 FROM deliveries
             WHERE job_id = $1 AND account = $3",
        )
        .bind(job_id)
        .bind(format!(
            "replay of dead letter {dead_letter} failed to publish"
        ))
        .bind(account)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(())
}
