//! End-to-end throughput against the broker ceiling, with CPU and rows per commit.

use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::env::Base;
use super::jobs::JobGen;
use super::options::{BenchChannel, BenchOptions, channel_name};
use super::procs::{CpuSnapshot, CpuUse};
use super::report::{MIB, TableRow, thousands};
use super::scenario::Scenario;

pub(super) struct ThroughputResult {
    pub(super) channel: BenchChannel,
    pub(super) ceiling: f64,
    pub(super) rate: f64,
    pub(super) secs: f64,
    pub(super) cpu_per_10k: f64,
    pub(super) peak_rss: u64,
    pub(super) rows_per_commit: f64,
    pub(super) commits: i64,
    pub(super) cpu: CpuUse,
    pub(super) not_sent: Vec<(String, i64)>,
    pub(super) duplicates: u64,
}

impl ThroughputResult {
    pub(super) fn ratio(&self) -> f64 {
        self.rate / self.ceiling
    }

    /// This round's rows; `ratios` are every round's (sorted), this one among them.
    pub(super) fn rows(&self, rows: &mut Vec<TableRow>, n: usize, ratios: &[f64]) {
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

pub(super) async fn throughput(
    base: &Base,
    opts: &BenchOptions,
    channel: BenchChannel,
) -> anyhow::Result<ThroughputResult> {
    let label = format!("throughput {}", channel_name(channel));
    let mut sc = Scenario::create(base, &label, channel.channel(), None, opts.keep).await?;
    let res = throughput_in(&mut sc, opts, channel).await;
    sc.cleanup().await;
    res
}

pub(super) async fn throughput_in(
    sc: &mut Scenario,
    opts: &BenchOptions,
    channel: BenchChannel,
) -> anyhow::Result<ThroughputResult> {
    let n = opts.jobs;
    let jobs = JobGen::new(channel.channel(), opts);
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

/// `opts.rounds` throughput runs on `channel`; the median round by ratio (the upper one of an
/// even count) stands for the channel in `rows`, with every round's ratio printed next to it.
/// Returns the worker's highest peak RSS over the rounds.
pub(super) async fn throughput_rounds(
    base: &Base,
    opts: &BenchOptions,
    channel: BenchChannel,
    rows: &mut Vec<TableRow>,
) -> anyhow::Result<u64> {
    let mut rounds = Vec::with_capacity(usize::from(opts.rounds));
    for round in 1..=opts.rounds {
        if opts.rounds > 1 {
            eprintln!(
                "[throughput {}] round {round} of {}",
                channel_name(channel),
                opts.rounds
            );
        }
        rounds.push(throughput(base, opts, channel).await?);
    }
    rounds.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
    let ratios: Vec<f64> = rounds.iter().map(ThroughputResult::ratio).collect();
    let peak = rounds.iter().map(|r| r.peak_rss).max().unwrap_or(0);
    let median = rounds.swap_remove(rounds.len() / 2);
    median.rows(rows, opts.jobs, &ratios);
    Ok(peak)
}
