//! `broadcasts` and the deliveries of their recipients: creating a broadcast and its rows at
//! fan-out, counting its progress, closing finished ones, cancelling.
//!
//! The counting functions take a bare pool as well as a [`Store`] (through its methods), so a
//! caller that only has a pool (the integration tests, `broadcast status` before a store is
//! built) can use them.

use anyhow::Context;
use serde_json::Value;
use sqlx::{PgPool, Row};

use super::Store;

/// Progress of one broadcast, counted from its deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub id: String,
    pub account: String,
    pub status: String,
    pub total: i64,
    pub skipped: i64,
    pub sent: i64,
    pub failed: i64,
    pub dead: i64,
    pub suppressed: i64,
    pub expired: i64,
    pub cancelled: i64,
    pub pending: i64,
}

impl Progress {
    pub fn done(&self) -> i64 {
        self.total - self.pending
    }
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "done" | "cancelled") && self.pending == 0
    }
}

/// A broadcast to create (step 1 of the fan-out).
#[derive(Debug, Clone, Copy)]
pub struct NewBroadcast<'a> {
    pub id: &'a str,
    pub account: &'a str,
    /// `{msgtype: payload}`, or null.
    pub message: &'a Value,
    /// Unique, valid recipients.
    pub total: usize,
    /// Recipients dropped as duplicates or invalid.
    pub skipped: usize,
}

/// The deliveries of one chunk of a broadcast's recipients (step 2 of the fan-out).
#[derive(Debug, Clone, Copy)]
pub struct BroadcastRows<'a> {
    pub broadcast_id: &'a str,
    pub account: &'a str,
    pub channel: &'a str,
    pub open_kfid: Option<&'a str>,
    pub recipients: &'a [String],
    /// The recipients' job ids, in the same order.
    pub job_ids: &'a [String],
}

impl Store {
    /// Create the broadcast (or touch it when it exists); returns its status, `fanning_out`
    /// for one whose fan-out has not completed.
    pub async fn create_broadcast(&self, b: NewBroadcast<'_>) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar(
            "INSERT INTO broadcasts (id, account, message, total, skipped, pending)
             VALUES ($1, $2, $3, $4, $5, $4)
             ON CONFLICT (account, id) DO UPDATE SET updated_at = now()
             RETURNING status",
        )
        .bind(b.id)
        .bind(b.account)
        .bind(b.message)
        .bind(b.total as i32)
        .bind(b.skipped as i32)
        .fetch_optional(&self.pool)
        .await
        .context("creating the broadcast")
    }

    /// Create the deliveries of a chunk of recipients (existing ones are left alone).
    pub async fn insert_broadcast_rows(&self, rows: BroadcastRows<'_>) -> anyhow::Result<()> {
        // A broadcast cancelled while fanning out creates its remaining rows cancelled.
        sqlx::query(
            "INSERT INTO deliveries (job_id, account, channel, kind, recipient, open_kfid, broadcast_id, status)
             SELECT j, $3, $4, 'send', r, $5, $6,
                    CASE WHEN (SELECT status FROM broadcasts WHERE id = $6 AND account = $3) = 'cancelled'
                         THEN 'cancelled' ELSE 'accepted' END
             FROM UNNEST($1::text[], $2::text[]) AS t(j, r)
             ON CONFLICT (account, job_id) DO NOTHING",
        )
        .bind(rows.job_ids)
        .bind(rows.recipients)
        .bind(rows.account)
        .bind(rows.channel)
        .bind(rows.open_kfid)
        .bind(rows.broadcast_id)
        .execute(&self.pool)
        .await
        .context("creating broadcast deliveries")?;
        if self.outcomes_on(rows.account) {
            // rows created `cancelled` above get their events (README "Outcome events")
            super::outbox::cancelled_at_fan_out(
                &self.pool,
                rows.account,
                rows.broadcast_id,
                rows.job_ids,
            )
            .await?;
        }
        Ok(())
    }

    /// The fan-out is complete: `fanning_out` → `running`.
    pub async fn mark_broadcast_running(&self, account: &str, id: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE broadcasts SET status = 'running', updated_at = now()
             WHERE id = $1 AND account = $2 AND status = 'fanning_out'",
        )
        .bind(id)
        .bind(account)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// [`accounts`] that have a broadcast with this id.
    pub async fn broadcast_accounts(
        &self,
        id: &str,
        account: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        accounts(&self.pool, id, account).await
    }

    /// [`progress`] of a broadcast.
    pub async fn broadcast_progress(
        &self,
        account: &str,
        id: &str,
    ) -> anyhow::Result<Option<Progress>> {
        progress(&self.pool, account, id).await
    }

    /// [`refresh`] the account's unfinished broadcasts.
    pub async fn refresh_broadcasts(&self, account: &str) -> anyhow::Result<i64> {
        refresh(&self.pool, account).await
    }

    /// [`cancel`] a broadcast.
    pub async fn cancel_broadcast(&self, account: &str, id: &str) -> anyhow::Result<u64> {
        cancel_with_events(&self.pool, account, id, self.outcomes_on(account)).await
    }
}

/// The accounts that have a broadcast with this id (a broadcast id is unique per account
/// only): `account` alone if it has one, when given; sorted.
pub async fn accounts(
    pool: &PgPool,
    id: &str,
    account: Option<&str>,
) -> anyhow::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT account FROM broadcasts WHERE id = $1 AND ($2::text IS NULL OR account = $2)
         ORDER BY account",
    )
    .bind(id)
    .bind(account)
    .fetch_all(pool)
    .await
    .context("reading broadcasts")
}

/// Count the deliveries of `account`'s broadcast `id` now (what `broadcast status` shows).
pub async fn progress(pool: &PgPool, account: &str, id: &str) -> anyhow::Result<Option<Progress>> {
    let Some(b) =
        sqlx::query("SELECT status, total, skipped FROM broadcasts WHERE id = $1 AND account = $2")
            .bind(id)
            .bind(account)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(None);
    };
    let mut p = Progress {
        id: id.to_owned(),
        account: account.to_owned(),
        status: b.get("status"),
        total: i64::from(b.get::<i32, _>("total")),
        skipped: i64::from(b.get::<i32, _>("skipped")),
        ..Default::default()
    };
    let rows = sqlx::query(
        "SELECT status, count(*) AS n FROM deliveries WHERE broadcast_id = $1 AND account = $2
         GROUP BY status",
    )
    .bind(id)
    .bind(account)
    .fetch_all(pool)
    .await?;
    let mut terminal = 0;
    for r in rows {
        let n: i64 = r.get("n");
        match r.get::<String, _>("status").as_str() {
            "sent" => p.sent = n,
            "failed" => p.failed = n,
            "dead" => p.dead = n,
            "suppressed" => p.suppressed = n,
            "expired" => p.expired = n,
            "cancelled" => p.cancelled = n,
            _ => continue,
        }
        terminal += n;
    }
    p.pending = (p.total - terminal).max(0);
    if p.status == "running" && p.pending == 0 {
        p.status = "done".into();
    }
    Ok(Some(p))
}

/// Write the current counts into `broadcasts` for the account's unfinished broadcasts, and
/// close finished ones. Returns how many of their recipients are still pending.
pub async fn refresh(pool: &PgPool, account: &str) -> anyhow::Result<i64> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM broadcasts WHERE account = $1 AND finished_at IS NULL AND status <> 'fanning_out'",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let mut pending = 0i64;
    for id in ids {
        let Some(p) = progress(pool, account, &id).await? else {
            continue;
        };
        pending += p.pending;
        sqlx::query(
            "UPDATE broadcasts SET sent = $2, failed = $3, dead = $4, suppressed = $5, expired = $6,
                    cancelled = $7, pending = $8, updated_at = now(),
                    status = CASE WHEN status = 'running' AND $8 = 0 THEN 'done' ELSE status END,
                    finished_at = CASE WHEN $8 = 0 THEN now() END
             WHERE id = $1 AND account = $9",
        )
        .bind(&id)
        .bind(p.sent as i32)
        .bind(p.failed as i32)
        .bind(p.dead as i32)
        .bind(p.suppressed as i32)
        .bind(p.expired as i32)
        .bind(p.cancelled as i32)
        .bind(p.pending as i32)
        .bind(account)
        .execute(pool)
        .await?;
    }
    Ok(pending)
}

/// Cancel `account`'s broadcast `id`: recipients not yet sent end `cancelled`. Returns how
/// many.
pub async fn cancel(pool: &PgPool, account: &str, id: &str) -> anyhow::Result<u64> {
    cancel_with_events(pool, account, id, true).await
}

/// [`cancel`], writing the `cancelled` outcome events of the recipients it ends when
/// `events` (the account's `outcomes`).
pub async fn cancel_with_events(
    pool: &PgPool,
    account: &str,
    id: &str,
    events: bool,
) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE broadcasts SET status = 'cancelled', updated_at = now()
         WHERE id = $1 AND account = $2 AND status <> 'done'",
    )
    .bind(id)
    .bind(account)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if found == 0 {
        let exists: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM broadcasts WHERE id = $1 AND account = $2)",
        )
        .bind(id)
        .bind(account)
        .fetch_one(&mut *tx)
        .await?;
        anyhow::ensure!(exists, "no broadcast with id '{id}' on account '{account}'");
        anyhow::bail!("broadcast '{id}' of account '{account}' has already finished");
    }
    if events {
        // The outcome events of the recipients the next statement ends, in the same
        // transaction; the rows stay locked until it commits, so the two see the same set.
        super::outbox::cancelled_events(&mut tx, account, id).await?;
    }
    // Jobs in flight at this moment may still be sent: their outcome overwrites `cancelled`.
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', error = 'broadcast cancelled', updated_at = now()
         WHERE broadcast_id = $1 AND account = $2 AND status IN ('accepted', 'retrying', 'scheduled')",
    )
    .bind(id)
    .bind(account)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}
