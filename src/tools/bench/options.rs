//! What a bench run measures and with which tunables: [`BenchOptions`] (the command line's
//! `BenchArgs` turns into it), the figures and the channels.

use crate::config::Channel;

/// A figure the bench can measure (`--only` selects some).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchChannel {
    Chatbot,
    Wecom,
}

pub(super) fn channel_name(c: BenchChannel) -> &'static str {
    c.channel().as_str()
}

impl BenchChannel {
    pub(super) fn channel(self) -> Channel {
        match self {
            BenchChannel::Chatbot => Channel::Chatbot,
            BenchChannel::Wecom => Channel::Wecom,
        }
    }
}

/// Everything a bench run is told (the command line's defaults are in `cli/bench.rs`).
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Backlog of each throughput run (and of its broker ceiling).
    pub jobs: usize,
    /// Distinct recipients (conversations) the jobs go to, round robin.
    pub recipients: usize,
    /// Length of every job's text in bytes.
    pub text_bytes: usize,
    /// Channels of the throughput runs.
    pub channels: Vec<BenchChannel>,
    /// Only these figures (empty: all).
    pub only: Vec<Figure>,
    /// Skip the memory run (the longest).
    pub skip_memory: bool,
    /// Backlog of the memory run.
    pub memory_jobs: usize,
    /// Jobs per second of the latency run.
    pub latency_rate: u32,
    /// Duration of the latency run in seconds.
    pub latency_secs: u64,
    /// Rate limit of the limiter run (per second).
    pub limiter_rate: u32,
    /// Burst of the limiter run.
    pub limiter_burst: u32,
    /// Duration of the limiter run in seconds.
    pub limiter_secs: u64,
    /// Throughput rounds per channel, each a fresh vhost and database with its own ceiling;
    /// the table shows the median round by ratio, and every round's ratio. One 50,000-job
    /// drain takes 2–3 s on the 2-core machine, where a neighbour's burst moves it by ±15 %.
    pub rounds: u16,
    /// Override `broker.prefetch` (default: the config's).
    pub prefetch: Option<u16>,
    /// Override `worker.concurrency` (default: the config's).
    pub concurrency: Option<usize>,
    /// Keep each run's vhost, database and directory (config, logs) for inspection.
    pub keep: bool,
    /// Start the worker under this command, for profiling (split at whitespace); the
    /// worker's CPU and RSS figures are then the wrapper's and not comparable.
    pub worker_wrapper: Option<String>,
    /// Outcome events on every bench account (`outcomes`; README "Outcome events"): on
    /// against off shows what the outbox and its relay cost a drain.
    pub outcomes: bool,
}

impl BenchOptions {
    pub(super) fn wants(&self, f: Figure) -> bool {
        let selected = self.only.is_empty() || self.only.contains(&f);
        selected && !(f == Figure::Memory && self.skip_memory)
    }
}
