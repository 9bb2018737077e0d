//! The command tree, the entry point of the binary, and the dispatch to one file per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use super::exit;
use super::usage::UsageError;
use crate::config::Config;

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
    Send(super::send::SendArgs),
    /// Show a delivery and its history.
    Status {
        job_id: String,
        /// The account of the job (needed when several accounts have this job id).
        #[arg(long)]
        account: Option<String>,
    },
    /// Publish a broadcast (recipients from a file) and show its progress; or
    /// `broadcast status <id>` / `broadcast cancel <id>`.
    Broadcast(super::broadcast::BroadcastArgs),
    /// Serve a local simulator of the Dialogue Open Platform and WeCom kf APIs.
    Simulate(super::simulate::SimArgs),
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Start the simulator and a worker on demo accounts, send one job of every message type,
    /// print what happened. Uses the local RabbitMQ and Postgres.
    Demo(super::demo::DemoArgs),
    /// Dead letters: list them, replay them after fixing the cause.
    Dlq(super::dlq::DlqArgs),
    /// Deliveries per account and status, dead letters per reason.
    Stats(super::stats::StatsArgs),
    /// Measure throughput, latency, memory, crypto and limiter accuracy against the local
    /// RabbitMQ, Postgres and simulator; prints one table. Build with --release.
    Bench(super::bench::BenchArgs),
    /// WeCom customer service administration: kf accounts, servicers, customers, sessions, statistics.
    Kf(super::kf::KfArgs),
    /// HTTP job API tokens: `token hash` prints the SHA-256 to configure for a token on stdin.
    Token(super::token::TokenArgs),
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
        Err(e) => exit::report(&e),
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref()).map_err(|e| anyhow::Error::new(UsageError(format!("{e:#}"))))
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => super::run::run(load(&cli.config)?).await,
        Command::Migrate => super::migrate::run(load(&cli.config)?).await,
        Command::CheckConfig => {
            super::check_config::run(&load(&cli.config)?);
            Ok(())
        }
        Command::Send(args) => super::send::run(load(&cli.config)?, args).await,
        Command::Status { job_id, account } => {
            super::status::run(load(&cli.config)?, &job_id, account.as_deref()).await
        }
        Command::Broadcast(args) => super::broadcast::run(load(&cli.config)?, args).await,
        Command::Simulate(args) => super::simulate::run(&load(&cli.config)?, args).await,
        Command::Demo(args) => super::demo::run(cli.config.as_deref(), args).await,
        Command::Dlq(args) => super::dlq::run(load(&cli.config)?, args).await,
        Command::Stats(args) => super::stats::run(load(&cli.config)?, args).await,
        Command::Bench(args) => super::bench::run(cli.config.as_deref(), args).await,
        Command::Kf(args) => super::kf::run(load(&cli.config)?, args).await,
        Command::Token(args) => super::token::run(args),
    }
}
