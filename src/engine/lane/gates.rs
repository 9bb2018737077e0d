//! The lane's gate `bot`: is a human serving the conversation? Known from the cache or the
//! sync loop's stored state, else asked of the platform; and what a transfer or a 95018 tells.
//!
//! WeCom gates bot replies in service_state 2 and 3; the chatbot in `personserving`, and in
//! `needperson` when the account sets `gate_needperson` ([`crate::domain::chatbot_state::ChatbotState::gates_bot`]).

use std::time::Duration;

use tracing::warn;

use super::ctx::LaneCtx;
use super::gate_cache::Served;
use super::order::conversation_of;
use crate::config::Channel;
use crate::domain::job::{self, Gate, Job, JobKind};
use crate::domain::service_state::ServiceState;
use crate::platform::chatbot::KefuStateError;
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
    /// The platform answered a chatbot state wxdispatch does not know (the detail says
    /// which): the job cannot be judged, and is dead-lettered `unknown_chatbot_state`.
    UnknownState(String),
}

/// gate "bot": is a human serving? Asking the platform is paced (its own limiter at the
/// account's rate), and a failed query is retried (or pauses the account) exactly as a failed
/// send would be; the job is never sent without the answer.
pub(super) async fn check(ctx: &LaneCtx, job: &Job, conv: Option<&ConvState>) -> BotGate {
    if job.gate != Gate::Bot || !matches!(job.kind, JobKind::Send) {
        return BotGate::Open;
    }
    let served = match known(ctx, job, conv) {
        Some(s) => Ok(s),
        None => {
            if let Some(l) = &ctx.query_limiter {
                l.until_ready().await;
            }
            Box::pin(query(ctx, job)).await
        }
    };
    match served {
        Ok(s) if gates_bot(ctx, s) => BotGate::HumanServes,
        Ok(_) => BotGate::Open,
        Err(QueryFailed::Call(failed)) => BotGate::Failed(failed),
        Err(QueryFailed::UnknownState(detail)) => BotGate::UnknownState(detail),
    }
}

/// Whether what serves the conversation suppresses a bot reply.
fn gates_bot(ctx: &LaneCtx, served: Served) -> bool {
    match served {
        Served::Wecom { human } => human,
        Served::Chatbot(state) => state.gates_bot(ctx.account.gate_needperson),
    }
}

/// How long an answer is trusted: `worker.gate_cache_secs`.
fn cache_ttl(ctx: &LaneCtx) -> Duration {
    Duration::from_secs(ctx.cfg.worker.gate_cache_secs)
}

/// Whether a WeCom service-state code (as the platform sends it) means a human has the
/// conversation; a code the platform does not define does not.
fn is_human(code: i64) -> bool {
    ServiceState::from_code(code).is_some_and(ServiceState::is_human)
}

/// What serves `job`'s conversation, if known without asking the platform: cached from an
/// earlier answer, or (WeCom) a state stored recently by the sync loop.
fn known(ctx: &LaneCtx, job: &Job, conv: Option<&ConvState>) -> Option<Served> {
    if let Some(s) = ctx.gates.cached(&conversation_of(job)) {
        return Some(s);
    }
    if ctx.account.channel != Channel::Wecom {
        return None;
    }
    let c = conv?;
    let at = c.state_updated_at?;
    let state = c.service_state?;
    ((chrono::Utc::now() - at).to_std().unwrap_or_default() < cache_ttl(ctx)).then_some(
        Served::Wecom {
            human: is_human(state.into()),
        },
    )
}

/// Why the platform could not tell who serves.
enum QueryFailed {
    /// The call failed: judge it like a failed send.
    Call((CallResult, Api)),
    /// The chatbot answered a state wxdispatch does not know.
    UnknownState(String),
}

/// Ask the platform who serves the conversation (WeCom service_state/get, chatbot
/// kefustate/get with `type=all`) and remember the answer. A failure is returned for the
/// caller to judge; nothing is remembered then.
async fn query(ctx: &LaneCtx, job: &Job) -> Result<Served, QueryFailed> {
    let served = match ctx.account.channel {
        Channel::Wecom => {
            let kfid = job.open_kfid.as_deref().unwrap_or("");
            let (s, _) = ctx
                .platform
                .wecom_service_state(kfid, &job.to)
                .await
                .map_err(QueryFailed::Call)?;
            store_service_state(ctx, kfid, job, s).await;
            Served::Wecom { human: is_human(s) }
        }
        Channel::Chatbot => match ctx.platform.chatbot_state(job).await {
            Ok(state) => Served::Chatbot(state),
            Err(KefuStateError::Call(r)) => return Err(QueryFailed::Call((r, Api::Business))),
            Err(KefuStateError::Answer(e)) => {
                warn!(account = %ctx.account.name, error = %e, "unknown chatbot state");
                return Err(QueryFailed::UnknownState(e.to_string()));
            }
        },
    };
    ctx.gates
        .remember(&conversation_of(job), served, cache_ttl(ctx));
    Ok(served)
}

/// A transfer job succeeded: the conversation's server is known without asking. A chatbot
/// state is trusted no longer than its `expires`: the platform reverts it then.
pub(super) async fn transferred(ctx: &LaneCtx, job: &Job, tr: &job::Transfer) {
    let conv = conversation_of(job);
    match (ctx.account.channel, tr.service_state, tr.chatbot_state) {
        (Channel::Wecom, Some(state), _) => {
            ctx.gates.remember(
                &conv,
                Served::Wecom {
                    human: is_human(state),
                },
                cache_ttl(ctx),
            );
            let kfid = job.open_kfid.as_deref().unwrap_or("");
            store_service_state(ctx, kfid, job, state).await;
        }
        (Channel::Chatbot, _, Some(state)) => {
            let ttl = match tr.expires {
                Some(secs) => cache_ttl(ctx).min(Duration::from_secs(secs.into())),
                None => cache_ttl(ctx),
            };
            ctx.gates.remember(&conv, Served::Chatbot(state), ttl);
        }
        _ => {}
    }
}

/// The platform said a human serves this conversation (WeCom 95018).
pub(super) async fn human_took_over(ctx: &LaneCtx, job: &Job) {
    ctx.gates.remember(
        &conversation_of(job),
        Served::Wecom { human: true },
        cache_ttl(ctx),
    );
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
