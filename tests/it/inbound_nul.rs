//! Inbound content the database cannot hold never holds a cursor: U+0000 in a message is
//! stored losslessly (sync_msg and chatbot push), a message the database refuses for its
//! data is quarantined while its page and the cursor move on, and a real outage still holds
//! the page.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;
use wxdispatch::app::Worker;
use wxdispatch::crypto::MsgCrypt;
use wxdispatch::tools::simulate::{SimOptions, SimState};

use crate::harness::{AES_KEY, Env, chatbot_account, wecom_account};
use crate::inbound::{InboundTap, count, wait_count};

const KFID: &str = "wkKF1";
const WAIT: Duration = Duration::from_secs(15);

/// How often each message_id was published (and its last body), once the tap is quiet.
async fn published(tap: &mut InboundTap) -> HashMap<String, (usize, Value)> {
    let mut out: HashMap<String, (usize, Value)> = HashMap::new();
    for (_, id, body) in tap.drain(Duration::from_millis(500)).await {
        let e = out.entry(id).or_insert((0, Value::Null));
        e.0 += 1;
        e.1 = body;
    }
    out
}

async fn wait_for(env: &Env, sql: &str, n: i64) {
    wait_count(env, sql, n, WAIT).await;
}

async fn sync_state(env: &Env) -> (String, i64) {
    let r = sqlx::query("SELECT cursor, pages FROM sync_cursors WHERE account = 'kf'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    (r.get("cursor"), r.get("pages"))
}

/// A WeCom account, its worker pulling at start (storing the empty log's cursor) and then
/// only on callbacks, that cursor, a tap on `wxdispatch.inbound` and the simulator.
struct Setup {
    env: Env,
    w: Worker,
    cursor0: String,
    tap: InboundTap,
    sim: Arc<SimState>,
}

async fn setup() -> Setup {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    env.cfg.sync.poll_interval_secs = 0;
    let w = env.start_worker().await;
    wait_for(&env, "SELECT count(*) FROM sync_cursors", 1).await;
    let (cursor0, _) = sync_state(&env).await;
    let tap = InboundTap::new(&env).await;
    let sim = env.sim();
    Setup {
        env,
        w,
        cursor0,
        tap,
        sim,
    }
}

/// Wake the worker's sync loop with a signed kf_msg_or_event callback carrying `token`.
async fn wake(env: &Env, w: &Worker, token: &str) {
    let (q, body) = env.sim().callback_request("kf", KFID, token);
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/callback/wecom/kf?{q}",
            w.public_addr.unwrap()
        ))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

/// `body_exact` and the jsonb body's text content of a stored message.
async fn stored(env: &Env, msgid: &str) -> (Option<String>, Option<String>) {
    let r = sqlx::query(
        "SELECT body_exact, body->'text'->>'content' AS content FROM inbound_messages WHERE msgid = $1",
    )
    .bind(msgid)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    (r.get("body_exact"), r.get("content"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_with_nul_is_stored_losslessly_and_the_cursor_moves_on() {
    let Setup {
        env,
        w,
        cursor0,
        mut tap,
        sim,
    } = setup().await;
    let (_, pages0) = sync_state(&env).await;
    let before = sim.customer_message("kf", KFID, "wmU1", "before");
    let nul = sim.customer_message("kf", KFID, "wmU2", "a\u{0}b\u{0}");
    let after = sim.customer_message("kf", KFID, "wmU3", "after");
    wake(&env, &w, &after).await;
    wait_for(&env, "SELECT count(*) FROM inbound_messages", 3).await;

    // The NUL message: jsonb with U+FFFD for U+0000, and its exact text beside it.
    let (exact, content) = stored(&env, &nul).await;
    assert_eq!(content.as_deref(), Some("a\u{FFFD}b\u{FFFD}"));
    let exact = exact.expect("body_exact is set for a body with U+0000");
    let original: Value = serde_json::from_str(&exact).unwrap();
    assert_eq!(original["text"]["content"], "a\u{0}b\u{0}");
    assert_eq!(original["msgid"], nul.as_str());
    // The others are stored as they are.
    for id in [&before, &after] {
        assert_eq!(stored(&env, id).await.0, None, "{id}: body is the message");
    }
    // Side effects were applied to all three conversations.
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM conversations WHERE last_customer_msg_at IS NOT NULL"
        )
        .await,
        3
    );
    let (cursor1, pages1) = sync_state(&env).await;
    assert_ne!(cursor1, cursor0, "the cursor moved past the page");
    assert!(pages1 > pages0);

    // The next messages flow.
    let next = sim.customer_message("kf", KFID, "wmU1", "next");
    wake(&env, &w, &next).await;
    wait_for(&env, "SELECT count(*) FROM inbound_messages", 4).await;
    assert_ne!(sync_state(&env).await.0, cursor1);
    w.stop().await.unwrap();

    // Each message published once, the NUL one exactly as the platform sent it.
    let got = published(&mut tap).await;
    assert_eq!(got.len(), 4, "{:?}", got.keys());
    assert!(got.values().all(|(n, _)| *n == 1), "published once each");
    assert_eq!(got[&nul].1["text"]["content"], "a\u{0}b\u{0}");
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_quarantine").await,
        0
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chatbot_push_with_nul_is_answered_and_stored_once() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let w = env.start_worker().await;
    let a = env.cfg.account("bot").unwrap();
    let crypt = MsgCrypt::new(a.token.expose(), AES_KEY, a.appid.as_deref().unwrap()).unwrap();
    let url = format!("http://{}/callback/chatbot/bot", w.public_addr.unwrap());
    let plain = r#"{"msgid": "cm-nul", "msgtype": "text", "openid": "oU1", "content": "x\u0000y", "createtime": 1700000000}"#;
    let client = reqwest::Client::new();
    // The push and the platform's retry (a new ciphertext of the same message).
    for _ in 0..2 {
        let push = json!({"encrypted": crypt.encrypt(plain.as_bytes())}).to_string();
        let r = client.post(&url).body(push).send().await.unwrap();
        let status = r.status().as_u16();
        assert_eq!((status, r.text().await.unwrap().as_str()), (200, "success"));
    }
    let rows =
        sqlx::query("SELECT msgid, body->>'content' AS content, body_exact FROM inbound_messages")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1, "stored once");
    assert_eq!(rows[0].get::<String, _>("msgid"), "cm-nul");
    assert_eq!(
        rows[0].get::<Option<String>, _>("content").as_deref(),
        Some("x\u{FFFD}y")
    );
    let exact: Value =
        serde_json::from_str(&rows[0].get::<Option<String>, _>("body_exact").unwrap()).unwrap();
    assert_eq!(exact, serde_json::from_str::<Value>(plain).unwrap());
    w.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_the_database_refuses_is_quarantined_and_the_cursor_moves_on() {
    let Setup {
        env,
        w,
        cursor0,
        mut tap,
        sim,
    } = setup().await;
    let first = sim.customer_message("kf", KFID, "wmU1", "first");
    let bad = sim.customer_message("kf", KFID, "wmU2", "refused");
    let last = sim.customer_message("kf", KFID, "wmU3", "last");
    // A test-only rule that refuses one msgid (SQLSTATE 23514).
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "ALTER TABLE inbound_messages ADD CONSTRAINT test_refuse CHECK (msgid <> '{bad}')"
    )))
    .execute(&env.pool)
    .await
    .unwrap();
    wake(&env, &w, &last).await;
    wait_for(&env, "SELECT count(*) FROM inbound_messages", 2).await;
    wait_for(&env, "SELECT count(*) FROM inbound_quarantine", 1).await;

    let ids: Vec<String> = sqlx::query_scalar("SELECT msgid FROM inbound_messages ORDER BY msgid")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    let mut want = vec![first.clone(), last.clone()];
    want.sort();
    assert_eq!(ids, want, "the others are stored");
    let q = sqlx::query(
        "SELECT account, msgid, open_kfid, msgtype, raw, reason, sqlstate FROM inbound_quarantine",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(q.get::<String, _>("account"), "kf");
    assert_eq!(q.get::<String, _>("msgid"), bad);
    assert_eq!(
        q.get::<Option<String>, _>("open_kfid").as_deref(),
        Some(KFID)
    );
    assert_eq!(q.get::<String, _>("msgtype"), "text");
    assert_eq!(
        q.get::<Option<String>, _>("sqlstate").as_deref(),
        Some("23514")
    );
    let reason: String = q.get("reason");
    assert!(
        reason.starts_with("SQLSTATE 23514: ") && reason.contains("test_refuse"),
        "{reason}"
    );
    let raw: Value = serde_json::from_str(&q.get::<String, _>("raw")).unwrap();
    assert_eq!(raw["msgid"], bad.as_str());
    assert_eq!(raw["text"]["content"], "refused");
    // The refused message had no side effect; the others had theirs.
    let users: Vec<String> = sqlx::query_scalar(
        "SELECT external_userid FROM conversations WHERE last_customer_msg_at IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(users, ["wmU1", "wmU3"]);
    let (cursor1, _) = sync_state(&env).await;
    assert_ne!(cursor1, cursor0, "the cursor moved past the page");

    // The next messages flow; the quarantined one is not published or refused again.
    let next = sim.customer_message("kf", KFID, "wmU1", "next");
    wake(&env, &w, &next).await;
    wait_for(&env, "SELECT count(*) FROM inbound_messages", 3).await;
    w.stop().await.unwrap();
    let got = published(&mut tap).await;
    assert_eq!(got.len(), 4, "{:?}", got.keys());
    assert!(got.values().all(|(n, _)| *n == 1), "published once each");
    assert_eq!(
        count(&env, "SELECT times::bigint FROM inbound_quarantine").await,
        1,
        "refused once"
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_that_cannot_write_still_holds_the_page() {
    let Setup {
        env,
        w,
        cursor0,
        sim,
        ..
    } = setup().await;
    // Every insert fails as a read-only database would (SQLSTATE 25006), until dropped; a
    // sequence (not rolled back) counts the attempts.
    for stmt in [
        "CREATE SEQUENCE test_attempts",
        "CREATE FUNCTION test_read_only() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN PERFORM nextval('test_attempts');
         RAISE EXCEPTION 'read-only for the test' USING ERRCODE = '25006'; END $$",
        "CREATE TRIGGER test_read_only BEFORE INSERT ON inbound_messages
         FOR EACH ROW EXECUTE FUNCTION test_read_only()",
    ] {
        sqlx::query(stmt).execute(&env.pool).await.unwrap();
    }
    let m1 = sim.customer_message("kf", KFID, "wmU1", "one");
    let m2 = sim.customer_message("kf", KFID, "wmU2", "two");
    wake(&env, &w, &m2).await;
    // The loop retries the page (5–50 ms backoff in tests): let it try a few times.
    wait_for(
        &env,
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_attempts",
        4,
    )
    .await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_quarantine").await,
        0,
        "an outage quarantines nothing"
    );
    assert_eq!(sync_state(&env).await.0, cursor0, "the cursor is held");
    // Once the database writes again, the page is stored.
    sqlx::query("DROP TRIGGER test_read_only ON inbound_messages")
        .execute(&env.pool)
        .await
        .unwrap();
    wait_for(&env, "SELECT count(*) FROM inbound_messages", 2).await;
    assert_ne!(sync_state(&env).await.0, cursor0);
    let ids: Vec<String> = sqlx::query_scalar("SELECT msgid FROM inbound_messages")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert!(ids.contains(&m1) && ids.contains(&m2));
    w.stop().await.unwrap();
    env.cleanup().await;
}
