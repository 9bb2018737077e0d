//! The connection to RabbitMQ: connecting once, and the worker's [`Broker`] that replaces a
//! connection that died.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use lapin::{Connection, ConnectionProperties};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::topology::declare_topology;
use crate::config::Config;

/// Reconnection schedule after the broker went away (see [`Broker`]): first retry soon (a
/// restart takes a few seconds), doubling up to [`RECONNECT_MAX_DELAY`], with jitter so that
/// many workers do not reconnect in lockstep. There is no last attempt: a worker waits for its
/// broker rather than exiting (`/readyz` says 503 meanwhile).
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(250);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// How often [`Broker`] checks that its connection is alive. A dead connection is noticed
/// by its users at once (their channels fail); this only bounds how long it stays unreplaced.
const WATCH_INTERVAL: Duration = Duration::from_millis(250);
/// A connection attempt (TCP, AMQP handshake, topology) that takes longer is abandoned: a
/// broker that accepts connections while still starting up can leave a handshake hanging.
const RECONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connect once (no recovery): for the short-lived commands and the tests. A worker uses
/// [`Broker`], which replaces a connection that died.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, props).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to RabbitMQ at {}: {e}",
            redact_amqp_url(url)
        )
    })
}

/// What must follow the broker onto a new connection: a [`super::Publisher`]'s confirm
/// channel. (A trait, so that the connection need not know the publisher's insides.)
pub(super) trait Reopen: Send + Sync {
    /// Re-open on `conn`, unless still working.
    fn reopen<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// The worker's connection to RabbitMQ, replaced when it dies.
///
/// lapin's own auto-recovery is not used: in lapin 4.12.3, after a broker-initiated close
/// (`rabbitmqctl stop_app`, a node restart) with unflushed frames its I/O loop spins without
/// ever reconnecting (amqp-rs/lapin#450). Instead a watcher task notices the dead connection,
/// reconnects with backoff, declares the topology again (idempotent; a replaced broker node
/// may have lost it) and publishes the new connection; lanes open new channels and
/// consumers on it ([`Broker::connection`]) and [`Publisher`](super::Publisher)s re-open their confirm channels.
/// Deliveries held on the dead connection are redelivered by the broker and deduplicated by
/// the claim in Postgres.
pub struct Broker {
    url: String,
    name: String,
    cfg: Arc<Config>,
    /// The current connection (possibly dead until the watcher replaces it) and its number.
    current: watch::Sender<(u64, Arc<Connection>)>,
    /// The publishers to re-open on a new connection (see [`Broker::publisher`]).
    publishers: std::sync::Mutex<Vec<std::sync::Weak<dyn Reopen>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &redact_amqp_url(&self.url))
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connect (failing fast when the broker cannot be reached at start), declare the
    /// topology, and keep the connection alive until `shutdown`.
    pub async fn start(
        cfg: Arc<Config>,
        name: &str,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Arc<Self>> {
        let conn = connect(&cfg.broker.url, name).await?;
        declare_topology(&conn, &cfg).await?;
        super::outcomes::declare_outcomes(&conn.create_channel().await?).await?;
        let broker = Arc::new(Self {
            url: cfg.broker.url.expose().to_owned(),
            name: name.to_owned(),
            cfg,
            current: watch::Sender::new((0, Arc::new(conn))),
            publishers: std::sync::Mutex::new(Vec::new()),
        });
        tokio::spawn(Arc::clone(&broker).watch(shutdown));
        Ok(broker)
    }

    /// Whether the current connection is up (for `/readyz`).
    pub fn connected(&self) -> bool {
        self.current.borrow().1.status().connected()
    }

    /// The current connection once it is up, and its number (waits while reconnecting).
    pub async fn connection(&self) -> (u64, Arc<Connection>) {
        let mut rx = self.current.subscribe();
        loop {
            {
                let cur = rx.borrow_and_update();
                if cur.1.status().connected() {
                    return (cur.0, Arc::clone(&cur.1));
                }
            }
            if rx.changed().await.is_err() {
                // The broker handle is gone (process shutting down): hand out what there is.
                let cur = rx.borrow();
                return (cur.0, Arc::clone(&cur.1));
            }
        }
    }

    /// Re-open `p` on every new connection, while it lives.
    pub(super) fn follow(&self, p: std::sync::Weak<dyn Reopen>) {
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(p);
    }

    async fn watch(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(WATCH_INTERVAL) => {}
            }
            if self.connected() {
                continue;
            }
            tracing::warn!(broker = %redact_amqp_url(&self.url), "connection to RabbitMQ lost; reconnecting");
            metrics::counter!(crate::telemetry::BROKER_RECONNECTS).increment(1);
            let mut delay = RECONNECT_MIN_DELAY;
            let conn = loop {
                let attempt = async {
                    let c = connect(&self.url, &self.name).await?;
                    declare_topology(&c, &self.cfg).await?;
                    anyhow::Ok(c)
                };
                let attempt = tokio::time::timeout(RECONNECT_ATTEMPT_TIMEOUT, attempt)
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out")));
                match attempt {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::info!(error = %format!("{e:#}"), retry_in_ms = delay.as_millis() as u64, "reconnect failed");
                        let jittered = delay.mul_f64(0.5 + rand::random::<f64>() / 2.0);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(jittered) => {}
                        }
                        delay = (delay * 2).min(RECONNECT_MAX_DELAY);
                    }
                }
            };
            let conn = Arc::new(conn);
            // (Read the number first: holding a borrow while sending would deadlock.)
            let next = self.current.borrow().0 + 1;
            let old = self.current.send_replace((next, Arc::clone(&conn)));
            // The old connection is dead; closing it releases its I/O thread.
            let _ = old.1.close(200, "replaced".into()).await;
            let publishers: Vec<_> = {
                let mut ps = self.publishers.lock().unwrap_or_else(|p| p.into_inner());
                ps.retain(|w| w.strong_count() > 0);
                ps.iter().filter_map(std::sync::Weak::upgrade).collect()
            };
            for p in publishers {
                if let Err(e) = p.reopen(&conn).await {
                    tracing::warn!(error = %format!("{e:#}"), "publisher channel not re-opened; retried on its next publish");
                }
            }
            tracing::info!(broker = %redact_amqp_url(&self.url), "reconnected to RabbitMQ");
        }
        let cur = Arc::clone(&self.current.borrow().1);
        let _ = cur.close(200, "shutdown".into()).await;
    }
}

/// `amqp://user:pw@host/vhost` → `amqp://user:***@host/vhost` (see
/// [`crate::config::redact_url_password`]).
pub fn redact_amqp_url(url: &str) -> String {
    crate::config::redact_url_password(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_amqp_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_amqp_url("amqp://127.0.0.1"), "amqp://127.0.0.1");
    }
}
