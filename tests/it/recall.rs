//! Recalling a sent WeCom message (`kind: "recall"`, kf/recall_msg): within 2 minutes the
//! platform takes it back and the target's row records it; too late, unknown targets and
//! chatbot accounts are dead-lettered with their own reasons; the 5-message allowance is not
//! refunded.

use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use wxdispatch::app::Worker;
use wxdispatch::broker;
use wxdispatch::store::Store;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

const WAIT: Duration = Duration::from_secs(20);

fn send(id: &str, to: &str) -> Value {
    json!({"job_id": id, "to": to, "message": {"text": format!("message {id}")}})
}

fn recall(id: &str, to: &str, target: &str) -> Value {
    json!({"job_id": id, "kind": "recall", "to": to, "target_job_id": target})
}

/// `(status, error)` of a job's row.
async fn row(env: &Env, id: &str) -> (String, Option<String>) {
    let r = sqlx::query("SELECT status, error FROM deliveries WHERE job_id = $1")
        .bind(id)
        .fetch_one(&env.pool)
        .await
        .unwrap();
    (r.get("status"), r.get("error"))
}

/// `(recalled_at IS NOT NULL, recalled_by_job)` of a job's row.
async fn recall_mark(env: &Env, id: &str) -> (bool, Option<String>) {
    let r = sqlx::query(
        "SELECT recalled_at IS NOT NULL AS at, recalled_by_job FROM deliveries WHERE job_id = $1",
    )
    .bind(id)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (r.get("at"), r.get("recalled_by_job"))
}

/// The dead letters' reasons, by job id.
async fn dead_reasons(env: &Env, n: usize) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = env
        .dead_letters(n, WAIT)
        .await
        .into_iter()
        .map(|(body, props)| {
            (
                body["job_id"].as_str().unwrap_or("").to_owned(),
                broker::header_str(&props, broker::H_REASON).unwrap_or_default(),
            )
        })
        .collect();
    out.sort();
    out
}

/// A WeCom account "kf" with a worker, and the message `id` to `to` sent.
async fn wecom_with_sent(id: &str, to: &str) -> (Env, Worker) {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    env.publish("kf", &send(id, to)).await;
    env.wait_terminal(1, WAIT).await;
    (env, worker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_within_two_minutes_takes_the_message_back_and_marks_its_row() {
    let (env, worker) = wecom_with_sent("s1", "wmR").await;
    let sim = env.sim();
    let msgid: String =
        sqlx::query_scalar("SELECT platform_msgid FROM deliveries WHERE job_id = 's1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    env.publish("kf", &recall("r1", "wmR", "s1")).await;
    env.wait_terminal(2, WAIT).await;
    assert_eq!(row(&env, "r1").await, ("sent".into(), None));
    // the platform recalled exactly the target's msgid
    let recalls = sim.recalls();
    assert_eq!(recalls.len(), 1, "{recalls:?}");
    assert_eq!(
        (recalls[0].msgid.as_str(), recalls[0].recipient.as_str()),
        (msgid.as_str(), "wmR")
    );
    // the target stays sent and records the recall; its history says so too
    assert_eq!(row(&env, "s1").await.0, "sent");
    assert_eq!(recall_mark(&env, "s1").await, (true, Some("r1".into())));
    let store = Store::with_pool(env.pool.clone(), 1);
    let report = wxdispatch::ops::status::report(&store, "s1", None)
        .await
        .unwrap()
        .unwrap();
    let mark = report.recall.expect("status shows the recall");
    assert_eq!(mark.recalled_by_job, "r1");
    assert!(report.history.iter().any(|e| e.status == "recalled"));
    // the recall job's own row has no mark; a second recall of the same message is refused
    assert_eq!(recall_mark(&env, "r1").await, (false, None));
    env.publish("kf", &recall("r1b", "wmR", "s1")).await;
    env.wait_terminal(3, WAIT).await;
    let (status, error) = row(&env, "r1b").await;
    assert_eq!(status, "dead");
    assert!(error.unwrap().contains("already recalled by job r1"));
    assert_eq!(
        dead_reasons(&env, 1).await,
        [("r1b".to_owned(), "recall_target_unknown".to_owned())]
    );
    assert_eq!(sim.recalls().len(), 1);
    // `wxdispatch status` prints it
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["status", "s1", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("  recalled   "), "{text}");
    assert!(text.contains(" by job r1\n"), "{text}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_and_unknown_targets_are_dead_lettered_without_asking_the_platform() {
    let (env, worker) = wecom_with_sent("s2", "wmL").await;
    let sim = env.sim();
    // the target was sent three minutes ago
    sqlx::query("UPDATE deliveries SET sent_at = now() - interval '3 minutes' WHERE job_id = 's2'")
        .execute(&env.pool)
        .await
        .unwrap();
    env.publish("kf", &recall("late", "wmL", "s2")).await;
    // no such job; a job of another conversation; a job that was never sent
    env.publish("kf", &recall("nojob", "wmL", "nope")).await;
    env.publish("kf", &recall("other", "wmOther", "s2")).await;
    env.wait_terminal(4, WAIT).await;
    for (id, word) in [
        ("late", "recall_too_late"),
        ("nojob", "recall_target_unknown"),
        ("other", "recall_target_unknown"),
    ] {
        let (status, error) = row(&env, id).await;
        assert_eq!(status, "dead", "{id}");
        assert!(
            error.as_deref().unwrap().starts_with(word),
            "{id}: {error:?}"
        );
    }
    assert_eq!(
        dead_reasons(&env, 3).await,
        [
            ("late".to_owned(), "recall_too_late".to_owned()),
            ("nojob".to_owned(), "recall_target_unknown".to_owned()),
            ("other".to_owned(), "recall_target_unknown".to_owned()),
        ]
    );
    assert!(sim.recalls().is_empty());
    assert_eq!(recall_mark(&env, "s2").await, (false, None));
    assert_eq!(sim.stats().errcodes.len(), 0, "{:?}", sim.stats().errcodes);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_platforms_too_late_is_a_permanent_refusal() {
    let (env, worker) = wecom_with_sent("s3", "wmP").await;
    let sim = env.sim();
    // our row says "just sent", the platform's clock says "3 minutes ago"
    sim.age_sent_message("kf", "s3", Duration::from_secs(180));
    env.publish("kf", &recall("r3", "wmP", "s3")).await;
    env.wait_terminal(2, WAIT).await;
    let r = sqlx::query("SELECT status, attempts, errcode FROM deliveries WHERE job_id = 'r3'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(r.get::<String, _>("status"), "dead");
    assert_eq!(r.get::<Option<i64>, _>("errcode"), Some(40058));
    assert_eq!(r.get::<i32, _>("attempts"), 1, "not retried");
    assert!(sim.recalls().is_empty());
    assert_eq!(recall_mark(&env, "s3").await, (false, None));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_goes_through_the_token_protocol_and_retries_transient_errcodes() {
    let (env, worker) = wecom_with_sent("s4", "wmT").await;
    let sim = env.sim();
    // the platform is busy once, then the access token has expired: retried, refreshed, done
    assert!(sim.script_api("kf", "recall_msg", vec![-1, 42001]));
    env.publish("kf", &recall("r4", "wmT", "s4")).await;
    env.wait_terminal(2, WAIT).await;
    let r = sqlx::query("SELECT status, attempts FROM deliveries WHERE job_id = 'r4'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(r.get::<String, _>("status"), "sent");
    assert_eq!(
        r.get::<i32, _>("attempts"),
        2,
        "the busy answer cost one attempt"
    );
    assert_eq!(sim.recalls().len(), 1);
    assert_eq!(recall_mark(&env, "s4").await, (true, Some("r4".into())));
    let errs = sim.stats().errcodes;
    assert_eq!(errs.get("kf:-1"), Some(&1), "{errs:?}");
    assert_eq!(errs.get("kf:42001"), Some(&1), "{errs:?}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recalled_message_still_counts_against_the_five_message_allowance() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    // What the sync loop records from a customer message (origin 3):
    sqlx::query("INSERT INTO conversations (account, open_kfid, external_userid, last_customer_msg_at) VALUES ('kf', 'wkKF1', 'wmA', now() - interval '1 hour')")
        .execute(&env.pool)
        .await
        .unwrap();
    let worker = env.start_worker().await;
    // one conversation, in this order: five messages, a recall of the last, a sixth message
    for i in 0..5 {
        env.publish("kf", &send(&format!("a{i}"), "wmA")).await;
    }
    env.publish("kf", &recall("ra", "wmA", "a4")).await;
    env.publish("kf", &send("a5", "wmA")).await;
    env.wait_terminal(7, WAIT).await;
    let st = env.statuses().await;
    for i in 0..5 {
        assert_eq!(st[&format!("a{i}")], "sent");
    }
    assert_eq!(st["ra"], "sent");
    assert_eq!(env.sim().recalls().len(), 1);
    assert_eq!(st["a5"], "dead", "the recall gave no message back");
    assert_eq!(
        dead_reasons(&env, 1).await,
        [("a5".to_owned(), "quota_exhausted".to_owned())]
    );
    let n: i32 = sqlx::query_scalar(
        "SELECT sent_since_customer FROM conversations WHERE external_userid = 'wmA'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(n, 5, "neither refunded nor counted as a message");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recall_on_a_chatbot_account_is_dead_lettered_as_wecom_only() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    env.publish("bot", &send("c1", "oC")).await;
    env.wait_terminal(1, WAIT).await;
    env.publish("bot", &recall("rc", "oC", "c1")).await;
    env.wait_terminal(2, WAIT).await;
    let (status, error) = row(&env, "rc").await;
    assert_eq!(status, "dead");
    assert!(error.unwrap().starts_with("recall_wecom_only"));
    assert_eq!(
        dead_reasons(&env, 1).await,
        [("rc".to_owned(), "recall_wecom_only".to_owned())]
    );
    assert_eq!(env.sim().accepted().len(), 1, "only the message was sent");
    worker.stop().await.unwrap();
    env.cleanup().await;
}
