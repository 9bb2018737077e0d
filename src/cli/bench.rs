//! `wxdispatch bench`: the command line of the benchmark ([`crate::tools::bench`]).

use std::path::Path;

use clap::builder::PossibleValue;

use crate::tools::bench::{BenchChannel, BenchOptions, Figure, run_bench};

/// `wxdispatch bench`'s arguments (the defaults are the README's figures).
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
    /// Outcome events on the bench accounts (`--outcomes false` turns them off): compare the
    /// drain with and without the outbox and its relay.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub outcomes: bool,
}

impl From<BenchArgs> for BenchOptions {
    fn from(a: BenchArgs) -> Self {
        BenchOptions {
            jobs: a.jobs,
            recipients: a.recipients,
            text_bytes: a.text_bytes,
            channels: a.channels,
            only: a.only,
            skip_memory: a.skip_memory,
            memory_jobs: a.memory_jobs,
            latency_rate: a.latency_rate,
            latency_secs: a.latency_secs,
            limiter_rate: a.limiter_rate,
            limiter_burst: a.limiter_burst,
            limiter_secs: a.limiter_secs,
            rounds: a.rounds,
            prefetch: a.prefetch,
            concurrency: a.concurrency,
            keep: a.keep,
            worker_wrapper: a.worker_wrapper,
            outcomes: a.outcomes,
        }
    }
}

/// Run the bench with the broker and database of the config at `config` (or the defaults).
pub async fn run(config: Option<&Path>, args: BenchArgs) -> anyhow::Result<()> {
    run_bench(config, args.into()).await
}

impl clap::ValueEnum for Figure {
    fn value_variants<'a>() -> &'a [Self] {
        &[
            Figure::Throughput,
            Figure::Latency,
            Figure::Memory,
            Figure::Crypto,
            Figure::Limiter,
        ]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            Figure::Throughput => PossibleValue::new("throughput")
                .help("End-to-end throughput, broker ceiling, ratio, CPU per job, rows per commit"),
            Figure::Latency => {
                PossibleValue::new("latency").help("Publish-to-acceptance latency at a steady rate")
            }
            Figure::Memory => {
                PossibleValue::new("memory").help("Peak worker RSS with a large backlog")
            }
            Figure::Crypto => PossibleValue::new("crypto").help("WXBizMsgCrypt encrypt + base64"),
            Figure::Limiter => PossibleValue::new("limiter").help("Rate limiter accuracy"),
        })
    }
}

impl clap::ValueEnum for BenchChannel {
    fn value_variants<'a>() -> &'a [Self] {
        &[BenchChannel::Chatbot, BenchChannel::Wecom]
    }

    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(PossibleValue::new(match self {
            BenchChannel::Chatbot => "chatbot",
            BenchChannel::Wecom => "wecom",
        }))
    }
}
