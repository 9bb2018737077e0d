use std::time::{Duration, Instant};

use super::*;

fn settings() -> PauseSettings {
    PauseSettings::new(3, Duration::from_secs(5), Duration::from_secs(300), None)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

const THROTTLE: Action = Action::Throttle {
    min_pause: Duration::from_secs(60),
};
const TRANSPORT: Action = Action::Retry { transport: true };
const OK: Action = Action::Deliver;

/// A state paused until `t0 + 5 s` by an outage, at level 1.
fn paused(t0: Instant) -> PauseState {
    let mut s = PauseState::default();
    let c = s.report(Probe(true), &TRANSPORT, t0, &settings());
    assert_eq!(
        c,
        Change::Paused {
            pause: secs(5),
            why: "outage"
        }
    );
    s
}

#[test]
fn settings_keep_their_bounds() {
    let s = PauseSettings::new(0, secs(10), secs(1), None);
    assert_eq!(s.outage_threshold, 1);
    assert_eq!(s.pause_max, secs(10));
}

#[test]
fn unpaused_jobs_go_without_probing() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    assert_eq!(s.poll(t0), Wait::Go(Probe(false)));
    assert_eq!(s.report(Probe(false), &OK, t0, &settings()), Change::None);
    assert_eq!(s, PauseState::default());
}

#[test]
fn a_throttle_pauses_for_at_least_the_platforms_minimum() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    assert_eq!(
        s.report(Probe(false), &THROTTLE, t0, &settings()),
        Change::Paused {
            pause: secs(60),
            why: "throttled"
        }
    );
    assert_eq!(s.poll(t0), Wait::Until(t0 + secs(60)));
    assert_eq!(s.poll(t0 + secs(59)), Wait::Until(t0 + secs(60)));
}

#[test]
fn the_throttle_override_replaces_the_platforms_minimum() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    let set = PauseSettings {
        throttle_min: Some(secs(1)),
        ..settings()
    };
    assert_eq!(
        s.report(Probe(false), &THROTTLE, t0, &set),
        Change::Paused {
            pause: secs(5),
            why: "throttled"
        },
        "the doubling pause still applies when longer"
    );
}

#[test]
fn transport_failures_pause_after_the_threshold_and_others_reset_the_count() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    let set = settings();
    assert_eq!(s.report(Probe(false), &TRANSPORT, t0, &set), Change::None);
    assert_eq!(s.report(Probe(false), &TRANSPORT, t0, &set), Change::None);
    // Any other result starts the count again.
    assert_eq!(s.report(Probe(false), &OK, t0, &set), Change::None);
    assert_eq!(s.report(Probe(false), &TRANSPORT, t0, &set), Change::None);
    assert_eq!(s.report(Probe(false), &TRANSPORT, t0, &set), Change::None);
    assert_eq!(
        s.report(Probe(false), &TRANSPORT, t0, &set),
        Change::Paused {
            pause: secs(5),
            why: "outage"
        }
    );
    assert_eq!(s.poll(t0), Wait::Until(t0 + secs(5)));
}

#[test]
fn a_probes_transport_failure_pauses_at_once() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(true)));
    assert_eq!(
        s.report(Probe(true), &TRANSPORT, t0 + secs(5), &settings()),
        Change::Paused {
            pause: secs(10),
            why: "outage"
        },
        "the second pause doubles"
    );
}

#[test]
fn the_first_poll_after_the_pause_claims_the_probe_and_the_rest_wait_for_its_verdict() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    let end = t0 + secs(5);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)));
    assert_eq!(s.poll(end), Wait::Verdict);
    assert_eq!(s.poll(end + secs(100)), Wait::Verdict);
}

#[test]
fn a_successful_probe_resumes_and_resets_the_doubling() {
    let t0 = Instant::now();
    let set = settings();
    let mut s = paused(t0);
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(true)));
    assert_eq!(
        s.report(Probe(true), &OK, t0 + secs(5), &set),
        Change::Resumed { was_paused: true }
    );
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(false)));
    // Level back to 0: the next pause is the initial one again.
    assert_eq!(
        s.report(
            Probe(false),
            &THROTTLE,
            t0 + secs(6),
            &PauseSettings {
                throttle_min: Some(Duration::ZERO),
                ..set
            }
        ),
        Change::Paused {
            pause: secs(5),
            why: "throttled"
        }
    );
}

#[test]
fn a_success_of_another_job_while_probing_also_resumes() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(true)));
    assert_eq!(
        s.report(Probe(false), &OK, t0 + secs(5), &settings()),
        Change::Resumed { was_paused: true }
    );
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(false)));
}

#[test]
fn pauses_double_up_to_the_max() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    let set = PauseSettings {
        throttle_min: Some(Duration::ZERO),
        ..settings()
    };
    let pauses: Vec<_> = (0..9)
        .map(|_| match s.report(Probe(false), &THROTTLE, t0, &set) {
            Change::Paused { pause, .. } => pause.as_secs(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
}

#[test]
fn a_shorter_pause_does_not_cut_a_longer_one() {
    let mut s = PauseState::default();
    let t0 = Instant::now();
    let set = settings();
    s.report(Probe(false), &THROTTLE, t0, &set);
    // An outage pause of 10 s, reported now, ends before the throttle's 60 s.
    s.consecutive_transport = set.outage_threshold;
    s.report(Probe(false), &TRANSPORT, t0, &set);
    assert_eq!(s.poll(t0), Wait::Until(t0 + secs(60)));
}

#[test]
fn a_pause_during_a_probe_sends_the_waiters_back_to_waiting() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    assert_eq!(s.poll(t0 + secs(5)), Wait::Go(Probe(true)));
    s.report(Probe(false), &THROTTLE, t0 + secs(5), &settings());
    assert_eq!(s.poll(t0 + secs(6)), Wait::Until(t0 + secs(65)));
}

#[test]
fn a_non_probe_release_changes_nothing() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    let before = s.clone();
    assert_eq!(s.release(Probe(false), t0), Change::None);
    assert_eq!(s, before);
}

#[test]
fn a_released_probe_passes_to_the_next_poll() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    let end = t0 + secs(5);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)));
    assert_eq!(s.release(Probe(true), end), Change::Released);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)), "the next job probes");
    assert_eq!(s.poll(end), Wait::Verdict, "and the rest wait for it");
}

/// The bug of the two-lock release: between its "pause ends now" and "no probe out", another
/// job claimed the probe; the second half then cleared that job's probing flag, and every
/// other job went ahead without waiting for the probe's verdict. Here the release is one
/// transition; whatever runs after it, a claimed probe keeps the others waiting.
#[test]
fn a_probe_claimed_right_after_a_release_keeps_its_role() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    let end = t0 + secs(5);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)));
    s.release(Probe(true), end);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)));
    // Whatever the releasing job does next (nothing it does may touch the new probe).
    assert_eq!(s.poll(end), Wait::Verdict);
    assert_eq!(s.release(Probe(false), end), Change::None);
    assert_eq!(s.poll(end + secs(1)), Wait::Verdict);
}

const REFUSED: Action = Action::CredentialsRefused { code: 40001 };

#[test]
fn refused_credentials_hold_every_job_until_they_are_accepted() {
    let t0 = Instant::now();
    let mut s = PauseState::default();
    assert_eq!(
        s.report(Probe(false), &REFUSED, t0, &settings()),
        Change::Refused {
            code: 40001,
            first: true
        }
    );
    assert_eq!(s.refused(), Some(40001));
    // No job goes, not even as a probe, however long the refusal lasts.
    for later in [0, 5, 3600, 86_400] {
        assert_eq!(s.poll(t0 + secs(later)), Wait::Verdict, "{later} s");
    }
    // A second refusal (the prober's) is not a new alert.
    assert_eq!(
        s.refuse(40013),
        Change::Refused {
            code: 40013,
            first: false
        }
    );
    assert_eq!(s.credentials_ok(), Change::Resumed { was_paused: true });
    assert_eq!(
        s.poll(t0 + secs(1)),
        Wait::Go(Probe(false)),
        "everyone goes"
    );
    assert_eq!(s.credentials_ok(), Change::None, "nothing left to resume");
}

#[test]
fn a_refusal_takes_the_probe_role_and_keeps_a_running_pause() {
    let t0 = Instant::now();
    let mut s = paused(t0);
    let end = t0 + secs(5);
    assert_eq!(s.poll(end), Wait::Go(Probe(true)));
    // The probe's call found the credentials refused.
    s.report(Probe(true), &REFUSED, end, &settings());
    assert_eq!(s.poll(end + secs(60)), Wait::Verdict);
    s.credentials_ok();
    // The probe role was given up: the next job goes without waiting for a verdict.
    assert_eq!(s.poll(end + secs(60)), Wait::Go(Probe(false)));

    // A throttle pause that outlasts the refusal is still waited out.
    let mut s = PauseState::default();
    s.report(Probe(false), &THROTTLE, t0, &settings());
    s.refuse(40001);
    s.credentials_ok();
    assert_eq!(s.poll(t0 + secs(1)), Wait::Until(t0 + secs(60)));
}

#[test]
fn the_credentials_probe_backs_off_to_its_cap_with_jitter_below_it() {
    let full: Vec<u64> = (0..10)
        .map(|n| credentials_probe_delay(n, 0.0).as_secs())
        .collect();
    assert_eq!(full, [5, 10, 20, 40, 80, 160, 320, 600, 600, 600]);
    assert_eq!(
        credentials_probe_delay(u32::MAX, 0.0),
        CREDENTIALS_PROBE_MAX
    );
    for n in 0..12 {
        let d = credentials_probe_delay(n, 1.0);
        let f = credentials_probe_delay(n, 0.0);
        assert!(d < f && d >= f.mul_f32(0.8), "{n}: {d:?} of {f:?}");
    }
    // Calls in the first hour, at the fastest jitter: far below WeCom's ~2000 a hour.
    let (mut t, mut calls) = (Duration::ZERO, 0);
    while t < secs(3600) {
        t += credentials_probe_delay(calls, 1.0);
        calls += 1;
    }
    assert!(calls <= 15, "{calls} probes in the first hour");
}
