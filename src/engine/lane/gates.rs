//! The lane's gate `bot`: is a human serving the conversation? Known from the cache or the
//! sync loop's stored state, else asked of the platform; and what a transfer or a 95018 tells.

use std::time::Duration;

use tracing::warn;

use super::ctx::LaneCtx;
use super::order::conversation_of;
use crate::config::Channel;
use crate::domain::job::{self, Gate, Job, JobKind};
use crate::domain::service_state::ServiceState;
use crate::policy::{Api, CallResult};
use crate::store::ConvState;

/// What the gate says about one attempt of a job.
pub(super) enum BotGate {
    /// No gate, or the bot serves: send.
    Open,
    /// A human serves: the job is suppressed.
    HumanServes,
    /// The platform could not be asked: judge this like a failed send.
    Failed((CallResult, Api)),
}

/// gate "bot": is a human serving? Asking the platform is paced (its own limiter at the
/// account's rate), and a failed query is retried (or pauses the account) exactly as a failed
/// send would be; the job is never sent without the answer.
pub(super) async fn check(ctx: &LaneCtx, job: &Job, conv: Option<&ConvState>) -> BotGate {
    if job.gate != Gate::Bot || !matches!(job.kind, JobKind::Send) {
        return BotGate::Open;
    }
    let human = match known(ctx, job, conv) {
        Some(h) => Ok(h),
        None => {
            if let Some(l) = &ctx.query_limiter {
                l.until_ready().await;
            }
            Box::pin(query(ctx, job)).await
        }
    };
    match human {
        Ok(true) => BotGate::HumanServes,
        Ok(false) => BotGate::Open,
        Err(failed) => BotGate::Failed(failed),
    }
}

/// Whether a WeCom service-state code (as the platform sends it) means a human has the
/// conversation; a code the platform does not define does not.
fn is_human(code: i64) -> bool {
    ServiceState::from_code(code).is_some_and(ServiceState::is_human)
}

/// Whether a human serves `job`'s conversation, if known without asking the platform:
/// cached from an earlier answer, or (WeCom) a state stored recently by the sync loop.
fn known(ctx: &LaneCtx, job: &Job, conv: Option<&ConvState>) -> Option<bool> {
    let ttl = Duration::from_secs(ctx.cfg.worker.gate_cache_secs);
    if let Some(h) = ctx.gates.cached(&conversation_of(job), ttl) {
        return Some(h);
    }
    if ctx.account.channel != Channel::Wecom {
        return None;
    }
    let c = conv?;
    let at = c.state_updated_at?;
    let state = c.service_state?;
    ((chrono::Utc::now() - at).to_std().unwrap_or_default() < ttl).then_some(is_human(state.into()))
}

/// Ask the platform who serves the conversation (WeCom service_state/get, chatbot
/// kefustate/get) and remember the answer. A failure is returned for the caller to judge
/// like a failed send; nothing is remembered then.
async fn query(ctx: &LaneCtx, job: &Job) -> Result<bool, (CallResult, Api)> {
    let human = match ctx.account.channel {
        Channel::Wecom => {
            let kfid = job.open_kfid.as_deref().unwrap_or("");
            let (s, _) = ctx.platform.wecom_service_state(kfid, &job.to).await?;
            store_service_state(ctx, kfid, job, s).await;
            is_human(s)
        }
        Channel::Chatbot => ctx
            .platform
            .chatbot_human_serving(job)
            .await
            .map_err(|r| (r, Api::Business))?,
    };
    ctx.gates.remember(&conversation_of(job), human);
    Ok(human)
}

/// A transfer job succeeded: the conversation's server is known without asking.
pub(super) async fn transferred(ctx: &LaneCtx, job: &Job, tr: &job::Transfer) {
    let conv = conversation_of(job);
    match (
        ctx.account.channel,
        tr.service_state,
        tr.kefustate.as_deref(),
    ) {
        (Channel::Wecom, Some(state), _) => {
            ctx.gates.remember(&conv, is_human(state));
            let kfid = job.open_kfid.as_deref().unwrap_or("");
            store_service_state(ctx, kfid, job, state).await;
        }
        (Channel::Chatbot, _, Some(k)) => ctx.gates.remember(&conv, k == "on"),
        _ => {}
    }
}

/// The platform said a human serves this conversation (WeCom 95018).
pub(super) async fn human_took_over(ctx: &LaneCtx, job: &Job) {
    ctx.gates.remember(&conversation_of(job), true);
    if let Some(kfid) = job.open_kfid.as_deref() {
        store_service_state(ctx, kfid, job, ServiceState::Human.code()).await;
    }
}

/// Remember a WeCom conversation's service state (its code as the platform sent it); a
/// failure is logged (the gate asks the platform again next time).
async fn store_service_state(ctx: &LaneCtx, kfid: &str, job: &Job, code: i64) {
    let state = i32::try_from(code).unwrap_or(0);
    if let Err(e) = ctx
        .store
        .set_service_state(&ctx.account.name, kfid, &job.to, state)
        .await
    {
        warn!(account = %ctx.account.name, error = %format!("{e:#}"), "could not store the service state");
    }
}
