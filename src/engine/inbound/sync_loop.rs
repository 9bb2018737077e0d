//! The loop of one `(account, open_kfid)`: it only decides when the next pull runs — at
//! start, on a wake, on the poll interval, or after a backoff or throttle pause — from how
//! the last one ended.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{RetryConfig, SyncConfig};
use crate::engine::inbound::ctx::SyncCtx;
use crate::engine::inbound::hub::SyncHub;
use crate::engine::inbound::page::{RunOutcome, pull};

/// When the lock is held by another process and a callback is pending, ask again this often
/// (a cheap try-lock query) until this process pulls once.
const LOCK_BUSY_RETRY: Duration = Duration::from_secs(1);
/// After a configuration error (bad secret, API switched off, unknown open_kfid …) try again
/// this long after, at the earliest: an operator has to fix something first.
pub const PERMANENT_ERROR_WAIT: Duration = Duration::from_secs(60);

/// When the next pull may run, from how the previous ones ended.
struct Schedule {
    /// `sync.poll_interval_secs`; `None` (0): pull only on a wake.
    poll: Option<Duration>,
    /// The backoff after transient failures, restarted once a pull catches up.
    builder: ExponentialBuilder,
    backoff: ExponentialBackoff,
    /// Nothing runs before this instant, whatever wakes the loop (throttle, backoff).
    not_before: Instant,
    /// A callback arrived and has not been served by a pull of this process yet.
    pending: bool,
}

impl Schedule {
    fn new(sync: &SyncConfig, r: &RetryConfig, now: Instant) -> Self {
        let builder = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(r.initial_backoff_ms.max(1)))
            .with_max_delay(Duration::from_millis(
                r.max_backoff_ms.max(r.initial_backoff_ms),
            ))
            .with_jitter()
            .without_max_times();
        Self {
            poll: match sync.poll_interval_secs {
                0 => None,
                s => Some(Duration::from_secs(s)),
            },
            builder,
            backoff: builder.build(),
            not_before: now,
            pending: false,
        }
    }

    /// How long after `now` the next pull runs (`None`: only on a wake), given how the last
    /// one ended (not [`RunOutcome::Stopped`]: the loop ends on that).
    fn after(
        &mut self,
        outcome: &RunOutcome,
        now: Instant,
        account: &str,
        open_kfid: &str,
    ) -> Option<Duration> {
        match outcome {
            RunOutcome::CaughtUp { pages, stored } => {
                self.pending = false;
                self.backoff = self.builder.build();
                debug!(account, open_kfid, pages, stored, "sync caught up");
                self.poll
            }
            RunOutcome::LockBusy => {
                debug!(account, open_kfid, "another process is pulling");
                if self.pending {
                    Some(LOCK_BUSY_RETRY)
                } else {
                    self.poll
                }
            }
            RunOutcome::Stopped => None,
            RunOutcome::Throttled(p) => {
                warn!(
                    account,
                    open_kfid,
                    pause_secs = p.as_secs(),
                    "sync_msg throttled (45009); pausing this sync loop"
                );
                self.not_before = now + *p;
                Some(*p)
            }
            RunOutcome::Transient(e) => {
                let d = self.backoff.next().unwrap_or(Duration::from_secs(1));
                warn!(account, open_kfid, error = %e, retry_in_ms = d.as_millis() as u64, "sync failed; retrying");
                self.not_before = now + d;
                Some(d)
            }
            RunOutcome::Permanent(e) => {
                let d = self
                    .poll
                    .unwrap_or(PERMANENT_ERROR_WAIT)
                    .max(PERMANENT_ERROR_WAIT);
                error!(account, open_kfid, error = %e, retry_in_secs = d.as_secs(), "sync failed (configuration?); retrying later");
                self.not_before = now + d;
                Some(d)
            }
        }
    }
}

/// Feed the retention alert with how a pull ended: caught up is a success; while another
/// process holds the pull lock, its last committed page counts.
async fn note_health(ctx: &SyncCtx, hub: &SyncHub, open_kfid: &str, outcome: &RunOutcome) {
    let account = ctx.account.as_str();
    let retention = hub.retention();
    match outcome {
        RunOutcome::CaughtUp { .. } => retention.synced(account, open_kfid, chrono::Utc::now()),
        RunOutcome::LockBusy => {
            if let Ok(Some(at)) = ctx.store.sync_last_committed(account, open_kfid).await {
                retention.synced(account, open_kfid, at);
            }
        }
        _ => {}
    }
    retention.check(account, open_kfid, chrono::Utc::now());
}

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
    let mut schedule = Schedule::new(&ctx.sync, &ctx.retry, Instant::now());
    // The retention alert counts from the last page committed by anyone, or from now.
    let committed = ctx
        .store
        .sync_last_committed(&account, &open_kfid)
        .await
        .unwrap_or_else(|e| {
            warn!(account, open_kfid, error = %format!("{e:#}"), "could not read when the sync last committed; counting from now");
            None
        });
    hub.retention()
        .start(&account, &open_kfid, committed, chrono::Utc::now());
    // Pull at once on start: catch up with what arrived while no worker ran.
    let mut next: Option<Instant> = Some(Instant::now());
    info!(account, open_kfid, "sync loop started");
    loop {
        let sleep_until = next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slot.notify.notified() => schedule.pending = true,
            _ = async {
                match sleep_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if Instant::now() < schedule.not_before {
            let at = tokio::time::Instant::from_std(schedule.not_before);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(at) => {}
            }
        }
        let outcome = pull(&ctx, &hub, &open_kfid, &shutdown).await;
        if outcome == RunOutcome::Stopped {
            break;
        }
        note_health(&ctx, &hub, &open_kfid, &outcome).await;
        let now = Instant::now();
        next = schedule
            .after(&outcome, now, &account, &open_kfid)
            .map(|d| now + d);
    }
    info!(account, open_kfid, "sync loop stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(poll_secs: u64) -> (Schedule, Instant) {
        let sync = SyncConfig {
            poll_interval_secs: poll_secs,
            ..SyncConfig::default()
        };
        let retry = RetryConfig {
            initial_backoff_ms: 100,
            max_backoff_ms: 400,
            ..RetryConfig::default()
        };
        let now = Instant::now();
        (Schedule::new(&sync, &retry, now), now)
    }

    #[test]
    fn caught_up_waits_for_the_poll_and_lock_busy_retries_a_pending_wake() {
        let (mut s, now) = schedule(30);
        let caught_up = RunOutcome::CaughtUp {
            pages: 1,
            stored: 0,
        };
        assert_eq!(
            s.after(&caught_up, now, "a", "k"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            s.after(&RunOutcome::LockBusy, now, "a", "k"),
            Some(Duration::from_secs(30))
        );
        s.pending = true;
        assert_eq!(
            s.after(&RunOutcome::LockBusy, now, "a", "k"),
            Some(LOCK_BUSY_RETRY)
        );
        s.after(&caught_up, now, "a", "k");
        assert!(!s.pending);
        let (mut s, now) = schedule(0);
        assert_eq!(s.after(&caught_up, now, "a", "k"), None);
    }

    #[test]
    fn failures_hold_the_loop_back() {
        let (mut s, now) = schedule(0);
        let p = Duration::from_secs(60);
        assert_eq!(s.after(&RunOutcome::Throttled(p), now, "a", "k"), Some(p));
        assert_eq!(s.not_before, now + p);
        let d = s
            .after(&RunOutcome::Transient("x".into()), now, "a", "k")
            .unwrap();
        assert!(d <= Duration::from_millis(800), "{d:?}");
        assert_eq!(s.not_before, now + d);
        let (mut s, now) = schedule(600);
        assert_eq!(
            s.after(&RunOutcome::Permanent("x".into()), now, "a", "k"),
            Some(Duration::from_secs(600))
        );
        let (mut s, now) = schedule(5);
        assert_eq!(
            s.after(&RunOutcome::Permanent("x".into()), now, "a", "k"),
            Some(PERMANENT_ERROR_WAIT)
        );
    }
}
