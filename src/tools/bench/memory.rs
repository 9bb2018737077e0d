//! Peak worker RSS while it drains a large backlog.

use std::time::Instant;

use super::env::Base;
use super::jobs::JobGen;
use super::options::{BenchChannel, BenchOptions, channel_name};
use super::report::{MIB, TableRow, thousands};
use super::scenario::Scenario;
use crate::config::Channel;

pub(super) struct MemoryResult {
    pub(super) peak_rss: u64,
    pub(super) rate: f64,
    pub(super) cpu_per_10k: f64,
}

impl MemoryResult {
    /// The memory figures; `rss_small` are the throughput runs' peaks, shown alongside.
    pub(super) fn rows(
        &self,
        rows: &mut Vec<TableRow>,
        opts: &BenchOptions,
        rss_small: &[(BenchChannel, u64)],
    ) {
        let small = rss_small
            .iter()
            .map(|(c, b)| {
                format!(
                    "{} {}: {:.1} MB",
                    channel_name(*c),
                    thousands(opts.jobs as u64),
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
                thousands(opts.memory_jobs as u64)
            ),
            format!("{:.1} MB{also}", self.peak_rss as f64 / MIB),
            "≤ 64 MB",
            Some(self.peak_rss as f64 / MIB <= 64.0),
        ));
        rows.push(TableRow::new(
            format!(
                "memory run: throughput, CPU per 10,000 jobs ({} jobs)",
                thousands(opts.memory_jobs as u64)
            ),
            format!(
                "{} jobs/s, {:.2} s",
                thousands(self.rate.round() as u64),
                self.cpu_per_10k
            ),
            "",
            None,
        ));
    }
}

pub(super) async fn memory(base: &Base, opts: &BenchOptions) -> anyhow::Result<MemoryResult> {
    let mut sc = Scenario::create(base, "memory", Channel::Chatbot, None, opts.keep).await?;
    let res = memory_in(&mut sc, opts).await;
    sc.cleanup().await;
    res
}

pub(super) async fn memory_in(
    sc: &mut Scenario,
    opts: &BenchOptions,
) -> anyhow::Result<MemoryResult> {
    let n = opts.memory_jobs;
    let jobs = JobGen::new(Channel::Chatbot, opts);
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
