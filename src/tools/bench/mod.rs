//! `wxdispatch bench`: a reproducible benchmark against the local RabbitMQ and Postgres and
//! the built-in simulator. It prints one table:
//!
//! | figure | how |
//! |---|---|
//! | end-to-end throughput | a backlog of `--jobs` jobs (1 account, `--recipients` recipients, `--text-bytes` texts) is published, then the worker starts; time from its start until every row of `deliveries` is terminal (the last outcome's `updated_at`). Chatbot and WeCom in separate runs. |
//! | broker ceiling | in the same run, the same backlog on the same quorum queue, consumed and acked by a consumer that does nothing else, with the same prefetch |
//! | ratio | end-to-end ÷ ceiling; `--rounds` rounds per channel (default 3, each a fresh vhost and database with its own ceiling), the median round by ratio shown with every round's ratio |
//! | CPU | worker CPU seconds (utime + stime) per 10,000 jobs, and where the machine's CPU went during the drain (worker, simulator, RabbitMQ, Postgres) |
//! | rows per commit | claim + outcome rows (2 per job) ÷ transactions committed in the run's database during the drain (every statement counts, not only the batched ones) |
//! | latency | `--latency-rate` jobs/s for `--latency-secs`, each stamped with its publish time (header `x-wxdispatch-published-ms` and in the text); p50 / p99 / max of the simulator's acceptance time minus the publish time |
//! | memory | peak RSS (`VmHWM`) of the worker while it drains a `--memory-jobs` backlog |
//! | crypto | WXBizMsgCrypt encrypt + base64 of a 512-byte message, in process (the criterion bench `cargo bench --bench crypto` measures the same call) |
//! | limiter | a `--limiter-rate`/s limit with `--limiter-burst` for `--limiter-secs`, the simulator enforcing it: observed rate and the busiest one-second window at the simulator |
//!
//! Rate limits are off (`rate = { unlimited = true }`, `simulate --no-rate-limit`) except in
//! the limiter run. Every run gets a fresh vhost (`rabbitmqctl add_vhost`) and a fresh
//! database, both removed afterwards, and a generated config; the simulator
//! (`wxdispatch simulate`) and the worker (`wxdispatch run`) run as child processes of this
//! binary, so their CPU and memory are read from `/proc/<pid>` and the bench's own work
//! (publishing, polling) is not counted against them. Linux only; RabbitMQ must run on this
//! machine (`rabbitmqctl`). Build in release mode: `cargo run --release -- bench`.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgPool, Row};

use crate::broker;
use crate::config::{AccountConfig, Channel, Config};
use crate::crypto::MsgCrypt;
use crate::store;

/// Account names of the bench runs (one account per run).
const BOT_ACCOUNT: &str = "bench-bot";
const KF_ACCOUNT: &str = "bench-kf";
const BOT_APPID: &str = "P5Zb1RfMtW7rS3k";
const BOT_TOKEN: &str = "benchTOKENchatbot00000000000001";
const KF_CORPID: &str = "wwbench000000001";
const KF_SECRET: &str = "bench-corp-secret";
const KF_OPEN_KFID: &str = "wkBENCH00000000001";
/// The header the worker and the bench read the publish time from (milliseconds).
const H_PUBLISHED_MS: &str = "x-wxdispatch-published-ms";
/// Marker in every job's text in front of its publish time, so the simulator's record of the
/// request carries it (`Accepted.body`) and latency needs no lookup table.
const PUB_MARKER: &str = "[pub=";

/// Publisher confirms outstanding at once while publishing a backlog: enough to keep the
/// broker's pipeline full, bounded so a refusal is noticed within a window.
const CONFIRM_WINDOW: usize = 4096;
/// While draining, the simulator's counter is polled (cheap) at this interval…
const POLL_SIM: Duration = Duration::from_millis(100);
/// …and, once the simulator has seen every job, the database (a `count(*)` that costs
/// Postgres CPU, so not while the drain is running) at this one.
const POLL_DB: Duration = Duration::from_millis(25);
/// The database is also checked this often before that: jobs that never reach the
/// simulator (dead letters) would otherwise never end the drain.
const DB_CHECK_EVERY: Duration = Duration::from_secs(2);
/// A drain may take this long at least, plus [`DRAIN_PER_JOB`] per job, before the bench
/// gives up (a healthy run is many times faster).
const DRAIN_TIMEOUT_MIN: Duration = Duration::from_secs(120);
const DRAIN_PER_JOB: Duration = Duration::from_millis(2);
/// How long the ceiling consumer stays open after its last ack, so the queue has applied
/// every settlement before the consumer goes away.
const CEILING_SETTLE: Duration = Duration::from_millis(500);
/// How long a child process may take to come up (simulator answering, lane consuming).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// SIGTERM, then this long for a graceful exit, then SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The worker's shutdown grace in the generated config: nothing is in flight at the end
/// of a drain, and a limiter run is cut off mid-backlog on purpose.
const WORKER_GRACE_SECS: u64 = 3;
/// Jobs sent and awaited before the latency window: the lane is active, the connections
/// are open, the simulator has issued its token.
const WARMUP_JOBS: usize = 50;
/// Accepted records fetched per admin request.
const ACCEPTED_PAGE: usize = 5_000;
/// The message size the crypto target is stated for.
const CRYPTO_MESSAGE_BYTES: usize = 512;
/// Crypto timing: the median of this many rounds of [`CRYPTO_OPS`] encryptions.
const CRYPTO_ROUNDS: usize = 7;
const CRYPTO_OPS: usize = 50_000;
/// One-minute load average above which the machine is not quiet: other work competes for
/// the cores and the figures come out low.
const BUSY_LOAD: f64 = 0.7;
/// Logging of the child processes: the worker's shipped default, whatever this shell has.
const CHILD_LOG_FILTER: &str = "info,lapin=warn,sqlx=warn";
/// Accepted `api` names of the send calls (chatbot, WeCom).
const SEND_APIS: [&str; 2] = ["sendmsg", "send_msg"];

const MIB: f64 = 1024.0 * 1024.0;

/// What `--only` can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Figure {
    /// End-to-end throughput, broker ceiling, ratio, CPU per job, rows per commit.
    Throughput,
    /// Publish-to-acceptance latency at a steady rate.
    Latency,
    /// Peak worker RSS with a large backlog.
    Memory,
    /// WXBizMsgCrypt encrypt + base64.
    Crypto,
    /// Rate limiter accuracy.
    Limiter,
}

/// The channels a throughput run can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchChannel {
    Chatbot,
    Wecom,
}

fn channel_name(c: BenchChannel) -> &'static str {
    c.channel().as_str()
}

impl BenchChannel {
    fn channel(self) -> Channel {
        match self {
            BenchChannel::Chatbot => Channel::Chatbot,
            BenchChannel::Wecom => Channel::Wecom,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Backlog of each throughput run (and of its broker ceiling).
    #[arg(long, default_value_t = 50_000)]
    pub jobs: usize,
    /// Distinct recipients (conversations) the jobs go to, round robin.
    #[arg(long, default_value_t = 1_000)]
    pub recipients: usize,
    /// Length of every job's text in bytes.
    #[arg(long, default_value_t = 200)]
    pub text_bytes: usize,
    /// Channels of the throughput runs (comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [BenchChannel::Chatbot, BenchChannel::Wecom])]
    pub channels: Vec<BenchChannel>,
    /// Only these figures (comma-separated; default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<Figure>,
    /// Skip the memory run (the longest).
    #[arg(long)]
    pub skip_memory: bool,
    /// Backlog of the memory run.
    #[arg(long, default_value_t = 200_000)]
    pub memory_jobs: usize,
    /// Jobs per second of the latency run.
    #[arg(long, default_value_t = 500)]
    pub latency_rate: u32,
    /// Duration of the latency run in seconds.
    #[arg(long, default_value_t = 30)]
    pub latency_secs: u64,
    /// Rate limit of the limiter run (per second).
    #[arg(long, default_value_t = 200)]
    pub limiter_rate: u32,
    /// Burst of the limiter run.
    #[arg(long, default_value_t = 20)]
    pub limiter_burst: u32,
    /// Duration of the limiter run in seconds.
    #[arg(long, default_value_t = 20)]
    pub limiter_secs: u64,
    /// Throughput rounds per channel, each a fresh vhost and database with its own ceiling;
    /// the table shows the median round by ratio, and every round's ratio. One 50,000-job
    /// drain takes 2–3 s on the 2-core machine, where a neighbour's burst moves it by ±15 %.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub rounds: u16,
    /// Override `broker.prefetch` (default: the config's).
    #[arg(long)]
    pub prefetch: Option<u16>,
    /// Override `worker.concurrency` (default: the config's).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Keep each run's vhost, database and directory (config, logs) for inspection.
    #[arg(long)]
    pub keep: bool,
    /// Start the worker under this command, for profiling, e.g.
    /// `--worker-wrapper "valgrind --tool=callgrind --callgrind-out-file=/tmp/worker.cg"`.
    /// The worker's CPU and RSS figures are then the wrapper's and not comparable.
    #[arg(long)]
    pub worker_wrapper: Option<String>,
}

impl BenchArgs {
    fn wants(&self, f: Figure) -> bool {
        let selected = self.only.is_empty() || self.only.contains(&f);
        selected && !(f == Figure::Memory && self.skip_memory)
    }
}

/// `wxdispatch bench`.
pub async fn run(config: Option<&Path>, args: BenchArgs) -> anyhow::Result<()> {
    let base = Base::load(config, &args)?;
    if args.jobs == 0 || args.recipients == 0 || args.memory_jobs == 0 {
        bail!("--jobs, --recipients and --memory-jobs must be at least 1");
    }
    let machine = Machine::probe(&base).await;
    eprintln!("{}", machine.describe());
    if machine.load1 > BUSY_LOAD {
        eprintln!(
            "warning: load average {:.2}: other work is running, the figures will come out low",
            machine.load1
        );
    }
    let mut rows: Vec<TableRow> = Vec::new();
    let mut rss_small: Vec<(BenchChannel, u64)> = Vec::new();

    if args.wants(Figure::Crypto) {
        eprintln!("[crypto] encrypt + base64 of {CRYPTO_MESSAGE_BYTES} bytes …");
        let us = crypto_us_per_op()?;
        rows.push(TableRow::new(
            format!("crypto: encrypt + base64, {CRYPTO_MESSAGE_BYTES} B"),
            format!("{us:.2} µs/op"),
            "≤ 1 µs",
            Some(us <= 1.0),
        ));
    }
    if args.wants(Figure::Throughput) {
        for &ch in &args.channels {
            let mut rounds = Vec::with_capacity(usize::from(args.rounds));
            for round in 1..=args.rounds {
                if args.rounds > 1 {
                    eprintln!(
                        "[throughput {}] round {round} of {}",
                        channel_name(ch),
                        args.rounds
                    );
                }
                rounds.push(throughput(&base, &args, ch).await?);
            }
            // The median round by ratio (the upper one of an even count) stands for the
            // channel; every round's ratio is printed next to it.
            rounds.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
            let ratios: Vec<f64> = rounds.iter().map(ThroughputResult::ratio).collect();
            let peak = rounds.iter().map(|r| r.peak_rss).max().unwrap_or(0);
            let median = rounds.swap_remove(rounds.len() / 2);
            rss_small.push((ch, peak));
            median.rows(&mut rows, args.jobs, &ratios);
        }
    }
    if args.wants(Figure::Latency) {
        let r = latency(&base, &args).await?;
        r.rows(&mut rows, &args);
    }
    if args.wants(Figure::Memory) {
        let r = memory(&base, &args).await?;
        let small = rss_small
            .iter()
            .map(|(c, b)| {
                format!(
                    "{} {}: {:.1} MB",
                    channel_name(*c),
                    thousands(args.jobs as u64),
                    *b as f64 / MIB
                )
            })
            .collect::<Vec<_>>();
        let also = if small.is_empty() {
            String::new()
        } else {
            format!(" (backlog {})", small.join(", "))
        };
        rows.push(TableRow::new(
            format!(
                "memory: worker peak RSS, {}-job backlog",
                thousands(args.memory_jobs as u64)
            ),
            format!("{:.1} MB{also}", r.peak_rss as f64 / MIB),
            "≤ 64 MB",
            Some(r.peak_rss as f64 / MIB <= 64.0),
        ));
        rows.push(TableRow::new(
            format!(
                "memory run: throughput, CPU per 10,000 jobs ({} jobs)",
                thousands(args.memory_jobs as u64)
            ),
            format!(
                "{} jobs/s, {:.2} s",
                thousands(r.rate.round() as u64),
                r.cpu_per_10k
            ),
            "",
            None,
        ));
    }
    if args.wants(Figure::Limiter) {
        let r = limiter(&base, &args).await?;
        r.rows(&mut rows, &args);
    }

    println!();
    println!("{}", machine.describe());
    println!();
    print_table(&rows);
    println!();
    println!("rerun: {}", rerun_command());
    Ok(())
}

// ---------------------------------------------------------------- configuration and runs

/// What the runs share: where RabbitMQ and Postgres are, and the tunables under test.
struct Base {
    /// `amqp://user:pw@host:port` (no vhost).
    amqp_root: String,
    amqp_user: String,
    /// Postgres URL with the password applied; its path is replaced per run.
    db_url: String,
    prefetch: u16,
    delivery_limit: u32,
    concurrency: usize,
    max_connections: u32,
    batch_max: usize,
    exe: PathBuf,
    worker_wrapper: Option<String>,
}

impl Base {
    fn load(config: Option<&Path>, args: &BenchArgs) -> anyhow::Result<Self> {
        let cfg = Config::load(config).context("loading the configuration")?;
        let amqp_root = url_with_path(&cfg.broker.url, None);
        let amqp_user = url_user(&cfg.broker.url).unwrap_or_else(|| "guest".into());
        Ok(Self {
            amqp_root,
            amqp_user,
            db_url: cfg.database_url(),
            prefetch: args.prefetch.unwrap_or(cfg.broker.prefetch),
            delivery_limit: cfg.broker.delivery_limit,
            concurrency: args.concurrency.unwrap_or(cfg.worker.concurrency),
            max_connections: cfg.database.max_connections,
            batch_max: cfg.database.batch_max,
            exe: std::env::current_exe().context("locating the wxdispatch binary")?,
            worker_wrapper: args.worker_wrapper.clone().filter(|w| !w.trim().is_empty()),
        })
    }

    fn admin_db_url(&self) -> String {
        url_with_path(&self.db_url, Some("postgres"))
    }
}

/// `scheme://authority[/path][?query]` with the path replaced (or removed).
fn url_with_path(url: &str, path: Option<&str>) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let query = rest[auth_end..]
        .find('?')
        .map_or("", |q| &rest[auth_end + q..]);
    match path {
        Some(p) => format!("{scheme}{}/{p}{query}", &rest[..auth_end]),
        None => format!("{scheme}{}", &rest[..auth_end]),
    }
}

/// The user name of `scheme://user[:pw]@host…`.
fn url_user(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    Some(userinfo.split(':').next().unwrap_or("").to_owned()).filter(|u| !u.is_empty())
}

/// The account of a run.
fn account_for(channel: Channel, base_url: &str, rate: Option<(u32, u32)>) -> Value {
    let rate = match rate {
        Some((per_second, burst)) => json!({ "per_second": per_second, "burst": burst }),
        None => json!({ "unlimited": true }),
    };
    match channel {
        Channel::Chatbot => json!({
            "name": BOT_ACCOUNT, "channel": "chatbot", "base_url": base_url, "rate": rate,
            "appid": BOT_APPID, "token": BOT_TOKEN, "encoding_aes_key": crate::tools::fixtures::DEMO_AES_KEY,
        }),
        Channel::Wecom => json!({
            "name": KF_ACCOUNT, "channel": "wecom", "base_url": base_url, "rate": rate,
            "corpid": KF_CORPID, "secret": KF_SECRET, "open_kfids": [KF_OPEN_KFID],
        }),
    }
}

/// A port that was free a moment ago (the child binds it; a race here is harmless and rare).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// One run: its vhost, database, config, simulator process and connections.
struct Scenario {
    label: String,
    name: String,
    dir: PathBuf,
    cfg_path: PathBuf,
    cfg: Config,
    account: AccountConfig,
    sim: Proc,
    sim_client: SimClient,
    pool: PgPool,
    conn: Connection,
    admin_db_url: String,
    exe: PathBuf,
    worker_wrapper: Option<String>,
    keep: bool,
}

impl Scenario {
    /// Create the vhost, the database and the config; start the simulator; declare the
    /// topology and apply the migrations. `rate` = (per second, burst), `None` = unlimited.
    async fn create(
        base: &Base,
        label: &str,
        channel: Channel,
        rate: Option<(u32, u32)>,
        keep: bool,
    ) -> anyhow::Result<Self> {
        let r: u32 = rand::random();
        let name = format!("wxbench_{}_{r:08x}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        match Self::create_in(base, label, channel, rate, keep, &name, &dir).await {
            Ok(s) => Ok(s),
            Err(e) => {
                if !keep {
                    remove_resources(&name, &base.admin_db_url(), &dir, label).await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn create_in(
        base: &Base,
        label: &str,
        channel: Channel,
        rate: Option<(u32, u32)>,
        keep: bool,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let (name, dir) = (name.to_owned(), dir.to_owned());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        rabbitmqctl(&["add_vhost", &name]).await?;
        let user = base.amqp_user.clone();
        rabbitmqctl(&["set_permissions", "-p", &name, &user, ".*", ".*", ".*"]).await?;
        let sim_port = free_port()?;
        let sim_base = format!("http://127.0.0.1:{sim_port}");
        let toml_text = {
            let doc = json!({
                "broker": {
                    "url": format!("{}/{name}", base.amqp_root),
                    "prefetch": base.prefetch,
                    "delivery_limit": base.delivery_limit,
                },
                "database": {
                    "url": url_with_path(&base.db_url, Some(&name)),
                    "max_connections": base.max_connections,
                    "batch_max": base.batch_max,
                },
                "http": { "listen": format!("127.0.0.1:{}", free_port()?) },
                "worker": {
                    "concurrency": base.concurrency,
                    "shutdown_grace_secs": WORKER_GRACE_SECS,
                },
                "account": [account_for(channel, &sim_base, rate)],
            });
            toml::to_string(&doc).context("rendering the bench config")?
        };
        let cfg = Config::from_toml_with_env(&toml_text, &[])
            .context("the generated bench config does not load")?;
        cfg.validate()
            .context("the generated bench config is invalid")?;
        let cfg_path = dir.join("wxdispatch.toml");
        write_private(&cfg_path, &toml_text)?;
        let account = cfg
            .accounts
            .first()
            .cloned()
            .context("the generated config has no account")?;
        let mut sim_args = vec![
            "simulate".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{sim_port}"),
        ];
        if rate.is_none() {
            sim_args.push("--no-rate-limit".into());
        }
        let sim = Proc::spawn("simulator", &base.exe, &cfg_path, &sim_args, &dir)?;
        let sim_client = SimClient::new(&sim_base)?;
        let mut sim = sim;
        sim_client.wait_ready(&mut sim).await?;
        let pool = store::connect_pool(&cfg).await?;
        store::migrate(&pool).await?;
        let conn = broker::connect(&cfg.broker.url, "wxdispatch-bench").await?;
        broker::declare_topology(&conn, &cfg).await?;
        Ok(Self {
            label: label.to_owned(),
            name,
            dir,
            cfg_path,
            cfg,
            account,
            sim,
            sim_client,
            pool,
            conn,
            admin_db_url: base.admin_db_url(),
            exe: base.exe.clone(),
            worker_wrapper: base.worker_wrapper.clone(),
            keep,
        })
    }

    fn spawn_worker(&self) -> anyhow::Result<Proc> {
        Proc::spawn_wrapped(
            "worker",
            self.worker_wrapper.as_deref(),
            &self.exe,
            &self.cfg_path,
            &["run".to_owned()],
            &self.dir,
        )
    }

    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{}] {what}", self.label);
    }

    /// Publish `n` jobs (ids `<prefix><i>`) with pipelined confirms.
    async fn publish(&self, jobs: &JobGen, prefix: &str, n: usize) -> anyhow::Result<Duration> {
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let t0 = Instant::now();
        let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
        for i in 0..n {
            let (props, body) = jobs.job(&format!("{prefix}{i}"), i, now_ms());
            let confirm = ch
                .basic_publish(
                    broker::EXCHANGE.into(),
                    self.account.name.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .context("publishing the backlog")?;
            pending.push_back(confirm);
            if pending.len() >= CONFIRM_WINDOW
                && let Some(c) = pending.pop_front()
            {
                check_confirm(c.await?)?;
            }
        }
        while let Some(c) = pending.pop_front() {
            check_confirm(c.await?)?;
        }
        let took = t0.elapsed();
        let _ = ch.close(200, "published".into()).await;
        Ok(took)
    }

    /// Messages ready in the lane queue.
    async fn queue_ready(&self) -> anyhow::Result<u32> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                self.account.queue().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "bye".into()).await;
        Ok(q.message_count())
    }

    /// The broker ceiling: `n` jobs consumed and acked by a consumer that does nothing else,
    /// same queue, same prefetch. Returns messages per second.
    async fn broker_ceiling(&self, jobs: &JobGen, n: usize) -> anyhow::Result<f64> {
        self.say(format!(
            "broker ceiling: publishing {} jobs …",
            thousands(n as u64)
        ));
        let took = self.publish(jobs, "c", n).await?;
        self.say(format!(
            "  published in {:.2} s ({} msg/s); consuming and acking …",
            took.as_secs_f64(),
            thousands((n as f64 / took.as_secs_f64()).round() as u64)
        ));
        let conn = broker::connect(&self.cfg.broker.url, "wxdispatch-bench-ceiling").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(self.cfg.broker.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                self.account.queue().as_str().into(),
                "wxdispatch-bench-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let t0 = Instant::now();
        let deadline = t0 + drain_timeout(n);
        let mut got = 0usize;
        let mut redelivered = 0usize;
        while got < n {
            let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
            match next {
                Err(_) => bail!("broker ceiling: only {got} of {n} messages arrived in time"),
                Ok(None) => bail!("broker ceiling: the consumer ended after {got} messages"),
                Ok(Some(Err(e))) => bail!("broker ceiling: consumer error: {e}"),
                Ok(Some(Ok(d))) => {
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .context("broker ceiling: ack")?;
                    got += 1;
                    redelivered += usize::from(d.redelivered);
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // A quorum queue applies settlements asynchronously; a consumer that goes away
        // before they are applied gets those messages returned. Give them a moment, then
        // purge whatever came back, so the worker's backlog is exactly its own.
        tokio::time::sleep(CEILING_SETTLE).await;
        let _ = ch.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        let purge = self.conn.create_channel().await?;
        let purged = purge
            .queue_purge(
                self.account.queue().as_str().into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        let _ = purge.close(200, "bye".into()).await;
        if purged > 0 {
            self.say(format!(
                "  note: {purged} acked messages were returned when the ceiling consumer closed ({redelivered} redeliveries); purged"
            ));
        }
        let left = self.queue_ready().await?;
        if left != 0 {
            bail!("broker ceiling: {left} messages still queued after the ceiling run");
        }
        let rate = n as f64 / secs;
        self.say(format!(
            "  ceiling {} msg/s ({secs:.2} s)",
            thousands(rate.round() as u64)
        ));
        Ok(rate)
    }

    /// Rows of `deliveries` with an outcome (a full scan: run it rarely).
    async fn terminal(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE status NOT IN ('accepted', 'retrying')",
        )
        .persistent(false)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Rows of the run's account still without an outcome: through the `(account, status)`
    /// index, cheap while few are in flight, so it can be polled without loading Postgres.
    /// Planned afresh every time (`persistent(false)`): a cached plan made while the table
    /// was empty would scan it.
    async fn in_progress(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE account = $1 AND status IN ('accepted', 'retrying')",
        )
        .bind(&self.account.name)
        .persistent(false)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Wait until `n` rows are terminal; returns how many queries this ran on the run's
    /// database (they count among its commits).
    async fn wait_drained(&self, worker: &mut Proc, n: u64) -> anyhow::Result<u64> {
        let deadline = Instant::now() + drain_timeout(n as usize);
        let mut queries = 0u64;
        let mut last_db = Instant::now();
        loop {
            worker.check_alive()?;
            let accepted = self.sim_client.accepted_total().await?;
            let sim_done = accepted >= n;
            if sim_done || last_db.elapsed() >= DB_CHECK_EVERY {
                last_db = Instant::now();
                queries += 1;
                if self.in_progress().await? == 0 {
                    queries += 1;
                    if self.terminal().await? >= n {
                        return Ok(queries);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "[{}] drain timed out: the simulator accepted {accepted} of {n}; rows: {:?}",
                    self.label,
                    self.status_counts().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(if sim_done { POLL_DB } else { POLL_SIM }).await;
        }
    }

    async fn status_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query(
            "SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect())
    }

    /// Transactions committed in this run's database so far (read from the `postgres`
    /// database, so the reading itself is not counted).
    async fn commits(&self) -> anyhow::Result<i64> {
        let mut c = sqlx::PgConnection::connect(&self.admin_db_url).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut c)
                .await?;
        let _ = c.close().await;
        Ok(n)
    }

    /// Close the run's pool (its backends flush their statistics when they exit) and open
    /// a new one.
    async fn reopen_pool(&mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        self.pool = store::connect_pool(&self.cfg).await?;
        Ok(())
    }

    async fn cleanup(self) {
        let Scenario {
            sim,
            pool,
            conn,
            name,
            dir,
            admin_db_url,
            keep,
            label,
            ..
        } = self;
        if let Err(e) = sim.stop().await {
            eprintln!("[{label}] simulator: {e:#}");
        }
        let _ = conn.close(200, "bye".into()).await;
        pool.close().await;
        if keep {
            eprintln!(
                "[{label}] kept vhost and database {name}, config and logs in {}",
                dir.display()
            );
            return;
        }
        remove_resources(&name, &admin_db_url, &dir, &label).await;
    }
}

/// Delete a run's vhost, database and directory (whatever of them exists).
async fn remove_resources(name: &str, admin_db_url: &str, dir: &Path, label: &str) {
    if let Err(e) = rabbitmqctl(&["delete_vhost", name]).await
        && !format!("{e:#}").contains("does not exist")
    {
        eprintln!("[{label}] {e:#}");
    }
    match sqlx::PgConnection::connect(admin_db_url).await {
        Ok(mut c) => {
            let stmt = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&mut c).await {
                eprintln!("[{label}] dropping database {name}: {e}");
            }
            let _ = c.close().await;
        }
        Err(e) => eprintln!("[{label}] dropping database {name}: {e}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn drain_timeout(n: usize) -> Duration {
    DRAIN_TIMEOUT_MIN + DRAIN_PER_JOB * u32::try_from(n).unwrap_or(u32::MAX)
}

fn check_confirm(c: lapin::Confirmation) -> anyhow::Result<()> {
    if c.is_ack() {
        Ok(())
    } else {
        bail!("the broker refused a published job (nack)")
    }
}

/// Write a file only the owner can read (the config may hold a database password).
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl (RabbitMQ must run on this machine)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// The jobs of a run: `recipients` conversations round robin, texts of `text_bytes` that
/// start with the publish time.
struct JobGen {
    channel: Channel,
    recipients: usize,
    text_bytes: usize,
}

/// Filler for the texts (ASCII, so any cut is a char boundary).
const FILLER: &str = " Thank you for your message; an agent will follow up shortly.";

impl JobGen {
    fn new(channel: Channel, args: &BenchArgs) -> Self {
        Self {
            channel,
            recipients: args.recipients.max(1),
            text_bytes: args.text_bytes,
        }
    }

    fn job(&self, job_id: &str, i: usize, published_ms: i64) -> (BasicProperties, Vec<u8>) {
        let mut text = format!("{PUB_MARKER}{published_ms}] {job_id}");
        while text.len() < self.text_bytes {
            text.push_str(FILLER);
        }
        text.truncate(self.text_bytes.max(text.find(']').map_or(0, |e| e + 1)));
        let r = i % self.recipients;
        let (to, message) = match self.channel {
            Channel::Chatbot => (format!("oBench{r:06}"), json!({ "text": text })),
            Channel::Wecom => (
                format!("wmBench{r:06}"),
                json!({ "text": { "content": text } }),
            ),
        };
        let body = json!({ "job_id": job_id, "to": to, "message": message }).to_string();
        let mut headers = FieldTable::default();
        headers.insert(
            H_PUBLISHED_MS.into(),
            AMQPValue::LongString(published_ms.to_string().into()),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(job_id.into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(published_ms / 1000).unwrap_or(0))
            .with_headers(headers);
        (props, body.into_bytes())
    }
}

/// The publish time a job's text carries (see [`JobGen::job`]).
fn published_ms_in(v: &Value) -> Option<i64> {
    let s = v.to_string();
    let at = s.find(PUB_MARKER)? + PUB_MARKER.len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------- child processes

/// A child process of this binary (`simulate` or `run`) with its own config.
struct Proc {
    name: &'static str,
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl Proc {
    fn spawn(
        name: &'static str,
        exe: &Path,
        cfg: &Path,
        args: &[String],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        Self::spawn_wrapped(name, None, exe, cfg, args, dir)
    }

    /// [`Proc::spawn`] under `wrapper` (a command and its arguments, split at whitespace).
    fn spawn_wrapped(
        name: &'static str,
        wrapper: Option<&str>,
        exe: &Path,
        cfg: &Path,
        args: &[String],
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut words = wrapper.unwrap_or("").split_whitespace();
        let mut cmd = match words.next() {
            Some(program) => {
                let mut c = tokio::process::Command::new(program);
                c.args(words).arg(exe);
                c
            }
            None => tokio::process::Command::new(exe),
        };
        cmd.arg("--config").arg(cfg).args(args);
        // The generated config is the whole configuration: no overrides from this shell.
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("WXDISPATCH_") {
                cmd.env_remove(k.as_ref());
            }
        }
        cmd.env("RUST_LOG", CHILD_LOG_FILTER)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting the {name} ({})", exe.display()))?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Self {
            name,
            child,
            pid,
            log,
        })
    }

    /// Fails (with the end of its log) when the process has exited.
    fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "the {} exited ({status}); its log ends with:\n{}",
                self.name,
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// CPU seconds (user + system) used so far.
    fn cpu_secs(&self) -> f64 {
        proc_stat(self.pid).map_or(0.0, |(_, t)| t as f64 / clock_ticks())
    }

    /// Peak resident set size so far (`VmHWM`), bytes.
    fn peak_rss(&self) -> u64 {
        proc_status_kb(self.pid, "VmHWM:").unwrap_or(0) * 1024
    }

    /// SIGTERM, wait for a graceful exit, SIGKILL after [`STOP_TIMEOUT`].
    async fn stop(mut self) -> anyhow::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.pid).context("pid out of range")?;
        // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    bail!(
                        "the {} exited with {status}; its log ends with:\n{}",
                        self.name,
                        log_tail(&self.log)
                    );
                }
                Ok(())
            }
            Err(_) => {
                let _ = self.child.kill().await;
                bail!("the {} did not stop within {STOP_TIMEOUT:?}", self.name)
            }
        }
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// `(comm, utime + stime in clock ticks)` of a process.
fn proc_stat(pid: u32) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s.get(open + 1..close)?.to_owned();
    // Fields after the command: state is field 3, utime 14, stime 15.
    let rest: Vec<&str> = s.get(close + 2..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// A `kB` line of `/proc/<pid>/status`.
fn proc_status_kb(pid: u32, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// CPU use of every process and of the whole machine at one moment.
struct CpuSnapshot {
    at: Instant,
    /// Non-idle ticks of all CPUs (`/proc/stat`).
    busy: u64,
    procs: HashMap<u32, (String, u64)>,
}

impl CpuSnapshot {
    fn take() -> Self {
        let busy = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let line = s.lines().next()?.to_owned();
                let v: Vec<u64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|x| x.parse().ok())
                    .collect();
                // user nice system idle iowait irq softirq steal …
                Some(
                    v.iter().take(8).sum::<u64>()
                        - v.get(3).copied().unwrap_or(0)
                        - v.get(4).copied().unwrap_or(0),
                )
            })
            .unwrap_or(0);
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for e in dir.flatten() {
                if let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok())
                    && let Some(st) = proc_stat(pid)
                {
                    procs.insert(pid, st);
                }
            }
        }
        Self {
            at: Instant::now(),
            busy,
            procs,
        }
    }
}

/// Where the machine's CPU went between two snapshots, in cores (CPU seconds per second).
#[derive(Debug, Default, Clone)]
struct CpuUse {
    worker: f64,
    simulator: f64,
    rabbitmq: f64,
    postgres: f64,
    bench: f64,
    other: f64,
    busy: f64,
}

impl CpuUse {
    fn between(a: &CpuSnapshot, b: &CpuSnapshot, worker: u32, simulator: u32) -> Self {
        let wall = b.at.duration_since(a.at).as_secs_f64().max(1e-3);
        let hz = clock_ticks();
        let cores = |ticks: u64| ticks as f64 / hz / wall;
        let me = std::process::id();
        let mut u = CpuUse {
            busy: cores(b.busy.saturating_sub(a.busy)),
            ..Default::default()
        };
        for (pid, (comm, t)) in &b.procs {
            let before = a.procs.get(pid).map_or(0, |(_, t0)| *t0);
            let c = cores(t.saturating_sub(before));
            match (*pid, comm.as_str()) {
                (p, _) if p == worker => u.worker += c,
                (p, _) if p == simulator => u.simulator += c,
                (p, _) if p == me => u.bench += c,
                (_, "beam.smp") => u.rabbitmq += c,
                (_, "postgres") => u.postgres += c,
                _ => {}
            }
        }
        let known = u.worker + u.simulator + u.bench + u.rabbitmq + u.postgres;
        u.other = (u.busy - known).max(0.0);
        u
    }

    fn describe(&self) -> String {
        format!(
            "worker {:.2} · simulator {:.2} · RabbitMQ {:.2} · Postgres {:.2} · bench {:.2} · other {:.2} (busy {:.2})",
            self.worker,
            self.simulator,
            self.rabbitmq,
            self.postgres,
            self.bench,
            self.other,
            self.busy
        )
    }
}

// ---------------------------------------------------------------- the simulator's admin API

struct SimClient {
    http: reqwest::Client,
    base: String,
}

impl SimClient {
    fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the bench's HTTP client")?,
            base: base.to_owned(),
        })
    }

    async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/_sim/stats", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    async fn accepted_total(&self) -> anyhow::Result<u64> {
        let s = self.stats().await.context("asking the simulator")?;
        Ok(s.get("accepted_total").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Errcodes the simulator answered, as `account:errcode=count, …` (empty when none).
    async fn errcodes(&self) -> anyhow::Result<String> {
        let s = self.stats().await?;
        Ok(s.get("errcodes")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default())
    }

    async fn duplicates(&self) -> anyhow::Result<u64> {
        let s = self.stats().await?;
        Ok(s.get("duplicate_msgids")
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()))
    }

    /// Every retained accepted record with `seq > since`.
    async fn accepted_since(&self, mut since: u64) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::new();
        loop {
            let page: Vec<Value> = self
                .http
                .get(format!(
                    "{}/_sim/accepted?since_seq={since}&limit={ACCEPTED_PAGE}",
                    self.base
                ))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let Some(last) = page
                .last()
                .and_then(|r| r.get("seq"))
                .and_then(Value::as_u64)
            else {
                return Ok(out);
            };
            since = last;
            let full = page.len() == ACCEPTED_PAGE;
            out.extend(page);
            if !full {
                return Ok(out);
            }
        }
    }

    async fn wait_ready(&self, sim: &mut Proc) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            sim.check_alive()?;
            if self.stats().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the simulator did not answer within {START_TIMEOUT:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_accepted(
        &self,
        proc: &mut Proc,
        n: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            proc.check_alive()?;
            let got = self.accepted_total().await?;
            if got >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the simulator accepted {got} of {n} within {timeout:?}");
            }
            tokio::time::sleep(POLL_SIM).await;
        }
    }
}

/// Send records as `(seq, at_ms, record)`.
fn send_records(records: Vec<Value>) -> Vec<(u64, i64, Value)> {
    records
        .into_iter()
        .filter(|r| {
            r.get("api")
                .and_then(Value::as_str)
                .is_some_and(|a| SEND_APIS.contains(&a))
        })
        .filter_map(|r| {
            let seq = r.get("seq")?.as_u64()?;
            let at = r.get("at_ms")?.as_i64()?;
            Some((seq, at, r))
        })
        .collect()
}

// ---------------------------------------------------------------- the runs

struct ThroughputResult {
    channel: BenchChannel,
    ceiling: f64,
    rate: f64,
    secs: f64,
    cpu_per_10k: f64,
    peak_rss: u64,
    rows_per_commit: f64,
    commits: i64,
    cpu: CpuUse,
    not_sent: Vec<(String, i64)>,
    duplicates: u64,
}

impl ThroughputResult {
    fn ratio(&self) -> f64 {
        self.rate / self.ceiling
    }

    /// This round's rows; `ratios` are every round's (sorted), this one among them.
    fn rows(&self, rows: &mut Vec<TableRow>, n: usize, ratios: &[f64]) {
        let ch = channel_name(self.channel);
        let ratio = self.ratio();
        let rounds = if ratios.len() > 1 {
            let all: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
            format!(" (median of {} rounds: {})", ratios.len(), all.join(", "))
        } else {
            String::new()
        };
        let problems = if self.not_sent.is_empty() && self.duplicates == 0 {
            String::new()
        } else {
            format!(
                " — NOT ALL SENT: {:?}, {} duplicate sends",
                self.not_sent, self.duplicates
            )
        };
        rows.push(TableRow::new(
            format!("end-to-end throughput, {ch}"),
            format!(
                "{} jobs/s ({} jobs in {:.2} s){problems}",
                thousands(self.rate.round() as u64),
                thousands(n as u64),
                self.secs
            ),
            "",
            if problems.is_empty() {
                None
            } else {
                Some(false)
            },
        ));
        rows.push(TableRow::new(
            format!("broker ceiling, {ch} run"),
            format!("{} msg/s", thousands(self.ceiling.round() as u64)),
            "",
            None,
        ));
        rows.push(TableRow::new(
            format!("ratio end-to-end ÷ ceiling, {ch}"),
            format!("{ratio:.2}{rounds}"),
            "≥ 0.5",
            Some(ratio >= 0.5),
        ));
        rows.push(TableRow::new(
            format!("worker CPU per 10,000 jobs, {ch}"),
            format!("{:.2} s", self.cpu_per_10k),
            "",
            None,
        ));
        rows.push(TableRow::new(
            format!("rows per commit, {ch}"),
            format!(
                "{:.1} ({} rows / {} commits)",
                self.rows_per_commit,
                thousands(2 * n as u64),
                thousands(self.commits.max(0) as u64)
            ),
            "batched",
            None,
        ));
        rows.push(TableRow::new(
            format!("CPU cores during the drain, {ch}"),
            self.cpu.describe(),
            "",
            None,
        ));
    }
}

async fn throughput(
    base: &Base,
    args: &BenchArgs,
    channel: BenchChannel,
) -> anyhow::Result<ThroughputResult> {
    let label = format!("throughput {}", channel_name(channel));
    let mut sc = Scenario::create(base, &label, channel.channel(), None, args.keep).await?;
    let res = throughput_in(&mut sc, args, channel).await;
    sc.cleanup().await;
    res
}

async fn throughput_in(
    sc: &mut Scenario,
    args: &BenchArgs,
    channel: BenchChannel,
) -> anyhow::Result<ThroughputResult> {
    let n = args.jobs;
    let jobs = JobGen::new(channel.channel(), args);
    let ceiling = sc.broker_ceiling(&jobs, n).await?;
    sc.say(format!(
        "publishing the backlog of {} jobs …",
        thousands(n as u64)
    ));
    let took = sc.publish(&jobs, "j", n).await?;
    sc.say(format!(
        "  published in {:.2} s; starting the worker",
        took.as_secs_f64()
    ));
    let commits0 = sc.commits().await?;
    let cpu0 = CpuSnapshot::take();
    let t0 = Utc::now();
    let mut worker = sc.spawn_worker()?;
    let queries = match sc.wait_drained(&mut worker, n as u64).await {
        Ok(q) => q,
        Err(e) => {
            let _ = worker.stop().await;
            return Err(e);
        }
    };
    let cpu1 = CpuSnapshot::take();
    let worker_cpu = worker.cpu_secs();
    let peak_rss = worker.peak_rss();
    let cpu = CpuUse::between(&cpu0, &cpu1, worker.pid, sc.sim.pid);
    worker.stop().await?;
    sc.reopen_pool().await?;
    // Backends flush their statistics when they exit; give them a moment.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let commits = sc.commits().await? - commits0 - i64::try_from(queries).unwrap_or(0);
    let (first, end): (Option<DateTime<Utc>>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT min(created_at), max(updated_at) FROM deliveries")
            .fetch_one(&sc.pool)
            .await?;
    let (first, end) = first.zip(end).context("no deliveries recorded")?;
    let secs = (end - t0).num_microseconds().unwrap_or(0) as f64 / 1e6;
    let startup = (first - t0).num_microseconds().unwrap_or(0) as f64 / 1e6;
    sc.say(format!(
        "  worker start to first claim {:.0} ms",
        startup * 1e3
    ));
    let not_sent: Vec<(String, i64)> = sc
        .status_counts()
        .await?
        .into_iter()
        .filter(|(s, _)| s != "sent")
        .collect();
    let duplicates = sc.sim_client.duplicates().await?;
    let rate = n as f64 / secs.max(1e-3);
    sc.say(format!(
        "  {} jobs/s end to end ({secs:.2} s), ratio {:.2}; worker {worker_cpu:.2} CPU s, peak RSS {:.1} MB",
        thousands(rate.round() as u64),
        rate / ceiling,
        peak_rss as f64 / MIB
    ));
    sc.say(format!("  CPU cores: {}", cpu.describe()));
    Ok(ThroughputResult {
        channel,
        ceiling,
        rate,
        secs,
        cpu_per_10k: worker_cpu / n as f64 * 10_000.0,
        peak_rss,
        rows_per_commit: (2 * n) as f64 / commits.max(1) as f64,
        commits,
        cpu,
        not_sent,
        duplicates,
    })
}

struct LatencyResult {
    p50: i64,
    p99: i64,
    max: i64,
    published: usize,
    measured: usize,
    publish_rate: f64,
    cpu: CpuUse,
}

impl LatencyResult {
    fn rows(&self, rows: &mut Vec<TableRow>, args: &BenchArgs) {
        let missing = if self.measured == self.published {
            String::new()
        } else {
            format!(" — only {} of {} accepted", self.measured, self.published)
        };
        rows.push(TableRow::new(
            format!(
                "latency publish → accepted at {}/s for {} s (p50 / p99 / max)",
                args.latency_rate, args.latency_secs
            ),
            format!(
                "{} / {} / {} ms ({} jobs, published at {:.0}/s){missing}",
                self.p50,
                self.p99,
                self.max,
                thousands(self.measured as u64),
                self.publish_rate
            ),
            "p99 ≤ 10 ms",
            Some(self.p99 <= 10 && missing.is_empty()),
        ));
        rows.push(TableRow::new(
            format!("CPU cores at {}/s", args.latency_rate),
            self.cpu.describe(),
            "",
            None,
        ));
    }
}

async fn latency(base: &Base, args: &BenchArgs) -> anyhow::Result<LatencyResult> {
    let mut sc = Scenario::create(base, "latency", Channel::Chatbot, None, args.keep).await?;
    let res = latency_in(&mut sc, args).await;
    sc.cleanup().await;
    res
}

async fn latency_in(sc: &mut Scenario, args: &BenchArgs) -> anyhow::Result<LatencyResult> {
    let jobs = JobGen::new(Channel::Chatbot, args);
    let mut worker = sc.spawn_worker()?;
    let res = async {
        sc.say(format!("warming up with {WARMUP_JOBS} jobs …"));
        sc.publish(&jobs, "w", WARMUP_JOBS).await?;
        sc.sim_client
            .wait_accepted(&mut worker, WARMUP_JOBS as u64, START_TIMEOUT)
            .await?;
        let since = sc
            .sim_client
            .accepted_since(0)
            .await?
            .iter()
            .filter_map(|r| r.get("seq").and_then(Value::as_u64))
            .max()
            .unwrap_or(0);
        let rate = args.latency_rate.max(1);
        let total = usize::try_from(u64::from(rate) * args.latency_secs).unwrap_or(usize::MAX);
        sc.say(format!(
            "publishing {rate} jobs/s for {} s …",
            args.latency_secs
        ));
        let ch = sc.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let interval = Duration::from_secs(1) / rate;
        let cpu0 = CpuSnapshot::take();
        let start = tokio::time::Instant::now() + Duration::from_millis(10);
        let mut confirms = Vec::with_capacity(total);
        for i in 0..total {
            tokio::time::sleep_until(start + interval * u32::try_from(i).unwrap_or(u32::MAX)).await;
            let (props, body) = jobs.job(&format!("l{i}"), i, now_ms());
            confirms.push(
                ch.basic_publish(
                    broker::EXCHANGE.into(),
                    sc.account.name.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await?,
            );
        }
        let publish_secs = start.elapsed().as_secs_f64();
        for c in confirms {
            check_confirm(c.await?)?;
        }
        let _ = ch.close(200, "published".into()).await;
        sc.sim_client
            .wait_accepted(
                &mut worker,
                (WARMUP_JOBS + total) as u64,
                Duration::from_secs(30),
            )
            .await?;
        let cpu = CpuUse::between(&cpu0, &CpuSnapshot::take(), worker.pid, sc.sim.pid);
        let mut lat: Vec<i64> = send_records(sc.sim_client.accepted_since(since).await?)
            .into_iter()
            .filter_map(|(_, at, r)| Some(at - published_ms_in(&r)?))
            .collect();
        if lat.is_empty() {
            bail!("latency: no accepted job carried its publish time");
        }
        lat.sort_unstable();
        let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
        let r = LatencyResult {
            p50: pct(0.50),
            p99: pct(0.99),
            max: lat[lat.len() - 1],
            published: total,
            measured: lat.len(),
            publish_rate: total as f64 / publish_secs.max(1e-3),
            cpu,
        };
        sc.say(format!(
            "  p50 {} ms, p99 {} ms, max {} ms over {} jobs",
            r.p50, r.p99, r.max, r.measured
        ));
        anyhow::Ok(r)
    }
    .await;
    let stopped = worker.stop().await;
    let r = res?;
    stopped?;
    Ok(r)
}

struct MemoryResult {
    peak_rss: u64,
    rate: f64,
    cpu_per_10k: f64,
}

async fn memory(base: &Base, args: &BenchArgs) -> anyhow::Result<MemoryResult> {
    let mut sc = Scenario::create(base, "memory", Channel::Chatbot, None, args.keep).await?;
    let res = memory_in(&mut sc, args).await;
    sc.cleanup().await;
    res
}

async fn memory_in(sc: &mut Scenario, args: &BenchArgs) -> anyhow::Result<MemoryResult> {
    let n = args.memory_jobs;
    let jobs = JobGen::new(Channel::Chatbot, args);
    sc.say(format!(
        "publishing the backlog of {} jobs …",
        thousands(n as u64)
    ));
    let took = sc.publish(&jobs, "m", n).await?;
    sc.say(format!(
        "  published in {:.2} s; starting the worker",
        took.as_secs_f64()
    ));
    let t0 = Instant::now();
    let mut worker = sc.spawn_worker()?;
    if let Err(e) = sc.wait_drained(&mut worker, n as u64).await {
        let _ = worker.stop().await;
        return Err(e);
    }
    let secs = t0.elapsed().as_secs_f64();
    let peak_rss = worker.peak_rss();
    let cpu = worker.cpu_secs();
    worker.stop().await?;
    let r = MemoryResult {
        peak_rss,
        rate: n as f64 / secs,
        cpu_per_10k: cpu / n as f64 * 10_000.0,
    };
    sc.say(format!(
        "  peak RSS {:.1} MB; {} jobs/s",
        peak_rss as f64 / MIB,
        thousands(r.rate.round() as u64)
    ));
    Ok(r)
}

struct LimiterResult {
    observed: f64,
    worst_window: usize,
    /// Errcodes the simulator answered during the run (any API).
    errcodes: String,
}

impl LimiterResult {
    fn rows(&self, rows: &mut Vec<TableRow>, args: &BenchArgs) {
        let limit = f64::from(args.limiter_rate);
        let dev = (self.observed - limit) / limit * 100.0;
        let refused = if self.errcodes.is_empty() {
            String::new()
        } else {
            format!("; simulator errcodes: {}", self.errcodes)
        };
        rows.push(TableRow::new(
            format!(
                "limiter {}/s (burst {}) for {} s: observed rate",
                args.limiter_rate, args.limiter_burst, args.limiter_secs
            ),
            format!("{:.1}/s ({dev:+.2} %){refused}", self.observed),
            "within 2 %",
            Some(dev.abs() <= 2.0),
        ));
        let cap = args.limiter_rate as usize + args.limiter_burst as usize;
        rows.push(TableRow::new(
            "limiter: busiest one-second window".to_owned(),
            format!("{} requests", self.worst_window),
            format!("≤ {cap} (limit + burst)"),
            Some(self.worst_window <= cap),
        ));
    }
}

async fn limiter(base: &Base, args: &BenchArgs) -> anyhow::Result<LimiterResult> {
    let rate = (args.limiter_rate.max(1), args.limiter_burst.max(1));
    let mut sc = Scenario::create(base, "limiter", Channel::Chatbot, Some(rate), args.keep).await?;
    let res = limiter_in(&mut sc, args, rate.0).await;
    sc.cleanup().await;
    res
}

async fn limiter_in(
    sc: &mut Scenario,
    args: &BenchArgs,
    rate: u32,
) -> anyhow::Result<LimiterResult> {
    let secs = args.limiter_secs.max(1);
    // More than the run can send, so the limiter is the only brake throughout.
    let backlog = usize::try_from(u64::from(rate) * (secs + 5)).unwrap_or(usize::MAX);
    let jobs = JobGen::new(Channel::Chatbot, args);
    sc.say(format!(
        "publishing {} jobs, then {secs} s at the {rate}/s limit …",
        thousands(backlog as u64)
    ));
    sc.publish(&jobs, "r", backlog).await?;
    let mut worker = sc.spawn_worker()?;
    let res = async {
        let want = u64::from(rate) * (secs + 1);
        sc.sim_client
            .wait_accepted(&mut worker, want, Duration::from_secs(secs * 3 + 30))
            .await?;
        let mut at: Vec<i64> = send_records(sc.sim_client.accepted_since(0).await?)
            .into_iter()
            .map(|(_, at, _)| at)
            .collect();
        at.sort_unstable();
        let first = *at.first().context("limiter: nothing accepted")?;
        let window_ms = i64::try_from(secs * 1000).unwrap_or(i64::MAX);
        let measured: Vec<i64> = at
            .iter()
            .copied()
            .filter(|t| *t < first + window_ms)
            .collect();
        let observed = measured.len() as f64 / secs as f64;
        // The busiest [t, t + 1 s) over the measured span.
        let mut worst = 0;
        let mut j = 0;
        for i in 0..measured.len() {
            while j < measured.len() && measured[j] < measured[i] + 1000 {
                j += 1;
            }
            worst = worst.max(j - i);
        }
        let errcodes = sc.sim_client.errcodes().await?;
        sc.say(format!(
            "  {observed:.1}/s observed, busiest second {worst}; simulator errcodes: [{errcodes}]"
        ));
        anyhow::Ok(LimiterResult {
            observed,
            worst_window: worst,
            errcodes,
        })
    }
    .await;
    let stopped = worker.stop().await;
    let r = res?;
    stopped?;
    Ok(r)
}

/// Median µs per `MsgCrypt::encrypt` (random prefix, AES-256-CBC, base64) of 512 bytes.
fn crypto_us_per_op() -> anyhow::Result<f64> {
    let crypt = MsgCrypt::new(BOT_TOKEN, crate::tools::fixtures::DEMO_AES_KEY, BOT_APPID)
        .map_err(|e| anyhow::anyhow!("crypto: {e}"))?;
    let msg = vec![b'x'; CRYPTO_MESSAGE_BYTES];
    let mut rounds = Vec::with_capacity(CRYPTO_ROUNDS);
    // One round of warm-up, not counted.
    for round in 0..=CRYPTO_ROUNDS {
        let t0 = Instant::now();
        let mut len = 0usize;
        for _ in 0..CRYPTO_OPS {
            len += std::hint::black_box(crypt.encrypt(std::hint::black_box(&msg))).len();
        }
        std::hint::black_box(len);
        if round > 0 {
            rounds.push(t0.elapsed().as_secs_f64() * 1e6 / CRYPTO_OPS as f64);
        }
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[rounds.len() / 2])
}

// ---------------------------------------------------------------- output

struct TableRow {
    figure: String,
    result: String,
    target: String,
    met: Option<bool>,
}

impl TableRow {
    fn new(
        figure: impl Into<String>,
        result: impl Into<String>,
        target: impl Into<String>,
        met: Option<bool>,
    ) -> Self {
        Self {
            figure: figure.into(),
            result: result.into(),
            target: target.into(),
            met,
        }
    }
}

fn print_table(rows: &[TableRow]) {
    println!("| figure | result | target | met |");
    println!("|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.result, r.target);
    }
}

/// The machine the figures were taken on.
struct Machine {
    cpus: usize,
    model: String,
    mem_gib: f64,
    kernel: String,
    rabbitmq: String,
    postgres: String,
    load1: f64,
}

impl Machine {
    async fn probe(base: &Base) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            cpuinfo
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let model = match (field("model name"), field("cpu MHz")) {
            (Some(m), Some(mhz)) => format!("{m} @ {mhz} MHz"),
            (Some(m), None) => m,
            _ => "unknown CPU".into(),
        };
        let mem_gib = proc_meminfo_kb("MemTotal:").unwrap_or(0) as f64 / MIB;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        let rabbitmq = tokio::process::Command::new("rabbitmqctl")
            .arg("version")
            .output()
            .await
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let postgres = match sqlx::PgConnection::connect(&base.admin_db_url()).await {
            Ok(mut c) => {
                let v: Option<String> = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(&mut c)
                    .await
                    .ok();
                let _ = c.close().await;
                v.unwrap_or_default()
            }
            Err(_) => String::new(),
        };
        let load1 = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        Self {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            model,
            mem_gib,
            kernel,
            rabbitmq,
            postgres,
            load1,
        }
    }

    fn describe(&self) -> String {
        format!(
            "machine: {} CPUs ({}), {:.1} GiB RAM, Linux {}; RabbitMQ {}, PostgreSQL {}; load average at start {:.2}",
            self.cpus,
            self.model,
            self.mem_gib,
            self.kernel,
            self.rabbitmq,
            self.postgres,
            self.load1
        )
    }
}

fn proc_meminfo_kb(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// How to run this bench again with the same arguments.
fn rerun_command() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a
            }
        })
        .collect();
    format!("cargo run --release -- {}", args.join(" "))
}

/// 12345678 → "12,345,678".
fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_get_their_path_replaced() {
        assert_eq!(
            url_with_path("amqp://guest:guest@127.0.0.1:5672/%2f", None),
            "amqp://guest:guest@127.0.0.1:5672"
        );
        assert_eq!(
            url_with_path(
                "postgres://postgres@127.0.0.1:5432/wxdispatch?sslmode=disable",
                Some("x")
            ),
            "postgres://postgres@127.0.0.1:5432/x?sslmode=disable"
        );
        assert_eq!(url_with_path("postgres://h", Some("db")), "postgres://h/db");
        assert_eq!(url_user("amqp://guest:pw@h/v").as_deref(), Some("guest"));
        assert_eq!(url_user("amqp://h/v"), None);
    }

    #[test]
    fn jobs_carry_their_publish_time_and_are_valid() {
        let args = BenchArgs {
            jobs: 1,
            recipients: 3,
            text_bytes: 200,
            channels: vec![],
            only: vec![],
            skip_memory: false,
            memory_jobs: 1,
            latency_rate: 1,
            latency_secs: 1,
            limiter_rate: 1,
            limiter_burst: 1,
            limiter_secs: 1,
            rounds: 1,
            prefetch: None,
            concurrency: None,
            keep: false,
            worker_wrapper: None,
        };
        for channel in [Channel::Chatbot, Channel::Wecom] {
            let jobs = JobGen::new(channel, &args);
            let (props, body) = jobs.job("j42", 4, 1_763_740_000_123);
            let v: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(v["job_id"], "j42");
            assert!(v["to"].as_str().unwrap().ends_with("000001"), "{v}");
            let text = match channel {
                Channel::Chatbot => v["message"]["text"].as_str().unwrap().to_owned(),
                Channel::Wecom => v["message"]["text"]["content"].as_str().unwrap().to_owned(),
            };
            assert_eq!(text.len(), 200);
            assert_eq!(published_ms_in(&v), Some(1_763_740_000_123));
            assert_eq!(
                broker::header_str(&props, H_PUBLISHED_MS).as_deref(),
                Some("1763740000123")
            );
            let toml_text = toml::to_string(&json!({
                "account": [account_for(channel, "http://127.0.0.1:1", None)]
            }))
            .unwrap();
            let cfg = Config::from_toml_with_env(&toml_text, &[]).unwrap();
            cfg.validate().unwrap();
            crate::domain::job::parse(&body, Some("j42"), &cfg.accounts[0], 1 << 20).unwrap();
        }
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(12_345_678), "12,345,678");
    }

    #[test]
    fn proc_stat_reads_this_process() {
        let (comm, _) = proc_stat(std::process::id()).unwrap();
        assert!(!comm.is_empty());
        assert!(proc_status_kb(std::process::id(), "VmHWM:").unwrap() > 0);
    }
}
