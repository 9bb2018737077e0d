//! Test environment: a fresh RabbitMQ vhost and a fresh Postgres database per test, the
//! project's simulator in process, and a worker (in process or as a child process).
//! Nothing is mocked but the WeChat HTTP APIs (the simulator).

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;
use sqlx::{PgPool, Row};
use wxdispatch::app::Worker;
use wxdispatch::broker::{self, Publisher};
use wxdispatch::config::{AccountConfig, Config, Secret};
use wxdispatch::tools::fixtures;
use wxdispatch::tools::simulate::{self, SimHandle, SimOptions};

pub const AES_KEY: &str = fixtures::DEMO_AES_KEY;
pub const AES_KEY_2: &str = fixtures::SECOND_AES_KEY;
pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn unique(prefix: &str) -> String {
    let r: u64 = rand::random();
    format!("{prefix}_{}_{:x}", std::process::id(), r & 0xffff_ffff)
}

/// Run `rabbitmqctl`. Calls are serialised within the test process (every call boots an
/// Erlang node, and many at once exhaust the CLI's distribution ports), and a call that
/// hangs (seen on loaded machines) is killed (with its process group) after 30 s and tried again, up to 3 times.
pub fn rabbitmqctl(args: &[&str]) {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut last = String::new();
    for _attempt in 0..3 {
        let mut child = Command::new("rabbitmqctl")
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("rabbitmqctl must be installed for the tests");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            match child.try_wait().expect("waiting for rabbitmqctl") {
                Some(st) => break Some(st),
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    kill_cli_vm(args);
                    let _ = child.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        match status {
            Some(st) if st.success() => return,
            Some(_) => {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                // A retried add_vhost whose first, timed-out try got through.
                if err.contains("already exists") {
                    return;
                }
                last = err;
            }
            None => last = "timed out after 30 s".into(),
        }
    }
    panic!("rabbitmqctl {args:?}: {last}");
}

/// Kill the Erlang VM of a hung `rabbitmqctl ARGS` call. `rabbitmqctl` runs `su` → `sh` → the
/// VM, and `su -c` puts the VM in a session of its own, so killing the child leaves it behind;
/// an orphaned VM keeps one of the CLI's 11 distribution ports (35672–35682) until every later
/// call hangs too.
fn kill_cli_vm(args: &[&str]) {
    let escaped: Vec<String> = args
        .iter()
        .map(|a| {
            a.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c.to_string()
                    } else {
                        format!("\\{c}")
                    }
                })
                .collect()
        })
        .collect();
    let pattern = format!("escript/rabbitmqctl {}$", escaped.join(" "));
    let _ = Command::new("pkill").args(["-9", "-f", &pattern]).status();
}

/// The worker's `/metrics` text (admin listener).
pub async fn metrics_text(worker: &Worker) -> String {
    let addr = worker.admin_addr.expect("the worker serves /metrics");
    reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("/metrics body")
}

/// A chatbot account of the fixtures with a token of its own (the token names the bot).
pub fn chatbot_account(name: &str, base_url: &str) -> AccountConfig {
    fixtures::chatbot_account(name, base_url, &format!("TOKEN{}", name.replace('-', "")))
}

/// A WeCom account of the fixtures (open_kfid `wkKF1`, its own corp) with a callback token
/// and key, so tests can send it `kf_msg_or_event` callbacks.
pub fn wecom_account(name: &str, base_url: &str) -> AccountConfig {
    let mut a = fixtures::wecom_account(
        name,
        base_url,
        &format!("ww{}", name.replace('-', "")),
        &format!("secret-{name}"),
        "wkKF1",
    );
    a.token = Secret::new("cbtoken");
    a.encoding_aes_key = Secret::new(AES_KEY_2);
    a
}

pub struct Env {
    pub vhost: String,
    pub db: String,
    pub cfg: Config,
    pub pool: PgPool,
    pub sim: Option<SimHandle>,
    pub conn: lapin::Connection,
    pub publisher: Publisher,
}

impl Env {
    /// A fresh vhost and database, the simulator started with `accounts` (built from its
    /// base URL), and a config pointing at all three. The worker is not started.
    pub async fn new(
        accounts: impl FnOnce(&str) -> Vec<AccountConfig>,
        sim_opts: SimOptions,
    ) -> Env {
        let vhost = unique("wxdt");
        let db = unique("wxdt");
        rabbitmqctl(&["add_vhost", &vhost]);
        rabbitmqctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let accs = accounts(&base);
        let sim = simulate::start(accs.clone(), sim_opts, listener)
            .await
            .unwrap();
        let mut cfg = Config::default();
        cfg.broker.url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}").into();
        cfg.database.url = format!("postgres://postgres@127.0.0.1:5432/{db}").into();
        cfg.http.listen = "127.0.0.1:0".into();
        cfg.http.admin_listen = "127.0.0.1:0".into();
        cfg.accounts = accs;
        cfg.worker.http_timeout_ms = 2_000;
        cfg.worker.shutdown_grace_secs = 5;
        cfg.retry.initial_backoff_ms = 5;
        cfg.retry.max_backoff_ms = 50;
        cfg.retry.pause_initial_secs = 1;
        cfg.retry.pause_max_secs = 2;
        cfg.retry.throttle_pause_secs = Some(1);
        cfg.validate().unwrap();
        let pool = wxdispatch::store::connect_pool(&cfg).await.unwrap();
        wxdispatch::store::migrate(&pool).await.unwrap();
        let conn = broker::connect(&cfg.broker.url, "wxdispatch-test")
            .await
            .unwrap();
        broker::declare_topology(&conn, &cfg).await.unwrap();
        let publisher = Publisher::new(&conn).await.unwrap();
        Env {
            vhost,
            db,
            cfg,
            pool,
            sim: Some(sim),
            conn,
            publisher,
        }
    }

    pub fn sim(&self) -> Arc<simulate::SimState> {
        self.sim.as_ref().unwrap().state()
    }

    pub async fn start_worker(&self) -> Worker {
        Worker::start(self.cfg.clone()).await.unwrap()
    }

    pub async fn publish(&self, account: &str, job: &Value) {
        let id = job.get("job_id").and_then(Value::as_str).unwrap_or("");
        self.publisher
            .publish_job(account, id, &serde_json::to_vec(job).unwrap())
            .await
            .unwrap();
    }

    pub async fn publish_raw(&self, account: &str, body: &[u8]) {
        self.publisher
            .publish(
                broker::EXCHANGE,
                account,
                body,
                lapin::BasicProperties::default(),
            )
            .await
            .unwrap();
    }

    /// Status of every row, by job id.
    pub async fn statuses(&self) -> std::collections::HashMap<String, String> {
        sqlx::query("SELECT job_id, status FROM deliveries")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get("job_id"), r.get("status")))
            .collect()
    }

    pub async fn status_of(&self, job_id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status FROM deliveries WHERE job_id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await
            .unwrap()
    }

    /// Poll until `n` rows are terminal (or panic after `timeout`).
    pub async fn wait_terminal(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM deliveries WHERE status NOT IN ('accepted','retrying','scheduled')",
            )
            .fetch_one(&self.pool)
            .await
            .unwrap();
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {done} of {n} deliveries terminal after {timeout:?}: {:?}",
                self.status_counts().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn status_counts(&self) -> Vec<(String, i64)> {
        sqlx::query("SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY status")
            .fetch_all(&self.pool)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.get("status"), r.get("n")))
            .collect()
    }

    /// Take `n` messages from `wxdispatch.dead` (waiting up to `timeout`).
    pub async fn dead_letters(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Vec<(Value, lapin::BasicProperties)> {
        let ch = self.conn.create_channel().await.unwrap();
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        while out.len() < n {
            match ch
                .basic_get(broker::DEAD.into(), BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(m) => {
                    let v = serde_json::from_slice(&m.delivery.data).unwrap_or(Value::String(
                        String::from_utf8_lossy(&m.delivery.data)
                            .chars()
                            .take(50)
                            .collect(),
                    ));
                    out.push((v, m.delivery.properties.clone()));
                    m.delivery
                        .acker
                        .ack(BasicAckOptions::default())
                        .await
                        .unwrap();
                }
                None => {
                    assert!(
                        Instant::now() < deadline,
                        "only {} of {n} dead letters arrived",
                        out.len()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        out
    }

    /// Messages currently in a queue (declared passively).
    /// Poll until `dead_letters` has at least `n` rows (a dead letter is published before its
    /// row is written).
    pub async fn wait_dead_letter_rows(&self, n: i64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let have: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
                .fetch_one(&self.pool)
                .await
                .unwrap();
            if have >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "only {have} of {n} dead letters recorded"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn queue_len(&self, queue: &str) -> u32 {
        let ch = self.conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        q.message_count()
    }

    pub async fn cleanup(mut self) {
        if let Some(s) = self.sim.take() {
            s.shutdown().await;
        }
        let _ = self.conn.close(200, "bye".into()).await;
        self.pool.close().await;
        let vhost = self.vhost.clone();
        let _ = tokio::task::spawn_blocking(move || rabbitmqctl(&["delete_vhost", &vhost])).await;
        if let Ok(admin) = PgPool::connect(PG_ADMIN).await {
            let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.db
            )))
            .execute(&admin)
            .await;
        }
    }
}

/// A channel and an exclusive, auto-deleted queue on it bound to `exchange` with `binding`
/// (for tests that watch what the worker publishes to an exchange).
pub async fn bound_queue(env: &Env, exchange: &str, binding: &str) -> (lapin::Channel, String) {
    let ch = env.conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let name = q.name().to_string();
    ch.queue_bind(
        name.as_str().into(),
        exchange.into(),
        binding.into(),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (ch, name)
}

/// Consume `queue` on `ch` (no ack) in the background; every delivery is sent to the receiver.
pub async fn forward_deliveries(
    ch: &lapin::Channel,
    queue: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<lapin::message::Delivery> {
    use futures::StreamExt;
    let mut consumer = ch
        .basic_consume(
            queue.into(),
            "test-tap".into(),
            lapin::options::BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(d)) = consumer.next().await {
            if tx.send(d).is_err() {
                break;
            }
        }
    });
    rx
}
