//! Every queue and exchange name, and their declaration.
//!
//! Topology (declared idempotently at start; `deploy/rabbitmq/definitions.json` ships the same):
//!
//! ```text
//! wxdispatch (direct, alternate-exchange=wxdispatch.unroutable)
//!   ├─ <account> ─▶ wxdispatch.<account>   quorum, single active consumer, x-delivery-limit,
//!   │                                      DLX wxdispatch.dead (the broker's own backstop)
//!   └─ (no match) ─▶ wxdispatch.unroutable (fanout) ─▶ wxdispatch.unroutable (quorum)
//! wxdispatch.dead (fanout) ─▶ wxdispatch.dead (quorum)
//!                          └▶ wxdispatch.dead.recorder (quorum): the worker records what the
//!                             broker dead-lettered itself (delivery limit) in `dead_letters`
//! wxdispatch.inbound (topic)               <account>.<msgtype>
//! wxdispatch.retry.<N>s (fanout) ─▶ wxdispatch.retry.<N>s  quorum, TTL N s, DLX wxdispatch:
//!                                    a parked job returns to its lane after N seconds
//! ```

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};

use crate::config::{AccountConfig, Config};

/// The main exchange (direct): upstream publishes jobs here with the account as routing key.
pub const EXCHANGE: &str = "wxdispatch";
/// Alternate exchange of [`EXCHANGE`] and its queue: jobs for an account no lane serves.
pub const UNROUTABLE: &str = "wxdispatch.unroutable";
/// Dead letters (fanout exchange and queue), with the [`super::headers`] of contract §3.
pub const DEAD: &str = "wxdispatch.dead";
/// A second queue on the [`DEAD`] fanout, consumed by the workers: the dead letters the broker
/// makes itself (a lane's `x-delivery-limit`, no wxdispatch reason header) are recorded from
/// it. Beside `wxdispatch.dead` rather than instead of it: the lanes' queue arguments stay as
/// they are (changing them fails running deployments with PRECONDITION_FAILED).
pub const DEAD_RECORDER: &str = "wxdispatch.dead.recorder";
/// Inbound customer messages (topic), routing key `<account>.<msgtype>`.
pub const INBOUND: &str = "wxdispatch.inbound";

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

/// The lane queue of an account (bound to [`EXCHANGE`] with the account as routing key).
pub fn lane_queue(account: &str) -> String {
    format!("{EXCHANGE}.{account}")
}

/// The bulk queue of an account: a broadcast's fan-out, beside the lane.
pub fn bulk_queue(account: &str) -> String {
    format!("{EXCHANGE}.{account}.bulk")
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
    queue(&ch, DEAD_RECORDER, quorum_args()).await?;
    bind(&ch, DEAD_RECORDER, DEAD, "").await?;
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
    let q = lane_queue(&a.name);
    queue(ch, &q, lane_args(cfg)).await?;
    // The broadcast fan-out queue: same guarantees as the lane, consumed by the same process.
    queue(ch, &bulk_queue(&a.name), lane_args(cfg)).await?;
    bind(ch, &q, EXCHANGE, &a.name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(lane_queue("kf"), "wxdispatch.kf");
        assert_eq!(bulk_queue("kf"), "wxdispatch.kf.bulk");
        assert_eq!(retry_tier(30), "wxdispatch.retry.30s");
    }
}
