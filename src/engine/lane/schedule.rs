//! Scheduled sends: a job whose `not_before` is ahead waits *durably* in the delay tiers
//! (`wxdispatch.retry.<N>s`, the same queues a parked retry uses), in the largest tier that
//! does not overshoot the time left, again and again until it is due. No message is held
//! unacked for more than [`MAX_IN_PROCESS_WAIT`]; a worker restart loses nothing (the message
//! is in a quorum queue, its place in the conversation in `parked_jobs`); and while it waits,
//! the later jobs of its conversation park behind it ([`super::parked`]), so the
//! conversation's order holds. Jobs of other conversations are not delayed.
//!
//! Once due, the job takes the normal path: `not_after`, the 48-hour window, the allowance
//! and the gate are checked at send time, not at scheduling time.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::ctx::LaneCtx;
use crate::domain::job::Job;
use crate::domain::reason::Reason;
use crate::policy::outcome::Outcome;

/// How far ahead a `not_before` may be. A scheduled job makes a round trip through a delay
/// tier every few minutes (the largest tier, 600 s by default) and holds its conversation
/// while it waits, so an unbounded one (a typo'd year) would hold a conversation forever;
/// 30 days covers the campaigns and reminders scheduled sends are for.
pub const MAX_AHEAD: chrono::Duration = chrono::Duration::days(30);

/// When the time left is shorter than the smallest tier, the lane waits in process for up to
/// this long (the message unacked, its conversation's permit taken) instead of parking in a
/// tier that would send it late. Longer waits park in the smallest tier: late by less than
/// that tier, never early.
pub const MAX_IN_PROCESS_WAIT: Duration = Duration::from_secs(10);

/// What a job's `not_before` asks for now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// No `not_before`, or it has passed: go on.
    Now,
    /// Due in less than the smallest tier (and at most [`MAX_IN_PROCESS_WAIT`]): wait this
    /// long in process, then go on.
    Wait(Duration),
    /// Park in the delay tier of this many seconds (then ask again).
    Park(u64),
    /// Further ahead than [`MAX_AHEAD`]: refused.
    TooFar,
}

/// Decide what `not_before` asks for at `now`, given the configured delay tiers (seconds,
/// each > 0). Pure.
pub fn due(not_before: Option<DateTime<Utc>>, now: DateTime<Utc>, tiers: &[u64]) -> Due {
    let Some(nb) = not_before else {
        return Due::Now;
    };
    let left = nb - now;
    if left <= chrono::Duration::zero() {
        return Due::Now;
    }
    if left > MAX_AHEAD {
        return Due::TooFar;
    }
    let left = left.to_std().unwrap_or_default();
    let fits = tiers
        .iter()
        .copied()
        .filter(|&t| Duration::from_secs(t) <= left)
        .max();
    match (fits, tiers.iter().copied().min()) {
        (Some(t), _) => Due::Park(t),
        (None, _) if left <= MAX_IN_PROCESS_WAIT => Due::Wait(left),
        (None, Some(smallest)) => Due::Park(smallest),
        // No tiers at all (config validation forbids it): waiting in process is all there is.
        (None, None) => Due::Wait(left),
    }
}

/// When the retry budget (`retry.total_budget_secs`) of a scheduled job starts: at its first
/// attempt, which is never before it is due. The claim records the first time the lane saw
/// the job, which for a scheduled job is when it began to wait, not when it began to send.
pub fn retry_clock_start(
    first_seen: DateTime<Utc>,
    not_before: Option<DateTime<Utc>>,
) -> DateTime<Utc> {
    not_before.map_or(first_seen, |nb| first_seen.max(nb))
}

/// Hold `job` until it is due: `None` when it may go on now (after a short in-process wait,
/// if that is all that is left), else the outcome that parks it in a tier (or refuses it).
/// `attempts` and `parks` are carried over unchanged: waiting is not a retry.
pub(super) async fn hold(ctx: &LaneCtx, job: &Job, attempts: i32, parks: u32) -> Option<Outcome> {
    let now = Utc::now();
    match due(job.not_before, now, &ctx.cfg.retry.tiers_secs) {
        Due::Now => None,
        Due::Wait(d) => {
            tokio::select! {
                _ = tokio::time::sleep(d) => None,
                // The lane stops: hand the job to the smallest tier rather than leave it to a
                // task that would send it after its message went back to the broker.
                _ = ctx.stopping.cancelled() => {
                    let smallest = ctx.cfg.retry.tiers_secs.iter().copied().min();
                    Some(scheduled(job, smallest.unwrap_or(1), attempts, parks, now))
                }
            }
        }
        Due::Park(tier_secs) => Some(scheduled(job, tier_secs, attempts, parks, now)),
        Due::TooFar => Some(Outcome::Dead {
            reason: Reason::NotBeforeTooFar.into(),
            errcode: None,
            errmsg: Some(format!(
                "not_before: {} is more than {} days ahead",
                job.not_before
                    .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                    .unwrap_or_default(),
                MAX_AHEAD.num_days()
            )),
            attempts,
        }),
    }
}

fn scheduled(job: &Job, tier_secs: u64, attempts: i32, parks: u32, now: DateTime<Utc>) -> Outcome {
    Outcome::Scheduled {
        tier_secs,
        attempts,
        parks,
        due: job.not_before.unwrap_or(now),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().to_utc()
    }

    const TIERS: &[u64] = &[5, 30, 120, 600];

    #[test]
    fn no_or_past_not_before_is_due_now() {
        let now = at("2026-12-01T10:00:00Z");
        assert_eq!(due(None, now, TIERS), Due::Now);
        assert_eq!(due(Some(now), now, TIERS), Due::Now);
        assert_eq!(due(Some(at("2026-12-01T09:59:59Z")), now, TIERS), Due::Now);
    }

    #[test]
    fn parks_in_the_largest_tier_that_does_not_overshoot() {
        let now = at("2026-12-01T10:00:00Z");
        let secs = |s: i64| Some(now + chrono::Duration::seconds(s));
        assert_eq!(due(secs(3 * 3600), now, TIERS), Due::Park(600));
        assert_eq!(due(secs(600), now, TIERS), Due::Park(600));
        assert_eq!(due(secs(599), now, TIERS), Due::Park(120));
        assert_eq!(due(secs(31), now, TIERS), Due::Park(30));
        assert_eq!(due(secs(5), now, TIERS), Due::Park(5));
        // Tiers in any order.
        assert_eq!(due(secs(40), now, &[600, 5, 30]), Due::Park(30));
    }

    #[test]
    fn less_than_the_smallest_tier_waits_in_process_up_to_the_bound() {
        let now = at("2026-12-01T10:00:00Z");
        let ms = |m: i64| Some(now + chrono::Duration::milliseconds(m));
        assert_eq!(
            due(ms(4_500), now, TIERS),
            Due::Wait(Duration::from_millis(4_500))
        );
        // Smallest tier 60 s: 10 s is waited, 11 s parks in 60 s (late, never early).
        assert_eq!(
            due(ms(10_000), now, &[60, 600]),
            Due::Wait(Duration::from_secs(10))
        );
        assert_eq!(due(ms(11_000), now, &[60, 600]), Due::Park(60));
    }

    #[test]
    fn further_than_the_bound_is_refused() {
        let now = at("2026-12-01T10:00:00Z");
        assert_eq!(due(Some(now + MAX_AHEAD), now, TIERS), Due::Park(600));
        assert_eq!(
            due(
                Some(now + MAX_AHEAD + chrono::Duration::seconds(1)),
                now,
                TIERS
            ),
            Due::TooFar
        );
    }

    #[test]
    fn the_retry_budget_of_a_scheduled_job_starts_when_it_is_due() {
        let seen = at("2026-12-01T10:00:00Z");
        let nb = at("2026-12-02T10:00:00Z");
        assert_eq!(retry_clock_start(seen, None), seen);
        assert_eq!(retry_clock_start(seen, Some(nb)), nb);
        // Attempts that began after the due time (a resumed job) keep their own start.
        let later = at("2026-12-02T11:00:00Z");
        assert_eq!(retry_clock_start(later, Some(nb)), later);
    }
}
