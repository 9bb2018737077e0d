//! Confirmed publishing: jobs, queue-direct publishes and dead letters.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use super::connection::{Broker, Reopen};
use super::headers::{DeadHeaders, H_ACCOUNT, H_ATTEMPTS, H_ERRCODE, H_ERRMSG, H_REASON};
use super::topology::{DEAD, EXCHANGE};
use crate::text::truncate;

/// How long a publish that failed on a dead connection waits for the new one before failing
/// to its caller (who hands the message back to the broker).
const PUBLISH_RECONNECT_WAIT: Duration = Duration::from_secs(30);

impl Broker {
    /// A publisher whose confirm channel is re-opened on every new connection.
    pub async fn publisher(self: &Arc<Self>) -> anyhow::Result<Publisher> {
        let (_, conn) = self.connection().await;
        let ch = confirm_channel(&conn).await?;
        let inner = Arc::new(PublisherInner {
            ch: std::sync::RwLock::new(ch),
            reopen: tokio::sync::Mutex::new(()),
            broker: Some(Arc::clone(self)),
        });
        let follow: Arc<dyn Reopen> = inner.clone();
        self.follow(Arc::downgrade(&follow));
        Ok(Publisher { inner })
    }
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

impl Reopen for PublisherInner {
    fn reopen<'a>(&'a self, conn: &'a Connection) -> BoxFuture<'a, anyhow::Result<()>> {
        PublisherInner::reopen(self, conn).boxed()
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
