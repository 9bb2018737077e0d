//! Record a job's outcome, then ack. Dead letters are published (confirmed) before the record,
//! so a crash in between can only duplicate a dead letter, never lose one; a parked job is
//! recorded, then handed to its delay tier, then acked.
//!
//! A record the database refuses is never answered by handing the message back (it would be
//! redelivered and sent again): it is held and retried ([`crate::engine::hold`]) until the
//! database accepts it; only at shutdown, after the grace period, is the message left unacked.

use lapin::message::Delivery;
use tracing::warn;

use super::ctx::LaneCtx;
use super::order::{conversation_of, requeue};
use super::parked::H_PARKS;
use crate::broker::{self, acks::Acks};
use crate::domain::job::{Job, JobKind};
use crate::engine::dead_letter::{self, Failed};
use crate::engine::hold::hold_until_written;
use crate::policy::outcome::{Outcome, Row, RowStatus};
use crate::store::{DeadLetter, DeliveryKey, Status};
use crate::telemetry as t;

/// The store's status of an outcome's row.
fn status_of(s: RowStatus) -> Status {
    match s {
        RowStatus::Sent => Status::Sent,
        RowStatus::Suppressed => Status::Suppressed,
        RowStatus::Expired => Status::Expired,
        RowStatus::Retrying => Status::Retrying,
        RowStatus::Dead => Status::Dead,
        RowStatus::Scheduled => Status::Scheduled,
    }
}

/// The delivery row to write for `row`: the job's own key, or (input rejected before it
/// became a job) one with only the job id, if it had one.
fn delivery_row(
    ctx: &LaneCtx,
    job: Option<&Job>,
    job_id: Option<&str>,
    row: Row,
) -> crate::store::Outcome {
    let key = match job {
        Some(j) => ctx.delivery_key(j),
        None => DeliveryKey {
            job_id: job_id.unwrap_or_default().to_owned(),
            account: ctx.account.name.clone(),
            channel: ctx.account.channel.as_str(),
            kind: "send",
            recipient: String::new(),
            open_kfid: None,
            broadcast_id: None,
        },
    };
    crate::store::Outcome {
        key,
        status: status_of(row.status),
        attempts: row.attempts,
        errcode: row.errcode,
        error: row.error,
        platform_msgid: row.msgid,
        event: None,
    }
}

/// The outcome event of a terminal `outcome` (README "Outcome events"): its reason and
/// message apart, and the delivery's `correlation_id` and `reply_to`; `None` when the account
/// has `outcomes = false`.
fn event_meta(
    ctx: &LaneCtx,
    delivery: &Delivery,
    outcome: &Outcome,
) -> Option<crate::store::EventMeta> {
    if !ctx.account.outcomes {
        return None;
    }
    let (reason, errmsg) = match outcome {
        Outcome::Dead { reason, errmsg, .. } => (Some(reason.clone()), errmsg.clone()),
        Outcome::Suppressed { .. } | Outcome::Expired { .. } => {
            (None, outcome.row().and_then(|r| r.error))
        }
        _ => (None, None),
    };
    let p = &delivery.properties;
    Some(crate::store::EventMeta {
        reason,
        errmsg,
        correlation_id: p.correlation_id().as_ref().map(|s| s.to_string()),
        reply_to: p.reply_to().as_ref().map(|s| s.to_string()),
    })
}

/// Record the outcome (holding it while the database refuses it), then ack.
pub(super) async fn finish(
    ctx: &LaneCtx,
    delivery: &Delivery,
    acks: &Acks,
    job: Option<&Job>,
    job_id: Option<&str>,
    outcome: Outcome,
) {
    let name = &ctx.account.name;
    match &outcome {
        Outcome::Dead { .. } => {
            // The rare branches' futures are boxed: the common path (a send recorded and
            // acked) then does not carry and move their state.
            match Box::pin(dead_letter(ctx, delivery, job_id, &outcome)).await {
                Settle::Go => {}
                Settle::Requeue => {
                    requeue(delivery, acks).await;
                    return;
                }
                Settle::LeaveUnacked => return,
            }
            // A job without an id has no row to write.
            if job_id.is_none() {
                return settle_after_record(ctx, delivery, acks, job).await;
            }
        }
        Outcome::FannedOut { recipients } => {
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), recipients, "broadcast fanned out");
            // A scheduled broadcast was parked until due: release it (a no-op otherwise).
            return settle_after_record(ctx, delivery, acks, job).await;
        }
        // A broadcast recipient whose row a cancel ended `cancelled` before it was taken: not
        // a duplicate publish, but a delivery that ends cancelled.
        Outcome::Duplicate("cancelled") => {
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), "broadcast recipient cancelled; not sent");
            metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => "cancelled").increment(1);
            return settle_after_record(ctx, delivery, acks, job).await;
        }
        Outcome::Duplicate(s) => {
            metrics::counter!(t::DUPLICATES, "account" => name.clone()).increment(1);
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), status = s, "duplicate job; already recorded");
            metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => "duplicate").increment(1);
            return settle_after_record(ctx, delivery, acks, job).await;
        }
        Outcome::Requeue { why } => {
            warn!(account = %name, job.id = job_id.unwrap_or("-"), %why, "giving the message back to the broker");
            requeue(delivery, acks).await;
            return;
        }
        Outcome::Park { .. } | Outcome::Scheduled { .. } => {
            Box::pin(park(ctx, delivery, acks, job, &outcome)).await;
            return;
        }
        Outcome::Sent { .. } | Outcome::Suppressed { .. } | Outcome::Expired { .. } => {}
    }
    let Some(row) = outcome.row() else {
        return settle_after_record(ctx, delivery, acks, job).await;
    };
    let mut row = delivery_row(ctx, job, job_id, row);
    row.event = event_meta(ctx, delivery, &outcome);
    let status = row.status;
    if let Err(e) = ctx.store.record(row.clone()).await {
        let id = row.key.job_id.clone();
        // Never handed back: the platform has answered (or the job ended here).
        let held = hold_until_written(ctx.hold(&id), "outcome", e, || {
            ctx.store.record(row.clone())
        });
        if Box::pin(held).await.is_err() {
            return;
        }
    }
    if status == Status::Sent {
        ctx.m.sent.increment(1);
    } else {
        metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => status.as_str()).increment(1);
    }
    settle_after_record(ctx, delivery, acks, job).await;
}

/// The job has its outcome (now or earlier, for a duplicate): if it was parked, its
/// conversation moves on; then the delivery is acked.
async fn settle_after_record(ctx: &LaneCtx, delivery: &Delivery, acks: &Acks, job: Option<&Job>) {
    let name = &ctx.account.name;
    if let Some(j) = job
        && let Err(e) = ctx
            .parked
            .release(&ctx.store, name, &conversation_of(j), &j.job_id)
            .await
    {
        // Released in memory already; the row is what is retried.
        let held = hold_until_written(ctx.hold(&j.job_id), "parked job release", e, || {
            ctx.store.unpark_job(name, &j.job_id)
        });
        if Box::pin(held).await.is_err() {
            return;
        }
    }
    // Acked with others shortly; if the channel dies first, the broker redelivers and the
    // claim dedupes.
    acks.settled(delivery.delivery_tag, &delivery.acker);
}

/// What follows a step of [`finish`] that may fail.
enum Settle {
    /// Done: go on.
    Go,
    /// Nothing happened (the broker refused the dead letter): hand the message back.
    Requeue,
    /// A held write given up at shutdown: leave the message unacked.
    LeaveUnacked,
}

/// Publish and record a dead letter ([`crate::engine::dead_letter`]). A record the database
/// refuses is held and retried: handing the message back would run the job again (and may
/// send it to the platform again).
async fn dead_letter(
    ctx: &LaneCtx,
    delivery: &Delivery,
    job_id: Option<&str>,
    outcome: &Outcome,
) -> Settle {
    let Outcome::Dead {
        reason,
        errcode,
        errmsg,
        attempts,
    } = outcome
    else {
        return Settle::Go;
    };
    let name = &ctx.account.name;
    let dl = DeadLetter {
        job_id: job_id.map(str::to_owned),
        message_id: delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.to_string()),
        account: name.clone(),
        reason: reason.clone(),
        errcode: *errcode,
        errmsg: errmsg.clone(),
        attempts: *attempts,
        body: delivery.data.clone(),
    };
    let logged = || {
        warn!(account = %name, job.id = job_id.unwrap_or("-"), %reason, errcode = ?errcode, errmsg = errmsg.as_deref().unwrap_or(""), "dead-lettered");
    };
    match dead_letter::dead_letter(&ctx.publisher, &ctx.store, &dl, &delivery.properties, name)
        .await
    {
        Ok(()) => {
            logged();
            Settle::Go
        }
        Err(Failed::Publish(e)) => {
            warn!(account = %name, error = %e, "dead-letter publish failed; message goes back to the queue");
            Settle::Requeue
        }
        Err(Failed::Record(e)) => {
            logged();
            let id = job_id.unwrap_or("-");
            let held = hold_until_written(ctx.hold(id), "dead letter record", e, || {
                ctx.store.record_dead_letter(&dl)
            });
            match Box::pin(held).await {
                Ok(()) => Settle::Go,
                Err(_) => Settle::LeaveUnacked,
            }
        }
    }
}

/// Park the job (a retry, a job waiting behind its conversation's parked job, or a scheduled
/// job not due yet): record first (row + conversation order), then hand the message to the
/// tier, then ack: a crash in between re-runs the job from the lane, never loses it.
async fn park(
    ctx: &LaneCtx,
    delivery: &Delivery,
    acks: &Acks,
    job: Option<&Job>,
    outcome: &Outcome,
) {
    let name = &ctx.account.name;
    let (tier_secs, parks) = match outcome {
        Outcome::Park {
            tier_secs, parks, ..
        }
        | Outcome::Scheduled {
            tier_secs, parks, ..
        } => (*tier_secs, *parks),
        _ => (0, 0),
    };
    let (Some(j), Some(row), true) = (job, outcome.row(), tier_secs > 0) else {
        requeue(delivery, acks).await;
        return;
    };
    let row = delivery_row(ctx, job, Some(&j.job_id), row);
    // A broadcast job has no `deliveries` row of its own (its record is `broadcasts`, written
    // at fan-out): a scheduled one is remembered in `parked_jobs` only.
    let has_row = !matches!(j.kind, JobKind::Broadcast { .. });
    let conv = conversation_of(j);
    // Both writes are idempotent (an upsert; parking keeps the job's place), so the pair is
    // what a held write retries.
    let record = || async {
        if has_row {
            ctx.store.record(row.clone()).await?;
        }
        ctx.parked
            .park(&ctx.store, name, &conv, &j.job_id, tier_secs)
            .await
    };
    if let Err(e) = record().await {
        let held = hold_until_written(ctx.hold(&j.job_id), "parking", e, record);
        if Box::pin(held).await.is_err() {
            return;
        }
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        H_PARKS.into(),
        lapin::types::AMQPValue::LongString(parks.to_string().into()),
    );
    let props = delivery.properties.clone().with_headers(headers);
    let tier = broker::retry_tier(tier_secs);
    if let Err(e) = Box::pin(ctx.publisher.publish(&tier, name, &delivery.data, props)).await {
        warn!(account = %name, error = %e, "publish to the delay tier failed; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
    }
    match outcome {
        Outcome::Park {
            follow: false,
            attempts,
            error,
            ..
        } => {
            tracing::info!(account = %name, job.id = %j.job_id, tier_secs, attempts, %error, "job parked in a delay tier");
        }
        Outcome::Scheduled { due, .. } => {
            tracing::debug!(account = %name, job.id = %j.job_id, tier_secs, %due, "scheduled job waits in a delay tier");
        }
        _ => {}
    }
    metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => outcome.name()).increment(1);
    acks.settled(delivery.delivery_tag, &delivery.acker);
}
