//! The simulator's admin API, as the bench reads it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use super::procs::Proc;

/// While draining, the simulator's counter is polled (cheap) at this interval (the database
/// less often: see `scenario::POLL_DB`).
pub(super) const POLL_SIM: Duration = Duration::from_millis(100);
/// How long a child process may take to come up (simulator answering, lane consuming).
pub(super) const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Accepted records fetched per admin request.
pub(super) const ACCEPTED_PAGE: usize = 5_000;
/// Accepted `api` names of the send calls (chatbot, WeCom).
pub(super) const SEND_APIS: [&str; 2] = ["sendmsg", "send_msg"];

pub(super) struct SimClient {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
}

impl SimClient {
    pub(super) fn new(base: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the bench's HTTP client")?,
            base: base.to_owned(),
        })
    }

    pub(super) async fn stats(&self) -> anyhow::Result<Value> {
        Ok(self
            .http
            .get(format!("{}/_sim/stats", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    pub(super) async fn accepted_total(&self) -> anyhow::Result<u64> {
        let s = self.stats().await.context("asking the simulator")?;
        Ok(s.get("accepted_total").and_then(Value::as_u64).unwrap_or(0))
    }

    /// Errcodes the simulator answered, as `account:errcode=count, …` (empty when none).
    pub(super) async fn errcodes(&self) -> anyhow::Result<String> {
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

    pub(super) async fn duplicates(&self) -> anyhow::Result<u64> {
        let s = self.stats().await?;
        Ok(s.get("duplicate_msgids")
            .and_then(Value::as_object)
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum()))
    }

    /// Every retained accepted record with `seq > since`.
    pub(super) async fn accepted_since(&self, mut since: u64) -> anyhow::Result<Vec<Value>> {
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

    pub(super) async fn wait_ready(&self, sim: &mut Proc) -> anyhow::Result<()> {
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

    pub(super) async fn wait_accepted(
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
pub(super) fn send_records(records: Vec<Value>) -> Vec<(u64, i64, Value)> {
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
