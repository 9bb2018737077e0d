//! A recall job (WeCom kf/recall_msg): read the target's row, let
//! [`crate::domain::recall::judge`] decide ([`resolve`]); `process` calls the platform through
//! the ordinary send loop (pause, rate limit, token protocol, retries); then
//! [`mark_if_sent`] marks the target recalled. The recall's
//! own row is recorded by `finish` like any job's, after the target's mark: a redelivered
//! recall that finds its mark is done without asking the platform again.
//!
//! The conversation's ledger is not touched: a recalled message still counts against WeCom's
//! 5-message allowance (and the recall itself is not a message).

use chrono::Utc;

use super::ctx::LaneCtx;
use crate::domain::job::{Job, JobKind, Recall};
use crate::domain::recall::{Asker, Target, Verdict, judge};
use crate::engine::hold::hold_until_written;
use crate::policy::outcome::Outcome;
use crate::store::RecallTargetRow;

/// A claimed recall job that has made `attempts` attempts so far: the job to send (its
/// target's platform msgid filled in), or the outcome that ends it without asking the
/// platform (refused, or already done by this very job).
pub(super) async fn resolve(
    ctx: &LaneCtx,
    job: &Job,
    recall: &Recall,
    attempts: i32,
) -> Result<Job, Outcome> {
    let row = read_target(ctx, job, recall).await?;
    let target = row.as_ref().map(|r| Target {
        kind: &r.kind,
        status: &r.status,
        recipient: &r.recipient,
        open_kfid: r.open_kfid.as_deref(),
        platform_msgid: r.platform_msgid.as_deref(),
        sent_at: r.sent_at,
        recalled_by_job: r.recalled_by_job.as_deref(),
    });
    let asker = Asker {
        job_id: &job.job_id,
        target_job_id: &recall.target_job_id,
        to: &job.to,
        open_kfid: job.open_kfid.as_deref(),
    };
    let now = row.as_ref().map_or_else(Utc::now, |r| r.db_now);
    match judge(asker, target.as_ref(), now) {
        Verdict::Call { msgid } => Ok(Job {
            kind: JobKind::Recall(Recall {
                target_job_id: recall.target_job_id.clone(),
                msgid: Some(msgid.to_owned()),
            }),
            ..job.clone()
        }),
        Verdict::AlreadyDone => Err(Outcome::Sent {
            attempts,
            msgid: None,
        }),
        Verdict::Refuse { reason, detail } => Err(Outcome::Dead {
            reason: reason.into(),
            errcode: None,
            errmsg: Some(detail),
            attempts,
        }),
    }
}

/// After the platform call: a recall the platform accepted marks its target's row before
/// the recall's own outcome is recorded; any other outcome is returned as it is.
pub(super) async fn mark_if_sent(
    ctx: &LaneCtx,
    job: &Job,
    recall: &Recall,
    outcome: Outcome,
) -> Outcome {
    if let Outcome::Sent { .. } = outcome
        && let Err(o) = mark(ctx, job, recall).await
    {
        return o;
    }
    outcome
}

/// The target's row; a refusing database is held and retried like a claim (the job has not
/// called the platform yet, so handing it back at shutdown is safe).
async fn read_target(
    ctx: &LaneCtx,
    job: &Job,
    recall: &Recall,
) -> Result<Option<RecallTargetRow>, Outcome> {
    let account = &ctx.account.name;
    let read = || ctx.store.recall_target(account, &recall.target_job_id);
    match read().await {
        Ok(r) => Ok(r),
        Err(e) => Box::pin(hold_until_written(
            ctx.hold(&job.job_id),
            "recall target read",
            e,
            read,
        ))
        .await
        .map_err(|e| Outcome::Requeue { why: e.to_string() }),
    }
}

/// Mark the target recalled (held and retried while the database refuses). Given up at
/// shutdown, the job goes back to the broker unmarked, and its redelivery asks the platform
/// again (which then answers that the message is gone).
async fn mark(ctx: &LaneCtx, job: &Job, recall: &Recall) -> Result<(), Outcome> {
    let account = &ctx.account.name;
    let write = || {
        ctx.store
            .mark_recalled(account, &recall.target_job_id, &job.job_id)
    };
    let marked = match write().await {
        Ok(m) => m,
        Err(e) => Box::pin(hold_until_written(
            ctx.hold(&job.job_id),
            "recall mark",
            e,
            write,
        ))
        .await
        .map_err(|e| Outcome::Requeue { why: e.to_string() })?,
    };
    if !marked {
        tracing::warn!(account = %account, job.id = %job.job_id, target = %recall.target_job_id, "the platform recalled the message, but its row was already marked by another recall");
    }
    Ok(())
}
