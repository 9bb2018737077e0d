//! Inbound: WeCom callbacks (URL verification, kf_msg_or_event), the sync_msg loop, the
//! chatbot push, the conversation side effects, and a SIGKILL in the middle of a backlog sync.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::Row;
use wxdispatch::broker;
use wxdispatch::crypto::MsgCrypt;
use wxdispatch::tools::simulate::SimOptions;

use crate::crash::{sigterm, write_config};
use crate::harness::{AES_KEY, AES_KEY_2, Env, chatbot_account, wecom_account};

const KFID: &str = "wkKF1";

/// An exclusive queue bound to `wxdispatch.inbound` with `#`; collects (routing key,
/// message_id, body) in the background.
pub(crate) struct InboundTap {
    rx: tokio::sync::mpsc::UnboundedReceiver<(String, String, Value)>,
    got: Vec<(String, String, Value)>,
    _ch: lapin::Channel,
}

impl InboundTap {
    pub(crate) async fn new(env: &Env) -> Self {
        let (ch, name) = crate::harness::bound_queue(env, broker::INBOUND, "#").await;
        let mut deliveries = crate::harness::forward_deliveries(&ch, &name).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(d) = deliveries.recv().await {
                let id = d
                    .properties
                    .message_id()
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let body = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                if tx.send((d.routing_key.to_string(), id, body)).is_err() {
                    break;
                }
            }
        });
        Self {
            rx,
            got: Vec::new(),
            _ch: ch,
        }
    }

    /// Distinct message ids received so far (without waiting).
    fn distinct_so_far(&mut self) -> usize {
        while let Ok(m) = self.rx.try_recv() {
            self.got.push(m);
        }
        self.got
            .iter()
            .map(|(_, id, _)| id.as_str())
            .collect::<HashSet<_>>()
            .len()
    }

    /// Everything received, once `quiet` passes without a new message.
    pub(crate) async fn drain(&mut self, quiet: Duration) -> Vec<(String, String, Value)> {
        while let Ok(Some(m)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            self.got.push(m);
        }
        std::mem::take(&mut self.got)
    }
}

pub(crate) async fn count(env: &Env, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&env.pool)
        .await
        .unwrap()
}

/// Poll `sql` (a count) until it reaches `n`.
pub(crate) async fn wait_count(env: &Env, sql: &str, n: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = count(env, sql).await;
        if c >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}: {c} of {n} after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub(crate) fn url(worker: &wxdispatch::app::Worker, path: &str) -> String {
    format!("http://{}{path}", worker.public_addr.unwrap())
}

/// The account's callback crypt, built from the test config (as WeCom would hold it).
fn wecom_crypt(env: &Env) -> MsgCrypt {
    let a = env.cfg.account("kf").unwrap();
    MsgCrypt::new(a.token.expose(), AES_KEY_2, a.corpid.as_deref().unwrap()).unwrap()
}

/// A kf_msg_or_event callback signed with `ts` (for stale-timestamp checks).
fn callback_at(crypt: &MsgCrypt, ts: i64, token: &str) -> (String, String) {
    let plain = format!(
        "<xml><ToUserName><![CDATA[wwkf]]></ToUserName><CreateTime>{ts}</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[kf_msg_or_event]]></Event><Token><![CDATA[{token}]]></Token><OpenKfId><![CDATA[{KFID}]]></OpenKfId></xml>"
    );
    let enc = crypt.encrypt(plain.as_bytes());
    let sig = crypt.signature(&ts.to_string(), "12345", &enc);
    (
        format!("msg_signature={sig}&timestamp={ts}&nonce=12345"),
        format!(
            "<xml><ToUserName><![CDATA[wwkf]]></ToUserName><AgentID><![CDATA[]]></AgentID><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
        ),
    )
}

async fn post(client: &reqwest::Client, url: &str, body: String) -> (u16, String) {
    let r = client.post(url).body(body).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Start a worker that pulls only when a callback arrives (after its start-up pull).
async fn callback_only_worker(env: &mut Env, page_limit: u32) -> wxdispatch::app::Worker {
    env.cfg.sync.poll_interval_secs = 0;
    env.cfg.sync.page_limit = page_limit;
    let w = env.start_worker().await;
    // The start-up pull stores the cursor of the (empty) log.
    wait_count(
        env,
        "SELECT count(*) FROM sync_cursors",
        1,
        Duration::from_secs(20),
    )
    .await;
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_callbacks_are_refused_and_store_nothing() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = callback_only_worker(&mut env, 100).await;
    let mut tap = InboundTap::new(&env).await;
    let client = reqwest::Client::new();
    let sim = env.sim();
    let token = sim.customer_message("kf", KFID, "wmU1", "hello");
    let cb = url(&worker, "/callback/wecom/kf");
    let (query, body) = sim.callback_request("kf", KFID, &token);

    // A wrong signature.
    let bad_sig = query
        .split('&')
        .map(|kv| {
            if kv.starts_with("msg_signature=") {
                format!("msg_signature={}", "0".repeat(40))
            } else {
                kv.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("&");
    let (s, _) = post(&client, &format!("{cb}?{bad_sig}"), body.clone()).await;
    assert_eq!(s, 400, "bad signature");
    // The right signature over another ciphertext (a tampered body).
    let tampered = body.replacen("<Encrypt><![CDATA[", "<Encrypt><![CDATA[AAAA", 1);
    let (s, _) = post(&client, &format!("{cb}?{query}"), tampered).await;
    assert_eq!(s, 400, "tampered body");
    // Stale timestamp, correctly signed.
    let crypt = wecom_crypt(&env);
    let (stale_q, stale_b) = callback_at(&crypt, chrono::Utc::now().timestamp() - 1000, &token);
    let (s, _) = post(&client, &format!("{cb}?{stale_q}"), stale_b).await;
    assert_eq!(s, 400, "stale timestamp");
    // Missing parameters, malformed XML, oversized body, unknown account.
    let (s, _) = post(&client, &cb, body.clone()).await;
    assert_eq!(s, 400, "no query");
    let (s, _) = post(&client, &format!("{cb}?{query}"), "<xml><Encrypt>".into()).await;
    assert_eq!(s, 400, "malformed XML");
    let (s, _) = post(&client, &format!("{cb}?{query}"), "<xml></xml>".into()).await;
    assert_eq!(s, 400, "no Encrypt");
    let huge = format!(
        "<xml><Encrypt>{}</Encrypt></xml>",
        "A".repeat(env.cfg.http.max_body_bytes + 1)
    );
    let (s, _) = post(&client, &format!("{cb}?{query}"), huge).await;
    assert_eq!(s, 413, "oversized");
    let (s, _) = post(
        &client,
        &url(&worker, &format!("/callback/wecom/nope?{query}")),
        body.clone(),
    )
    .await;
    assert_eq!(s, 400, "unknown account");
    // Garbage bytes never crash the handler.
    let r = client
        .post(format!("{cb}?{query}"))
        .body(vec![0xffu8, 0xfe, 0x00, 0x3c])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // None of these woke the sync loop: the customer message is still unread.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        0
    );
    assert!(tap.drain(Duration::from_millis(200)).await.is_empty());

    // The genuine callback does.
    let (s, text) = post(&client, &format!("{cb}?{query}"), body).await;
    assert_eq!((s, text.as_str()), (200, "success"));
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        1,
        Duration::from_secs(10),
    )
    .await;
    let got = tap.drain(Duration::from_millis(500)).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, "kf.text");
    assert_eq!(got[0].1, token, "message_id is the platform msgid");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_verification_answers_the_echostr() {
    let env = Env::new(
        |b| {
            let mut no_cb = wecom_account("plain", b);
            no_cb.token = Default::default();
            no_cb.encoding_aes_key = Default::default();
            no_cb.open_kfids = vec!["wkP".into()];
            vec![wecom_account("kf", b), no_cb]
        },
        SimOptions::default(),
    )
    .await;
    let worker = env.start_worker().await;
    let client = reqwest::Client::new();
    let (query, plain) = env.sim().verify_url_request("kf").unwrap();
    let r = client
        .get(url(&worker, &format!("/callback/wecom/kf?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.unwrap(), plain, "the bare decrypted echostr");
    // A different nonce breaks the signature.
    let bad = query.replace("nonce=", "nonce=9");
    let r = client
        .get(url(&worker, &format!("/callback/wecom/kf?{bad}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    // An account without callback credentials has no callback endpoint.
    let r = client
        .get(url(&worker, &format!("/callback/wecom/plain?{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_pulls_every_page_once_including_empty_ones() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = callback_only_worker(&mut env, 10).await;
    let mut tap = InboundTap::new(&env).await;
    let sim = env.sim();
    // The first two pages the loop reads are empty with has_more = 1.
    sim.inject_empty_page("kf", KFID);
    sim.inject_empty_page("kf", KFID);
    let mut expected = HashSet::new();
    let mut token = String::new();
    for i in 0..35 {
        token = sim.customer_message("kf", KFID, &format!("wmU{}", i % 4), &format!("m{i}"));
        expected.insert(token.clone());
    }
    let welcome = sim.enter_session("kf", KFID, "wmU9");
    assert!(!welcome.is_empty());
    let (query, body) = sim.callback_request("kf", KFID, &token);
    let r = reqwest::Client::new()
        .post(url(&worker, &format!("/callback/wecom/kf?{query}")))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        36,
        Duration::from_secs(20),
    )
    .await;
    let got = tap.drain(Duration::from_millis(700)).await;
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for (rk, id, _) in &got {
        *per_id.entry(id.as_str()).or_default() += 1;
        assert!(rk == "kf.text" || rk == "kf.event", "{rk}");
    }
    assert_eq!(got.len(), 36, "each message published once");
    assert!(per_id.values().all(|&n| n == 1));
    for id in &expected {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "{id}");
    }
    let rows = sqlx::query("SELECT msgid, msgtype, origin, external_userid FROM inbound_messages")
        .fetch_all(&env.pool)
        .await
        .unwrap();
    assert_eq!(rows.len(), 36);
    let events: Vec<_> = rows
        .iter()
        .filter(|r| r.get::<String, _>("msgtype") == "event")
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].get::<Option<i32>, _>("origin"), Some(4));
    assert_eq!(
        events[0]
            .get::<Option<String>, _>("external_userid")
            .as_deref(),
        Some("wmU9")
    );
    // 36 messages at 10 a page after 2 empty pages: 2 + 4 pages after the start-up page.
    let pages: i64 = count(&env, "SELECT pages FROM sync_cursors").await;
    assert_eq!(
        pages,
        1 + 2 + 4,
        "start-up page, 2 empty pages, 4 full pages"
    );
    // Customer messages opened the reply window of every customer.
    let conv = count(
        &env,
        "SELECT count(*) FROM conversations WHERE last_customer_msg_at IS NOT NULL AND sent_since_customer = 0",
    )
    .await;
    assert_eq!(conv, 4);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_and_throttling_do_not_lose_messages() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    // retry.throttle_pause_secs = 1 in the test config (WeCom's own minimum is 60 s).
    let worker = callback_only_worker(&mut env, 100).await;
    let sim = env.sim();
    let client = reqwest::Client::new();
    // A Token the platform does not know (expired): 95007, dropped, pulled without it.
    sim.customer_message("kf", KFID, "wmU1", "first");
    let (q, b) = sim.callback_request("kf", KFID, "expired-token");
    assert_eq!(
        post(
            &client,
            &url(&worker, &format!("/callback/wecom/kf?{q}")),
            b
        )
        .await
        .0,
        200
    );
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(sim.errcode_counts().get("kf:95007").copied(), Some(1));
    // 45009 on the next sync_msg: the loop pauses (1 s here), then pulls.
    assert!(sim.script_api("kf", "sync_msg", vec![45009]));
    let tok = sim.customer_message("kf", KFID, "wmU1", "second");
    let t0 = Instant::now();
    let (q, b) = sim.callback_request("kf", KFID, &tok);
    assert_eq!(
        post(
            &client,
            &url(&worker, &format!("/callback/wecom/kf?{q}")),
            b
        )
        .await
        .0,
        200
    );
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        2,
        Duration::from_secs(10),
    )
    .await;
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "pulled {:?} after a 45009",
        t0.elapsed()
    );
    assert_eq!(sim.errcode_counts().get("kf:45009").copied(), Some(1));
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_update_deliveries_and_conversations() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let worker = callback_only_worker(&mut env, 100).await;
    let sim = env.sim();
    let client = reqwest::Client::new();
    let cb = url(&worker, "/callback/wecom/kf");
    // A customer writes; we answer; the platform later reports the answer undelivered.
    let tok = sim.customer_message("kf", KFID, "wmU1", "hi");
    let (q, b) = sim.callback_request("kf", KFID, &tok);
    assert_eq!(post(&client, &format!("{cb}?{q}"), b).await.0, 200);
    wait_count(
        &env,
        "SELECT count(*) FROM conversations WHERE external_userid = 'wmU1' AND last_customer_msg_at IS NOT NULL",
        1,
        Duration::from_secs(10),
    )
    .await;
    env.publish(
        "kf",
        &json!({"job_id": "reply-1", "to": "wmU1", "open_kfid": KFID, "message": {"text": "hello"}}),
    )
    .await;
    env.wait_terminal(1, Duration::from_secs(20)).await;
    assert_eq!(env.status_of("reply-1").await.as_deref(), Some("sent"));
    sim.push_event(
        "kf",
        KFID,
        json!({"event_type": "msg_send_fail", "external_userid": "wmU1", "fail_msgid": "reply-1", "fail_type": 4}),
    );
    // Servicers: alice picks up wmU2; bob picks up wmU3, who is then transferred to carol;
    // wmU4's session is picked up and ended.
    let ssc = |user: &str, change: i64, servicer: &str| {
        json!({"event_type": "session_status_change", "external_userid": user,
               "change_type": change, "old_servicer_userid": "", "new_servicer_userid": servicer,
               "msg_code": "code"})
    };
    sim.push_event("kf", KFID, ssc("wmU2", 1, "alice"));
    sim.push_event("kf", KFID, ssc("wmU3", 1, "bob"));
    sim.push_event("kf", KFID, ssc("wmU3", 2, "carol"));
    sim.push_event("kf", KFID, ssc("wmU4", 1, "dave"));
    sim.push_event("kf", KFID, ssc("wmU4", 3, ""));
    let tok = sim.issue_callback_token("kf", KFID);
    let (q, b) = sim.callback_request("kf", KFID, &tok);
    assert_eq!(post(&client, &format!("{cb}?{q}"), b).await.0, 200);
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        7,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(env.status_of("reply-1").await.as_deref(), Some("failed"));
    let row = sqlx::query("SELECT error FROM deliveries WHERE job_id = 'reply-1'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(
        row.get::<Option<String>, _>("error").as_deref(),
        Some("msg_send_fail: fail_type 4")
    );
    let ev = count(
        &env,
        "SELECT count(*) FROM delivery_events WHERE job_id = 'reply-1' AND status = 'failed'",
    )
    .await;
    assert_eq!(ev, 1);
    let states: HashMap<String, (Option<i32>, Option<String>)> = sqlx::query(
        "SELECT external_userid, service_state, servicer_userid FROM conversations WHERE account = 'kf' AND open_kfid = $1",
    )
    .bind(KFID)
    .fetch_all(&env.pool)
    .await
    .unwrap()
    .into_iter()
    .map(|r| {
        (
            r.get("external_userid"),
            (r.get("service_state"), r.get("servicer_userid")),
        )
    })
    .collect();
    assert_eq!(states["wmU2"], (Some(3), Some("alice".into())));
    assert_eq!(states["wmU3"], (Some(3), Some("carol".into())));
    assert_eq!(states["wmU4"], (Some(4), None));
    let with_time = count(
        &env,
        "SELECT count(*) FROM conversations WHERE external_userid IN ('wmU2', 'wmU3', 'wmU4') AND state_updated_at IS NOT NULL",
    )
    .await;
    assert_eq!(with_time, 3);
    // A replay of the same events (e.g. after a cursor reset) changes nothing.
    sqlx::query("DELETE FROM sync_cursors")
        .execute(&env.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE conversations SET service_state = 1 WHERE external_userid = 'wmU2'")
        .execute(&env.pool)
        .await
        .unwrap();
    let tok = sim.issue_callback_token("kf", KFID);
    let (q, b) = sim.callback_request("kf", KFID, &tok);
    assert_eq!(post(&client, &format!("{cb}?{q}"), b).await.0, 200);
    wait_count(
        &env,
        "SELECT count(*) FROM sync_cursors",
        1,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(
        count(&env, "SELECT count(*) FROM inbound_messages").await,
        7
    );
    let s: Option<i32> = sqlx::query_scalar(
        "SELECT service_state FROM conversations WHERE external_userid = 'wmU2'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(s, Some(1), "stored messages are not applied twice");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chatbot_push_is_stored_and_published_once() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let worker = env.start_worker().await;
    let mut tap = InboundTap::new(&env).await;
    let client = reqwest::Client::new();
    let a = env.cfg.account("bot").unwrap();
    let crypt = MsgCrypt::new(a.token.expose(), AES_KEY, a.appid.as_deref().unwrap()).unwrap();
    let cb = url(&worker, "/callback/chatbot/bot");
    let plain = r#"{"msgid": "cm-1", "msgtype": "text", "openid": "oU1", "content": "hello", "createtime": 1700000000}"#;
    let push = json!({"encrypted": crypt.encrypt(plain.as_bytes())}).to_string();
    assert_eq!(
        post(&client, &cb, push.clone()).await,
        (200, "success".into())
    );
    // The platform retries (a new ciphertext of the same message): stored and published once.
    let again = json!({"encrypted": crypt.encrypt(plain.as_bytes())}).to_string();
    assert_eq!(post(&client, &cb, again).await.0, 200);
    // An XML push without a msgid: deduplicated by the plaintext's hash.
    let xml = "<xml><openid><![CDATA[oU2]]></openid><event><![CDATA[waiterEnter]]></event></xml>";
    for _ in 0..2 {
        let p = json!({"encrypted": crypt.encrypt(xml.as_bytes())}).to_string();
        assert_eq!(post(&client, &cb, p).await.0, 200);
    }
    // Bad input.
    let other = MsgCrypt::new("x", AES_KEY_2, a.appid.as_deref().unwrap()).unwrap();
    for (body, want) in [
        ("not json".to_owned(), 400),
        ("{}".to_owned(), 400),
        (json!({"encrypted": "%%%"}).to_string(), 400),
        (json!({"encrypted": other.encrypt(b"{}")}).to_string(), 400),
        (
            json!({"encrypted": crypt.encrypt(b"plain words")}).to_string(),
            400,
        ),
    ] {
        assert_eq!(post(&client, &cb, body.clone()).await.0, want, "{body}");
    }
    assert_eq!(
        post(&client, &url(&worker, "/callback/chatbot/nobody"), push)
            .await
            .0,
        400
    );
    let rows =
        sqlx::query("SELECT msgid, msgtype, external_userid FROM inbound_messages ORDER BY msgid")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].get::<String, _>("msgid"), "cm-1");
    assert_eq!(rows[0].get::<String, _>("msgtype"), "text");
    assert!(rows[1].get::<String, _>("msgid").starts_with("sha1:"));
    assert_eq!(rows[1].get::<String, _>("msgtype"), "event");
    let got = tap.drain(Duration::from_millis(500)).await;
    let keys: Vec<(&str, &str)> = got
        .iter()
        .map(|(k, id, _)| (k.as_str(), id.as_str()))
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0], ("bot.text", "cm-1"));
    assert_eq!(keys[1].0, "bot.event");
    assert_eq!(got[0].2["content"], "hello");
    worker.stop().await.unwrap();
    env.cleanup().await;
}

/// The stored cursor is the simulator's final one: reading from it gives nothing more, and
/// reading the whole log from the start ends on the same cursor.
async fn assert_cursor_is_final(env: &Env, stored: &str) {
    let a = env.cfg.account("kf").unwrap();
    let base = a.base_url();
    let client = reqwest::Client::new();
    let tok: Value = client
        .get(format!("{base}/cgi-bin/gettoken"))
        .query(&[
            ("corpid", a.corpid.as_deref().unwrap()),
            ("corpsecret", a.secret.expose()),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let at = tok["access_token"].as_str().unwrap().to_owned();
    let sync = |cursor: Option<String>| {
        let client = client.clone();
        let at = at.clone();
        let url = format!("{base}/cgi-bin/kf/sync_msg");
        async move {
            let mut body = json!({"open_kfid": KFID, "limit": 1000});
            if let Some(c) = cursor {
                body["cursor"] = json!(c);
            }
            let v: Value = client
                .post(url)
                .query(&[("access_token", at)])
                .json(&body)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(v["errcode"], 0, "{v}");
            v
        }
    };
    let v = sync(Some(stored.to_owned())).await;
    assert_eq!(v["has_more"], 0);
    assert_eq!(v["msg_list"].as_array().unwrap().len(), 0);
    assert_eq!(v["next_cursor"], stored);
    let mut cursor = None;
    loop {
        let v = sync(cursor.clone()).await;
        cursor = v["next_cursor"].as_str().map(str::to_owned);
        if v["has_more"] == 0 {
            break;
        }
    }
    assert_eq!(
        cursor.as_deref(),
        Some(stored),
        "the simulator's final cursor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_backlog_sync_loses_and_skips_nothing() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let total = 5_000usize;
    let sim = env.sim();
    let mut expected = HashSet::with_capacity(total);
    for i in 0..total {
        expected.insert(sim.customer_message(
            "kf",
            KFID,
            &format!("wmU{}", i % 50),
            &format!("backlog {i}"),
        ));
    }
    let mut tap = InboundTap::new(&env).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = write_config(&env, dir.path());
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&cfg_path)
            .unwrap();
        writeln!(f, "[sync]\npage_limit = 100\npoll_interval_secs = 1").unwrap();
    }
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
            .args(["run", "--config"])
            .arg(&cfg_path)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .unwrap()
    };
    let mut child = spawn();
    // Kill it once a fifth of the backlog is committed, preferably while a page is
    // published but not yet committed (the window this test is about); past half the
    // backlog, kill anyway.
    let t0 = Instant::now();
    let mut in_window = false;
    loop {
        let n = count(&env, "SELECT count(*) FROM inbound_messages").await;
        let published = tap.distinct_so_far() as i64;
        if n >= (total / 5) as i64 && published > n {
            in_window = true;
            break;
        }
        if n >= (total / 2) as i64 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no sync progress ({n})"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = count(&env, "SELECT count(*) FROM inbound_messages").await;
    let published_at_kill = tap.distinct_so_far();
    assert!(
        (at_kill as usize) < total,
        "the kill came after the sync finished ({at_kill}); nothing was tested"
    );

    let mut child = spawn();
    wait_count(
        &env,
        "SELECT count(*) FROM inbound_messages",
        total as i64,
        Duration::from_secs(120),
    )
    .await;
    // Let a poll or two run: nothing more appears.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status:?}"
    );

    let stored: HashSet<String> = sqlx::query_scalar("SELECT msgid FROM inbound_messages")
        .fetch_all(&env.pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!(
        stored.len(),
        total,
        "every msgid exactly once (primary key)"
    );
    assert_eq!(stored, expected, "no message lost, none invented");
    let cursor: String = sqlx::query_scalar("SELECT cursor FROM sync_cursors WHERE account = 'kf'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_cursor_is_final(&env, &cursor).await;

    let got = tap.drain(Duration::from_millis(1500)).await;
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for (rk, id, _) in got {
        assert_eq!(rk, "kf.text");
        *per_id.entry(id).or_default() += 1;
    }
    for id in &expected {
        assert!(
            per_id.get(id).is_some_and(|&n| n >= 1),
            "{id} never published"
        );
    }
    assert_eq!(
        per_id.len(),
        total,
        "nothing published that is not in the log"
    );
    let dups: usize = per_id.values().map(|n| n - 1).sum();
    // Only the page in flight at the kill (published, not committed) is published again.
    assert!(dups <= 100, "{dups} duplicate publishes");
    // Whatever was published but not committed at the kill was read and published again.
    assert!(
        dups >= published_at_kill.saturating_sub(at_kill as usize),
        "{published_at_kill} published, {at_kill} committed at the kill, only {dups} re-published"
    );
    println!(
        "sync crash test: {total} messages; SIGKILL with {at_kill} stored and {published_at_kill} published \
         (between publish and commit: {in_window}); {dups} published twice (the page in flight)"
    );
    env.cleanup().await;
}
