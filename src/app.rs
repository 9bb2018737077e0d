//! `wxdispatch run`: wire the pieces together and keep them running.
//!
//! Start-up order: database (create if missing, migrate under an advisory lock) → broker
//! (connect, declare the topology; [`Broker`] reconnects on its own) → one lane per account plus the
//! unroutable consumer → the HTTP endpoints. Shutdown (SIGINT/SIGTERM or the handle) stops
//! consuming, lets in-flight jobs finish within the grace period and releases the rest.

use std::sync::Arc;

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
    pub async fn start(cfg: Config) -> anyhow::Result<Self> {
        let cfg = Arc::new(cfg);
        // The metrics recorder first: anything counted before it exists is lost (a gettoken
        // refusal at start-up, say).
        let metrics = http::metrics_handle();
        let store = Store::connect(&cfg).await?;
        let shutdown = CancellationToken::new();
        // Connects, declares the topology, and reconnects whenever the connection dies.
        let broker = Broker::start(cfg.clone(), "wxdispatch-worker", shutdown.clone()).await?;
        let publisher = broker.publisher().await?;
        let http_client = platform::http_client(&cfg)?;
        let mut tasks = JoinSet::new();
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
        let admin_addr = if cfg.http.admin_listen.is_empty() {
            None
        } else {
            let (addr, fut) = http::serve_admin(state, shutdown.clone()).await?;
            tasks.spawn(fut);
            Some(addr)
        };
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
