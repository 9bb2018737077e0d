//! The counts behind `wxdispatch stats`: deliveries per account and status, dead letters per
//! account and reason.

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::Row;

use super::dead_letters::{Db, NOT_MIGRATED_HINT};

/// How many deliveries of one account are in one status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusCount {
    pub account: String,
    pub status: String,
    pub count: i64,
}

/// Dead letters of one account and reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonStats {
    pub account: String,
    pub reason: String,
    pub count: i64,
    /// Not replayed yet.
    pub unreplayed: i64,
}

/// Deliveries created since `since` (of `account`, or all), per account and status, ordered
/// by account then status.
pub async fn delivery_counts(
    db: &impl Db,
    since: DateTime<Utc>,
    account: Option<&str>,
) -> anyhow::Result<Vec<StatusCount>> {
    sqlx::query(
        "SELECT account, status, count(*) AS n FROM deliveries
         WHERE created_at >= $1 AND ($2::text IS NULL OR account = $2)
         GROUP BY account, status ORDER BY account, status",
    )
    .bind(since)
    .bind(account)
    .fetch_all(db.pg())
    .await
    .context("counting deliveries (has `wxdispatch migrate` run?)")?
    .iter()
    .map(|r| {
        Ok(StatusCount {
            account: r.try_get("account")?,
            status: r.try_get("status")?,
            count: r.try_get("n")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("counting deliveries")
}

/// Dead letters recorded since `since` (of `account`, or all), per account and reason: by
/// account, the most frequent reason first.
pub async fn dead_letter_counts(
    db: &impl Db,
    since: DateTime<Utc>,
    account: Option<&str>,
) -> anyhow::Result<Vec<ReasonStats>> {
    sqlx::query(
        "SELECT account, reason, count(*) AS n, count(*) FILTER (WHERE replayed_at IS NULL) AS open
         FROM dead_letters
         WHERE dead_at >= $1 AND ($2::text IS NULL OR account = $2)
         GROUP BY account, reason ORDER BY account, n DESC, reason",
    )
    .bind(since)
    .bind(account)
    .fetch_all(db.pg())
    .await
    .context(NOT_MIGRATED_HINT)?
    .iter()
    .map(|r| {
        Ok(ReasonStats {
            account: r.try_get("account")?,
            reason: r.try_get("reason")?,
            count: r.try_get("n")?,
            unreplayed: r.try_get("open")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()
    .context("counting dead letters")
}
