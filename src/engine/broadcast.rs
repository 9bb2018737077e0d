//! Bulk broadcasts: one job, up to 100,000 recipients, one delivery each.
//!
//! A `broadcast` job arrives in the account's lane like any other. Fanning it out is
//! idempotent and crash-safe:
//!
//! 1. the `broadcasts` row is created (a broadcast whose fan-out already completed is not fanned
//!    out again: a second publish of the same broadcast sends nothing);
//! 2. one `deliveries` row per unique, valid recipient is created up front (status `accepted`,
//!    `broadcast_id` set, deterministic job id from [`job::derive_job_id`]), so progress and
//!    cancellation work from the first second;
//! 3. one ordinary send job per recipient is published (confirmed) to the account's *bulk* queue
//!    `wxdispatch.<account>.bulk`;
//! 4. the broadcast is marked `running` and its message acked.
//!
//! A crash anywhere repeats the steps; the claim dedupes recipients already sent. The lane
//! consumes the bulk queue next to the lane queue, and bulk jobs draw from a second limiter
//! holding `worker.broadcast_share` of the account's rate, so ordinary replies always find
//! capacity and keep their latency while a broadcast runs.

use std::collections::HashSet;

use serde_json::{Map, Value};
use sqlx::PgPool;

use crate::broker::Publisher;
use crate::config::AccountConfig;
use crate::domain::job::{self, Job, JobKind};
use crate::store::Store;
use crate::store::broadcasts::{BroadcastRows, NewBroadcast};

pub use crate::store::broadcasts::Progress;

/// Rows inserted (and messages published) per round trip while fanning out.
const FANOUT_CHUNK: usize = 2_000;

/// Unique, valid recipients in order, and how many were dropped.
pub fn clean_recipients<'a>(
    raw: impl IntoIterator<Item = &'a str>,
) -> (Vec<String>, SkippedRecipients) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut skipped = SkippedRecipients::default();
    for r in raw {
        let r = r.trim();
        if r.is_empty() {
            skipped.blank += 1;
        } else if !job::valid_recipient(r) {
            skipped.invalid += 1;
            if skipped.examples.len() < 5 {
                skipped.examples.push(crate::text::truncate(r, 40));
            }
        } else if !seen.insert(r.to_owned()) {
            skipped.duplicate += 1;
        } else {
            out.push(r.to_owned());
        }
    }
    (out, skipped)
}

/// What [`clean_recipients`] dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SkippedRecipients {
    pub blank: usize,
    pub duplicate: usize,
    pub invalid: usize,
    /// A few of the invalid ids, for the summary.
    pub examples: Vec<String>,
}

impl SkippedRecipients {
    pub fn total(&self) -> usize {
        self.duplicate + self.invalid
    }
}

/// Fan a broadcast job out (see the module docs). Returns the number of recipients.
pub async fn fan_out(
    store: &Store,
    publisher: &Publisher,
    account: &AccountConfig,
    job: &Job,
    body: &[u8],
) -> anyhow::Result<usize> {
    let JobKind::Broadcast { recipients } = &job.kind else {
        anyhow::bail!("not a broadcast");
    };
    let (recipients, skipped) = clean_recipients(recipients.iter().map(String::as_str));
    let message = job
        .message
        .as_ref()
        .map(|m| serde_json::json!({ m.msgtype.clone(): m.payload.clone() }))
        .unwrap_or(Value::Null);
    let status = store
        .create_broadcast(NewBroadcast {
            id: &job.job_id,
            account: &account.name,
            message: &message,
            total: recipients.len(),
            skipped: skipped.total(),
        })
        .await?;
    match status.as_deref() {
        Some("fanning_out") => {}
        // Fanned out before (a duplicate publish or a redelivery after the ack was lost).
        _ => return Ok(recipients.len()),
    }
    // The per-recipient job: the broadcast's own fields minus the recipient list.
    let template: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.remove("to");
            o.remove("kind");
            o.remove("job_id");
            o.insert("broadcast_id".into(), Value::String(job.job_id.clone()));
            o
        }
        _ => anyhow::bail!("broadcast body is not a JSON object"),
    };
    let queue = crate::broker::bulk_queue(&account.name);
    for chunk in recipients.chunks(FANOUT_CHUNK) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|r| job::derive_job_id(&job.job_id, r))
            .collect();
        store
            .insert_broadcast_rows(BroadcastRows {
                broadcast_id: &job.job_id,
                account: &account.name,
                channel: account.channel.as_str(),
                open_kfid: job.open_kfid.as_deref(),
                recipients: chunk,
                job_ids: &ids,
            })
            .await?;
        let mut confirms = Vec::with_capacity(chunk.len());
        for (r, id) in chunk.iter().zip(&ids) {
            let mut o = template.clone();
            o.insert("job_id".into(), Value::String(id.clone()));
            o.insert("to".into(), Value::String(r.clone()));
            let bytes = serde_json::to_vec(&Value::Object(o))?;
            confirms.push(publisher.publish_to_queue(&queue, id, bytes));
        }
        for c in futures::future::join_all(confirms).await {
            c?;
        }
    }
    store
        .mark_broadcast_running(&account.name, &job.job_id)
        .await?;
    tracing::info!(account = %account.name, broadcast = %job.job_id, recipients = recipients.len(), skipped = skipped.total(), "broadcast fanned out");
    Ok(recipients.len())
}

/// Count the deliveries of `account`'s broadcast `id` now (what `broadcast status` shows).
pub async fn progress(pool: &PgPool, account: &str, id: &str) -> anyhow::Result<Option<Progress>> {
    crate::store::broadcasts::progress(pool, account, id).await
}

/// Write the current counts into `broadcasts` for the account's unfinished broadcasts (the
/// lane's owner does this every few seconds), close finished ones, and publish how many
/// recipients are pending as a gauge.
pub async fn refresh(store: &Store, account: &str) -> anyhow::Result<()> {
    // Completion events first (README "Outcome events"): the refresh below closes them.
    store.broadcast_completions(account).await?;
    let pending = store.refresh_broadcasts(account).await?;
    metrics::gauge!(crate::telemetry::BROADCAST_PENDING, "account" => account.to_owned())
        .set(pending as f64);
    Ok(())
}

/// Cancel `account`'s broadcast `id`: recipients not yet sent end `cancelled`. Returns how
/// many.
pub async fn cancel(pool: &PgPool, account: &str, id: &str) -> anyhow::Result<u64> {
    crate::store::broadcasts::cancel(pool, account, id).await
}
