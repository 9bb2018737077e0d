//! Issue 15 points 2 and 4: publishing that cannot go wrong (policies instead of arguments,
//! `wxdispatch setup`, objects declared by older versions used as they are) and `run`
//! waiting for its dependencies (admin listener first, bounded backoff, one clear line).

use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::ExchangeKind;
use lapin::options::{
    BasicConsumeOptions, BasicNackOptions, ExchangeDeclareOptions, ExchangeDeleteOptions,
    QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use wxdispatch::app::Worker;
use wxdispatch::broker::{self, PoliciesOutcome, policies};
use wxdispatch::config::Config;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};

/// The management API the worker and `setup` use here (derived from the broker URL).
const MGMT: &str = "http://127.0.0.1:15672/api";

fn bot(base: &str) -> Vec<wxdispatch::config::AccountConfig> {
    vec![chatbot_account("bot", base)]
}

fn job(id: &str) -> Value {
    json!({"job_id": id, "to": "oUser-1", "message": {"text": "hello"}})
}

fn vhost_path(vhost: &str) -> String {
    vhost.replace('/', "%2F")
}

async fn mgmt(path: &str) -> Value {
    reqwest::Client::new()
        .get(format!("{MGMT}/{path}"))
        .basic_auth("guest", Some("guest"))
        .send()
        .await
        .expect("management API")
        .json()
        .await
        .expect("management JSON")
}

/// The name of the policy the broker applies to `queue` (polled: policies apply
/// asynchronously).
async fn queue_policy(vhost: &str, queue: &str, want: Option<&str>) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let q = mgmt(&format!("queues/{}/{queue}", vhost_path(vhost))).await;
        let got = q["policy"].as_str().map(str::to_owned);
        if got.as_deref() == want || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Make the test's vhost a broker nobody set up: no wxdispatch exchange, queue or policy.
async fn wipe(env: &Env) {
    let ch = env.conn.create_channel().await.unwrap();
    let mut queues = vec![
        broker::UNROUTABLE.to_owned(),
        broker::DEAD.to_owned(),
        broker::DEAD_RECORDER.to_owned(),
    ];
    let mut exchanges = vec![
        broker::EXCHANGE.to_owned(),
        broker::UNROUTABLE.to_owned(),
        broker::DEAD.to_owned(),
        broker::INBOUND.to_owned(),
    ];
    for &s in &env.cfg.retry.tiers_secs {
        queues.push(broker::retry_tier(s));
        exchanges.push(broker::retry_tier(s));
    }
    for a in &env.cfg.accounts {
        queues.push(broker::lane_queue(&a.name));
        queues.push(broker::bulk_queue(&a.name));
    }
    for q in queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    for x in exchanges {
        ch.exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .unwrap();
    }
    for p in [policies::EXCHANGE_POLICY, policies::LANES_POLICY] {
        let r = reqwest::Client::new()
            .delete(format!("{MGMT}/policies/{}/{p}", vhost_path(&env.vhost)))
            .basic_auth("guest", Some("guest"))
            .send()
            .await
            .unwrap();
        assert!(
            r.status().is_success(),
            "deleting policy {p}: {}",
            r.status()
        );
    }
}

/// What a tutorial publisher does: declare `wxdispatch` direct, durable, no arguments.
async fn plain_declare(env: &Env) -> Result<(), lapin::Error> {
    let ch = env.conn.create_channel().await.unwrap();
    ch.exchange_declare(
        broker::EXCHANGE.into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Wait for a `dead_letters` row of `reason`.
async fn wait_dead_letter_row(env: &Env, reason: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE reason = $1")
            .bind(reason)
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if n > 0 {
            return;
        }
        assert!(Instant::now() < deadline, "no dead letter '{reason}'");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_that_declares_the_exchange_plainly_first_does_not_break_the_worker() {
    let env = Env::new(bot, SimOptions::default()).await;
    wipe(&env).await;
    plain_declare(&env)
        .await
        .expect("a plain declare on a fresh broker");
    let worker = Worker::start(env.cfg.clone())
        .await
        .expect("the worker starts after a publisher's plain declare");
    plain_declare(&env)
        .await
        .expect("a plain declare after the worker is still equivalent");
    env.publish("bot", &job("plain-1")).await;
    env.publish_raw("nobody", br#"{"job_id":"lost-1"}"#).await;
    env.wait_terminal(1, Duration::from_secs(30)).await;
    assert_eq!(env.status_of("plain-1").await.as_deref(), Some("sent"));
    // The alternate exchange comes from the policy the worker set.
    wait_dead_letter_row(&env, "unknown_account").await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_lets_producers_publish_before_any_worker() {
    let env = Env::new(bot, SimOptions::default()).await;
    wipe(&env).await;
    let report = wxdispatch::cli::setup::setup(&env.cfg).await.unwrap();
    assert!(report.topology.mismatches.is_empty());
    match &report.policies {
        PoliciesOutcome::Applied { policies, .. } => assert_eq!(
            policies,
            &vec![
                (policies::EXCHANGE_POLICY, policies::PolicyChange::Created),
                (policies::LANES_POLICY, policies::PolicyChange::Created),
            ]
        ),
        other => panic!("policies not applied: {other:?}"),
    }
    // Idempotent.
    let again = wxdispatch::cli::setup::setup(&env.cfg).await.unwrap();
    assert!(
        matches!(&again.policies, PoliciesOutcome::Applied { policies, .. }
            if policies.iter().all(|(_, c)| *c == policies::PolicyChange::Unchanged)),
        "{:?}",
        again.policies
    );
    // Producers first: nothing is lost before a worker runs.
    plain_declare(&env).await.expect("equivalent to setup's");
    env.publish("bot", &job("early-1")).await;
    env.publish_raw("nobody", br#"{"job_id":"lost-2"}"#).await;
    assert_eq!(env.queue_len("wxdispatch.bot").await, 1);
    assert_eq!(env.queue_len(broker::UNROUTABLE).await, 1);
    // The lanes policy applies to the lanes only.
    for (q, want) in [
        ("wxdispatch.bot", Some(policies::LANES_POLICY)),
        ("wxdispatch.bot.bulk", Some(policies::LANES_POLICY)),
        (broker::DEAD, None),
        (broker::DEAD_RECORDER, None),
        (broker::UNROUTABLE, None),
        ("wxdispatch.retry.5s", None),
    ] {
        assert_eq!(
            queue_policy(&env.vhost, q, want).await.as_deref(),
            want,
            "{q}"
        );
    }
    let worker = env.start_worker().await;
    env.wait_terminal(1, Duration::from_secs(30)).await;
    assert_eq!(env.status_of("early-1").await.as_deref(), Some("sent"));
    wait_dead_letter_row(&env, "unknown_account").await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_an_older_version_declared_with_arguments_are_used_as_they_are() {
    let env = Env::new(bot, SimOptions::default()).await;
    // What the previous release declared: arguments where this one has policies.
    let ch = env.conn.create_channel().await.unwrap();
    for q in ["wxdispatch.bot", "wxdispatch.bot.bulk"] {
        ch.queue_delete(q.into(), QueueDeleteOptions::default())
            .await
            .unwrap();
    }
    ch.exchange_delete(broker::EXCHANGE.into(), ExchangeDeleteOptions::default())
        .await
        .unwrap();
    let mut x_args = FieldTable::default();
    x_args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(broker::UNROUTABLE.into()),
    );
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        broker::EXCHANGE.into(),
        ExchangeKind::Direct,
        durable,
        x_args,
    )
    .await
    .unwrap();
    let mut old = FieldTable::default();
    old.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    old.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    old.insert("x-delivery-limit".into(), AMQPValue::LongInt(20));
    old.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(broker::DEAD.into()),
    );
    for q in ["wxdispatch.bot", "wxdispatch.bot.bulk"] {
        ch.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            old.clone(),
        )
        .await
        .unwrap();
    }
    ch.queue_bind(
        "wxdispatch.bot".into(),
        broker::EXCHANGE.into(),
        "bot".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    let declared = broker::declare_all(&env.conn, &env.cfg).await.unwrap();
    let names: Vec<&str> = declared
        .mismatches
        .iter()
        .map(|m| m.name.as_str())
        .collect();
    assert_eq!(
        names,
        ["wxdispatch", "wxdispatch.bot", "wxdispatch.bot.bulk"],
        "{:?}",
        declared.mismatches
    );
    let lane = &declared.mismatches[1];
    assert!(lane.broker_says.contains("PRECONDITION_FAILED"), "{lane:?}");
    assert!(
        lane.fix.contains(&format!(
            "rabbitmqctl delete_queue -p '{}' wxdispatch.bot --if-empty",
            env.vhost
        )),
        "{}",
        lane.fix
    );
    assert!(
        declared.mismatches[0].fix.contains(&format!(
            "rabbitmqctl delete_exchange -p '{}' wxdispatch",
            env.vhost
        )),
        "{}",
        declared.mismatches[0].fix
    );
    // Everything after the refused declarations was still declared.
    assert!(
        declared
            .bindings
            .iter()
            .any(|b| b == "wxdispatch.bot <- wxdispatch (bot)")
    );

    let worker = Worker::start(env.cfg.clone())
        .await
        .expect("the worker goes on with the old declarations");
    env.publish("bot", &job("old-1")).await;
    env.publish_raw("nobody", br#"{"job_id":"lost-3"}"#).await;
    env.wait_terminal(1, Duration::from_secs(30)).await;
    assert_eq!(env.status_of("old-1").await.as_deref(), Some("sent"));
    wait_dead_letter_row(&env, "unknown_account").await;
    worker.stop().await.unwrap();
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_limit_is_the_policy_and_changing_it_breaks_no_declaration() {
    let mut env = Env::new(bot, SimOptions::default()).await;
    env.cfg.broker.delivery_limit = 2;
    // The declaration with another limit is equivalent (on main: PRECONDITION_FAILED).
    broker::declare_topology(&env.conn, &env.cfg)
        .await
        .expect("a changed delivery_limit re-declares fine");
    let ps = mgmt(&format!("policies/{}", vhost_path(&env.vhost))).await;
    let lanes = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == policies::LANES_POLICY)
        .expect("lanes policy");
    assert_eq!(lanes["definition"]["delivery-limit"], 2);
    assert_eq!(
        queue_policy(&env.vhost, "wxdispatch.bot", Some(policies::LANES_POLICY))
            .await
            .as_deref(),
        Some(policies::LANES_POLICY)
    );

    // A message handed back again and again is dead-lettered by the broker at the limit.
    env.publish_raw("bot", b"poison").await;
    let ch = env.conn.create_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "wxdispatch.bot".into(),
            "poison-test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while env.queue_len(broker::DEAD).await == 0 {
        assert!(
            Instant::now() < deadline,
            "{deliveries} deliveries, no dead letter"
        );
        if let Ok(Some(Ok(d))) =
            tokio::time::timeout(Duration::from_millis(200), consumer.next()).await
        {
            deliveries += 1;
            d.acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
    }
    assert!((2..=3).contains(&deliveries), "{deliveries} deliveries");
    let dead = env.dead_letters(1, Duration::from_secs(5)).await;
    let death = dead[0]
        .1
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-death").map(|v| format!("{v:?}")));
    // (A field table's strings print as their bytes.)
    let reason = format!("{:?}", b"delivery_limit".to_vec());
    assert!(
        death
            .as_deref()
            .is_some_and(|d| d.contains(&reason[1..reason.len() - 1])),
        "x-death reason delivery_limit: {death:?}"
    );
    env.cleanup().await;
}

#[test]
fn definitions_json_ships_the_policies_the_worker_sets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy");
    let defs: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    let example: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("wxdispatch.example.toml")).unwrap())
            .unwrap();
    let mut cfg = Config::default();
    if let Some(l) = example["broker"].get("delivery_limit") {
        cfg.broker.delivery_limit = l.as_integer().unwrap() as u32;
    }
    let shipped = defs["policies"].as_array().expect("policies");
    let wanted = broker::topology::wanted_policies(&cfg);
    assert_eq!(shipped.len(), wanted.len());
    for p in wanted {
        let s = shipped
            .iter()
            .find(|s| s["name"] == p.name)
            .unwrap_or_else(|| panic!("definitions.json lacks policy {}", p.name));
        assert_eq!(s["vhost"], "/");
        assert_eq!(s["pattern"], p.pattern, "{}", p.name);
        assert_eq!(s["apply-to"], p.apply_to, "{}", p.name);
        assert_eq!(s["priority"], p.priority, "{}", p.name);
        assert_eq!(s["definition"], p.definition, "{}", p.name);
    }
}

// ------------------------------------------------------------------ point 4: waiting at start

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn get(url: &str) -> Option<(u16, String)> {
    let r = match reqwest::get(url).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("GET {url}: {e:?}");
            return None;
        }
    };
    let code = r.status().as_u16();
    Some((code, r.text().await.unwrap_or_default()))
}

/// Forward every connection to `listen` on to RabbitMQ (a broker that starts answering late).
async fn proxy_to_rabbitmq(listen: u16) -> tokio::task::JoinHandle<()> {
    let l = tokio::net::TcpListener::bind(("127.0.0.1", listen))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            tokio::spawn(async move {
                if let Ok(mut out) = tokio::net::TcpStream::connect("127.0.0.1:5672").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_for_rabbitmq_alive_but_not_ready_then_starts() {
    let env = Env::new(bot, SimOptions::default()).await;
    let (mq_port, admin_port) = (free_port(), free_port());
    let mut cfg = env.cfg.clone();
    cfg.broker.url = format!("amqp://guest:guest@127.0.0.1:{mq_port}/{}", env.vhost).into();
    cfg.http.admin_listen = format!("127.0.0.1:{admin_port}");
    cfg.startup.wait_secs = 120;
    let starting = tokio::spawn(Worker::start(cfg));
    let base = format!("http://127.0.0.1:{admin_port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let (Some((200, _)), Some((code, body))) = (
            get(&format!("{base}/healthz")).await,
            get(&format!("{base}/readyz")).await,
        ) && body.contains("waiting for rabbitmq")
        {
            break (code, body);
        }
        assert!(Instant::now() < deadline, "no /healthz 200 while waiting");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.0, 503, "{}", ready.1);
    assert!(
        ready
            .1
            .contains(&format!("waiting for rabbitmq at 127.0.0.1:{mq_port}: ")),
        "{}",
        ready.1
    );
    assert!(!ready.1.contains("guest:guest"), "{}", ready.1);
    assert!(!starting.is_finished(), "start-up waits");

    let proxy = proxy_to_rabbitmq(mq_port).await;
    let worker = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("started once the broker answers")
        .unwrap()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&format!("{base}/readyz")).await;
        if r.as_ref().map(|r| r.0) == Some(200) {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    env.publish("bot", &job("late-1")).await;
    env.wait_terminal(1, Duration::from_secs(30)).await;
    assert_eq!(env.status_of("late-1").await.as_deref(), Some("sent"));
    worker.stop().await.unwrap();
    proxy.abort();
    env.cleanup().await;
}

/// A config for the binary with both dependencies on closed ports.
fn unreachable_config(dir: &std::path::Path, wait_secs: u64) -> (std::path::PathBuf, u16) {
    let (mq, pg) = (free_port(), free_port());
    let path = dir.join("wxdispatch.toml");
    std::fs::write(
        &path,
        format!(
            "[broker]\nurl = \"amqp://guest:s3cret@127.0.0.1:{mq}/%2f\"\n\
             [database]\nurl = \"postgres://postgres:s3cret@127.0.0.1:{pg}/wxdispatch\"\n\
             [http]\nlisten = \"\"\nadmin_listen = \"\"\n\
             [startup]\nwait_secs = {wait_secs}\n"
        ),
    )
    .unwrap();
    (path, pg)
}

#[test]
fn run_exits_1_naming_the_host_once_startup_wait_secs_is_over() {
    let dir = tempfile::tempdir().unwrap();
    let (config, pg) = unreachable_config(dir.path(), 2);
    let t0 = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(t0.elapsed() >= Duration::from_secs(2), "waited");
    assert!(t0.elapsed() < Duration::from_secs(30), "bounded");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(
        line.contains(&format!("postgres at 127.0.0.1:{pg} not reachable after "))
            && line.contains(" s (startup.wait_secs): cannot connect to the database: "),
        "{line}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
}

#[test]
fn sigterm_ends_the_startup_wait_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = unreachable_config(dir.path(), 300);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_wxdispatch"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(child.try_wait().unwrap().is_none(), "still waiting");
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(0));
}
