//! Rate limiter accuracy, as the simulator sees it.

use std::time::Duration;

use anyhow::Context;

use super::env::Base;
use super::jobs::JobGen;
use super::options::BenchOptions;
use super::report::{TableRow, thousands};
use super::scenario::Scenario;
use super::sim_client::send_records;
use crate::config::Channel;

pub(super) struct LimiterResult {
    pub(super) observed: f64,
    pub(super) worst_window: usize,
    /// Errcodes the simulator answered during the run (any API).
    pub(super) errcodes: String,
}

impl LimiterResult {
    pub(super) fn rows(&self, rows: &mut Vec<TableRow>, opts: &BenchOptions) {
        let limit = f64::from(opts.limiter_rate);
        let dev = (self.observed - limit) / limit * 100.0;
        let refused = if self.errcodes.is_empty() {
            String::new()
        } else {
            format!("; simulator errcodes: {}", self.errcodes)
        };
        rows.push(TableRow::new(
            format!(
                "limiter {}/s (burst {}) for {} s: observed rate",
                opts.limiter_rate, opts.limiter_burst, opts.limiter_secs
            ),
            format!("{:.1}/s ({dev:+.2} %){refused}", self.observed),
            "within 2 %",
            Some(dev.abs() <= 2.0),
        ));
        let cap = opts.limiter_rate as usize + opts.limiter_burst as usize;
        rows.push(TableRow::new(
            "limiter: busiest one-second window".to_owned(),
            format!("{} requests", self.worst_window),
            format!("≤ {cap} (limit + burst)"),
            Some(self.worst_window <= cap),
        ));
    }
}

pub(super) async fn limiter(base: &Base, opts: &BenchOptions) -> anyhow::Result<LimiterResult> {
    let rate = (opts.limiter_rate.max(1), opts.limiter_burst.max(1));
    let mut sc = Scenario::create(base, "limiter", Channel::Chatbot, Some(rate), opts.keep).await?;
    let res = limiter_in(&mut sc, opts, rate.0).await;
    sc.cleanup().await;
    res
}

pub(super) async fn limiter_in(
    sc: &mut Scenario,
    opts: &BenchOptions,
    rate: u32,
) -> anyhow::Result<LimiterResult> {
    let secs = opts.limiter_secs.max(1);
    // More than the run can send, so the limiter is the only brake throughout.
    let backlog = usize::try_from(u64::from(rate) * (secs + 5)).unwrap_or(usize::MAX);
    let jobs = JobGen::new(Channel::Chatbot, opts);
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
