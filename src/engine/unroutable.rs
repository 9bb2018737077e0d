//! The unroutable consumer: messages whose routing key names no account land in
//! `wxdispatch.unroutable` (the main exchange's alternate exchange); each is dead-lettered as
//! `unknown_account` and acked.

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::broker::{self, Broker, Publisher};
use crate::domain::reason::Reason;
use crate::engine::dead_letter::{self, Failed};
use crate::store::{DeadLetter, Store};

/// Unroutable messages are rare; a small prefetch is plenty.
const UNROUTABLE_PREFETCH: u16 = 64;
/// Pause before consuming again after the unroutable consumer failed.
const UNROUTABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// Open the unroutable consumer on the broker's current connection.
async fn consume_unroutable(broker: &Broker) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let (_, conn) = broker.connection().await;
    let amqp = conn.create_channel().await?;
    amqp.basic_qos(UNROUTABLE_PREFETCH, BasicQosOptions::default())
        .await?;
    let consumer = amqp
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
    Ok((amqp, consumer))
}

/// Messages whose routing key names no account: dead-letter them as `unknown_account`, until
/// `shutdown`. Consumes again whenever the connection dies or the broker cancels.
pub async fn run(
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
                if let Some((amqp, _)) = current.take() {
                    let _ = amqp.close(200, "reopening".into()).await;
                }
                continue;
            }
        };
        let account = d.routing_key.to_string();
        let dl = DeadLetter {
            job_id: job_id_of(&d),
            message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
            errmsg: Some(format!(
                "no account named '{}' is configured",
                crate::text::truncate(&account, 64)
            )),
            account,
            reason: Reason::UnknownAccount.into(),
            errcode: None,
            attempts: 0,
            body: d.data.clone(),
        };
        match dead_letter::dead_letter(&publisher, &store, &dl, &d.properties, "unknown").await {
            Ok(()) => {}
            Err(Failed::Publish(e)) => {
                warn!(error = %e, "could not dead-letter an unroutable message; it stays queued");
                continue;
            }
            Err(Failed::Record(e)) => warn!(error = %e, "unroutable message not recorded"),
        }
        warn!(routing_key = %crate::text::truncate(&dl.account, 64), "message for an unknown account dead-lettered");
        let _ = d.acker.ack(BasicAckOptions::default()).await;
    }
    Ok(())
}

/// The job id of an unroutable message, if it has one: its message id, or the body's
/// `job_id`.
fn job_id_of(d: &lapin::message::Delivery) -> Option<String> {
    d.properties
        .message_id()
        .as_ref()
        .map(|s| s.to_string())
        .or_else(|| {
            serde_json::from_slice::<serde_json::Value>(&d.data)
                .ok()?
                .get("job_id")?
                .as_str()
                .map(str::to_owned)
        })
}
