use std::time::Duration;

use super::*;

fn schedule() -> RetrySchedule {
    RetrySchedule {
        in_process_attempts: 10,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(5_000),
        total_budget: Duration::from_secs(3_600),
        tiers_secs: vec![5, 30, 120, 600],
        unknown_errcode_retries: 2,
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Equal to within a microsecond (the jitter is a float).
fn near(a: Duration, b: Duration) -> bool {
    a.abs_diff(b) < Duration::from_micros(1)
}

fn backoff_near(step: RetryStep, want: Duration) -> bool {
    matches!(step, RetryStep::Backoff(d) if near(d, want))
}

#[test]
fn backoff_doubles_and_stops_growing_at_the_max() {
    let s = schedule();
    let waits: Vec<_> = (0..9).map(|r| s.backoff(r)).collect();
    assert_eq!(
        waits,
        [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
            .map(|n| Some(ms(n)))
            .to_vec()
    );
}

#[test]
fn in_process_attempts_leave_one_wait_fewer() {
    let s = schedule();
    assert!(s.backoff(8).is_some());
    assert_eq!(s.backoff(9), None);
    let one = RetrySchedule {
        in_process_attempts: 1,
        ..schedule()
    };
    assert_eq!(one.backoff(0), None);
    let none = RetrySchedule {
        in_process_attempts: 0,
        ..schedule()
    };
    assert_eq!(none.backoff(0), None);
}

#[test]
fn an_initial_backoff_above_the_max_is_used_once() {
    let s = RetrySchedule {
        initial_backoff: ms(8_000),
        ..schedule()
    };
    assert_eq!(s.backoff(0), Some(ms(8_000)));
    assert_eq!(s.backoff(1), Some(ms(5_000)));
}

#[test]
fn huge_retry_numbers_saturate_at_the_max() {
    let s = RetrySchedule {
        in_process_attempts: u32::MAX,
        ..schedule()
    };
    assert_eq!(s.backoff(40), Some(ms(5_000)));
    assert_eq!(s.backoff(u32::MAX - 2), Some(ms(5_000)));
}

#[test]
fn jitter_adds_up_to_the_whole_delay() {
    assert!(near(jittered(ms(100), 0.0), ms(100)));
    assert!(near(jittered(ms(100), 0.5), ms(150)));
    assert!(near(jittered(ms(100), 1.0), ms(200)));
    assert!(near(jittered(ms(100), 7.0), ms(200)), "clamped");
    assert!(near(jittered(ms(100), -1.0), ms(100)), "clamped");
}

#[test]
fn tiers_follow_the_park_count_and_stay_at_the_last() {
    let s = schedule();
    let tiers: Vec<_> = (0..6).map(|p| s.tier(p)).collect();
    assert_eq!(tiers, [5, 30, 120, 600, 600, 600].map(Some).to_vec());
    let empty = RetrySchedule {
        tiers_secs: vec![],
        ..schedule()
    };
    assert_eq!(empty.tier(0), None);
}

#[test]
fn spent_backoff_parks_while_the_tier_fits_in_the_budget() {
    let s = schedule();
    let hour = chrono::Duration::seconds(3_600);
    assert!(backoff_near(s.after_failure(0, 0, hour, 0.0), ms(100)));
    assert!(backoff_near(s.after_failure(1, 0, hour, 0.5), ms(300)));
    assert_eq!(
        s.after_failure(9, 0, hour, 0.0),
        RetryStep::Park { tier_secs: 5 }
    );
    assert_eq!(
        s.after_failure(9, 3, hour, 0.0),
        RetryStep::Park { tier_secs: 600 }
    );
}

#[test]
fn the_budget_ends_in_retries_exhausted() {
    let s = schedule();
    // A tier must fit strictly inside what is left.
    let left = chrono::Duration::seconds(600);
    assert_eq!(s.after_failure(9, 3, left, 0.0), RetryStep::Exhausted);
    let left = chrono::Duration::seconds(601);
    assert_eq!(
        s.after_failure(9, 3, left, 0.0),
        RetryStep::Park { tier_secs: 600 }
    );
    assert_eq!(
        s.after_failure(9, 0, chrono::Duration::seconds(-5), 0.0),
        RetryStep::Exhausted
    );
    // Walk a job through its whole life: it ends exhausted, never loops.
    let start = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    let mut now = start;
    let mut parks = 0;
    let end = loop {
        let left = s.budget_left(start, now);
        let mut retries = 0;
        let step = loop {
            match s.after_failure(retries, parks, left, 0.0) {
                RetryStep::Backoff(d) => {
                    now += chrono::Duration::from_std(d).unwrap_or_default();
                    retries += 1;
                }
                other => break other,
            }
        };
        match step {
            RetryStep::Park { tier_secs } => {
                parks += 1;
                now += chrono::Duration::seconds(tier_secs as i64);
            }
            other => break other,
        }
        assert!(parks < 100, "never ends");
    };
    assert_eq!(end, RetryStep::Exhausted);
    assert!(s.budget_left(start, now) <= chrono::Duration::seconds(600));
}

#[test]
fn budget_left_counts_from_the_first_attempt() {
    let s = schedule();
    let t0 = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH;
    assert_eq!(s.budget_left(t0, t0), chrono::Duration::seconds(3_600));
    assert_eq!(
        s.budget_left(t0, t0 + chrono::Duration::seconds(3_700)),
        chrono::Duration::seconds(-100)
    );
}
