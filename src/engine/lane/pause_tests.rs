use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::*;

/// A gate whose pauses end at once: every pause is followed by a probe.
fn instant_gate() -> PauseGate {
    let retry = RetryConfig {
        pause_initial_secs: 0,
        pause_max_secs: 0,
        throttle_pause_secs: Some(0),
        ..RetryConfig::default()
    };
    PauseGate::new("a", &retry)
}

const THROTTLE: Action = Action::Throttle {
    min_pause: Duration::ZERO,
};

/// Jobs on several threads pause the account, claim the probe and hand it back. While a
/// thread holds the probe, nobody may go without its verdict: its own next poll must say
/// "wait". With the old two-lock `release` a probe claimed between the two locks lost its
/// flag, and that poll said "go".
#[test]
fn a_probe_claimed_during_a_release_keeps_its_role() {
    let gate = Arc::new(instant_gate());
    gate.report(Probe(false), &THROTTLE);
    let violations = Arc::new(AtomicU32::new(0));
    let probes = Arc::new(AtomicU32::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (gate, violations, probes) = (gate.clone(), violations.clone(), probes.clone());
            std::thread::spawn(move || {
                for _ in 0..20_000 {
                    match gate.poll() {
                        Wait::Go(Probe(true)) => {
                            probes.fetch_add(1, Ordering::Relaxed);
                            // As another job of the account would, a little later.
                            std::thread::yield_now();
                            if matches!(gate.poll(), Wait::Go(_)) {
                                violations.fetch_add(1, Ordering::Relaxed);
                            }
                            gate.release(Probe(true));
                        }
                        // Nobody probes and nobody is paused: pause again.
                        Wait::Go(Probe(false)) => gate.report(Probe(false), &THROTTLE),
                        Wait::Until(_) | Wait::Verdict => std::hint::spin_loop(),
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join()
            .unwrap_or_else(|_| panic!("a test thread panicked"));
    }
    assert!(
        probes.load(Ordering::Relaxed) > 0,
        "no probe was ever claimed"
    );
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "jobs went ahead while a probe was out"
    );
}

#[tokio::test]
async fn waiters_wait_for_the_probes_verdict() {
    let gate = Arc::new(instant_gate());
    assert_eq!(gate.wait().await, Probe(false));
    gate.report(Probe(false), &THROTTLE);
    let probe = gate.wait().await;
    assert_eq!(probe, Probe(true));
    let other = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.wait().await })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!other.is_finished(), "waits for the probe's verdict");
    gate.report(probe, &Action::Deliver);
    let woke = tokio::time::timeout(Duration::from_secs(5), other).await;
    assert_eq!(woke.ok().and_then(Result::ok), Some(Probe(false)));
}

#[tokio::test]
async fn a_released_probe_wakes_a_waiter_to_take_the_role() {
    let gate = Arc::new(instant_gate());
    gate.report(Probe(false), &THROTTLE);
    let probe = gate.wait().await;
    assert_eq!(probe, Probe(true));
    let other = {
        let gate = gate.clone();
        tokio::spawn(async move { gate.wait().await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    gate.release(probe);
    let woke = tokio::time::timeout(Duration::from_secs(5), other).await;
    assert_eq!(woke.ok().and_then(Result::ok), Some(Probe(true)));
}

/// Jobs waiting while gettoken refuses the credentials stay waiting (however long) until the
/// prober reports the credentials accepted; the consumer loop's watch follows.
#[tokio::test]
async fn refused_credentials_hold_the_waiting_jobs_until_accepted() {
    let gate = Arc::new(instant_gate());
    let mut refused = gate.refused();
    gate.report(Probe(false), &Action::CredentialsRefused { code: 40001 });
    assert!(*refused.borrow_and_update(), "the lane stops taking jobs");
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let gate = gate.clone();
            tokio::spawn(async move { gate.wait().await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        waiting.iter().all(|w| !w.is_finished()),
        "nobody goes, not even as a probe, while refused"
    );
    gate.refuse(40001);
    gate.credentials_ok();
    for w in waiting {
        let probe = tokio::time::timeout(Duration::from_secs(1), w)
            .await
            .expect("resumed")
            .expect("joined");
        assert_eq!(probe, Probe(false), "everyone goes at once");
    }
    assert!(!*refused.borrow_and_update(), "the lane takes jobs again");
}
