//! The retry schedule of one job: jittered exponential backoff in process, then durable delay
//! tiers while the total budget lasts, then `retries_exhausted`.
//!
//! Pure: the engine passes the numbers of `config.retry` ([`RetrySchedule`]) and a random
//! jitter in `[0, 1)`; nothing here sleeps or reads a clock.

use std::time::Duration;

use super::errcode::{Action, Api, CallResult, classify, with_unknown_retries};
use crate::domain::channel::Channel;

/// The numbers of `config.retry` that shape one job's retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    /// Attempts made in process before the job is parked in a delay tier (so
    /// `in_process_attempts - 1` backoff waits).
    pub in_process_attempts: u32,
    /// The first backoff wait (before jitter).
    pub initial_backoff: Duration,
    /// Backoff waits stop growing here (before jitter).
    pub max_backoff: Duration,
    /// Total time a job may keep retrying, from its first attempt.
    pub total_budget: Duration,
    /// Durable delay tiers (seconds); park n uses tier min(n, last). Never empty (config
    /// validation), but an empty list parks nowhere: the job is dead-lettered.
    pub tiers_secs: Vec<u64>,
    /// Retries of an errcode the table does not know before it is dead-lettered as
    /// `unknown_errcode` (see [`with_unknown_retries`]).
    pub unknown_errcode_retries: u32,
}

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryStep {
    /// Wait this long in process, then try again.
    Backoff(Duration),
    /// The in-process attempts are spent: park the job in the delay tier of this many seconds
    /// (it fits in the budget left).
    Park { tier_secs: u64 },
    /// No backoff left and no tier fits in the budget: dead-letter as `retries_exhausted`.
    Exhausted,
}

impl RetrySchedule {
    /// The action for the job's `attempts`-th attempt (1-based) that got `result`: the errcode
    /// table ([`classify`]), an unknown errcode retried while the job's attempts are within
    /// `unknown_errcode_retries`.
    pub fn classify(
        &self,
        channel: Channel,
        api: Api,
        result: &CallResult,
        attempts: i32,
    ) -> Action {
        let attempt = u32::try_from(attempts).unwrap_or(0);
        with_unknown_retries(
            classify(channel, api, result),
            attempt,
            self.unknown_errcode_retries,
        )
    }

    /// The wait before in-process retry `retry` (0-based) without jitter: the initial
    /// backoff doubling up to the max (an initial backoff above the max is used once, then
    /// the max). `None` once the in-process attempts are spent.
    pub fn backoff(&self, retry: u32) -> Option<Duration> {
        if retry >= self.in_process_attempts.saturating_sub(1) {
            return None;
        }
        if retry == 0 {
            return Some(self.initial_backoff);
        }
        let doubled = self
            .initial_backoff
            .saturating_mul(1u32 << retry.min(31))
            .min(self.max_backoff);
        Some(doubled)
    }

    /// The delay tier for a job parked `parks` times before: tier min(parks, last).
    pub fn tier(&self, parks: u32) -> Option<u64> {
        let last = self.tiers_secs.len().checked_sub(1)?;
        self.tiers_secs.get((parks as usize).min(last)).copied()
    }

    /// The budget left for a job first attempted at `first_attempt`, at `now` (negative once
    /// spent).
    pub fn budget_left(
        &self,
        first_attempt: chrono::DateTime<chrono::Utc>,
        now: chrono::DateTime<chrono::Utc>,
    ) -> chrono::Duration {
        let total = chrono::Duration::from_std(self.total_budget).unwrap_or(chrono::Duration::MAX);
        total - (now - first_attempt)
    }

    /// The step after a transient failure, given the in-process retries already waited
    /// (`retries`), how often the job was parked before (`parks`), the budget it had left
    /// when it started (`budget_left`) and a `jitter` in `[0, 1)` that lengthens the backoff
    /// by up to 100 % (so that jobs failing together do not retry together).
    pub fn after_failure(
        &self,
        retries: u32,
        parks: u32,
        budget_left: chrono::Duration,
        jitter: f32,
    ) -> RetryStep {
        if let Some(d) = self.backoff(retries) {
            return RetryStep::Backoff(jittered(d, jitter));
        }
        match self.tier(parks) {
            // The tier wait must fit in the budget, so no job outlives it in a tier.
            Some(tier_secs) if budget_left > chrono::Duration::seconds(tier_secs as i64) => {
                RetryStep::Park { tier_secs }
            }
            _ => RetryStep::Exhausted,
        }
    }
}

/// `d` lengthened by `jitter` (clamped to `[0, 1]`) of itself.
pub fn jittered(d: Duration, jitter: f32) -> Duration {
    d.saturating_add(d.mul_f32(jitter.clamp(0.0, 1.0)))
}

#[cfg(test)]
#[path = "retry_tests.rs"]
mod tests;
