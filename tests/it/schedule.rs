//! Scheduled sends (`not_before`): held durably in the delay tiers, sent once due and not
//! before, in order within the conversation, across a worker restart, still bounded by
//! `not_after` and the WeCom 48-hour window; broadcasts fan out once due; bad times are
//! dead-lettered with a reason naming the field.

use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde_json::json;
use wxdispatch::broker;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, wecom_account};
use crate::retry::wait_status;

/// RFC 3339 (with an offset) `ms` milliseconds from now, and that instant in Unix ms.
fn in_ms(ms: i64) -> (String, i64) {
    let t = Utc::now() + chrono::Duration::milliseconds(ms);
    let local = t.with_timezone(&chrono::FixedOffset::east_opt(8 * 3600).unwrap());
    (
        local.to_rfc3339_opts(SecondsFormat::Millis, false),
        t.timestamp_millis(),
    )
}

/// An environment with one WeCom account `kf` and delay tiers of 1 and 2 s (a test's
/// scheduled job makes a few round trips through them in seconds).
async fn scheduling_env() -> Env {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    env.cfg.retry.tiers_secs = vec![1, 2];
    env
}

/// Publish a text job `id` to `to` on `kf`, with `extra` fields (`not_before`, `not_after`).
async fn send(env: &Env, id: &str, to: &str, extra: serde_json::Value) {
    let mut job = json!({"job_id": id, "to": to, "message": {"text": id}});
    if let (Some(j), Some(x)) = (job.as_object_mut(), extra.as_object()) {
        j.extend(x.clone());
    }
    env.publish("kf", &job).await;
}

/// The job ids in `parked_jobs`.
async fn parked(env: &Env) -> Vec<String> {
    sqlx::query_scalar("SELECT job_id FROM parked_jobs ORDER BY job_id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// Poll until none of `ids` is waiting (accepted, retrying or scheduled).
async fn wait_done(env: &Env, ids: &[&str], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let st = env.statuses().await;
        let waiting: Vec<_> = ids
            .iter()
            .filter(|id| {
                st.get(**id)
                    .is_none_or(|s| matches!(s.as_str(), "accepted" | "retrying" | "scheduled"))
            })
            .collect();
        assert!(
            waiting.is_empty() || Instant::now() < deadline,
            "still waiting after {timeout:?}: {waiting:?} ({st:?})"
        );
        if waiting.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_is_sent_once_due_and_holds_only_its_conversation() {
    let env = scheduling_env().await;
    // The customer of `wmOld` wrote 48 h minus 2 s ago: the window is open when the job is
    // published, closed when it is due.
    sqlx::query("INSERT INTO conversations (account, open_kfid, external_userid, last_customer_msg_at) VALUES ('kf', 'wkKF1', 'wmOld', now() - interval '48 hours' + interval '2 seconds')")
        .execute(&env.pool)
        .await
        .unwrap();
    let worker = env.start_worker().await;
    let sim = env.sim();
    let (at, at_ms) = in_ms(3_000);
    let (soon, _) = in_ms(1_000);
    send(&env, "a1", "wmAlice", json!({"not_before": at})).await;
    wait_status(&env, "a1", "scheduled", Duration::from_secs(5)).await;
    send(&env, "a2", "wmAlice", json!({})).await;
    send(&env, "a3", "wmAlice", json!({"not_after": soon})).await;
    send(&env, "b1", "wmBob", json!({})).await;
    send(&env, "old", "wmOld", json!({"not_before": at})).await;
    wait_status(&env, "b1", "sent", Duration::from_secs(2)).await;
    wait_status(&env, "a3", "retrying", Duration::from_secs(2)).await;
    let error: String = sqlx::query_scalar("SELECT error FROM deliveries WHERE job_id = 'a1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert!(error.starts_with("scheduled: not before "), "{error}");
    assert_eq!(
        env.status_of("a2").await.as_deref(),
        Some("retrying"),
        "a2 waits behind a1"
    );
    assert!(
        sim.accepted().iter().all(|a| a.recipient != "wmAlice"),
        "nothing of Alice's sent before a1 is due"
    );

    wait_done(&env, &["a1", "a2", "a3", "old"], Duration::from_secs(15)).await;
    let st = env.statuses().await;
    assert_eq!(st["a1"], "sent");
    assert_eq!(st["a2"], "sent");
    assert_eq!(
        st["a3"], "expired",
        "not_after passed while it waited behind a1"
    );
    assert_eq!(st["old"], "dead", "the 48-hour window is checked when due");
    let sent = sim.accepted();
    let ids: Vec<_> = sent.iter().map(|a| a.msgid.clone().unwrap()).collect();
    assert_eq!(ids, ["b1", "a1", "a2"], "Bob first; Alice's jobs in order");
    let a1 = &sent[1];
    assert!(
        a1.at_ms >= at_ms,
        "a1 sent {} ms before its not_before",
        at_ms - a1.at_ms
    );
    assert!(
        a1.at_ms < at_ms + 3_000,
        "a1 sent {} ms late",
        a1.at_ms - at_ms
    );
    let dead = env.dead_letters(1, Duration::from_secs(5)).await;
    assert_eq!(
        broker::header_str(&dead[0].1, broker::H_REASON).as_deref(),
        Some("window_closed")
    );
    assert!(parked(&env).await.is_empty(), "nothing left parked");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_job_survives_a_worker_restart_and_keeps_its_order() {
    let env = scheduling_env().await;
    let worker = env.start_worker().await;
    let (at, at_ms) = in_ms(5_000);
    send(&env, "s1", "wmAlice", json!({"not_before": at})).await;
    wait_status(&env, "s1", "scheduled", Duration::from_secs(5)).await;
    send(&env, "s2", "wmAlice", json!({})).await;
    wait_status(&env, "s2", "retrying", Duration::from_secs(5)).await;
    worker.stop().await.unwrap();
    assert_eq!(env.sim().accepted_count(), 0);

    let worker = env.start_worker().await;
    wait_done(&env, &["s1", "s2"], Duration::from_secs(20)).await;
    let sent = env.sim().accepted();
    let ids: Vec<_> = sent.iter().map(|a| a.msgid.clone().unwrap()).collect();
    assert_eq!(ids, ["s1", "s2"], "each once, in order, after the restart");
    assert!(sent[0].at_ms >= at_ms, "s1 sent before its not_before");
    assert_eq!(env.status_of("s1").await.as_deref(), Some("sent"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_broadcast_fans_out_when_due_and_bad_times_are_dead_lettered() {
    let env = scheduling_env().await;
    let worker = env.start_worker().await;
    let (at, at_ms) = in_ms(3_000);
    env.publish(
        "kf",
        &json!({"kind": "broadcast", "job_id": "bc", "to": ["wmU1", "wmU2", "wmU3"],
                "message": {"text": "campaign"}, "not_before": at}),
    )
    .await;
    // Before it is due: held as one parked message, nothing fanned out or sent.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let parked = parked(&env).await;
        if parked == ["bc"] {
            break;
        }
        assert!(Instant::now() < deadline, "broadcast not held: {parked:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        wxdispatch::engine::broadcast::progress(&env.pool, "kf", "bc")
            .await
            .unwrap()
            .is_none(),
        "not fanned out before it is due"
    );
    assert_eq!(env.sim().accepted_count(), 0);
    let far = (Utc::now() + chrono::Duration::days(31)).to_rfc3339();
    let bad = [
        ("bad1", json!("tomorrow"), None, "invalid_not_before"),
        (
            "bad2",
            json!("2030-01-02T00:00:00Z"),
            Some("2030-01-01T00:00:00Z"),
            "not_before_after_not_after",
        ),
        ("bad3", json!(far), None, "not_before_too_far"),
    ];
    for (id, nb, na, _) in &bad {
        let mut job =
            json!({"job_id": id, "to": "wmX", "message": {"text": "x"}, "not_before": nb});
        if let Some(na) = na {
            job["not_after"] = json!(na);
        }
        env.publish("kf", &job).await;
    }
    let dead = env.dead_letters(3, Duration::from_secs(10)).await;
    for (id, _, _, reason) in &bad {
        let (_, props) = dead
            .iter()
            .find(|(b, _)| b["job_id"] == *id)
            .unwrap_or_else(|| panic!("{id} dead-lettered"));
        assert_eq!(
            broker::header_str(props, broker::H_REASON).as_deref(),
            Some(*reason),
            "{id}"
        );
        // The dead letter is published (confirmed) before its row is written.
        wait_status(&env, id, "dead", Duration::from_secs(5)).await;
    }
    let errmsg = broker::header_str(
        &dead.iter().find(|(b, _)| b["job_id"] == "bad2").unwrap().1,
        broker::H_ERRMSG,
    )
    .unwrap();
    assert!(
        errmsg.contains("not_before") && errmsg.contains("not_after"),
        "{errmsg}"
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while env.sim().accepted_count() < 3 {
        assert!(Instant::now() < deadline, "{:?}", env.status_counts().await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sent = env.sim().accepted();
    let mut to: Vec<_> = sent.iter().map(|a| a.recipient.clone()).collect();
    to.sort();
    assert_eq!(to, ["wmU1", "wmU2", "wmU3"]);
    assert!(
        sent.iter().all(|a| a.at_ms >= at_ms),
        "a recipient was sent before the broadcast's not_before"
    );
    assert!(
        parked(&env).await.is_empty(),
        "the broadcast was released after its fan-out"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_waiting_in_process_when_the_worker_stops_is_kept_and_not_sent() {
    let mut env = scheduling_env().await;
    // Smallest tier 30 s: a job due in 8 s waits in process (at most 10 s).
    env.cfg.retry.tiers_secs = vec![30];
    let worker = env.start_worker().await;
    let (at, at_ms) = in_ms(8_000);
    send(&env, "w1", "wmAlice", json!({"not_before": at})).await;
    // Claimed and waiting: the row exists, nothing parked yet.
    wait_status(&env, "w1", "accepted", Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.stop().await.unwrap();
    // Not left to a task that outlives the lane.
    assert_eq!(env.status_of("w1").await.as_deref(), Some("scheduled"));
    assert_eq!(parked(&env).await, ["w1"]);
    let (tier, lane) = (
        env.queue_len(&broker::retry_tier(30)).await,
        env.queue_len("wxdispatch.kf").await,
    );
    // Kept: in the smallest tier if the park got through before the lane's channel closed,
    // else back in the lane (the unacked delivery), where the next start finds it.
    assert_eq!(tier + lane, 1, "tier {tier}, lane {lane}");
    // Past its due time: the stopped worker sent nothing.
    let wait = (at_ms + 1_000 - Utc::now().timestamp_millis()).max(0) as u64;
    tokio::time::sleep(Duration::from_millis(wait)).await;
    assert_eq!(
        env.sim().accepted_count(),
        0,
        "sent after the worker stopped"
    );
    env.cleanup().await;
}
