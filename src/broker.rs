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

use anyhow::Context;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};

use crate::config::{AccountConfig, Config};

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

/// Reconnection schedule after the broker went away: first retry soon (a restart takes a few
/// seconds), then every [`RECONNECT_MAX_DELAY`], for about [`RECONNECT_ATTEMPTS`] ×
/// that long (≈ 5 minutes) before the worker gives up and exits non-zero for its supervisor
/// to restart it. lapin's default (from 1 s, doubling to 60 s) could leave a lane idle for a
/// minute after a short broker restart.
const RECONNECT_MIN_DELAY: std::time::Duration = std::time::Duration::from_millis(250);
const RECONNECT_MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(5);
const RECONNECT_ATTEMPTS: usize = 60;

/// Connect with lapin's own auto-recovery: on a broker restart the connection, channels,
/// QoS, consumers and confirm mode are re-established; deliveries held at the time are
/// redelivered by the broker and deduplicated by the claim in Postgres.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default()
        .with_connection_name(name.into())
        .enable_auto_recover()
        .configure_backoff(|b| {
            b.with_min_delay(RECONNECT_MIN_DELAY)
                .with_max_delay(RECONNECT_MAX_DELAY)
                .with_max_times(RECONNECT_ATTEMPTS)
                .with_jitter()
        });
    Connection::connect(url, props).await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to RabbitMQ at {}: {e}",
            redact_amqp_url(url)
        )
    })
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
    queue(ch, &crate::broadcast::bulk_queue(&a.name), lane_args(cfg)).await?;
    bind(ch, &q, EXCHANGE, &a.name).await
}

/// A channel in confirm mode: every publish returns only once the broker has taken
/// responsibility for the message.
#[derive(Clone)]
pub struct Publisher {
    ch: Channel,
}

impl Publisher {
    pub async fn new(conn: &Connection) -> anyhow::Result<Self> {
        let ch = conn
            .create_channel()
            .await
            .context("opening the publish channel")?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .context("enabling publisher confirms")?;
        Ok(Self { ch })
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
        // One retry after lapin's auto-recovery finishes (a broker restart mid-publish).
        for _ in 0..2 {
            let res = async {
                self.ch
                    .basic_publish(
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
                    if self.ch.wait_for_recovery(e).await.is_err() {
                        anyhow::bail!("publishing to {exchange}: {msg}");
                    }
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

    pub fn channel(&self) -> &Channel {
        &self.ch
    }
}

pub struct DeadHeaders<'a> {
    pub reason: &'a str,
    pub errcode: Option<i64>,
    pub errmsg: Option<&'a str>,
    pub account: &'a str,
    pub attempts: i32,
}

/// Cut a string at a char boundary.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

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

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 5), "abc");
    }
}
