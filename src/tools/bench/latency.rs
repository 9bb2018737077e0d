//! Publish-to-acceptance latency at a steady rate.

use std::time::Duration;

use anyhow::bail;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use serde_json::Value;

use super::env::{Base, check_confirm, now_ms};
use super::jobs::{JobGen, published_ms_in};
use super::options::BenchOptions;
use super::procs::{CpuSnapshot, CpuUse};
use super::report::{TableRow, thousands};
use super::scenario::Scenario;
use super::sim_client::{START_TIMEOUT, send_records};
use crate::broker;
use crate::config::Channel;

/// Jobs sent and awaited before the latency window: the lane is active, the connections
/// are open, the simulator has issued its token.
pub(super) const WARMUP_JOBS: usize = 50;

pub(super) struct LatencyResult {
    pub(super) p50: i64,
    pub(super) p99: i64,
    pub(super) max: i64,
    pub(super) published: usize,
    pub(super) measured: usize,
    pub(super) publish_rate: f64,
    pub(super) cpu: CpuUse,
}

impl LatencyResult {
    pub(super) fn rows(&self, rows: &mut Vec<TableRow>, opts: &BenchOptions) {
        let missing = if self.measured == self.published {
            String::new()
        } else {
            format!(" — only {} of {} accepted", self.measured, self.published)
        };
        rows.push(TableRow::new(
            format!(
                "latency publish → accepted at {}/s for {} s (p50 / p99 / max)",
                opts.latency_rate, opts.latency_secs
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
            format!("CPU cores at {}/s", opts.latency_rate),
            self.cpu.describe(),
            "",
            None,
        ));
    }
}

pub(super) async fn latency(base: &Base, opts: &BenchOptions) -> anyhow::Result<LatencyResult> {
    let mut sc = Scenario::create(base, "latency", Channel::Chatbot, None, opts.keep).await?;
    let res = latency_in(&mut sc, opts).await;
    sc.cleanup().await;
    res
}

// One block publishes, waits and measures, so that the worker is stopped whatever fails in
// it; cutting it up would only move the same steps apart.
pub(super) async fn latency_in(
    sc: &mut Scenario,
    opts: &BenchOptions,
) -> anyhow::Result<LatencyResult> {
    let jobs = JobGen::new(Channel::Chatbot, opts);
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
        let rate = opts.latency_rate.max(1);
        let total = usize::try_from(u64::from(rate) * opts.latency_secs).unwrap_or(usize::MAX);
        sc.say(format!(
            "publishing {rate} jobs/s for {} s …",
            opts.latency_secs
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
