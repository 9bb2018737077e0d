//! The command tree, the entry point of the binary, and the dispatch to one file per command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

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
    #[arg(long, global = true, env = "WXDISPATCH_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print only the command's output and errors: no warnings, notes or progress on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Log more on stderr: -v INFO, -vv DEBUG (commands log WARN and above by default; `run`
    /// and `demo` log INFO).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the workers and the HTTP endpoints until SIGINT/SIGTERM.
    Run,
    /// Create the database if needed and apply migrations.
    Migrate,
    /// Prepare everything before any worker runs, so producers can start first: the database
    /// (like `migrate`), the broker topology and the broker policies. Idempotent.
    Setup(super::setup::SetupArgs),
    /// Publish one job (from flags or a JSON file) with publisher confirms; prints the job id.
    Send(super::send::SendArgs),
    /// Show a delivery and its history.
    Status {
        /// The job id (as printed by `send`, or a broadcast recipient's derived id).
        job_id: String,
        /// The account of the job (needed when several accounts have this job id).
        #[arg(long)]
        account: Option<String>,
        /// Print one JSON object (the README's "JSON output" table) instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Publish a broadcast (recipients from a file) and show its progress; or
    /// `broadcast status <id>` / `broadcast cancel <id>`.
    Broadcast(super::broadcast::BroadcastArgs),
    /// Serve a local simulator of the Dialogue Open Platform and WeCom kf APIs.
    Simulate(super::simulate::SimArgs),
    /// Validate the configuration and print it with secrets masked.
    CheckConfig(super::check_config::CheckConfigArgs),
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
    /// Print a shell completion script, e.g. `wxdispatch completions bash > /etc/bash_completion.d/wxdispatch`.
    Completions(super::docs::CompletionsArgs),
    /// Print the man page (roff), or write one page per command into a directory.
    Man(super::docs::ManArgs),
    /// HTTP job API tokens: `token hash` prints the SHA-256 to configure for a token on stdin.
    Token(super::token::TokenArgs),
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return exit::clap_error(&e),
    };
    super::output::set_quiet(cli.quiet);
    crate::telemetry::init_tracing_at(log_filter(&cli));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return exit::report(&anyhow::Error::new(e).context("cannot start the runtime")),
    };
    let code = match rt.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => exit::report(&e),
    };
    // Dropping a runtime waits for its blocking tasks without a bound (a connect attempt's
    // resolver thread, say): the command's work is done, so give them a moment and go.
    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
    code
}

/// How long a finished command waits for the runtime's leftover blocking tasks before it
/// exits anyway (a test once saw `send` hang for minutes after its connect error, on a
/// loaded machine; nothing a command still needs runs on those threads).
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

/// The log filter when `RUST_LOG` is not set: the worker (`run`) at INFO, every other
/// command at WARN so that log lines do not mix into its output; `-v` INFO, `-vv` DEBUG, `-q`
/// errors only.
fn log_filter(cli: &Cli) -> &'static str {
    // The demo's output is its table: its worker logs WARN like the other commands.
    let worker = matches!(cli.command, Command::Run);
    match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) if worker => crate::telemetry::WORKER_LOG_FILTER,
        (false, 0) => "warn",
        (false, 1) => crate::telemetry::WORKER_LOG_FILTER,
        (false, _) => "debug,lapin=info,sqlx=info",
    }
}

fn load(path: &Option<PathBuf>) -> anyhow::Result<Config> {
    Config::load(path.as_deref()).map_err(|e| anyhow::Error::new(UsageError(format!("{e:#}"))))
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run => super::run::run(load(&cli.config)?).await,
        Command::Migrate => super::migrate::run(load(&cli.config)?).await,
        Command::Setup(args) => super::setup::run(load(&cli.config)?, args).await,
        Command::CheckConfig(args) => super::check_config::run(&load(&cli.config)?, &args),
        Command::Send(args) => super::send::run(load(&cli.config)?, args).await,
        Command::Status {
            job_id,
            account,
            json,
        } => super::status::run(load(&cli.config)?, &job_id, account.as_deref(), json).await,
        Command::Broadcast(args) => super::broadcast::run(load(&cli.config)?, args).await,
        Command::Simulate(args) => super::simulate::run(&load(&cli.config)?, args).await,
        Command::Demo(args) => super::demo::run(cli.config.as_deref(), args).await,
        Command::Dlq(args) => super::dlq::run(load(&cli.config)?, args).await,
        Command::Stats(args) => super::stats::run(load(&cli.config)?, args).await,
        Command::Bench(args) => super::bench::run(cli.config.as_deref(), args).await,
        Command::Kf(args) => super::kf::run(load(&cli.config)?, args).await,
        Command::Token(args) => super::token::run(args),
        Command::Completions(args) => super::docs::completions(Cli::command(), &args),
        Command::Man(args) => super::docs::man(Cli::command(), &args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every command and every argument, at every depth, with its path (`wxdispatch kf account
    /// delete --yes`) and whether it has help text.
    fn walk(cmd: &clap::Command, path: &str, out: &mut Vec<(String, bool)>) {
        out.push((path.to_owned(), cmd.get_about().is_some()));
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if matches!(id, "help" | "version") {
                continue;
            }
            out.push((format!("{path} <{id}>"), a.get_help().is_some()));
        }
        for sub in cmd.get_subcommands() {
            walk(sub, &format!("{path} {}", sub.get_name()), out);
        }
    }

    fn parse_error(args: &[&str]) -> clap::Error {
        match Cli::try_parse_from(args) {
            Ok(c) => panic!("{args:?} parsed: {c:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn a_clap_usage_error_is_one_line_naming_the_command_s_help() {
        let e = parse_error(&["wxdispatch", "send", "--to", "x"]);
        let line = exit::clap_line(&e);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("--account"), "{line}");
        assert!(line.ends_with("(see 'wxdispatch send --help')"), "{line}");
        let e = parse_error(&["wxdispatch", "send", "--account", "a", "--at", "soon"]);
        let line = exit::clap_line(&e);
        assert!(
            line.starts_with("invalid value 'soon' for '--at <RFC3339>'"),
            "{line}"
        );
        assert!(!line.contains("For more information"), "{line}");
        let e = parse_error(&["wxdispatch", "nosuch"]);
        let line = exit::clap_line(&e);
        assert!(line.contains("nosuch"), "{line}");
        assert!(line.ends_with("(see 'wxdispatch --help')"), "{line}");
        assert!(!line.contains("tip:"), "{line}");
    }

    #[test]
    fn the_man_pages_cover_every_subcommand() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let args = crate::cli::docs::ManArgs {
            out_dir: Some(dir.path().to_path_buf()),
        };
        crate::cli::docs::man(Cli::command(), &args).unwrap_or_else(|e| panic!("{e:#}"));
        for page in [
            "wxdispatch.1",
            "wxdispatch-send.1",
            "wxdispatch-broadcast-cancel.1",
            "wxdispatch-kf-account-delete.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH"), "{page}");
        }
    }

    #[test]
    fn every_command_and_argument_has_help_text() {
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut all = Vec::new();
        walk(&cmd, "wxdispatch", &mut all);
        let missing: Vec<&str> = all
            .iter()
            .filter(|(_, has)| !has)
            .map(|(p, _)| p.as_str())
            .collect();
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        assert!(all.len() > 100, "walked only {} items", all.len());
    }

    #[test]
    fn no_help_text_points_at_a_document_the_operator_does_not_have() {
        let mut cmd = Cli::command();
        cmd.build();
        let mut texts = Vec::new();
        fn collect(cmd: &clap::Command, texts: &mut Vec<String>) {
            texts.extend(cmd.get_about().map(|s| s.to_string()));
            for a in cmd.get_arguments() {
                texts.extend(a.get_help().map(|s| s.to_string()));
            }
            for s in cmd.get_subcommands() {
                collect(s, texts);
            }
        }
        collect(&cmd, &mut texts);
        for t in &texts {
            assert!(!t.contains("contract"), "{t}");
            assert!(!t.contains('§'), "{t}");
        }
    }

    #[test]
    fn commands_log_warn_by_default_the_worker_info_and_v_raises_it() {
        let parse = |args: &[&str]| Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(log_filter(&parse(&["wxdispatch", "stats"])), "warn");
        assert_eq!(log_filter(&parse(&["wxdispatch", "demo"])), "warn");
        assert_eq!(
            log_filter(&parse(&["wxdispatch", "run"])),
            crate::telemetry::WORKER_LOG_FILTER
        );
        assert_eq!(
            log_filter(&parse(&["wxdispatch", "-v", "stats"])),
            crate::telemetry::WORKER_LOG_FILTER
        );
        assert!(log_filter(&parse(&["wxdispatch", "stats", "-vv"])).starts_with("debug"));
        assert_eq!(log_filter(&parse(&["wxdispatch", "-q", "run"])), "error");
        assert!(Cli::try_parse_from(["wxdispatch", "-q", "-v", "stats"]).is_err());
    }
}
