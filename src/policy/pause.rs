//! The account pause as a state machine: throttling (45009/210205/HTTP 429) or an outage (a
//! run of transport failures) pauses every job of the account; when the pause ends one job
//! goes first as the *probe* and the rest wait for its verdict.
//!
//! Pure: the caller passes the time (`now`) and does the waiting, logging and waking
//! (`engine::lane::PauseGate` is the Mutex + Notify around it).

use std::time::{Duration, Instant};

use crate::policy::Action;

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
}

impl PauseState {
    /// May a job call the platform now? The first poll after a pause ended claims the probe.
    pub fn poll(&mut self, now: Instant) -> Wait {
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
