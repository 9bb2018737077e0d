//! Recalls (job kind `recall`): reading the target's `deliveries` row, marking it recalled
//! (`recalled_at`, `recalled_by_job`, migration 0011, plus a `recalled` history event), and the
//! mark as `wxdispatch status` shows it. The recall job's own row is an ordinary delivery row.
//!
//! The target's `status` stays `sent` and the conversation's `sent_since_customer` is not
//! touched: a recalled message still counts against WeCom's 5-message allowance.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::Store;

/// The target's row as a recall needs it, with the database's clock (the one `sent_at` was
/// written with, so the 2-minute window is not skewed by the worker's clock).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecallTargetRow {
    pub kind: String,
    pub status: String,
    pub recipient: String,
    pub open_kfid: Option<String>,
    pub platform_msgid: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
    pub recalled_by_job: Option<String>,
    /// The database's `now()` when the row was read.
    pub db_now: DateTime<Utc>,
}

/// That a sent message was recalled, and by which job (shown by `wxdispatch status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecallMark {
    pub recalled_at: DateTime<Utc>,
    pub recalled_by_job: String,
}

impl Store {
    /// The row of `job_id` on `account`, for a recall of it (`None`: no such job).
    pub async fn recall_target(
        &self,
        account: &str,
        job_id: &str,
    ) -> anyhow::Result<Option<RecallTargetRow>> {
        let row = sqlx::query(
            "SELECT kind, status, recipient, open_kfid, platform_msgid, sent_at, recalled_by_job,
                    now() AS db_now
             FROM deliveries WHERE account = $1 AND job_id = $2",
        )
        .bind(account)
        .bind(job_id)
        .fetch_optional(self.pool())
        .await
        .context("reading the recall's target")?;
        Ok(row.map(|r| RecallTargetRow {
            kind: r.get("kind"),
            status: r.get("status"),
            recipient: r.get("recipient"),
            open_kfid: r.get("open_kfid"),
            platform_msgid: r.get("platform_msgid"),
            sent_at: r.get("sent_at"),
            recalled_by_job: r.get("recalled_by_job"),
            db_now: r.get("db_now"),
        }))
    }

    /// Mark `target_job_id` on `account` recalled by `by_job`, with a `recalled` event in its
    /// history. Idempotent for the same recall job; `false` when the row does not exist or
    /// another job recalled it first.
    pub async fn mark_recalled(
        &self,
        account: &str,
        target_job_id: &str,
        by_job: &str,
    ) -> anyhow::Result<bool> {
        let marked: Option<bool> = sqlx::query_scalar(
            "WITH up AS (
                 UPDATE deliveries SET recalled_at = COALESCE(recalled_at, now()),
                                       recalled_by_job = $3, updated_at = now()
                 WHERE account = $1 AND job_id = $2
                   AND (recalled_by_job IS NULL OR recalled_by_job = $3)
                 RETURNING job_id, account, attempts, (recalled_at = now()) AS fresh
             ), ev AS (
                 INSERT INTO delivery_events (job_id, account, status, attempts, error)
                 SELECT job_id, account, 'recalled', attempts, 'recalled by job ' || $3
                 FROM up WHERE fresh
                 RETURNING 1
             )
             SELECT true FROM up",
        )
        .bind(account)
        .bind(target_job_id)
        .bind(by_job)
        .fetch_optional(self.pool())
        .await
        .context("marking the recalled delivery")?;
        Ok(marked.unwrap_or(false))
    }

    /// Whether `job_id` on `account` was recalled (`None`: not recalled, or no such job).
    pub async fn recall_mark(
        &self,
        account: &str,
        job_id: &str,
    ) -> anyhow::Result<Option<RecallMark>> {
        let row = sqlx::query(
            "SELECT recalled_at, recalled_by_job FROM deliveries
             WHERE account = $1 AND job_id = $2
               AND recalled_at IS NOT NULL AND recalled_by_job IS NOT NULL",
        )
        .bind(account)
        .bind(job_id)
        .fetch_optional(self.pool())
        .await
        .context("reading the delivery's recall")?;
        Ok(row.map(|r| RecallMark {
            recalled_at: r.get("recalled_at"),
            recalled_by_job: r.get("recalled_by_job"),
        }))
    }
}
