//! The command line (contract §7). Every command exits 0 on success and otherwise prints one
//! clear line on stderr and exits non-zero (1 runtime failure, 2 usage or configuration).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sqlx::Row;

use crate::app::{self, Worker};
use crate::broker::{self, Publisher};
use crate::config::Config;
use crate::domain::job;
use crate::store;

#[derive(Debug, Parser)]
#[command(
    name = "wxdispatch",
    version,
    about = "Deliver customer-service replies into WeChat, reliably"
)]
pub struct Cli {
    /// Config file (default: $WXDISPATCH_CONFIG, then ./wxdispatch.toml, then built-in defaults).
    #[arg(long, global = true, env = "WXDISPATCH_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workers and the HTTP endpoints until SIGINT/SIGTERM.
    Run,
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Publish one job (from flags or a JSON file) with publisher confirms; prints the job id.
    Send(SendArgs),
    /// Show a delivery and its history.
    Status { job_id: String },
    /// Publish a broadcast (recipients from a file) and show its progress; or
    /// `broadcast status <id>` / `broadcast cancel <id>`.
    Broadcast(crate::engine::broadcast::BroadcastArgs),
    /// Serve a local simulator of the Dialogue Open Platform and WeCom kf APIs.
    Simulate(crate::tools::simulate::SimArgs),
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Start the simulator and a worker on demo accounts, send one job of every message type,
    /// print what happened. Uses the local RabbitMQ and Postgres.
    Demo(crate::tools::demo::DemoArgs),
    /// Dead letters: list them, replay them after fixing the cause.
    Dlq(crate::ops::DlqArgs),
    /// Deliveries per account and status, dead letters per reason.
    Stats(crate::ops::StatsArgs),
    /// Measure throughput, latency, memory, crypto and limiter accuracy against the local
    /// RabbitMQ, Postgres and simulator; prints one table. Build with --release.
    Bench(crate::tools::bench::BenchArgs),
    /// WeCom customer service administration: kf accounts, servicers, customers, sessions, statistics.
    Kf(crate::platform::kf::KfArgs),
}

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Account (routing key) to send through.
    #[arg(long)]
    pub account: String,
    /// A job JSON file (contract §4); flags below override its fields.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Recipient: openid (chatbot) or external_userid (WeCom).
    #[arg(long)]
    pub to: Option<String>,
    /// A text message.
    #[arg(long)]
    pub text: Option<String>,
    /// The message object as JSON, e.g. '{"image":{"media_id":"M"}}'.
    #[arg(long)]
    pub message: Option<String>,
    /// Job id (default: generated).
    #[arg(long)]
    pub job_id: Option<String>,
    #[arg(long)]
    pub open_kfid: Option<String>,
    /// bot (default) or none.
    #[arg(long)]
    pub gate: Option<String>,
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init_tracing();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wxdispatch: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let line = format!("{e:#}").replace('\n', " ");
            eprintln!("wxdispatch: error: {line}");
            if e.downcast_ref::<ConfigError>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::from(1)
            }
        }
    }
}

/// Marks configuration errors (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref()).map_err(|e| anyhow::Error::new(ConfigError(format!("{e:#}"))))
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => {
            let cfg = load(&cli.config)?;
            if cfg.accounts.is_empty() {
                tracing::warn!(
                    "no [[account]] configured: only unroutable messages will be handled"
                );
            }
            let w = Worker::start(cfg).await?;
            let sd = w.shutdown_token();
            tokio::spawn(async move {
                app::signal().await;
                tracing::info!("signal received; shutting down gracefully");
                sd.cancel();
            });
            w.wait().await
        }
        Command::Migrate => {
            let cfg = load(&cli.config)?;
            let pool = store::connect_pool(&cfg).await?;
            store::migrate(&pool).await?;
            println!("migrations applied");
            Ok(())
        }
        Command::CheckConfig => {
            let cfg = load(&cli.config)?;
            print!("{}", cfg.to_redacted_toml());
            eprintln!("config ok: {} account(s)", cfg.accounts.len());
            Ok(())
        }
        Command::Send(args) => send(load(&cli.config)?, args).await,
        Command::Status { job_id } => status(load(&cli.config)?, &job_id).await,
        Command::Broadcast(args) => crate::engine::broadcast::cli(load(&cli.config)?, args).await,
        Command::Simulate(args) => crate::tools::simulate::run_cli(&load(&cli.config)?, args).await,
        Command::Demo(args) => crate::tools::demo::run(cli.config.as_deref(), args).await,
        Command::Dlq(args) => crate::ops::dlq(load(&cli.config)?, args)
            .await
            .map_err(|e| match e.downcast::<crate::ops::UsageError>() {
                Ok(u) => ConfigError(u.0).into(),
                Err(e) => e,
            }),
        Command::Stats(args) => crate::ops::stats_cmd(load(&cli.config)?, args).await,
        Command::Bench(args) => crate::tools::bench::run(cli.config.as_deref(), args).await,
        Command::Kf(args) => crate::platform::kf::run(load(&cli.config)?, args)
            .await
            .map_err(|e| match e.downcast::<crate::platform::kf::KfError>() {
                Ok(k) if k.is_usage() => ConfigError(k.to_string()).into(),
                Ok(k) => k.into(),
                Err(e) => e,
            }),
    }
}

async fn send(cfg: Config, a: SendArgs) -> anyhow::Result<()> {
    let mut job: serde_json::Value = match &a.file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--file: cannot read {}", f.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("--file: {} is not JSON", f.display()))?
        }
        None => serde_json::json!({}),
    };
    let obj = job
        .as_object_mut()
        .context("--file: the job must be a JSON object")?;
    if let Some(v) = a.job_id {
        obj.insert("job_id".into(), v.into());
    }
    if let Some(v) = a.to {
        obj.insert("to".into(), v.into());
    }
    if let Some(v) = a.open_kfid {
        obj.insert("open_kfid".into(), v.into());
    }
    if let Some(v) = a.gate {
        obj.insert("gate".into(), v.into());
    }
    if let Some(t) = a.text {
        obj.insert("message".into(), serde_json::json!({ "text": t }));
    }
    if let Some(m) = a.message {
        obj.insert(
            "message".into(),
            serde_json::from_str(&m).context("--message is not JSON")?,
        );
    }
    if !obj.contains_key("job_id") {
        obj.insert(
            "job_id".into(),
            crate::domain::ids::generate_job_id().into(),
        );
    }
    let body = serde_json::to_vec(&job)?;
    // Validate locally when the account is known here, so mistakes surface before publishing.
    if let Some(acc) = cfg.account(&a.account) {
        job::parse(&body, None, acc, cfg.worker.max_body_bytes)
            .map_err(|e| anyhow::anyhow!("invalid job: {e}"))?;
    }
    let job_id = job
        .get("job_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-send").await?;
    broker::declare_topology(&conn, &cfg).await?;
    let publisher = Publisher::new(&conn).await?;
    publisher.publish_job(&a.account, &job_id, &body).await?;
    let _ = conn.close(200, "bye".into()).await;
    println!("{job_id}");
    Ok(())
}

async fn status(cfg: Config, job_id: &str) -> anyhow::Result<()> {
    let pool = store::connect_pool(&cfg).await?;
    let st = store::Store::with_pool(pool, 1);
    let Some(r) = st.delivery(job_id).await? else {
        anyhow::bail!("no delivery with job id '{job_id}'");
    };
    let mut out = std::io::stdout().lock();
    let ts = |c: &str| {
        r.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>(c)
            .ok()
            .flatten()
            .map(|t| t.to_rfc3339())
            .unwrap_or_else(|| "-".into())
    };
    let s = |c: &str| {
        r.try_get::<Option<String>, _>(c)
            .ok()
            .flatten()
            .unwrap_or_else(|| "-".into())
    };
    writeln!(out, "job {job_id}")?;
    writeln!(out, "  status     {}", s("status"))?;
    writeln!(
        out,
        "  account    {} ({}), kind {}",
        s("account"),
        s("channel"),
        s("kind")
    )?;
    writeln!(out, "  recipient  {}", s("recipient"))?;
    writeln!(
        out,
        "  attempts   {}",
        r.try_get::<i32, _>("attempts").unwrap_or(0)
    )?;
    if let Ok(Some(c)) = r.try_get::<Option<i64>, _>("errcode") {
        writeln!(out, "  errcode    {c}")?;
    }
    if s("error") != "-" {
        writeln!(out, "  error      {}", s("error"))?;
    }
    if s("platform_msgid") != "-" {
        writeln!(out, "  msgid      {}", s("platform_msgid"))?;
    }
    if s("broadcast_id") != "-" {
        writeln!(out, "  broadcast  {}", s("broadcast_id"))?;
    }
    writeln!(out, "  created    {}", ts("created_at"))?;
    writeln!(out, "  updated    {}", ts("updated_at"))?;
    writeln!(out, "  sent       {}", ts("sent_at"))?;
    // The conversation's WeCom allowance (kept by the sync loop and the lanes).
    if let (Some(kfid), recipient) = (
        r.try_get::<Option<String>, _>("open_kfid").ok().flatten(),
        s("recipient"),
    ) {
        let conv = sqlx::query(
            "SELECT last_customer_msg_at, sent_since_customer, service_state, servicer_userid
             FROM conversations WHERE account = $1 AND open_kfid = $2 AND external_userid = $3",
        )
        .bind(s("account"))
        .bind(&kfid)
        .bind(&recipient)
        .fetch_optional(st.pool())
        .await?;
        writeln!(out, "conversation ({kfid} / {recipient})")?;
        match conv {
            None => writeln!(out, "  no customer message or session state recorded yet")?,
            Some(c) => {
                let last: Option<chrono::DateTime<chrono::Utc>> = c.get("last_customer_msg_at");
                let sent: i32 = c.get("sent_since_customer");
                match last {
                    Some(t) => {
                        let left = t + crate::domain::allowance::WECOM_WINDOW - chrono::Utc::now();
                        writeln!(out, "  customer's last message  {}", t.to_rfc3339())?;
                        if left > chrono::Duration::zero() {
                            writeln!(
                                out,
                                "  reply window             open, {} h {} min left",
                                left.num_hours(),
                                left.num_minutes() % 60
                            )?;
                        } else {
                            writeln!(out, "  reply window             closed")?;
                        }
                        writeln!(
                            out,
                            "  allowance                {sent} of {} used",
                            crate::domain::allowance::WECOM_WINDOW_QUOTA
                        )?;
                    }
                    None => writeln!(
                        out,
                        "  customer's last message  unknown (window not enforced)"
                    )?,
                }
                if let Some(state) = c.get::<Option<i32>, _>("service_state") {
                    let name = match state {
                        0 => "new",
                        1 => "bot",
                        2 => "queued for a human",
                        3 => "human serving",
                        4 => "ended",
                        _ => "unknown",
                    };
                    let who: Option<String> = c.get("servicer_userid");
                    writeln!(
                        out,
                        "  session                  {state} ({name}){}",
                        who.map(|w| format!(", servicer {w}")).unwrap_or_default()
                    )?;
                }
            }
        }
    }
    let mut events: Vec<(chrono::DateTime<chrono::Utc>, String, i32, Option<String>)> = st
        .delivery_events(job_id)
        .await?
        .iter()
        .map(|e| {
            (
                e.get("at"),
                e.get("status"),
                e.get("attempts"),
                e.get("error"),
            )
        })
        .collect();
    // A send that succeeded at the first attempt has no event of its own (it is the common
    // case, kept out of the history table): its time is the row's sent_at.
    if let Ok(Some(sent_at)) = r.try_get::<Option<chrono::DateTime<chrono::Utc>>, _>("sent_at")
        && !events.iter().any(|e| e.1 == "sent")
    {
        events.push((sent_at, "sent".into(), 1, None));
        events.sort_by_key(|e| e.0);
    }
    if !events.is_empty() {
        writeln!(out, "history")?;
        for (at, status, attempts, err) in events {
            writeln!(
                out,
                "  {}  {:<10} after {} attempt(s){}",
                at.to_rfc3339(),
                status,
                attempts,
                err.map(|e| format!(" — {e}")).unwrap_or_default()
            )?;
        }
    }
    Ok(())
}
