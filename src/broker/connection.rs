//! RabbitMQ: connection, topology, confirmed publishing.
//!
//! Topology (declared idempotently at start; `deploy/rabbitmq/definitions.json` ships the same):
//!
//! ```text
//! wxdispatch (direct, alternate-exchange=wxdispatch.unroutable)
//!   ├─ <account> ─▶ wxdispatch.<account>   quorum, single active consumer, x-delivery-limit,
//!   │                                      DLX wxdispatch.dead (the broker's own backstop)
//!   └─ (no match) ─▶ wxdispatch.unroutable (fanout) ─▶ wxdispatch.unroutable (quorum)
//! wxdispatch.dead (fanout) ─▶ wxdispatch.dead (quorum)
//! wxdispatch.inbound (topic)               <account>.<msgtype>
//! wxdispatch.retry.<N>s (fanout) ─▶ wxdispatch.retry.<N>s  quorum, TTL N s, DLX wxdispatch:
//!                                    a parked job returns to its lane after N seconds
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{AccountConfig, Config};

/// How long a publish that failed on a dead connection waits for the new one before failing
/// to its caller (who hands the message back to the broker).
const PUBLISH_RECONNECT_WAIT: Duration = Duration::from_secs(30);

pub const EXCHANGE: &str = "wxdispatch";
pub const UNROUTABLE: &str = "wxdispatch.unroutable";
pub const DEAD: &str = "wxdispatch.dead";
pub const INBOUND: &str = "wxdispatch.inbound";

/// Headers of a dead letter (contract §3).
pub const H_REASON: &str = "x-wxdispatch-reason";
pub const H_ERRCODE: &str = "x-wxdispatch-errcode";
pub const H_ERRMSG: &str = "x-wxdispatch-errmsg";
pub const H_ACCOUNT: &str = "x-wxdispatch-account";
pub const H_ATTEMPTS: &str = "x-wxdispatch-attempts";

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

/// The worker's connection to RabbitMQ, replaced when it dies.
///
/// lapin's own auto-recovery is not used: in lapin 4.12.3, after a broker-initiated close
/// (`rabbitmqctl stop_app`, a node restart) with unflushed frames its I/O loop spins without
/// ever reconnecting (amqp-rs/lapin#450). Instead a watcher task notices the dead connection,
/// reconnects with backoff, declares the topology again (idempotent; a replaced broker node
/// may have lost it) and publishes the new connection; lanes open new channels and
/// consumers on it ([`Broker::connection`]) and [`Publisher`]s re-open their confirm channels.
/// Deliveries held on the dead connection are redelivered by the broker and deduplicated by
/// the claim in Postgres.
pub struct Broker {
    url: String,
    name: String,
    cfg: Arc<Config>,
    /// The current connection (possibly dead until the watcher replaces it) and its number.
    current: watch::Sender<(u64, Arc<Connection>)>,
    publishers: std::sync::Mutex<Vec<std::sync::Weak<PublisherInner>>>,
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
        let broker = Arc::new(Self {
            url: cfg.broker.url.clone(),
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

    /// A publisher whose confirm channel is re-opened on every new connection.
    pub async fn publisher(self: &Arc<Self>) -> anyhow::Result<Publisher> {
        let (_, conn) = self.connection().await;
        let ch = confirm_channel(&conn).await?;
        let inner = Arc::new(PublisherInner {
            ch: std::sync::RwLock::new(ch),
            reopen: tokio::sync::Mutex::new(()),
            broker: Some(Arc::clone(self)),
        });
        self.publishers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::downgrade(&inner));
        Ok(Publisher { inner })
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

/// `amqp://user:pw@host/vhost` → `amqp://user:***@host/vhost`.
pub fn redact_amqp_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..s + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn lane_args(cfg: &Config) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongInt(cfg.broker.delivery_limit as i32),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(DEAD.into()),
    );
    args
}

/// The durable delay tier of `secs` seconds: exchange and queue of the same name.
/// The bulk queue of an account.
pub fn bulk_queue(account: &str) -> String {
    format!("wxdispatch.{account}.bulk")
}

pub fn retry_tier(secs: u64) -> String {
    format!("wxdispatch.retry.{secs}s")
}

/// A delay tier: messages wait `secs` (queue TTL), then dead-letter back to `wxdispatch`
/// with their original routing key (the account), i.e. into their lane. Quorum with
/// at-least-once dead-lettering, so a broker restart cannot lose a parked job.
fn tier_args(secs: u64) -> FieldTable {
    let mut args = quorum_args();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt((secs * 1000) as i64),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

async fn exchange(
    ch: &Channel,
    name: &str,
    kind: ExchangeKind,
    args: FieldTable,
) -> anyhow::Result<()> {
    ch.exchange_declare(
        name.into(),
        kind,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .with_context(|| format!("declaring exchange {name}"))
}

async fn queue(ch: &Channel, name: &str, args: FieldTable) -> anyhow::Result<()> {
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .with_context(|| format!("declaring queue {name}"))?;
    Ok(())
}

async fn bind(ch: &Channel, q: &str, ex: &str, key: &str) -> anyhow::Result<()> {
    ch.queue_bind(
        q.into(),
        ex.into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("binding {q} to {ex} ({key})"))
}

/// Declare everything the contract names. Idempotent; fails with PRECONDITION_FAILED when a
/// queue exists with different arguments (the error says which).
pub async fn declare_topology(conn: &Connection, cfg: &Config) -> anyhow::Result<()> {
    let ch = conn.create_channel().await.context("opening a channel")?;
    let mut main_args = FieldTable::default();
    main_args.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString(UNROUTABLE.into()),
    );
    exchange(&ch, UNROUTABLE, ExchangeKind::Fanout, FieldTable::default()).await?;
    exchange(&ch, DEAD, ExchangeKind::Fanout, FieldTable::default()).await?;
    exchange(&ch, INBOUND, ExchangeKind::Topic, FieldTable::default()).await?;
    exchange(&ch, EXCHANGE, ExchangeKind::Direct, main_args).await?;
    queue(&ch, UNROUTABLE, quorum_args()).await?;
    bind(&ch, UNROUTABLE, UNROUTABLE, "").await?;
    queue(&ch, DEAD, quorum_args()).await?;
    bind(&ch, DEAD, DEAD, "").await?;
    for &secs in &cfg.retry.tiers_secs {
        let name = retry_tier(secs);
        exchange(&ch, &name, ExchangeKind::Fanout, FieldTable::default()).await?;
        queue(&ch, &name, tier_args(secs)).await?;
        bind(&ch, &name, &name, "").await?;
    }
    for a in &cfg.accounts {
        declare_lane(&ch, cfg, a).await?;
    }
    let _ = ch.close(200, "topology declared".into()).await;
    Ok(())
}

async fn declare_lane(ch: &Channel, cfg: &Config, a: &AccountConfig) -> anyhow::Result<()> {
    let q = a.queue();
    queue(ch, &q, lane_args(cfg)).await?;
    // The broadcast fan-out queue: same guarantees as the lane, consumed by the same process.
    queue(ch, &bulk_queue(&a.name), lane_args(cfg)).await?;
    bind(ch, &q, EXCHANGE, &a.name).await
}

async fn confirm_channel(conn: &Connection) -> anyhow::Result<Channel> {
    let ch = conn
        .create_channel()
        .await
        .context("opening the publish channel")?;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enabling publisher confirms")?;
    Ok(ch)
}

/// A channel in confirm mode: every publish returns only once the broker has taken
/// responsibility for the message. One made by [`Broker::publisher`] follows the broker's
/// reconnections.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<PublisherInner>,
}

struct PublisherInner {
    ch: std::sync::RwLock<Channel>,
    /// One re-open at a time.
    reopen: tokio::sync::Mutex<()>,
    broker: Option<Arc<Broker>>,
}

impl PublisherInner {
    fn current(&self) -> Channel {
        self.ch.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replace the channel with a new one on `conn`, unless it works already.
    async fn reopen(&self, conn: &Connection) -> anyhow::Result<()> {
        let _one = self.reopen.lock().await;
        if self.current().status().connected() {
            return Ok(());
        }
        let ch = confirm_channel(conn).await?;
        *self.ch.write().unwrap_or_else(|p| p.into_inner()) = ch;
        Ok(())
    }
}

impl Publisher {
    /// A publisher on `conn` (not following reconnections; see [`Broker::publisher`]).
    pub async fn new(conn: &Connection) -> anyhow::Result<Self> {
        let ch = confirm_channel(conn).await?;
        Ok(Self {
            inner: Arc::new(PublisherInner {
                ch: std::sync::RwLock::new(ch),
                reopen: tokio::sync::Mutex::new(()),
                broker: None,
            }),
        })
    }

    /// Publish persistently and wait for the broker's confirm.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) -> anyhow::Result<()> {
        let props = props.with_delivery_mode(2);
        let mut last_err = None;
        // One retry on a new channel when the broker connection was replaced meanwhile (a
        // broker restart mid-publish).
        for _ in 0..2 {
            let ch = self.inner.current();
            let res = async {
                ch.basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    props.clone(),
                )
                .await?
                .await
            }
            .await;
            match res {
                Ok(c) if c.is_ack() => return Ok(()),
                Ok(_) => anyhow::bail!("broker refused the message (nack) on {exchange}"),
                Err(e) => {
                    let msg = e.to_string();
                    let Some(broker) = &self.inner.broker else {
                        anyhow::bail!("publishing to {exchange}: {msg}");
                    };
                    // Wait (bounded) for a live connection, then retry once on a new channel.
                    let (_, conn) =
                        match tokio::time::timeout(PUBLISH_RECONNECT_WAIT, broker.connection())
                            .await
                        {
                            Ok(c) => c,
                            Err(_) => anyhow::bail!("publishing to {exchange}: {msg}"),
                        };
                    self.inner.reopen(&conn).await?;
                    last_err = Some(msg);
                }
            }
        }
        anyhow::bail!("publishing to {exchange}: {}", last_err.unwrap_or_default())
    }

    /// Publish a job to the main exchange (used by `send`, `dlq replay`, broadcasts).
    pub async fn publish_job(
        &self,
        account: &str,
        job_id: &str,
        body: &[u8],
    ) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(job_id.into())
            .with_timestamp(chrono::Utc::now().timestamp_millis().max(0) as u64 / 1000);
        self.publish(EXCHANGE, account, body, props).await
    }

    /// Publish a job straight to a queue (the default exchange), e.g. a broadcast's bulk queue.
    pub async fn publish_to_queue(
        &self,
        queue: &str,
        job_id: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(job_id.into());
        self.publish("", queue, &body, props).await
    }

    /// Dead-letter a message body with the contract's headers.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        props: &BasicProperties,
        dl: &DeadHeaders<'_>,
    ) -> anyhow::Result<()> {
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(H_REASON.into(), AMQPValue::LongString(dl.reason.into()));
        if let Some(c) = dl.errcode {
            headers.insert(H_ERRCODE.into(), AMQPValue::LongLongInt(c));
        }
        if let Some(m) = dl.errmsg {
            headers.insert(
                H_ERRMSG.into(),
                AMQPValue::LongString(LongString::from(truncate(m, 512))),
            );
        }
        headers.insert(H_ACCOUNT.into(), AMQPValue::LongString(dl.account.into()));
        headers.insert(H_ATTEMPTS.into(), AMQPValue::LongInt(dl.attempts));
        let mut p = props.clone().with_headers(headers);
        if p.content_type().is_none() {
            p = p.with_content_type(ShortString::from("application/json"));
        }
        self.publish(DEAD, dl.account, body, p).await
    }

    /// The current channel (after a reconnection, the new one).
    pub fn channel(&self) -> Channel {
        self.inner.current()
    }
}

pub struct DeadHeaders<'a> {
    pub reason: &'a str,
    pub errcode: Option<i64>,
    pub errmsg: Option<&'a str>,
    pub account: &'a str,
    pub attempts: i32,
}

pub use crate::text::truncate;

/// Read a header as a string (for `dlq` tools and tests).
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::ShortInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
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
