//! The credentials prober: while gettoken refuses the account's corpid/secret (or this
//! server's IP), the lane is paused ([`super::PauseGate::refuse`]) and no job calls the
//! platform; this task alone asks gettoken again, on the capped, jittered schedule of
//! [`credentials_probe_delay`] (5 s doubling to 10 min), or at once when the account's
//! credentials are replaced ([`TokenManager::set_credentials`], the account-update hook).
//! The first token it gets ends the pause: the jobs that waited are sent, nothing is replayed.
//!
//! A refusal is seen by whoever asked for a token first — a job, or a sync loop of the
//! account — and remembered by the [`TokenManager`]; the prober waits for that
//! ([`TokenManager::refusal`]), so a refusal met by the sync loops pauses the lane too.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::ctx::LaneCtx;
use crate::config::Channel;
use crate::platform::TokenManager;
use crate::policy::pause::credentials_probe_delay;
use crate::policy::{self, Action, Api};

/// Probe the account's credentials whenever gettoken refuses them, until `shutdown`.
/// Returns at once for an account without WeCom tokens (the chatbot's TOKEN is static).
pub(super) async fn run(ctx: Arc<LaneCtx>, shutdown: CancellationToken) {
    let Some(tokens) = ctx.platform.tokens() else {
        return;
    };
    let mut refusal = tokens.refusal();
    let mut paused = ctx.pause.refused();
    loop {
        // Either the token manager remembers a refusal, or the lane is paused for one the
        // manager no longer has: a job that met the refusal just before a probe succeeded
        // reports it after the resume. Probing again (the token is cached: no call) ends it.
        loop {
            if let Some(code) = *refusal.borrow_and_update() {
                ctx.pause.refuse(code);
                break;
            }
            if *paused.borrow_and_update() {
                break;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = refusal.changed() => if changed.is_err() { return },
                changed = paused.changed() => if changed.is_err() { return },
            }
        }
        if !probe_until_accepted(&ctx, tokens, &shutdown).await {
            return;
        }
    }
}

/// Probe until gettoken gives a token (true) or the lane shuts down (false).
async fn probe_until_accepted(
    ctx: &LaneCtx,
    tokens: &TokenManager,
    shutdown: &CancellationToken,
) -> bool {
    let account = &ctx.account.name;
    let mut probes = 0u32;
    loop {
        let wait = credentials_probe_delay(probes, rand::random::<f32>());
        debug!(account = %account, wait_secs = wait.as_secs_f64(), "credentials probe scheduled");
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
            _ = tokens.credentials_changed() => {
                info!(account = %account, "account credentials replaced; probing gettoken now");
            }
        }
        probes = probes.saturating_add(1);
        match tokens.probe().await {
            Ok(_) => {
                info!(account = %account, probes, "gettoken accepts the credentials; account lane resumes");
                ctx.pause.credentials_ok();
                return true;
            }
            Err(res) => match policy::classify(Channel::Wecom, Api::GetToken, &res) {
                Action::CredentialsRefused { code } => {
                    ctx.pause.refuse(code);
                    debug!(account = %account, errcode = code, probes, "gettoken still refuses the credentials");
                }
                // Unreachable, busy, …: not an answer about the credentials; probe again later.
                _ => {
                    warn!(account = %account, result = ?res, probes, "credentials probe inconclusive; probing again later");
                }
            },
        }
    }
}
