//! The lane's AMQP channels and consumers on one broker connection: the account's queue and
//! its bulk (broadcast recipients) queue, each on its own AMQP channel with its own ack batch.
//!
//! Each consumer hands out a delivery only with its share of the worker's byte budget
//! ([`Budgeted`], [`crate::engine::budget`]): while the budget is spent the lane pulls
//! nothing more from the AMQP client.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::Connection;
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::ctx::LaneCtx;
use crate::broker::acks::Acks;
use crate::broker::{self, Broker};
use crate::config::Config;
use crate::engine::budget::{ByteBudget, Held};

/// Prefetch of the bulk (broadcast) queue: enough to keep the broadcast share busy, small
/// enough that broadcast recipients never hold the lane's concurrency.
const BULK_PREFETCH: u16 = 64;

/// How long a lane waits before trying again to consume after a failure on a live
/// connection (e.g. its queue was deleted and is being declared again).
pub(super) const CONSUME_RETRY: Duration = Duration::from_secs(1);

/// `broker.prefetch`, capped by `broker.prefetch_bytes` at `worker.max_body_bytes` per
/// delivery (at least 1).
fn effective_prefetch(cfg: &Config) -> u16 {
    let p = cfg.broker.prefetch;
    if cfg.broker.prefetch_bytes == 0 {
        return p;
    }
    let per = u64::try_from(cfg.worker.max_body_bytes.max(1)).unwrap_or(u64::MAX);
    let fit = (cfg.broker.prefetch_bytes / per).max(1);
    p.min(u16::try_from(fit).unwrap_or(u16::MAX))
}

/// The lane's AMQP channels and consumers on one broker connection.
pub(super) struct Consumers {
    /// The AMQP channel of the account's queue.
    pub(super) amqp: lapin::Channel,
    pub(super) consumer: Budgeted,
    /// Broadcast recipients: a second queue, its own AMQP channel and a smaller prefetch, so
    /// the lane's prefetch stays available to ordinary replies.
    bulk_amqp: lapin::Channel,
    pub(super) bulk: Budgeted,
    /// Each AMQP channel's acks, coalesced ([`crate::broker::acks`]).
    pub(super) acks: Arc<Acks>,
    pub(super) bulk_acks: Arc<Acks>,
}

impl Consumers {
    async fn open(ctx: &LaneCtx, conn: &Connection, tag: &str) -> anyhow::Result<Self> {
        let prefetch = effective_prefetch(&ctx.cfg);
        let amqp = conn.create_channel().await?;
        amqp.basic_qos(prefetch, BasicQosOptions::default()).await?;
        let consumer = amqp
            .basic_consume(
                broker::lane_queue(&ctx.account.name).as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let bulk_amqp = conn.create_channel().await?;
        bulk_amqp
            .basic_qos(prefetch.min(BULK_PREFETCH), BasicQosOptions::default())
            .await?;
        let bulk = bulk_amqp
            .basic_consume(
                broker::bulk_queue(&ctx.account.name).as_str().into(),
                format!("{tag}-bulk").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            amqp,
            consumer: Budgeted::new(consumer, ctx.budget.clone()),
            bulk_amqp,
            bulk: Budgeted::new(bulk, ctx.budget.clone()),
            acks: Acks::start(ctx.account.name.clone()),
            bulk_acks: Acks::start(format!("{} (bulk)", ctx.account.name)),
        })
    }

    /// Open on the broker's current connection, waiting for one and retrying until it works
    /// or `shutdown` fires.
    pub(super) async fn open_retrying(
        ctx: &LaneCtx,
        broker: &Broker,
        tag: &str,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        loop {
            let (_, conn) = tokio::select! {
                _ = shutdown.cancelled() => return None,
                c = broker.connection() => c,
            };
            match Self::open(ctx, &conn, tag).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    warn!(account = %ctx.account.name, error = %format!("{e:#}"), "lane cannot consume yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(CONSUME_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Stop deliveries, leave unacked ones to the AMQP channels' close.
    pub(super) async fn cancel(&self, tag: &str) {
        let _ = self
            .bulk_amqp
            .basic_cancel(
                format!("{tag}-bulk").as_str().into(),
                BasicCancelOptions::default(),
            )
            .await;
        let _ = self
            .amqp
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await;
    }

    /// Ack what is settled, then close both AMQP channels (unacked deliveries go back).
    pub(super) async fn close(&self) {
        self.acks.close().await;
        self.bulk_acks.close().await;
        let _ = self.amqp.close(200, "shutdown".into()).await;
        let _ = self.bulk_amqp.close(200, "shutdown".into()).await;
    }
}

/// A consumer whose deliveries come with their share of the worker's byte budget.
pub(super) struct Budgeted {
    stream: lapin::Consumer,
    budget: Arc<ByteBudget>,
    /// Taken from the stream, waiting for its share of the budget.
    waiting: Option<Delivery>,
}

impl Budgeted {
    fn new(stream: lapin::Consumer, budget: Arc<ByteBudget>) -> Self {
        Self {
            stream,
            budget,
            waiting: None,
        }
    }

    /// The next delivery once its body's length is free in the budget (`None`: the consumer
    /// ended). Cancel-safe, as the lane's `select!` needs: a delivery taken from the stream
    /// but not yet granted its bytes waits here for the next call, and nothing more is
    /// pulled from the stream meanwhile.
    pub(super) async fn next(&mut self) -> Option<Result<(Delivery, Held), lapin::Error>> {
        let delivery = match self.waiting.take() {
            Some(d) => d,
            None => match self.stream.next().await? {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            },
        };
        let len = delivery.data.len();
        self.waiting = Some(delivery);
        let held = self.budget.acquire(len).await;
        self.waiting.take().map(|d| Ok((d, held)))
    }
}

#[cfg(test)]
mod tests {
    use super::effective_prefetch;
    use crate::config::Config;

    #[test]
    fn prefetch_bytes_caps_the_prefetch_at_the_largest_body() {
        let mut c = Config::default();
        assert_eq!(
            effective_prefetch(&c),
            64,
            "256 MiB of 4 MiB bodies by default"
        );
        c.broker.prefetch_bytes = 0;
        assert_eq!(effective_prefetch(&c), 512, "0: no cap");
        c.broker.prefetch_bytes = 64 * 1024 * 1024;
        assert_eq!(effective_prefetch(&c), 16, "64 MiB of 4 MiB bodies");
        c.worker.max_body_bytes = 64 * 1024;
        assert_eq!(effective_prefetch(&c), 512, "never above broker.prefetch");
        c.broker.prefetch_bytes = 1;
        assert_eq!(effective_prefetch(&c), 1, "at least one");
    }
}
