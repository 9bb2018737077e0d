//! The loop of one `(account, open_kfid)`: it only decides when the next pull runs — at
//! start, on a wake, on the poll interval, or after a backoff or throttle pause — from how
//! the last one ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::engine::inbound::ctx::SyncCtx;
use crate::engine::inbound::hub::SyncHub;
use crate::engine::inbound::page::{RunOutcome, pull};

/// When the lock is held by another process and a callback is pending, ask again this often
/// (a cheap try-lock query) until this process pulls once.
const LOCK_BUSY_RETRY: Duration = Duration::from_secs(1);
/// After a configuration error (bad secret, API switched off, unknown open_kfid …) try again
/// this long after, at the earliest: an operator has to fix something first.
pub const PERMANENT_ERROR_WAIT: Duration = Duration::from_secs(60);

/// The sync loop of one `(account, open_kfid)`: pull at start, on every wake and every
/// `sync.poll_interval_secs`, until `shutdown`.
pub async fn run(
    ctx: impl Into<SyncCtx>,
    hub: Arc<SyncHub>,
    open_kfid: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let ctx: SyncCtx = ctx.into();
    let account = ctx.account.clone();
    let Some(slot) = hub.slot(&account, &open_kfid) else {
        anyhow::bail!("sync: no slot for account {account} open_kfid {open_kfid}");
    };
    let poll = match ctx.sync.poll_interval_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let r = &ctx.retry;
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(r.initial_backoff_ms.max(1)))
            .with_max_delay(Duration::from_millis(
                r.max_backoff_ms.max(r.initial_backoff_ms),
            ))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    // Pull at once on start: catch up with what arrived while no worker ran.
    let mut next: Option<Instant> = Some(Instant::now());
    // Nothing runs before this instant, whatever wakes the loop (throttle, backoff).
    let mut not_before = Instant::now();
    // A callback arrived and has not been served by a pull of this process yet.
    let mut pending = false;
    info!(account, open_kfid, "sync loop started");
    loop {
        let sleep_until = next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slot.notify.notified() => pending = true,
            _ = async {
                match sleep_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if Instant::now() < not_before {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(not_before)) => {}
            }
        }
        let outcome = pull(&ctx, &hub, &open_kfid, &shutdown).await;
        let now = Instant::now();
        let wait = match &outcome {
            RunOutcome::CaughtUp { pages, stored } => {
                pending = false;
                backoff = new_backoff();
                debug!(account, open_kfid, pages, stored, "sync caught up");
                poll
            }
            RunOutcome::LockBusy => {
                debug!(account, open_kfid, "another process is pulling");
                if pending { Some(LOCK_BUSY_RETRY) } else { poll }
            }
            RunOutcome::Stopped => break,
            RunOutcome::Throttled(p) => {
                warn!(
                    account,
                    open_kfid,
                    pause_secs = p.as_secs(),
                    "sync_msg throttled (45009); pausing this sync loop"
                );
                not_before = now + *p;
                Some(*p)
            }
            RunOutcome::Transient(e) => {
                let d = backoff.next().unwrap_or(Duration::from_secs(1));
                warn!(account, open_kfid, error = %e, retry_in_ms = d.as_millis() as u64, "sync failed; retrying");
                not_before = now + d;
                Some(d)
            }
            RunOutcome::Permanent(e) => {
                let d = poll
                    .unwrap_or(PERMANENT_ERROR_WAIT)
                    .max(PERMANENT_ERROR_WAIT);
                error!(account, open_kfid, error = %e, retry_in_secs = d.as_secs(), "sync failed (configuration?); retrying later");
                not_before = now + d;
                Some(d)
            }
        };
        next = wait.map(|d| now + d);
    }
    info!(account, open_kfid, "sync loop stopped");
    Ok(())
}
