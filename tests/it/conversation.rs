//! Conversation awareness on the sending side: human takeover gating, the WeCom 48-hour /
//! 5-message allowance, transfers, event replies, expiry.

use std::time::Duration;

use serde_json::json;
use wxdispatch::broker;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

async fn env_with_fresh_gates() -> Env {
    let mut env = Env::new(
        |b| vec![chatbot_account("bot", b), wecom_account("kf", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.worker.gate_cache_secs = 0; // always ask: the test flips the state between jobs
    env
}

async fn send_and_wait(
    env: &Env,
    account: &str,
    job: serde_json::Value,
    n_terminal: i64,
) -> String {
    let id = job["job_id"].as_str().unwrap().to_owned();
    env.publish(account, &job).await;
    env.wait_terminal(n_terminal, Duration::from_secs(15)).await;
    env.status_of(&id).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bot_replies_are_suppressed_while_a_human_serves() {
    let env = env_with_fresh_gates().await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    // WeCom: a servicer picked the session up (state 3)
    sim.set_service_state("kf", "wkKF1", "wmH", 3, Some("alice"));
    let bot = |id: &str| json!({"job_id": id, "to": "wmH", "message": {"text": id}});
    assert_eq!(send_and_wait(&env, "kf", bot("w1"), 1).await, "suppressed");
    // gate "none" is not suppressed: it is attempted. WeCom itself only accepts API sends in
    // session states 0/1 (the reference), so it refuses with 95018 and the job is dead-lettered
    // as human_serving: an agent's own words go through the WeCom client in state 3.
    let mut human = bot("w2");
    human["gate"] = json!("none");
    assert_eq!(send_and_wait(&env, "kf", human, 2).await, "dead");
    let (errcode, error): (Option<i64>, Option<String>) =
        sqlx::query_as("SELECT errcode, error FROM deliveries WHERE job_id = 'w2'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(errcode, Some(95018));
    assert!(error.unwrap().starts_with("human_serving"));
    // the session ends; the customer writes again, which opens a new session (state 0)
    sim.set_service_state("kf", "wkKF1", "wmH", 4, None);
    sim.customer_message("kf", "wkKF1", "wmH", "hello again");
    assert_eq!(sim.service_state("wkKF1", "wmH").0, 0);
    assert_eq!(send_and_wait(&env, "kf", bot("w3"), 3).await, "sent");
    // Chatbot: kefustate on
    sim.set_kefustate("bot", "oH", true);
    let cb = |id: &str| json!({"job_id": id, "to": "oH", "message": {"text": id}});
    assert_eq!(send_and_wait(&env, "bot", cb("c1"), 4).await, "suppressed");
    let mut human = cb("c2");
    human["gate"] = json!("none");
    assert_eq!(send_and_wait(&env, "bot", human, 5).await, "sent");
    sim.set_kefustate("bot", "oH", false);
    assert_eq!(send_and_wait(&env, "bot", cb("c3"), 6).await, "sent");
    let at_sim: Vec<String> = sim
        .accepted()
        .iter()
        .filter(|a| a.api == "send_msg" || a.api == "sendmsg")
        .map(|a| a.recipient.clone())
        .collect();
    assert_eq!(
        at_sim.len(),
        3,
        "only the three allowed replies reached the platform: {at_sim:?}"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_95018_gates_the_reply_and_remembers_the_takeover() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    sim.script_api("kf", "send_msg", vec![95018]);
    assert_eq!(
        send_and_wait(
            &env,
            "kf",
            json!({"job_id": "g1", "to": "wmG", "message": {"text": "x"}}),
            1
        )
        .await,
        "suppressed"
    );
    let state: Option<i32> =
        sqlx::query_scalar("SELECT service_state FROM conversations WHERE external_userid = 'wmG'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    assert_eq!(state, Some(3));
    // the next bot reply is gated without asking the platform to send
    let before = sim.accepted().len();
    assert_eq!(
        send_and_wait(
            &env,
            "kf",
            json!({"job_id": "g2", "to": "wmG", "message": {"text": "y"}}),
            2
        )
        .await,
        "suppressed"
    );
    assert_eq!(sim.accepted().len(), before);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sixth_message_and_a_reply_after_49_hours_never_reach_the_platform() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    // What the sync loop records from customer messages (origin 3):
    sqlx::query("INSERT INTO conversations (account, open_kfid, external_userid, last_customer_msg_at) VALUES ('kf', 'wkKF1', 'wmQ', now() - interval '1 hour'), ('kf', 'wkKF1', 'wmOld', now() - interval '49 hours')")
        .execute(&env.pool)
        .await
        .unwrap();
    let worker = env.start_worker().await;
    for i in 0..6 {
        env.publish(
            "kf",
            &json!({"job_id": format!("q{i}"), "to": "wmQ", "message": {"text": format!("{i}")}}),
        )
        .await;
    }
    env.publish(
        "kf",
        &json!({"job_id": "old", "to": "wmOld", "message": {"text": "too late"}}),
    )
    .await;
    env.wait_terminal(7, Duration::from_secs(15)).await;
    let st = env.statuses().await;
    for i in 0..5 {
        assert_eq!(st[&format!("q{i}")], "sent");
    }
    assert_eq!(st["q5"], "dead");
    assert_eq!(st["old"], "dead");
    let dead = env.dead_letters(2, Duration::from_secs(5)).await;
    let reason = |id: &str| {
        dead.iter()
            .find(|(b, _)| b["job_id"] == id)
            .map(|(_, p)| broker::header_str(p, broker::H_REASON).unwrap())
    };
    assert_eq!(reason("q5").as_deref(), Some("quota_exhausted"));
    assert_eq!(reason("old").as_deref(), Some("window_closed"));
    let sent = env.sim().accepted();
    assert_eq!(
        sent.len(),
        5,
        "the platform saw only the five allowed messages"
    );
    assert!(sent.iter().all(|a| a.recipient == "wmQ"));
    let n: i32 = sqlx::query_scalar(
        "SELECT sent_since_customer FROM conversations WHERE external_userid = 'wmQ'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(n, 5);
    // `wxdispatch status` shows the ledger
    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["status", "q5", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("status     dead"), "{text}");
    assert!(text.contains("quota_exhausted"), "{text}");
    assert!(
        text.contains("allowance                5 of 5 used"),
        "{text}"
    );
    assert!(text.contains("reply window             open"), "{text}");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_event_replies_and_expiry() {
    let env = env_with_fresh_gates().await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    // WeCom transfer to a human, then a bot reply is suppressed
    let tr = json!({"job_id": "t1", "kind": "transfer", "to": "wmT", "service_state": 3, "servicer_userid": "alice"});
    assert_eq!(send_and_wait(&env, "kf", tr, 1).await, "sent");
    assert_eq!(
        sim.service_state("wkKF1", "wmT"),
        (3, Some("alice".to_string()))
    );
    assert_eq!(
        send_and_wait(
            &env,
            "kf",
            json!({"job_id": "t2", "to": "wmT", "message": {"text": "bot"}}),
            2
        )
        .await,
        "suppressed"
    );
    // chatbot transfer (kefustate/change)
    let tr = json!({"job_id": "t3", "kind": "transfer", "to": "oT", "kefustate": "on"});
    assert_eq!(send_and_wait(&env, "bot", tr, 3).await, "sent");
    assert!(sim.kefustate("bot", "oT"));
    // event reply with a welcome code: once sent, the code is used up
    let code = sim.enter_session("kf", "wkKF1", "wmE");
    let ev = |id: &str| json!({"job_id": id, "kind": "event_reply", "to": "wmE", "code": code, "message": {"text": "Welcome!"}});
    assert_eq!(send_and_wait(&env, "kf", ev("e1"), 4).await, "sent");
    let welcome = sim
        .accepted()
        .into_iter()
        .find(|a| a.api == "send_msg_on_event")
        .unwrap();
    assert_eq!(welcome.body["code"], code);
    assert_eq!(welcome.body["text"]["content"], "Welcome!");
    assert_eq!(
        send_and_wait(&env, "kf", ev("e2"), 5).await,
        "dead",
        "a welcome code is single-use"
    );
    // not_after in the past: expired, never sent
    let before = sim.accepted().len();
    let job = json!({"job_id": "x1", "to": "wmX", "message": {"text": "late"}, "not_after": "2020-01-01T00:00:00Z"});
    assert_eq!(send_and_wait(&env, "kf", job, 6).await, "expired");
    assert_eq!(sim.accepted().len(), before);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gate_query_is_retried_never_sent_ungated() {
    let env = env_with_fresh_gates().await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    // A human serves both conversations, and the platform fails the first two questions
    // about it (system busy). The jobs must wait for an answer, not go out ungated.
    sim.set_kefustate("bot", "oG", true);
    sim.set_service_state("kf", "wkKF1", "wmG", 3, Some("alice"));
    assert!(sim.script_api("bot", "kefustate_get", vec![-1, -1]));
    assert!(sim.script_api("kf", "service_state_get", vec![-1, -1]));
    let job = |id: &str, to: &str| json!({"job_id": id, "to": to, "message": {"text": id}});
    assert_eq!(
        send_and_wait(&env, "bot", job("gq1", "oG"), 1).await,
        "suppressed"
    );
    assert_eq!(
        send_and_wait(&env, "kf", job("gq2", "wmG"), 2).await,
        "suppressed"
    );
    let sends = sim
        .accepted()
        .iter()
        .filter(|a| a.api == "send_msg" || a.api == "sendmsg")
        .count();
    assert_eq!(
        sends, 0,
        "nothing reached the platform while a human served"
    );
    // the failed questions were retried: each job went through two failed attempts
    let attempts: Vec<i32> =
        sqlx::query_scalar("SELECT attempts FROM deliveries WHERE job_id IN ('gq1', 'gq2')")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(attempts, vec![2, 2]);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// Service states are written in batches; one batch may hold several answers for the same
/// conversation (Postgres refuses to update a row twice in one statement): the latest wins
/// and every caller gets its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_service_states_keep_the_latest_answer_per_conversation() {
    let env = env_with_fresh_gates().await;
    let store = wxdispatch::store::Store::with_pool(env.pool.clone(), 1000);
    // Queued in this order (join_all polls in order): for each conversation states 0..=4.
    let calls: Vec<_> = (0..5)
        .flat_map(|state| (0..10).map(move |c| (format!("wmB{c}"), state)))
        .collect();
    let results = futures::future::join_all(
        calls
            .iter()
            .map(|(user, state)| store.set_service_state("kf", "wkKF1", user, *state)),
    )
    .await;
    for r in &results {
        assert!(r.is_ok(), "{r:?}");
    }
    let rows: Vec<(String, i32)> = sqlx::query_as(
        "SELECT external_userid, service_state FROM conversations \
         WHERE account = 'kf' AND open_kfid = 'wkKF1' ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let expected: Vec<(String, i32)> = (0..10).map(|c| (format!("wmB{c}"), 4)).collect();
    assert_eq!(rows, expected);
    assert!(
        store
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
            < 50,
        "the 50 answers were batched"
    );
    env.cleanup().await;
}
