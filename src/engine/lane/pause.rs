//! The account-wide pause: throttling (45009/210205/HTTP 429) or an outage (a run of
//! transport failures) stops every job of the account, other accounts keep flowing. When the
//! pause ends one job goes first as a probe; the rest wait for its verdict.
//!
//! gettoken refusing the account's credentials pauses it too, until the lane's credentials
//! prober ([`super::credentials`]) gets a token: [`PauseGate::refused`] tells the consumer
//! loop to take no new deliveries meanwhile.
//!
//! The decisions are [`crate::policy::pause`]'s; [`PauseGate`] holds its state under one
//! lock, sleeps and wakes the waiting jobs, and logs and counts the pauses.

use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use crate::config::RetryConfig;
use crate::policy::Action;
pub use crate::policy::pause::Probe;
use crate::policy::pause::{Change, PauseSettings, PauseState, Wait};
use crate::telemetry as t;

/// The `reason` label of a pause for refused credentials (`wxdispatch_lane_pauses_total`).
pub const PAUSE_CREDENTIALS: &str = "credentials_refused";

/// One account's pause, shared by the lane's jobs.
pub struct PauseGate {
    account: String,
    state: std::sync::Mutex<PauseState>,
    notify: Notify,
    settings: PauseSettings,
    /// True while gettoken refuses the credentials (the consumer loop stops taking jobs).
    refused: watch::Sender<bool>,
}

impl PauseGate {
    pub fn new(account: &str, retry: &RetryConfig) -> Self {
        Self {
            account: account.to_owned(),
            state: std::sync::Mutex::new(PauseState::default()),
            notify: Notify::new(),
            settings: PauseSettings::new(
                retry.outage_threshold,
                Duration::from_secs(retry.pause_initial_secs),
                Duration::from_secs(retry.pause_max_secs),
                retry.throttle_pause_secs.map(Duration::from_secs),
            ),
            refused: watch::Sender::new(false),
        }
    }

    /// True while gettoken refuses the account's credentials.
    pub fn refused(&self) -> watch::Receiver<bool> {
        self.refused.subscribe()
    }

    /// gettoken refused the credentials with `code` (seen by the prober, or by a sync loop's
    /// token request before any job saw it).
    pub fn refuse(&self, code: i64) {
        let change = self.lock().refuse(code);
        self.announce(change);
    }

    /// gettoken accepts the credentials again: the jobs waiting go.
    pub fn credentials_ok(&self) {
        let change = self.lock().credentials_ok();
        self.announce(change);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait while the account is paused. Returns `Probe(true)` for the one job that tests
    /// the platform after a pause.
    pub async fn wait(&self) -> Probe {
        loop {
            // Registered before the state is read, so a wake-up in between is not missed.
            let notified = self.notify.notified();
            let wait = self.lock().poll(Instant::now());
            match wait {
                Wait::Go(probe) => return probe,
                Wait::Until(u) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(u.into()) => {}
                        _ = notified => {}
                    }
                }
                Wait::Verdict => notified.await,
            }
        }
    }

    /// Feed the result of an attempt.
    pub fn report(&self, probe: Probe, action: &Action) {
        let change = self
            .lock()
            .report(probe, action, Instant::now(), &self.settings);
        self.announce(change);
    }

    /// A probe that will not make its call hands the probe role back.
    pub fn release(&self, probe: Probe) {
        // One lock for the whole transition: a job that claimed the probe in between two
        // locks would lose its probing flag, and everyone would go without its verdict.
        let change = self.lock().release(probe, Instant::now());
        self.announce(change);
    }

    /// Log, count and wake for a transition (outside the lock).
    fn announce(&self, change: Change) {
        match change {
            Change::None => return,
            Change::Paused { pause, why } => {
                metrics::gauge!(t::LANE_PAUSED, "account" => self.account.clone()).set(1.0);
                metrics::counter!(t::LANE_PAUSES, "account" => self.account.clone(), "reason" => why).increment(1);
                warn!(account = %self.account, pause_secs = pause.as_secs_f64(), reason = why, "account lane paused");
            }
            Change::Refused { code, first } => {
                self.refused.send_replace(true);
                if !first {
                    return;
                }
                metrics::gauge!(t::LANE_PAUSED, "account" => self.account.clone()).set(1.0);
                metrics::counter!(t::LANE_PAUSES, "account" => self.account.clone(), "reason" => PAUSE_CREDENTIALS).increment(1);
                error!(account = %self.account, errcode = code, reason = PAUSE_CREDENTIALS, "account lane paused: gettoken refuses the credentials (check corpid, secret and the IP allow-list); its jobs stay queued until gettoken accepts them");
            }
            Change::Resumed { was_paused: true } => {
                self.refused.send_replace(false);
                metrics::gauge!(t::LANE_PAUSED, "account" => self.account.clone()).set(0.0);
                info!(account = %self.account, "account lane resumed");
            }
            Change::Resumed { was_paused: false } | Change::Released => {}
        }
        self.notify.notify_waiters();
    }

    /// Poll the state once, as [`PauseGate::wait`] does (tests drive the gate from threads).
    #[cfg(test)]
    fn poll(&self) -> Wait {
        self.lock().poll(Instant::now())
    }
}

#[cfg(test)]
#[path = "pause_tests.rs"]
mod tests;
