//! Order-preserving durable retries and the account pause.

use std::time::{Duration, Instant};

use serde_json::json;
use wxdispatch::tools::simulate::{Faults, SimOptions};

use crate::harness::{Env, chatbot_account, wecom_account};

pub(crate) async fn wait_status(env: &Env, job: &str, want: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if env.status_of(job).await.as_deref() == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{job} never reached {want} (is {:?})",
            env.status_of(job).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_job_holds_its_conversation_and_only_its_conversation() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    env.cfg.retry.in_process_attempts = 2;
    env.cfg.retry.tiers_secs = vec![1, 2];
    let worker = env.start_worker().await;
    let sim = env.sim();
    let msg = |id: &str, to: &str| json!({"job_id": id, "to": to, "message": {"text": id}});

    sim.script("kf", vec![-1, -1]); // J1 fails its 2 in-process attempts → parked 1 s
    env.publish("kf", &msg("j1", "wmAlice")).await;
    wait_status(&env, "j1", "retrying", Duration::from_secs(10)).await;
    env.publish("kf", &msg("j2", "wmAlice")).await;
    env.publish("kf", &msg("j3", "wmAlice")).await;
    env.publish("kf", &msg("k1", "wmBob")).await;
    wait_status(&env, "k1", "sent", Duration::from_secs(10)).await;
    wait_status(&env, "j3", "retrying", Duration::from_secs(10)).await;
    sim.script("kf", vec![-1, -1]); // J1 fails again when it comes back → parked 2 s
    env.wait_terminal(4, Duration::from_secs(20)).await;

    let order: Vec<String> = sim
        .accepted()
        .iter()
        .map(|a| a.msgid.clone().unwrap())
        .collect();
    assert_eq!(
        order,
        ["k1", "j1", "j2", "j3"],
        "Bob was not held; Alice's jobs kept their order"
    );
    let (attempts, status): (i32, String) =
        sqlx::query_as("SELECT attempts, status FROM deliveries WHERE job_id = 'j1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(
        (attempts, status.as_str()),
        (5, "sent"),
        "attempts carried across parks"
    );
    let parked: i64 = sqlx::query_scalar("SELECT count(*) FROM parked_jobs")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(parked, 0, "nothing left parked");
    let events: Vec<String> =
        sqlx::query_scalar("SELECT status FROM delivery_events WHERE job_id = 'j1' ORDER BY id")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(events, ["retrying", "retrying", "sent"]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_total_budget_ends_in_retries_exhausted() {
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    env.cfg.retry.in_process_attempts = 2;
    env.cfg.retry.tiers_secs = vec![1];
    env.cfg.retry.total_budget_secs = 3;
    env.sim().set_faults(Faults {
        busy: 1.0,
        ..Default::default()
    });
    let worker = env.start_worker().await;
    env.publish(
        "bot",
        &json!({"job_id": "b1", "to": "oU", "message": {"text": "x"}}),
    )
    .await;
    let dead = env.dead_letters(1, Duration::from_secs(20)).await;
    let h = |k| wxdispatch::broker::header_str(&dead[0].1, k);
    assert_eq!(
        h(wxdispatch::broker::H_REASON).as_deref(),
        Some("retries_exhausted")
    );
    let attempts: i32 = h(wxdispatch::broker::H_ATTEMPTS).unwrap().parse().unwrap();
    assert!(
        attempts >= 4,
        "parked at least once before giving up ({attempts} attempts)"
    );
    // The dead letter is published first, then the row is written (through the outcome
    // batcher) and only then is the job acked: the status follows the dead letter shortly.
    wait_status(&env, "b1", "dead", Duration::from_secs(5)).await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttled_account_pauses_without_dead_letters_while_others_flow() {
    let env = Env::new(
        |b| vec![wecom_account("slow", b), wecom_account("fast", b)],
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    // 45009 three times in a row: the lane pauses (1 s in tests, 60 s in production), probes, resumes.
    sim.script("slow", vec![45009, 45009, 45009]);
    for i in 0..20 {
        // one conversation: its first job meets the throttling, the rest wait behind it
        env.publish(
            "slow",
            &json!({"job_id": format!("s{i}"), "to": "wmSame", "message": {"text": "x"}}),
        )
        .await;
        env.publish(
            "fast",
            &json!({"job_id": format!("f{i}"), "to": format!("wm{i}"), "message": {"text": "x"}}),
        )
        .await;
    }
    env.wait_terminal(40, Duration::from_secs(30)).await;
    let counts = env.status_counts().await;
    assert_eq!(
        counts,
        vec![("sent".to_string(), 40)],
        "no job dead-lettered for throttling"
    );
    // the fast account finished before the slow one resumed
    let accepted = sim.accepted();
    let last_fast = accepted
        .iter()
        .filter(|a| a.account == "fast")
        .map(|a| a.seq)
        .max()
        .unwrap();
    let first_slow = accepted
        .iter()
        .filter(|a| a.account == "slow")
        .map(|a| a.seq)
        .min()
        .unwrap();
    assert!(
        last_fast < first_slow,
        "the other account kept flowing while 'slow' was paused"
    );
    let metrics = crate::harness::metrics_text(&worker).await;
    assert!(
        metrics.contains("wxdispatch_lane_pauses_total{account=\"slow\",reason=\"throttled\"}"),
        "pause exported"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}
