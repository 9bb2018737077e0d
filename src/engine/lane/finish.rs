//! Record a job's outcome, then ack. Dead letters are published (confirmed) before the record,
//! so a crash in between can only duplicate a dead letter, never lose one; a parked job is
//! recorded, then handed to its delay tier, then acked.

use lapin::message::Delivery;
use tracing::warn;

use super::ctx::LaneCtx;
use super::order::{conversation_of, requeue};
use super::parked::H_PARKS;
use crate::broker::{self, acks::Acks};
use crate::domain::job::Job;
use crate::engine::dead_letter::{self, Failed};
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
    }
}

/// Record the outcome, then ack (or hand the message back when the record failed).
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
            if !Box::pin(dead_letter(ctx, delivery, job_id, &outcome)).await {
                requeue(delivery, acks).await;
                return;
            }
            // A job without an id has no row to write.
            if job_id.is_none() {
                return settle_after_record(ctx, delivery, acks, job).await;
            }
        }
        Outcome::FannedOut { recipients } => {
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), recipients, "broadcast fanned out");
            acks.settled(delivery.delivery_tag, &delivery.acker);
            return;
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
        Outcome::Park { .. } => {
            Box::pin(park(ctx, delivery, acks, job, &outcome)).await;
            return;
        }
        Outcome::Sent { .. } | Outcome::Suppressed { .. } | Outcome::Expired { .. } => {}
    }
    let Some(row) = outcome.row() else {
        return settle_after_record(ctx, delivery, acks, job).await;
    };
    let row = delivery_row(ctx, job, job_id, row);
    let status = row.status;
    if let Err(e) = ctx.store.record(row).await {
        warn!(account = %name, error = %e, "outcome not recorded; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
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
        warn!(account = %name, error = %format!("{e:#}"), "parked job not released; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
    }
    // Acked with others shortly; if the channel dies first, the broker redelivers and the
    // claim dedupes.
    acks.settled(delivery.delivery_tag, &delivery.acker);
}

/// Publish and record a dead letter ([`crate::engine::dead_letter`]); `false` when the
/// message must go back to the queue.
async fn dead_letter(
    ctx: &LaneCtx,
    delivery: &Delivery,
    job_id: Option<&str>,
    outcome: &Outcome,
) -> bool {
    let Outcome::Dead {
        reason,
        errcode,
        errmsg,
        attempts,
    } = outcome
    else {
        return true;
    };
    let name = &ctx.account.name;
    let dl = DeadLetter {
        job_id: job_id.map(str::to_owned),
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
            true
        }
        Err(Failed::Publish(e)) => {
            warn!(account = %name, error = %e, "dead-letter publish failed; message goes back to the queue");
            false
        }
        Err(Failed::Record(e)) => {
            logged();
            warn!(account = %name, error = %e, "dead letter not recorded in Postgres; message goes back to the queue");
            false
        }
    }
}

/// Park the job: record first (row + conversation order), then hand the message to the
/// tier, then ack: a crash in between re-runs the job from the lane, never loses it.
async fn park(
    ctx: &LaneCtx,
    delivery: &Delivery,
    acks: &Acks,
    job: Option<&Job>,
    outcome: &Outcome,
) {
    let name = &ctx.account.name;
    let (
        Some(j),
        Some(row),
        Outcome::Park {
            tier_secs,
            attempts,
            parks,
            follow,
            error,
            ..
        },
    ) = (job, outcome.row(), outcome)
    else {
        requeue(delivery, acks).await;
        return;
    };
    let row = delivery_row(ctx, job, Some(&j.job_id), row);
    let conv = conversation_of(j);
    let recorded = async {
        ctx.store.record(row).await?;
        ctx.parked
            .park(&ctx.store, name, &conv, &j.job_id, *tier_secs)
            .await
    }
    .await;
    if let Err(e) = recorded {
        warn!(account = %name, error = %format!("{e:#}"), "parking not recorded; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
    }
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        H_PARKS.into(),
        lapin::types::AMQPValue::LongString(parks.to_string().into()),
    );
    let props = delivery.properties.clone().with_headers(headers);
    let tier = broker::retry_tier(*tier_secs);
    if let Err(e) = Box::pin(ctx.publisher.publish(&tier, name, &delivery.data, props)).await {
        warn!(account = %name, error = %e, "publish to the delay tier failed; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
    }
    if !follow {
        tracing::info!(account = %name, job.id = %j.job_id, tier_secs, attempts, %error, "job parked in a delay tier");
    }
    metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => "parked").increment(1);
    acks.settled(delivery.delivery_tag, &delivery.acker);
}
