//! `outcome_events` (the outbox of outcome events) and `outcome_routes` (the AMQP
//! `correlation_id` / `reply_to` of jobs whose events may come after their ack).
//!
//! The event rows are written by the statements that record outcomes, in the same statement
//! (see [`super::deliveries`], [`super::broadcasts`], [`super::inbound`]); here are the
//! relay's reads and deletes, the broadcast completion events and the routes.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, Row, Transaction};

use super::Store;

/// One pending event, as the relay reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    pub id: i64,
    pub account: String,
    pub job_id: String,
    pub status: String,
    pub channel: Option<String>,
    pub kind: Option<String>,
    pub recipient: Option<String>,
    pub reason: Option<String>,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: i32,
    pub platform_msgid: Option<String>,
    pub broadcast_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub detail: Option<serde_json::Value>,
    pub at: DateTime<Utc>,
}

/// Pending events taken by one relay: locked (`FOR UPDATE SKIP LOCKED`, so another process's
/// relay takes other rows) until [`Taken::done`] deletes them or the value is dropped (the
/// transaction rolls back and the rows are pending again).
pub struct Taken {
    tx: Transaction<'static, Postgres>,
    pub rows: Vec<EventRow>,
}

impl std::fmt::Debug for Taken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Taken")
            .field("rows", &self.rows.len())
            .finish_non_exhaustive()
    }
}

impl Taken {
    /// The rows were published (confirmed): delete them and commit.
    pub async fn done(mut self) -> anyhow::Result<()> {
        let ids: Vec<i64> = self.rows.iter().map(|r| r.id).collect();
        sqlx::query("DELETE FROM outcome_events WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *self.tx)
            .await
            .context("deleting published outcome events")?;
        self.tx
            .commit()
            .await
            .context("committing published outcome events")
    }
}

impl Store {
    /// Resolves when this process recorded outcomes with events since the last call.
    pub async fn outbox_woken(&self) {
        self.outbox.wake.notified().await;
    }

    pub(super) fn outbox_wake(&self) {
        self.outbox.wake.notify_one();
    }

    /// Whether `account` writes outcome events (`outcomes = true`, the default).
    pub fn outcomes_on(&self, account: &str) -> bool {
        !self.outbox.off.contains(account)
    }

    /// Take up to `limit` pending events, oldest first (see [`Taken`]).
    pub async fn take_outcome_events(&self, limit: i64) -> anyhow::Result<Taken> {
        let mut tx = self
            .pool
            .begin()
            .await
            .context("beginning the relay batch")?;
        let rows = sqlx::query(
            "SELECT id, account, job_id, status, channel, kind, recipient, reason, errcode, errmsg,
                    attempts, platform_msgid, broadcast_id, correlation_id, reply_to, detail, at
             FROM outcome_events ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .context("reading pending outcome events")?;
        let rows = rows
            .iter()
            .map(|r| EventRow {
                id: r.get("id"),
                account: r.get("account"),
                job_id: r.get("job_id"),
                status: r.get("status"),
                channel: r.get("channel"),
                kind: r.get("kind"),
                recipient: r.get("recipient"),
                reason: r.get("reason"),
                errcode: r.get("errcode"),
                errmsg: r.get("errmsg"),
                attempts: r.get("attempts"),
                platform_msgid: r.get("platform_msgid"),
                broadcast_id: r.get("broadcast_id"),
                correlation_id: r.get("correlation_id"),
                reply_to: r.get("reply_to"),
                detail: r.get("detail"),
                at: r.get("at"),
            })
            .collect();
        Ok(Taken { tx, rows })
    }

    /// Events waiting for the relay (the backlog gauge).
    pub async fn outcome_backlog(&self) -> anyhow::Result<i64> {
        sqlx::query_scalar("SELECT count(*) FROM outcome_events")
            .fetch_one(&self.pool)
            .await
            .context("counting pending outcome events")
    }

    /// Remember a broadcast job's `correlation_id` / `reply_to` before it fans out: its
    /// recipients' events, cancellations and completion carry them.
    pub async fn remember_outcome_route(
        &self,
        account: &str,
        job_id: &str,
        correlation_id: Option<&str>,
        reply_to: Option<&str>,
    ) -> anyhow::Result<()> {
        if correlation_id.is_none() && reply_to.is_none() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO outcome_routes (account, job_id, correlation_id, reply_to)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (job_id, account) DO UPDATE SET correlation_id = excluded.correlation_id,
                                                        reply_to = excluded.reply_to",
        )
        .bind(account)
        .bind(job_id)
        .bind(correlation_id)
        .bind(reply_to)
        .execute(&self.pool)
        .await
        .context("remembering the broadcast's correlation_id")?;
        Ok(())
    }

    /// Write the `broadcast_completed` event of each of `account`'s broadcasts that has every
    /// recipient's outcome and is not closed yet. Runs just before the progress refresh that
    /// closes them (`finished_at`): a crash between the two writes the event again at the next
    /// refresh, with the same message_id. Returns how many were written.
    pub async fn broadcast_completions(&self, account: &str) -> anyhow::Result<u64> {
        if !self.outcomes_on(account) {
            return Ok(0);
        }
        broadcast_completions(&self.pool, account).await
    }
}

/// See [`Store::broadcast_completions`]. The counts are those `broadcast status` shows.
async fn broadcast_completions(pool: &PgPool, account: &str) -> anyhow::Result<u64> {
    let n = sqlx::query(
        "WITH done AS (
             SELECT b.id, b.account, b.status, b.total, b.skipped,
                    count(*) FILTER (WHERE d.status = 'sent') AS sent,
                    count(*) FILTER (WHERE d.status = 'failed') AS failed,
                    count(*) FILTER (WHERE d.status = 'dead') AS dead,
                    count(*) FILTER (WHERE d.status = 'suppressed') AS suppressed,
                    count(*) FILTER (WHERE d.status = 'expired') AS expired,
                    count(*) FILTER (WHERE d.status = 'cancelled') AS cancelled
             FROM broadcasts b
             LEFT JOIN deliveries d ON d.broadcast_id = b.id AND d.account = b.account
             WHERE b.account = $1 AND b.finished_at IS NULL AND b.status <> 'fanning_out'
             GROUP BY b.id, b.account, b.status, b.total, b.skipped
         )
         INSERT INTO outcome_events (account, job_id, status, kind, broadcast_id, correlation_id,
                                     reply_to, detail)
         SELECT x.account, x.id, 'broadcast_completed', 'broadcast', x.id, r.correlation_id,
                r.reply_to,
                jsonb_build_object('broadcast_status', CASE WHEN x.status = 'running' THEN 'done' ELSE x.status END,
                                   'total', x.total, 'skipped', x.skipped, 'sent', x.sent,
                                   'failed', x.failed, 'dead', x.dead, 'suppressed', x.suppressed,
                                   'expired', x.expired, 'cancelled', x.cancelled)
         FROM done x
         LEFT JOIN outcome_routes r ON r.account = x.account AND r.job_id = x.id
         WHERE x.sent + x.failed + x.dead + x.suppressed + x.expired + x.cancelled >= x.total",
    )
    .bind(account)
    .execute(pool)
    .await
    .context("writing broadcast completion events")?
    .rows_affected();
    Ok(n)
}

/// The `cancelled` events of `account`'s broadcast `id`'s recipients that have no outcome
/// yet, locking their rows (the caller's transaction then marks them `cancelled`). They carry
/// the broadcast's correlation_id and reply_to.
pub(super) async fn cancelled_events(
    tx: &mut Transaction<'_, Postgres>,
    account: &str,
    id: &str,
) -> anyhow::Result<()> {
    sqlx::query(
        "WITH ended AS (
             SELECT job_id, account, channel, kind, recipient, attempts, broadcast_id
             FROM deliveries
             WHERE broadcast_id = $1 AND account = $2 AND status IN ('accepted', 'retrying')
             FOR UPDATE
         )
         INSERT INTO outcome_events (account, job_id, status, channel, kind, recipient, reason,
                                     errmsg, attempts, broadcast_id, correlation_id, reply_to)
         SELECT e.account, e.job_id, 'cancelled', e.channel, e.kind, e.recipient, NULL,
                'broadcast cancelled', e.attempts, e.broadcast_id, r.correlation_id, r.reply_to
         FROM ended e
         LEFT JOIN outcome_routes r ON r.account = e.account AND r.job_id = e.broadcast_id",
    )
    .bind(id)
    .bind(account)
    .execute(&mut **tx)
    .await
    .context("writing the cancelled recipients' outcome events")?;
    Ok(())
}

/// The `cancelled` events of a fan-out chunk whose rows were created `cancelled` (the broadcast
/// was cancelled while it fanned out). Costs one lookup of the broadcast's status otherwise.
/// A fan-out repeated after a crash may write them again: same message_id.
pub(super) async fn cancelled_at_fan_out(
    pool: &PgPool,
    account: &str,
    broadcast_id: &str,
    job_ids: &[String],
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO outcome_events (account, job_id, status, channel, kind, recipient, errmsg,
                                     attempts, broadcast_id, correlation_id, reply_to)
         SELECT d.account, d.job_id, 'cancelled', d.channel, d.kind, d.recipient,
                'broadcast cancelled', d.attempts, d.broadcast_id, r.correlation_id, r.reply_to
         FROM deliveries d
         LEFT JOIN outcome_routes r ON r.account = d.account AND r.job_id = d.broadcast_id
         WHERE EXISTS (SELECT 1 FROM broadcasts b
                       WHERE b.id = $2 AND b.account = $1 AND b.status = 'cancelled')
           AND d.account = $1 AND d.job_id = ANY($3) AND d.status = 'cancelled'
           AND d.broadcast_id = $2
           AND NOT EXISTS (SELECT 1 FROM outcome_events e
                           WHERE e.account = d.account AND e.job_id = d.job_id
                             AND e.status = 'cancelled')",
    )
    .bind(account)
    .bind(broadcast_id)
    .bind(job_ids)
    .execute(pool)
    .await
    .context("writing the outcome events of recipients created cancelled")?;
    Ok(())
}
