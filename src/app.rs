//! `wxdispatch run`: wire the pieces together and keep them running.
//!
//! Start-up order: database (create if missing, migrate under an advisory lock) → broker
//! (connect, declare the topology; [`Broker`] reconnects on its own) → one lane per account plus the
//! unroutable consumer → the HTTP endpoints. Shutdown (SIGINT/SIGTERM or the handle) stops
//! consuming, lets in-flight jobs finish within the grace period and releases the rest.

use std::sync::Arc;

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::broker::{self, Broker, DeadHeaders, Publisher};
use crate::config::{Channel, Config};
use crate::engine::lane::{self, LaneCtx};
use crate::http;
use crate::platform::{self, Platform};
use crate::store::{DeadLetter, Store};
use crate::telemetry as t;

/// A running worker (used by `run`, the demo and the tests).
pub struct Worker {
    shutdown: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
    /// Where the HTTP endpoints listen (when enabled).
    pub http_addr: Option<std::net::SocketAddr>,
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
        for a in &cfg.accounts {
            let platform = Platform::new(a.clone(), http_client.clone(), store.clone());
            let ctx = Arc::new(LaneCtx::new(
                a.clone(),
                cfg.clone(),
                platform,
                store.clone(),
                publisher.clone(),
            ));
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
            tasks.spawn(async move { unroutable(&broker, store, publisher, sd).await });
        }
        if let Some(handle) = metrics {
            // Histogram samples are kept raw until they are folded into their buckets; without
            // this they pile up (one f64 per job per histogram) whenever nobody scrapes.
            let sd = shutdown.clone();
            tasks.spawn(async move {
                let mut tick = tokio::time::interval(METRICS_UPKEEP);
                loop {
                    tokio::select! { _ = tick.tick() => handle.run_upkeep(), _ = sd.cancelled() => return Ok(()) }
                }
            });
        }
        let http_addr = if cfg.http.listen.is_empty() {
            None
        } else {
            let state =
                http::AppState::new(cfg.clone(), store.clone(), broker.clone(), inbound.clone());
            let (addr, fut) = http::serve(&cfg.http.listen, state, shutdown.clone()).await?;
            tasks.spawn(fut);
            Some(addr)
        };
        {
            // Export the batch writers' efficiency (rows per statement).
            let store = store.clone();
            let sd = shutdown.clone();
            tasks.spawn(async move {
                let mut last = (0u64, 0u64);
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
                while !sd.is_cancelled() {
                    tokio::select! { _ = tick.tick() => {}, _ = sd.cancelled() => break }
                    let b = store
                        .stats
                        .batches
                        .load(std::sync::atomic::Ordering::Relaxed);
                    let r = store.stats.rows.load(std::sync::atomic::Ordering::Relaxed);
                    if b > last.0 {
                        metrics::histogram!(t::DB_BATCH_ROWS)
                            .record((r - last.1) as f64 / (b - last.0) as f64);
                    }
                    last = (b, r);
                }
                Ok(())
            });
        }
        info!(accounts = cfg.accounts.len(), http = ?http_addr, "wxdispatch worker started");
        Ok(Self {
            shutdown,
            tasks,
            http_addr,
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

/// Open the unroutable consumer on the broker's current connection.
async fn consume_unroutable(broker: &Broker) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let (_, conn) = broker.connection().await;
    let ch = conn.create_channel().await?;
    ch.basic_qos(UNROUTABLE_PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = ch
        .basic_consume(
            broker::UNROUTABLE.into(),
            format!("wxdispatch-unroutable-{}", std::process::id())
                .as_str()
                .into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("consuming wxdispatch.unroutable")?;
    Ok((ch, consumer))
}

/// Unroutable messages are rare; a small prefetch is plenty.
/// How often histogram samples are folded into their buckets (see `Worker::start`).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(1);
const UNROUTABLE_PREFETCH: u16 = 64;
/// Pause before consuming again after the unroutable consumer failed.
const UNROUTABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages whose routing key names no account: dead-letter them as `unknown_account`.
async fn unroutable(
    broker: &Broker,
    store: Store,
    publisher: Publisher,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut current: Option<(lapin::Channel, lapin::Consumer)> = None;
    loop {
        let (_, consumer) = match &mut current {
            Some(c) => c,
            None => {
                let opened = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    c = consume_unroutable(broker) => c,
                };
                match opened {
                    Ok(c) => current.insert(c),
                    Err(e) => {
                        warn!(error = %format!("{e:#}"), "cannot consume wxdispatch.unroutable yet; retrying");
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(UNROUTABLE_RETRY) => {}
                        }
                        continue;
                    }
                }
            }
        };
        let d = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = consumer.next() => d,
        };
        let d = match d {
            Some(Ok(d)) => d,
            // The connection died or the broker cancelled the consumer: consume again.
            None | Some(Err(_)) => {
                if let Some((ch, _)) = current.take() {
                    let _ = ch.close(200, "reopening".into()).await;
                }
                continue;
            }
        };
        let account = d.routing_key.to_string();
        let errmsg = format!(
            "no account named '{}' is configured",
            broker::truncate(&account, 64)
        );
        let headers = DeadHeaders {
            reason: "unknown_account",
            errcode: None,
            errmsg: Some(&errmsg),
            account: &account,
            attempts: 0,
        };
        if let Err(e) = publisher
            .dead_letter(&d.data, &d.properties, &headers)
            .await
        {
            warn!(error = %e, "could not dead-letter an unroutable message; it stays queued");
            continue;
        }
        let job_id = d
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.to_string())
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&d.data)
                    .ok()?
                    .get("job_id")?
                    .as_str()
                    .map(str::to_owned)
            });
        let dl = DeadLetter {
            job_id,
            account: account.clone(),
            reason: "unknown_account".into(),
            errcode: None,
            errmsg: Some(errmsg),
            attempts: 0,
            body: d.data.clone(),
        };
        if let Err(e) = store.record_dead_letter(&dl).await {
            warn!(error = %e, "unroutable message not recorded");
        }
        metrics::counter!(t::DEAD_LETTERS, "account" => "unknown", "reason" => "unknown_account")
            .increment(1);
        warn!(routing_key = %broker::truncate(&account, 64), "message for an unknown account dead-lettered");
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    }
    Ok(())
}

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
