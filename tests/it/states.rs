//! The chatbot's four service states (issue 20, point 2), end to end with the real broker and
//! database and the simulator: the gate reads kefustate/get `type=all`, suppresses bot replies
//! in `personserving` (and in `needperson` when the account sets `gate_needperson`), transfer
//! jobs set the four states with `expires`, bad ones are dead-lettered naming the field, and
//! `wxdispatch status` shows the state.

use std::time::Duration;

use serde_json::{Value, json};
use wxdispatch::broker::{self, H_REASON};
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};

/// Two chatbot accounts: `bot` with the default (`needperson` does not gate) and `botg` with
/// `gate_needperson = true`.
async fn env_two_bots(gate_cache_secs: u64) -> Env {
    let mut env = Env::new(
        |b| vec![chatbot_account("bot", b), chatbot_account("botg", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.accounts[1].gate_needperson = true;
    env.cfg.worker.gate_cache_secs = gate_cache_secs;
    env
}

/// Publish `job` to `account`, wait until `n_terminal` rows are terminal, return its status.
async fn run_job(env: &Env, account: &str, job: Value, n_terminal: i64) -> String {
    let id = job["job_id"].as_str().unwrap_or_default().to_owned();
    env.publish(account, &job).await;
    env.wait_terminal(n_terminal, Duration::from_secs(20)).await;
    env.status_of(&id).await.unwrap_or_default()
}

fn reply(id: &str, to: &str) -> Value {
    json!({"job_id": id, "to": to, "message": {"text": id}})
}

/// Sends that reached the simulator, by recipient.
fn sent_to(env: &Env, to: &str) -> usize {
    env.sim()
        .accepted()
        .iter()
        .filter(|a| a.api == "sendmsg" && a.recipient == to)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personserving_gates_and_needperson_gates_only_with_the_key() {
    // Always ask: the test sets the state between jobs.
    let env = env_two_bots(0).await;
    let worker = env.start_worker().await;
    let sim = env.sim();

    // personserving: suppressed on both accounts.
    assert!(sim.set_chatbot_state("bot", "oP", "personserving", None));
    assert!(sim.set_chatbot_state("botg", "oP", "personserving", None));
    assert_eq!(
        run_job(&env, "bot", reply("p1", "oP"), 1).await,
        "suppressed"
    );
    assert_eq!(
        run_job(&env, "botg", reply("p2", "oP"), 2).await,
        "suppressed"
    );

    // needperson: kefustate is still "off" (no human serves), so only the four-state status
    // tells it. Sent by default, suppressed with gate_needperson.
    assert!(sim.set_chatbot_state("bot", "oN", "needperson", None));
    assert!(sim.set_chatbot_state("botg", "oN", "needperson", None));
    assert_eq!(run_job(&env, "bot", reply("n1", "oN"), 3).await, "sent");
    assert_eq!(
        run_job(&env, "botg", reply("n2", "oN"), 4).await,
        "suppressed"
    );

    // complete and asking: the bot answers on both.
    assert!(sim.set_chatbot_state("botg", "oC", "complete", None));
    assert_eq!(run_job(&env, "botg", reply("c1", "oC"), 5).await, "sent");
    assert_eq!(run_job(&env, "botg", reply("a1", "oA"), 6).await, "sent");

    assert_eq!(sent_to(&env, "oP"), 0, "nothing reached a served user");
    assert_eq!(sent_to(&env, "oN"), 1, "only bot's reply (n1) to oN");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_sets_needperson_with_expires_and_the_state_reverts() {
    // A long cache: the gate must still stop trusting the transfer's state once it expires.
    let env = env_two_bots(30).await;
    let worker = env.start_worker().await;
    let sim = env.sim();

    let tr = json!({"job_id": "t1", "kind": "transfer", "to": "oT",
                    "kefustate": "needperson", "expires": 2});
    assert_eq!(run_job(&env, "botg", tr, 1).await, "sent");
    let change = sim
        .accepted()
        .into_iter()
        .find(|a| a.api == "kefustate_change")
        .expect("the transfer reached kefustate/change");
    assert_eq!(change.body["kefustate"], "needperson");
    assert_eq!(change.body["expires"], "2");
    assert_eq!(sim.chatbot_state("botg", "oT"), "needperson");

    // Right after the transfer the lane knows the state without asking: suppressed.
    assert_eq!(
        run_job(&env, "botg", reply("r1", "oT"), 2).await,
        "suppressed"
    );
    // After `expires` the platform reverted the state, and the lane's cache let go of it.
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    assert_eq!(sim.chatbot_state("botg", "oT"), "asking");
    assert_eq!(run_job(&env, "botg", reply("r2", "oT"), 3).await, "sent");

    // The older on/off still work, and are sent as they were (no expires).
    let on = json!({"job_id": "t2", "kind": "transfer", "to": "oO", "kefustate": "on"});
    assert_eq!(run_job(&env, "bot", on, 4).await, "sent");
    assert!(sim.kefustate("bot", "oO"));
    let legacy = sim
        .accepted()
        .into_iter()
        .find(|a| a.api == "kefustate_change" && a.recipient == "oO")
        .expect("the on transfer reached kefustate/change");
    assert_eq!(legacy.body["kefustate"], "on");
    assert!(legacy.body.get("expires").is_none(), "{}", legacy.body);
    assert_eq!(
        run_job(&env, "bot", reply("r3", "oO"), 5).await,
        "suppressed"
    );
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_states_and_expires_are_dead_lettered_naming_the_field() {
    let env = env_two_bots(0).await;
    let worker = env.start_worker().await;
    let jobs = [
        (
            "b1",
            json!({"kind": "transfer", "to": "oB", "kefustate": "waiting"}),
            "invalid_kefustate",
        ),
        (
            "b2",
            json!({"kind": "transfer", "to": "oB", "kefustate": "needperson", "expires": 0}),
            "invalid_expires",
        ),
        (
            "b3",
            json!({"kind": "transfer", "to": "oB", "kefustate": "asking", "expires": 86_401}),
            "invalid_expires",
        ),
        (
            "b4",
            json!({"kind": "transfer", "to": "oB", "kefustate": "off", "expires": 60}),
            "invalid_expires",
        ),
    ];
    for (id, mut job, _) in jobs.clone() {
        job["job_id"] = json!(id);
        env.publish("bot", &job).await;
    }
    env.wait_terminal(4, Duration::from_secs(20)).await;
    let dead = env.dead_letters(4, Duration::from_secs(10)).await;
    for (id, _, want) in jobs {
        assert_eq!(env.status_of(id).await.as_deref(), Some("dead"), "{id}");
        let reason = dead
            .iter()
            .find(|(b, _)| b["job_id"] == id)
            .and_then(|(_, p)| broker::header_str(p, H_REASON));
        assert_eq!(reason.as_deref(), Some(want), "{id}");
    }
    assert!(
        env.sim().accepted().is_empty(),
        "nothing reached the platform"
    );
    // The lane goes on.
    assert_eq!(run_job(&env, "bot", reply("ok1", "oB"), 5).await, "sent");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// A stand-in for the Dialogue Open Platform whose kefustate/get answers a `status` nobody
/// documented (and errcode 0 to anything else).
async fn platform_with_unknown_status() -> String {
    async fn answer(uri: axum::http::Uri) -> axum::Json<Value> {
        if uri.path().contains("/kefustate/get/") {
            axum::Json(
                json!({"errcode": 0, "errmsg": "ok", "kefustate": "off", "status": "waiting"}),
            )
        } else {
            axum::Json(json!({"errcode": 0, "errmsg": "ok"}))
        }
    }
    let app = axum::Router::new().fallback(axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_status_dead_letters_the_reply_with_its_reason() {
    let fake = platform_with_unknown_status().await;
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    env.cfg.accounts[0].base_url = Some(fake);
    env.cfg.worker.gate_cache_secs = 0;
    let worker = env.start_worker().await;
    assert_eq!(run_job(&env, "bot", reply("u1", "oU"), 1).await, "dead");
    let dead = env.dead_letters(1, Duration::from_secs(10)).await;
    assert_eq!(
        broker::header_str(&dead[0].1, H_REASON).as_deref(),
        Some("unknown_chatbot_state")
    );
    let error: Option<String> =
        sqlx::query_scalar("SELECT error FROM deliveries WHERE job_id = 'u1'")
            .fetch_one(&env.pool)
            .await
            .unwrap();
    let error = error.unwrap_or_default();
    assert!(
        error.starts_with("unknown_chatbot_state") && error.contains("waiting"),
        "{error}"
    );
    // gate "none" needs no state and is sent.
    let mut own = reply("u2", "oU");
    own["gate"] = json!("none");
    assert_eq!(run_job(&env, "bot", own, 2).await, "sent");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_conversations_chatbot_state() {
    let env = env_two_bots(0).await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    assert_eq!(run_job(&env, "bot", reply("s1", "oS"), 1).await, "sent");
    worker.stop().await.unwrap();
    assert!(sim.set_chatbot_state("bot", "oS", "needperson", None));

    let dir = tempfile::tempdir().unwrap();
    let cfg = crate::crash::write_config(&env, dir.path());
    let status = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
            .args(["status", "s1", "--config"])
            .arg(&cfg)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = status(&[]);
    assert!(text.contains("  chatbot    needperson\n"), "{text}");
    assert!(!text.contains("TOKENbot"), "no token in the output: {text}");
    sim.set_kefustate("bot", "oS", true);
    let text = status(&[]);
    assert!(text.contains("  chatbot    personserving\n"), "{text}");
    env.cleanup().await;
}
