//! The account pause as a state machine: throttling (45009/210205/HTTP 429) or an outage (a
//! run of transport failures) pauses every job of the account; when the pause ends one job
//! goes first as the *probe* and the rest wait for its verdict.
//!
//! A refusal of the account's credentials by gettoken ([`Action::CredentialsRefused`]) pauses
//! the account until [`PauseState::credentials_ok`]: no job probes then (a job's call would
//! only ask gettoken again); the lane's credentials prober asks gettoken on the schedule of
//! [`credentials_probe_delay`] and ends the pause.
//!
//! Pure: the caller passes the time (`now`) and does the waiting, logging and waking
//! (`engine::lane::PauseGate` is the Mutex + Notify around it).

use std::time::{Duration, Instant};

use crate::policy::Action;

/// The first wait of the credentials prober after a refusal: short, because the usual fix
/// (a corrected secret, then a restart or an account update that wakes the prober) should
/// take effect quickly.
pub const CREDENTIALS_PROBE_INITIAL: Duration = Duration::from_secs(5);
/// The prober's longest wait. WeCom blocks gettoken for an hour after about 2000 bad calls
/// an hour; doubling from 5 s to this cap makes about 12 calls in the first hour and 6 an
/// hour after, per account and process: far below the block even with many processes, and
/// a fixed secret is still noticed within 10 minutes without an account update.
pub const CREDENTIALS_PROBE_MAX: Duration = Duration::from_secs(600);

/// The wait before the credentials prober's probe number `probes` (0-based) after a
/// refusal: [`CREDENTIALS_PROBE_INITIAL`] doubling up to [`CREDENTIALS_PROBE_MAX`], jittered
/// down by up to a fifth (`jitter` in 0..1), so the processes of a deployment and the
/// accounts of one corp do not probe in step. Never above the cap.
pub fn credentials_probe_delay(probes: u32, jitter: f32) -> Duration {
    let full = CREDENTIALS_PROBE_INITIAL
        .saturating_mul(1u32 << probes.min(16))
        .min(CREDENTIALS_PROBE_MAX);
    full.mul_f32(1.0 - 0.2 * jitter.clamp(0.0, 1.0))
}

/// The numbers of `config.retry` that shape an account's pauses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PauseSettings {
    /// Consecutive transport failures after which the account pauses (at least 1).
    pub outage_threshold: u32,
    /// The first pause; each further pause without a successful probe doubles it…
    pub pause_initial: Duration,
    /// …up to this.
    pub pause_max: Duration,
    /// Overrides the platform's minimum throttle pause (tests and simulators only).
    pub throttle_min: Option<Duration>,
}

impl PauseSettings {
    /// Settings from `config.retry`'s numbers, with the bounds the pause needs: a threshold of
    /// at least 1 and a max no smaller than the initial pause.
    pub fn new(
        outage_threshold: u32,
        pause_initial: Duration,
        pause_max: Duration,
        throttle_min: Option<Duration>,
    ) -> Self {
        Self {
            outage_threshold: outage_threshold.max(1),
            pause_initial,
            pause_max: pause_max.max(pause_initial),
            throttle_min,
        }
    }
}

/// Whether the caller is the probe after a pause (its result decides for everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe(pub bool);

/// What a job that wants to call the platform does now ([`PauseState::poll`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Go ahead; `Probe(true)` for the one job that tests the platform after a pause.
    Go(Probe),
    /// Paused: poll again at this instant (or when woken).
    Until(Instant),
    /// A probe is out: poll again when woken by its verdict.
    Verdict,
}

/// What a transition changed, for the caller to log, count and wake waiters on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    /// Nothing anybody waits for changed.
    None,
    /// The account is paused for `pause` (`why`: `throttled` or `outage`); wake the waiters
    /// so they wait for the new end.
    Paused { pause: Duration, why: &'static str },
    /// A probe's verdict (or a success while a probe was out) ended the pause; wake the
    /// waiters. `was_paused`: the account had been paused (not just probing after a
    /// released probe).
    Resumed { was_paused: bool },
    /// The probe role was handed back: wake the waiters, one of them takes it.
    Released,
    /// gettoken refused the account's credentials with `code`: the account is paused until
    /// [`PauseState::credentials_ok`]. `first`: it was not refused before (alert once).
    Refused { code: i64, first: bool },
}

/// One account's pause.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PauseState {
    /// Paused until then; `None` when not paused.
    until: Option<Instant>,
    /// A probe is out: everybody else waits for its verdict.
    probing: bool,
    /// Consecutive pauses without a successful probe; the next pause doubles.
    level: u32,
    /// Consecutive transport failures (reset by any other result).
    consecutive_transport: u32,
    /// gettoken refuses the credentials (this errcode): everybody waits for
    /// [`PauseState::credentials_ok`].
    refused: Option<i64>,
}

impl PauseState {
    /// May a job call the platform now? The first poll after a pause ended claims the probe.
    pub fn poll(&mut self, now: Instant) -> Wait {
        if self.refused.is_some() {
            return Wait::Verdict;
        }
        match self.until {
            None if !self.probing => Wait::Go(Probe(false)),
            None => Wait::Verdict,
            Some(u) if u > now => Wait::Until(u),
            Some(_) => {
                self.until = None;
                self.probing = true;
                Wait::Go(Probe(true))
            }
        }
    }

    /// Feed the result of an attempt (`probe`: whether the caller was the probe).
    pub fn report(
        &mut self,
        probe: Probe,
        action: &Action,
        now: Instant,
        settings: &PauseSettings,
    ) -> Change {
        match action {
            Action::Throttle { min_pause } => {
                let min = settings.throttle_min.unwrap_or(*min_pause);
                self.pause(min, "throttled", now, settings)
            }
            Action::CredentialsRefused { code } => self.refuse(*code),
            Action::Retry { transport: true } => {
                self.consecutive_transport = self.consecutive_transport.saturating_add(1);
                if probe.0 || self.consecutive_transport >= settings.outage_threshold {
                    self.consecutive_transport = 0;
                    self.pause(Duration::ZERO, "outage", now, settings)
                } else {
                    Change::None
                }
            }
            _ => {
                self.consecutive_transport = 0;
                if probe.0 || self.probing {
                    let was_paused = self.level > 0;
                    self.probing = false;
                    self.level = 0;
                    Change::Resumed { was_paused }
                } else {
                    Change::None
                }
            }
        }
    }

    /// gettoken refused the credentials with `code` (a job's call, or the prober's).
    pub fn refuse(&mut self, code: i64) -> Change {
        let first = self.refused.replace(code).is_none();
        // A job that was the probe of an earlier pause gives the role up: nobody probes
        // while the credentials are refused, and afterwards nobody waits for its verdict.
        self.probing = false;
        Change::Refused { code, first }
    }

    /// gettoken accepts the credentials again: the refusal's pause ends (an earlier throttle
    /// or outage pause still running is kept).
    pub fn credentials_ok(&mut self) -> Change {
        match self.refused.take() {
            Some(_) => Change::Resumed { was_paused: true },
            None => Change::None,
        }
    }

    /// Whether gettoken refuses the credentials (the errcode).
    pub fn refused(&self) -> Option<i64> {
        self.refused
    }

    /// A probe that will not make its call hands the probe role back: the next poll claims
    /// it. One transition: nobody can claim the probe between resetting the pause and
    /// clearing the probing flag (and lose the role to that clearing).
    pub fn release(&mut self, probe: Probe, now: Instant) -> Change {
        if !probe.0 {
            return Change::None;
        }
        self.until = Some(now);
        self.probing = false;
        Change::Released
    }

    /// Pause for the doubling pause of the current level, at least `min`. A pause already
    /// running longer is kept.
    fn pause(
        &mut self,
        min: Duration,
        why: &'static str,
        now: Instant,
        settings: &PauseSettings,
    ) -> Change {
        let scaled = settings
            .pause_initial
            .saturating_mul(1 << self.level.min(16))
            .min(settings.pause_max);
        let pause = scaled.max(min);
        let until = now + pause;
        if self.until.is_none_or(|u| u < until) {
            self.until = Some(until);
        }
        self.probing = false;
        self.level = self.level.saturating_add(1);
        Change::Paused { pause, why }
    }
}

#[cfg(test)]
#[path = "pause_tests.rs"]
mod tests;
