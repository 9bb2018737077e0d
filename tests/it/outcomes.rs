//! Outcome events (README "Outcome events"): every terminal outcome is published to
//! `wxdispatch.outcomes` with routing key `<account>.<status>`, the job's correlation_id, a
//! deterministic message_id, and a copy to its reply_to; a recorded outcome whose event was
//! not published yet (relay down, crash) is published later.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};
use wxdispatch::broker;
use wxdispatch::engine::outcomes::message_id;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account, wecom_account};

/// One event as a consumer sees it.
#[derive(Debug, Clone)]
struct Got {
    key: String,
    props: BasicProperties,
    body: Value,
}

impl Got {
    fn message_id(&self) -> String {
        self.props
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .unwrap_or_default()
    }
    fn correlation_id(&self) -> Option<String> {
        self.props.correlation_id().as_ref().map(|s| s.to_string())
    }
}

/// An exclusive queue bound to `wxdispatch.outcomes` (declared here: the worker may not have
/// started yet) with `binding`, consumed in the background.
struct Tap {
    rx: tokio::sync::mpsc::UnboundedReceiver<Got>,
    _ch: lapin::Channel,
}

impl Tap {
    async fn new(env: &Env, binding: &str) -> Self {
        let ch = env.conn.create_channel().await.unwrap();
        broker::declare_outcomes(&ch).await.unwrap();
        let (ch, name) = crate::harness::bound_queue(env, broker::OUTCOMES, binding).await;
        Self::consume(ch, &name).await
    }

    async fn consume(ch: lapin::Channel, queue: &str) -> Self {
        let mut deliveries = crate::harness::forward_deliveries(&ch, queue).await;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(d) = deliveries.recv().await {
                let body = serde_json::from_slice(&d.data).unwrap_or(Value::Null);
                let got = Got {
                    key: d.routing_key.to_string(),
                    props: d.properties.clone(),
                    body,
                };
                if tx.send(got).is_err() {
                    return;
                }
            }
        });
        Self { rx, _ch: ch }
    }

    /// The next `n` events (panics after `timeout`).
    async fn take(&mut self, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Ok(Some(g)) => out.push(g),
                _ => panic!("only {} of {n} outcome events: {out:#?}", out.len()),
            }
        }
        out
    }

    /// Whatever else arrives within `quiet`.
    async fn rest(&mut self, quiet: Duration) -> Vec<Got> {
        let mut out = Vec::new();
        while let Ok(Some(g)) = tokio::time::timeout(quiet, self.rx.recv()).await {
            out.push(g);
        }
        out
    }
}

/// Publish `job` to `account` with AMQP properties the producer sets.
async fn publish_with(env: &Env, account: &str, job: &Value, props: BasicProperties) {
    let id = job["job_id"].as_str().unwrap_or("");
    let props = props
        .with_content_type("application/json".into())
        .with_message_id(id.into());
    env.publisher
        .publish(
            broker::EXCHANGE,
            account,
            &serde_json::to_vec(job).unwrap(),
            props,
        )
        .await
        .unwrap();
}

fn corr(c: &str) -> BasicProperties {
    BasicProperties::default().with_correlation_id(c.into())
}

async fn pending_events(env: &Env) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT account, job_id, status FROM outcome_events ORDER BY id")
        .fetch_all(&env.pool)
        .await
        .unwrap()
}

/// The relay deletes its rows after the confirms, so just after the events arrive: wait.
async fn wait_outbox_empty(env: &Env) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = pending_events(env).await;
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "still pending: {left:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn by_job(events: &[Got]) -> std::collections::HashMap<String, Got> {
    events
        .iter()
        .map(|g| {
            (
                g.body["job_id"].as_str().unwrap_or("").to_owned(),
                g.clone(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_dead_suppressed_and_expired_are_published_with_key_body_and_correlation_id() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let mut tap = Tap::new(&env, "#").await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    sim.set_kefustate("bot", "oHuman", true);
    let job = |id: &str, to: &str| json!({"job_id": id, "to": to, "message": {"text": id}});
    publish_with(&env, "bot", &job("s1", "oA"), corr("c-s1")).await;
    // dead at validation: a reason word and a message, no errcode
    publish_with(
        &env,
        "bot",
        &json!({"job_id": "d1", "to": "oA", "message": {"bogus": 1}}),
        corr("c-d1"),
    )
    .await;
    publish_with(&env, "bot", &job("h1", "oHuman"), corr("c-h1")).await;
    let mut late = job("x1", "oB");
    late["not_after"] = json!("2020-01-01T00:00:00Z");
    publish_with(&env, "bot", &late, corr("c-x1")).await;
    // dead with the platform's errcode
    env.wait_terminal(4, Duration::from_secs(15)).await;
    sim.script("bot", vec![3014]);
    publish_with(&env, "bot", &job("d2", "oC"), corr("c-d2")).await;
    let got = by_job(&tap.take(5, Duration::from_secs(20)).await);
    let expect = [
        ("s1", "sent"),
        ("d1", "dead"),
        ("h1", "suppressed"),
        ("x1", "expired"),
        ("d2", "dead"),
    ];
    for (id, status) in expect {
        let g = got
            .get(id)
            .unwrap_or_else(|| panic!("no event for {id}: {got:#?}"));
        assert_eq!(g.key, format!("bot.{status}"), "{id}");
        assert_eq!(g.body["status"], status, "{id}");
        assert_eq!(g.body["account"], "bot");
        assert_eq!(g.body["channel"], "chatbot");
        assert_eq!(
            g.correlation_id().as_deref(),
            Some(format!("c-{id}").as_str())
        );
        assert_eq!(g.message_id(), message_id("bot", id, status));
        assert!(
            g.body["at"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{id}: {}",
            g.body
        );
    }
    assert_eq!(got["s1"].body["recipient"], "oA");
    assert_eq!(got["s1"].body["kind"], "send");
    assert_eq!(got["s1"].body["attempts"], 1);
    assert_eq!(got["s1"].body["reason"], Value::Null);
    assert_eq!(got["d1"].body["reason"], "unknown_msgtype");
    assert!(
        got["d1"].body["errmsg"]
            .as_str()
            .is_some_and(|m| !m.is_empty())
    );
    assert_eq!(got["d1"].body["errcode"], Value::Null);
    assert_eq!(got["d2"].body["reason"], "content_rejected");
    assert_eq!(got["d2"].body["errcode"], 3014);
    assert_eq!(got["h1"].body["errmsg"], "human agent serving");
    // nothing else, and the outbox is empty once published
    assert!(tap.rest(Duration::from_millis(800)).await.is_empty());
    wait_outbox_empty(&env).await;
    // a duplicate publish of a sent job is no new outcome: no second event
    publish_with(&env, "bot", &job("s1", "oA"), corr("c-s1")).await;
    assert!(tap.rest(Duration::from_secs(2)).await.is_empty());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reply_to_gets_the_event_too_direct_reply_to_included_and_a_gone_queue_blocks_nothing() {
    let env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let mut tap = Tap::new(&env, "bot.*").await;
    let worker = env.start_worker().await;
    // a plain reply queue
    let ch = env.conn.create_channel().await.unwrap();
    ch.queue_declare(
        "my-replies".into(),
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut replies = Tap::consume(ch, "my-replies").await;
    let job = |id: &str| json!({"job_id": id, "to": "oA", "message": {"text": id}});
    publish_with(
        &env,
        "bot",
        &job("r1"),
        corr("c-r1").with_reply_to("my-replies".into()),
    )
    .await;
    let r = replies.take(1, Duration::from_secs(15)).await;
    assert_eq!(r[0].body["job_id"], "r1");
    assert_eq!(r[0].body["status"], "sent");
    assert_eq!(r[0].correlation_id().as_deref(), Some("c-r1"));
    assert_eq!(r[0].message_id(), message_id("bot", "r1", "sent"));
    // direct reply-to: the producer consumes amq.rabbitmq.reply-to and publishes on that
    // same channel
    let dch = env.conn.create_channel().await.unwrap();
    let mut direct = Tap::consume(dch.clone(), "amq.rabbitmq.reply-to").await;
    let body = serde_json::to_vec(&job("r2")).unwrap();
    dch.basic_publish(
        broker::EXCHANGE.into(),
        "bot".into(),
        Default::default(),
        &body,
        corr("c-r2")
            .with_reply_to("amq.rabbitmq.reply-to".into())
            .with_message_id("r2".into())
            .with_delivery_mode(2),
    )
    .await
    .unwrap();
    let d = direct.take(1, Duration::from_secs(15)).await;
    assert_eq!(d[0].body["job_id"], "r2");
    assert_eq!(d[0].correlation_id().as_deref(), Some("c-r2"));
    // a reply queue that does not exist (any more): the event still reaches the exchange,
    // and the events after it too
    publish_with(
        &env,
        "bot",
        &job("r3"),
        corr("c-r3").with_reply_to("gone-queue".into()),
    )
    .await;
    publish_with(&env, "bot", &job("r4"), corr("c-r4")).await;
    let all = by_job(&tap.take(4, Duration::from_secs(15)).await);
    for id in ["r1", "r2", "r3", "r4"] {
        assert_eq!(all[id].key, "bot.sent", "{id}");
    }
    wait_outbox_empty(&env).await;
    // the direct reply-to consumer got exactly one copy, the plain queue too
    assert!(direct.rest(Duration::from_millis(500)).await.is_empty());
    assert!(replies.rest(Duration::from_millis(100)).await.is_empty());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_with_outcomes_off_writes_no_event_rows() {
    let mut env = Env::new(
        |b| vec![chatbot_account("on", b), chatbot_account("off", b)],
        SimOptions::default(),
    )
    .await;
    env.cfg.accounts[1].outcomes = false;
    // no relay: what the lanes wrote stays in the outbox to be counted
    env.cfg.outcomes.relay = false;
    let worker = env.start_worker().await;
    for a in ["on", "off"] {
        env.publish(
            a,
            &json!({"job_id": format!("{a}-1"), "to": "oA", "message": {"text": "x"}}),
        )
        .await;
        env.publish(
            a,
            &json!({"job_id": format!("{a}-2"), "to": "oA", "message": {"bogus": 1}}),
        )
        .await;
    }
    env.wait_terminal(4, Duration::from_secs(15)).await;
    worker.stop().await.unwrap();
    let mut rows = pending_events(&env).await;
    rows.sort();
    assert_eq!(
        rows,
        vec![
            ("on".into(), "on-1".into(), "sent".into()),
            ("on".into(), "on-2".into(), "dead".into())
        ]
    );
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_recorded_while_no_relay_ran_is_published_later_and_a_republish_keeps_its_message_id()
 {
    let mut env = Env::new(|b| vec![chatbot_account("bot", b)], SimOptions::default()).await;
    let mut tap = Tap::new(&env, "#").await;
    // The crash: outcomes recorded and acked by a worker whose relay never publishes (the
    // state a worker killed between the record and the publish leaves behind).
    env.cfg.outcomes.relay = false;
    let first = env.start_worker().await;
    publish_with(
        &env,
        "bot",
        &json!({"job_id": "k1", "to": "oA", "message": {"text": "x"}}),
        corr("c-k1"),
    )
    .await;
    env.wait_terminal(1, Duration::from_secs(15)).await;
    first.stop().await.unwrap();
    assert_eq!(env.queue_len(&broker::lane_queue("bot")).await, 0, "acked");
    assert!(tap.rest(Duration::from_millis(500)).await.is_empty());
    assert_eq!(pending_events(&env).await.len(), 1);
    // A relay round that published but did not get to delete its rows (a crash between the
    // confirm and the commit) leaves the same row pending: the copy stands for it.
    sqlx::query(
        "INSERT INTO outcome_events (account, job_id, status, channel, kind, recipient, attempts,
                                     correlation_id, at)
         SELECT account, job_id, status, channel, kind, recipient, attempts, correlation_id, at
         FROM outcome_events",
    )
    .execute(&env.pool)
    .await
    .unwrap();
    // A worker with the relay: the event arrives, twice, with the same message_id.
    env.cfg.outcomes.relay = true;
    let second = env.start_worker().await;
    let got = tap.take(2, Duration::from_secs(15)).await;
    for g in &got {
        assert_eq!(g.key, "bot.sent");
        assert_eq!(g.body["job_id"], "k1");
        assert_eq!(g.correlation_id().as_deref(), Some("c-k1"));
    }
    assert_eq!(got[0].message_id(), got[1].message_id());
    assert_eq!(got[0].message_id(), message_id("bot", "k1", "sent"));
    wait_outbox_empty(&env).await;
    second.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_publishes_one_event_per_recipient_and_one_when_it_completes() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let mut tap = Tap::new(&env, "kf.*").await;
    let worker = env.start_worker().await;
    let to = ["wmB1", "wmB2", "wmB3"];
    publish_with(
        &env,
        "kf",
        &json!({"kind": "broadcast", "job_id": "bc-1", "to": to, "message": {"text": {"content": "Sale!"}}}),
        corr("c-bc"),
    )
    .await;
    let got = tap.take(4, Duration::from_secs(30)).await;
    let per: Vec<&Got> = got.iter().filter(|g| g.key == "kf.sent").collect();
    assert_eq!(per.len(), 3, "{got:#?}");
    let mut rcpt: Vec<&str> = per
        .iter()
        .map(|g| g.body["recipient"].as_str().unwrap_or(""))
        .collect();
    rcpt.sort();
    assert_eq!(rcpt, to);
    for g in &per {
        assert_eq!(g.body["broadcast_id"], "bc-1");
        assert_eq!(g.correlation_id().as_deref(), Some("c-bc"));
    }
    let done = got
        .iter()
        .find(|g| g.key == "kf.broadcast_completed")
        .unwrap_or_else(|| panic!("no completion event: {got:#?}"));
    assert_eq!(done.body["job_id"], "bc-1");
    assert_eq!(done.body["broadcast_status"], "done");
    assert_eq!(done.body["total"], 3);
    assert_eq!(done.body["sent"], 3);
    assert_eq!(done.correlation_id().as_deref(), Some("c-bc"));
    assert_eq!(
        done.message_id(),
        message_id("kf", "bc-1", "broadcast_completed")
    );
    // the completion comes once
    assert!(tap.rest(Duration::from_secs(3)).await.is_empty());
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_recipients_get_cancelled_events_and_the_broadcast_a_completion() {
    let env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    let mut tap = Tap::new(&env, "kf.*").await;
    // Fan out without a worker (the recipients wait in the bulk queue), then cancel.
    let store = wxdispatch::store::Store::with_pool(env.pool.clone(), 10);
    let conn_pub = broker::Publisher::new(&env.conn).await.unwrap();
    let body = json!({"kind": "broadcast", "job_id": "bc-2", "to": ["wmC1", "wmC2"], "message": {"text": {"content": "Sale!"}}});
    let bytes = serde_json::to_vec(&body).unwrap();
    let account = env.cfg.account("kf").unwrap().clone();
    let job = wxdispatch::domain::job::parse(&bytes, None, &account, 1 << 20).unwrap();
    store
        .remember_outcome_route("kf", "bc-2", Some("c-bc2"), None)
        .await
        .unwrap();
    wxdispatch::engine::broadcast::fan_out(&store, &conn_pub, &account, &job, &bytes)
        .await
        .unwrap();
    assert_eq!(store.cancel_broadcast("kf", "bc-2").await.unwrap(), 2);
    assert_eq!(
        pending_events(&env).await.len(),
        2,
        "written with the cancel"
    );
    let worker = env.start_worker().await;
    let got = tap.take(3, Duration::from_secs(20)).await;
    let cancelled: Vec<&Got> = got.iter().filter(|g| g.key == "kf.cancelled").collect();
    assert_eq!(cancelled.len(), 2, "{got:#?}");
    for g in &cancelled {
        assert_eq!(g.body["broadcast_id"], "bc-2");
        assert_eq!(g.correlation_id().as_deref(), Some("c-bc2"));
    }
    let done = got
        .iter()
        .find(|g| g.key == "kf.broadcast_completed")
        .unwrap_or_else(|| panic!("no completion: {got:#?}"));
    assert_eq!(done.body["broadcast_status"], "cancelled");
    assert_eq!(done.body["cancelled"], 2);
    // the recipients the lane then takes are not sent and publish nothing more
    assert!(tap.rest(Duration::from_secs(3)).await.is_empty());
    assert_eq!(env.sim().accepted_count(), 0);
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_msg_send_fail_publishes_a_failed_event_with_the_jobs_correlation_id() {
    let mut env = Env::new(|b| vec![wecom_account("kf", b)], SimOptions::default()).await;
    env.cfg.sync.poll_interval_secs = 1;
    let mut tap = Tap::new(&env, "kf.*").await;
    let worker = env.start_worker().await;
    let sim = env.sim();
    sim.customer_message("kf", "wkKF1", "wmU1", "hi");
    crate::inbound::wait_count(
        &env,
        "SELECT count(*) FROM conversations WHERE external_userid = 'wmU1' AND last_customer_msg_at IS NOT NULL",
        1,
        Duration::from_secs(20),
    )
    .await;
    publish_with(
        &env,
        "kf",
        &json!({"job_id": "f1", "to": "wmU1", "open_kfid": "wkKF1", "message": {"text": "hello"}}),
        corr("c-f1"),
    )
    .await;
    let sent = tap.take(1, Duration::from_secs(15)).await;
    assert_eq!(sent[0].key, "kf.sent");
    sim.push_event(
        "kf",
        "wkKF1",
        json!({"event_type": "msg_send_fail", "external_userid": "wmU1", "fail_msgid": "f1", "fail_type": 4}),
    );
    let failed = tap.take(1, Duration::from_secs(20)).await;
    assert_eq!(failed[0].key, "kf.failed");
    assert_eq!(failed[0].body["job_id"], "f1");
    assert_eq!(failed[0].body["reason"], "msg_send_fail");
    assert_eq!(failed[0].body["errmsg"], "msg_send_fail: fail_type 4");
    assert_eq!(failed[0].correlation_id().as_deref(), Some("c-f1"));
    assert_eq!(failed[0].message_id(), message_id("kf", "f1", "failed"));
    worker.stop().await.unwrap();
    env.cleanup().await;
}
