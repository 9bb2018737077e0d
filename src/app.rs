//! `wxdispatch run`: wire the pieces together and keep them running.
//!
//! Start-up order: the admin listener (`/healthz` 200, `/readyz` 503 saying what start-up
//! waits for) → database (create if missing, migrate under an advisory lock) → broker
//! (connect, declare the topology and policies; [`Broker`] reconnects on its own), each
//! retried with jittered exponential backoff for up to `startup.wait_secs` ([`wait_for`]) →
//! one lane per account plus the unroutable consumer → the public listener, and the admin
//! listener's full routes. Shutdown (SIGINT/SIGTERM or the handle) stops consuming, lets
//! in-flight jobs finish within the grace period and releases the rest; during the start-up
//! wait it ends the wait at once.

use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::Broker;
use crate::config::{Channel, Config};
use crate::engine::lane::{self, LaneCtx};
use crate::http;
use crate::platform::{self, Platform};
use crate::store::Store;
use crate::telemetry as t;

/// A running worker (used by `run`, the demo and the tests).
pub struct Worker {
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Where the public listener (the platforms' callbacks) listens, when enabled.
    pub public_addr: Option<std::net::SocketAddr>,
    /// Where the admin listener (`/metrics`, `/healthz`, `/readyz`) listens, when enabled.
    pub admin_addr: Option<std::net::SocketAddr>,
    pub store: Store,
    pub lanes: Vec<Arc<LaneCtx>>,
}

impl Worker {
    /// Start with a shutdown token of its own (the tests, the demo).
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        Self::start_until(cfg, CancellationToken::new()).await
    }

    /// Start; cancelling `shutdown` (SIGTERM) ends a start-up that still waits for its
    /// dependencies with [`WaitError::Interrupted`], and stops the worker once started.
    pub async fn start_until(cfg: Config, shutdown: CancellationToken) -> anyhow::Result<Self> {
        let cfg = Arc::new(cfg);
        // The metrics recorder first: anything counted before it exists is lost (a gettoken
        // refusal at start-up, say).
        let metrics = http::metrics_handle();
        let mut tasks = JoinSet::new();
        // The admin listener before the dependencies: a pod whose broker is not up yet is
        // alive (not restarted) and not ready (no traffic), instead of crash-looping.
        let status = http::StartupStatus::default();
        let early_admin = if cfg.http.admin_listen.is_empty() {
            None
        } else {
            let ((addr, fut), slot) =
                http::serve_admin_early(&cfg, status.clone(), shutdown.clone()).await?;
            tasks.spawn(fut);
            Some((addr, slot))
        };
        let wait = WaitPolicy::startup(&cfg);
        let postgres = Dependency {
            name: "postgres",
            at: cfg.database.url.host_port(5432),
        };
        let store = wait_for(&postgres, &wait, &status, &shutdown, || {
            Store::connect(&cfg)
        })
        .await?;
        let rabbitmq = Dependency {
            name: "rabbitmq",
            at: cfg.broker.url.host_port(5672),
        };
        // Connects, declares the topology, and reconnects whenever the connection dies.
        let broker = wait_for(&rabbitmq, &wait, &status, &shutdown, || {
            Broker::start(cfg.clone(), "wxdispatch-worker", shutdown.clone())
        })
        .await?;
        status.set("starting the lanes");
        let publisher = broker.publisher().await?;
        let http_client = platform::http_client(&cfg)?;
        let mut lanes = Vec::new();
        // One byte budget for all lanes: the worker's memory, not each lane's.
        let budget = crate::engine::budget::ByteBudget::new(cfg.worker.held_bytes_budget);
        for a in &cfg.accounts {
            let platform = Platform::new(a.clone(), http_client.clone(), store.clone());
            let ctx = Arc::new(
                LaneCtx::new(
                    a.clone(),
                    cfg.clone(),
                    platform,
                    store.clone(),
                    publisher.clone(),
                )
                .with_budget(budget.clone()),
            );
            lanes.push(ctx.clone());
            let broker = broker.clone();
            let sd = shutdown.clone();
            tasks.spawn(async move { lane::run(ctx, broker, sd).await });
        }
        // Inbound: one sync_msg loop per WeCom account and open_kfid, woken by the callbacks.
        let inbound = Arc::new(crate::engine::inbound::SyncHub::new(
            &cfg,
            broker.publisher().await?,
        ));
        for ctx in lanes.iter().filter(|l| l.account.channel == Channel::Wecom) {
            for kfid in &ctx.account.open_kfids {
                let (ctx, hub, kfid) = (ctx.clone(), inbound.clone(), kfid.clone());
                let sd = shutdown.clone();
                tasks.spawn(async move { crate::engine::inbound::run(ctx, hub, kfid, sd).await });
            }
        }
        {
            let broker = broker.clone();
            let sd = shutdown.clone();
            let store = store.clone();
            let publisher = publisher.clone();
            tasks.spawn(async move {
                crate::engine::unroutable::run(&broker, store, publisher, sd).await
            });
        }
        // What the broker dead-letters itself (delivery limit) is recorded too.
        let (c, b, st, sd) = (cfg.clone(), broker.clone(), store.clone(), shutdown.clone());
        tasks.spawn(crate::engine::dead_recorder::run(c, b, st, sd));
        // Outcome events: the relay publishes the outbox to wxdispatch.outcomes.
        tasks.spawn(
            crate::engine::outcomes::spawn(cfg.clone(), store.clone(), &broker, shutdown.clone())
                .await?,
        );
        if let Some(handle) = metrics {
            tasks.spawn(metrics_upkeep(handle, shutdown.clone()));
        }
        let state =
            http::AppState::new(cfg.clone(), store.clone(), broker.clone(), inbound.clone())
                .with_job_lookup(Arc::new(StatusLookup(store.clone())));
        let public_addr = if cfg.http.listen.is_empty() {
            None
        } else {
            let (addr, fut) = http::serve_public(state.clone(), shutdown.clone()).await?;
            tasks.spawn(fut);
            Some(addr)
        };
        let admin_addr = early_admin.map(|(addr, slot)| {
            slot.ready(http::admin_router(state));
            addr
        });
        tasks.spawn(export_batch_stats(store.clone(), shutdown.clone()));
        info!(
            accounts = cfg.accounts.len(),
            public = ?public_addr,
            admin = ?admin_addr,
            "wxdispatch worker started"
        );
        Ok(Self {
            shutdown,
            tasks,
            public_addr,
            admin_addr,
            store,
            lanes,
        })
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Run until shutdown is requested or a component fails for good.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let mut result = Ok(());
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                r = self.tasks.join_next() => match r {
                    None => break,
                    Some(Ok(Ok(()))) => {}
                    Some(Ok(Err(e))) => { result = Err(e); self.shutdown.cancel(); break; }
                    Some(Err(e)) => { result = Err(anyhow::anyhow!("worker task failed: {e}")); self.shutdown.cancel(); break; }
                }
            }
        }
        while let Some(r) = self.tasks.join_next().await {
            if let Ok(Err(e)) = r {
                warn!(error = %format!("{e:#}"), "component stopped with an error");
            }
        }
        info!("wxdispatch worker stopped");
        result
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }
}

/// Histogram samples are kept raw until they are folded into their buckets; without this
/// they pile up (one f64 per job per histogram) whenever nobody scrapes.
async fn metrics_upkeep(
    handle: &'static metrics_exporter_prometheus::PrometheusHandle,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! { _ = tick.tick() => handle.run_upkeep(), _ = shutdown.cancelled() => return Ok(()) }
    }
}

/// Export the batch writers' efficiency (rows per statement) every 5 s.
async fn export_batch_stats(store: Store, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mut last = (0u64, 0u64);
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        tokio::select! { _ = tick.tick() => {}, _ = shutdown.cancelled() => break }
        let b = store
            .stats
            .batches
            .load(std::sync::atomic::Ordering::Relaxed);
        let r = store.stats.rows.load(std::sync::atomic::Ordering::Relaxed);
        if b > last.0 {
            metrics::histogram!(t::DB_BATCH_ROWS).record((r - last.1) as f64 / (b - last.0) as f64);
        }
        last = (b, r);
    }
    Ok(())
}

/// A dependency `run` waits for at start, and where it is (host:port, never credentials).
#[derive(Debug, Clone)]
pub struct Dependency {
    pub name: &'static str,
    pub at: String,
}

/// Why [`wait_for`] ended without its dependency.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The bound (`startup.wait_secs`) passed; the last attempt's cause.
    #[error("{name} at {at} not reachable after {waited_secs} s (startup.wait_secs): {cause}")]
    GaveUp {
        name: &'static str,
        at: String,
        waited_secs: u64,
        cause: String,
    },
    /// Shutdown was requested (SIGTERM) while waiting.
    #[error("shutdown requested while waiting for {name} at {at}")]
    Interrupted { name: &'static str, at: String },
}

/// How [`wait_for`] retries.
#[derive(Debug, Clone)]
pub struct WaitPolicy {
    /// Give up once this much time has passed since the first attempt (zero: one attempt).
    pub bound: Duration,
    /// First pause after a failure; doubles (jittered) up to `max_delay`.
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// An attempt that takes longer is abandoned and counts as failed (a host that drops
    /// packets instead of refusing them, a broker that accepts TCP while it boots).
    pub attempt_timeout: Duration,
}

impl WaitPolicy {
    /// `startup.wait_secs`, first retry after 250 ms (a dependency starting beside us takes
    /// seconds), pauses capped at 5 s so it is noticed soon once up; 30 s per attempt covers
    /// a migration under load.
    pub fn startup(cfg: &Config) -> Self {
        Self {
            bound: Duration::from_secs(cfg.startup.wait_secs),
            min_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Run `attempt` until it succeeds, with jittered exponential backoff, for up to
/// `policy.bound`; each failure is logged with the dependency's host and the cause and shown
/// by `/readyz` (through `status`). Ends at once with [`WaitError::Interrupted`] when
/// `shutdown` is cancelled.
pub async fn wait_for<T, F, Fut>(
    dep: &Dependency,
    policy: &WaitPolicy,
    status: &http::StartupStatus,
    shutdown: &CancellationToken,
    mut attempt: F,
) -> Result<T, WaitError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + policy.bound;
    let mut delays = backon::ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_jitter()
        .without_max_times()
        .build();
    let interrupted = || WaitError::Interrupted {
        name: dep.name,
        at: dep.at.clone(),
    };
    status.set(format!("connecting to {} at {}", dep.name, dep.at));
    loop {
        let result = tokio::select! {
            _ = shutdown.cancelled() => return Err(interrupted()),
            r = tokio::time::timeout(policy.attempt_timeout, attempt()) => r,
        };
        let cause = match result {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => crate::text::one_line(&format!("{e:#}"), 500),
            Err(_) => format!("no answer within {} s", policy.attempt_timeout.as_secs()),
        };
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(WaitError::GaveUp {
                name: dep.name,
                at: dep.at.clone(),
                waited_secs: (now - started).as_secs(),
                cause,
            });
        }
        let delay = delays
            .next()
            .unwrap_or(policy.max_delay)
            .min(deadline - now);
        warn!(
            dependency = dep.name,
            at = %dep.at,
            error = %cause,
            retry_in_ms = delay.as_millis() as u64,
            "waiting for {} at {}",
            dep.name,
            dep.at
        );
        status.set(format!("waiting for {} at {}: {cause}", dep.name, dep.at));
        tokio::select! {
            _ = shutdown.cancelled() => return Err(interrupted()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// How often histogram samples are folded into their buckets (see `Worker::start`).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// Resolve on SIGINT or SIGTERM.
pub async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// `GET /v1/jobs/{id}` answered by `ops::status` (the HTTP layer cannot name `ops`, a peer).
struct StatusLookup(Store);

impl http::jobs::JobLookup for StatusLookup {
    fn lookup<'a>(
        &'a self,
        id: &'a str,
        account: Option<&'a str>,
    ) -> futures::future::BoxFuture<'a, Result<Option<http::jobs::Found>, http::jobs::LookupError>>
    {
        use futures::FutureExt as _;
        async move {
            match crate::ops::status::report(&self.0, id, account).await {
                Ok(r) => Ok(r.map(|r| http::jobs::Found {
                    account: r.delivery.account.clone(),
                    record: crate::ops::status::report_json(&r),
                })),
                Err(e) => match e.downcast_ref::<crate::ops::account_id::AmbiguousId>() {
                    Some(a) => Err(http::jobs::LookupError::Ambiguous(a.to_string())),
                    None => Err(http::jobs::LookupError::Failed(e)),
                },
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick(bound_ms: u64) -> WaitPolicy {
        WaitPolicy {
            bound: Duration::from_millis(bound_ms),
            min_delay: Duration::from_millis(5),
            max_delay: Duration::from_millis(20),
            attempt_timeout: Duration::from_secs(1),
        }
    }

    fn mq() -> Dependency {
        Dependency {
            name: "rabbitmq",
            at: "mq:5672".into(),
        }
    }

    #[tokio::test]
    async fn waits_until_the_dependency_answers_and_says_what_it_waits_for() {
        let n = AtomicU32::new(0);
        let status = http::StartupStatus::default();
        let got = wait_for(
            &mq(),
            &quick(10_000),
            &status,
            &CancellationToken::new(),
            || {
                let i = n.fetch_add(1, Ordering::SeqCst);
                async move {
                    if i < 3 {
                        anyhow::bail!("connection refused #{i}")
                    }
                    Ok(i)
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(got, 3);
        assert_eq!(
            status.get(),
            "waiting for rabbitmq at mq:5672: connection refused #2"
        );
    }

    #[tokio::test]
    async fn gives_up_after_the_bound_naming_the_host_and_the_last_cause() {
        let n = AtomicU32::new(0);
        let t0 = std::time::Instant::now();
        let status = http::StartupStatus::default();
        let e = wait_for(
            &mq(),
            &quick(200),
            &status,
            &CancellationToken::new(),
            || {
                let i = n.fetch_add(1, Ordering::SeqCst);
                async move { anyhow::bail!("refused #{i}") as anyhow::Result<()> }
            },
        )
        .await
        .unwrap_err();
        let tries = n.load(Ordering::SeqCst);
        assert!(tries > 3, "retried: {tries}");
        assert!(t0.elapsed() >= Duration::from_millis(200));
        assert_eq!(
            e.to_string(),
            format!(
                "rabbitmq at mq:5672 not reachable after 0 s (startup.wait_secs): refused #{}",
                tries - 1
            )
        );
    }

    #[tokio::test]
    async fn zero_means_one_attempt() {
        let n = AtomicU32::new(0);
        let r = wait_for(
            &mq(),
            &quick(0),
            &http::StartupStatus::default(),
            &CancellationToken::new(),
            || {
                n.fetch_add(1, Ordering::SeqCst);
                async { anyhow::bail!("refused") as anyhow::Result<()> }
            },
        )
        .await;
        assert!(matches!(r, Err(WaitError::GaveUp { .. })));
        assert_eq!(n.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn shutdown_ends_the_wait_at_once() {
        let sd = CancellationToken::new();
        let mut policy = quick(60_000);
        policy.min_delay = Duration::from_secs(30);
        policy.max_delay = Duration::from_secs(30);
        let cancel = sd.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            cancel.cancel();
        });
        let t0 = std::time::Instant::now();
        let r = wait_for(
            &mq(),
            &policy,
            &http::StartupStatus::default(),
            &sd,
            || async { anyhow::bail!("refused") as anyhow::Result<()> },
        )
        .await;
        assert!(matches!(r, Err(WaitError::Interrupted { .. })));
        assert!(t0.elapsed() < Duration::from_secs(5));
    }
}
