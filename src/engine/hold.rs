//! Holding a write the database refused, and retrying it until the database accepts it.
//!
//! A job the platform has answered must never be sent again because its record failed, and
//! a claim that failed must not turn into a hot redelivery loop that burns the broker's
//! delivery limit. So a failed write is not handed back to the broker: the message stays
//! unacked in this process, the write is retried with capped backoff for as long as the
//! worker runs, and meanwhile the store reports the write held ([`crate::store::held`]):
//! the lanes take no new deliveries and `/readyz` answers 503. When the worker shuts down
//! the write is retried for the shutdown grace period more; then it is given up
//! ([`GaveUp`]) and its message is left unacked (it goes back to the broker when the AMQP
//! channel closes — the one case a job answered by the platform can be sent again, the
//! same window as a crash).

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::store::Store;

/// First and largest pause between two attempts of a held write.
const HOLD_BACKOFF_MIN: Duration = Duration::from_millis(100);
const HOLD_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a held write belongs to, for the log, and when to stop holding it.
pub struct HoldCtx<'a> {
    pub store: &'a Store,
    pub account: &'a str,
    pub job_id: &'a str,
    /// Fires when the worker shuts down; the write is then retried for `grace` more.
    pub stop: &'a CancellationToken,
    pub grace: Duration,
}

/// A held write given up at shutdown, after the grace period.
#[derive(Debug, thiserror::Error)]
#[error("{what} of job {job_id} not written before shutdown: {last}")]
pub struct GaveUp {
    pub what: &'static str,
    pub job_id: String,
    pub last: String,
}

/// `what` failed with `first`: hold it and run `op` again with backoff until it succeeds
/// (or the worker has been shutting down for the grace period: [`GaveUp`]).
pub async fn hold_until_written<T, F, Fut>(
    h: HoldCtx<'_>,
    what: &'static str,
    first: anyhow::Error,
    mut op: F,
) -> Result<T, GaveUp>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let _held = h.store.write_hold().enter();
    warn!(account = %h.account, job.id = %h.job_id, error = %format!("{first:#}"), "{what} refused by the database; holding it and retrying (lanes take no new jobs meanwhile)");
    let mut last = first;
    let mut pause = HOLD_BACKOFF_MIN;
    let mut tries = 1u32;
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && h.stop.is_cancelled() {
            deadline = Some(Instant::now() + h.grace);
        }
        let wait = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    error!(account = %h.account, job.id = %h.job_id, error = %format!("{last:#}"), tries, "{what} still refused at the end of the shutdown grace; its message is left unacked");
                    return Err(GaveUp {
                        what,
                        job_id: h.job_id.to_owned(),
                        last: format!("{last:#}"),
                    });
                }
                pause.min(left)
            }
            None => pause,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            // Shutdown starts the grace period at once, not after the current pause.
            _ = h.stop.cancelled(), if deadline.is_none() => continue,
        }
        pause = (pause * 2).min(HOLD_BACKOFF_MAX);
        tries += 1;
        match op().await {
            Ok(v) => {
                info!(account = %h.account, job.id = %h.job_id, tries, "{what} written after being held");
                return Ok(v);
            }
            Err(e) => last = e,
        }
    }
}
