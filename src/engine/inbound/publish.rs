//! Publishing inbound messages to exchange `wxdispatch.inbound`, confirmed.

use anyhow::Context;
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::broker::{self, Publisher};
use crate::domain::inbound::Inbound;

/// Publish messages to `wxdispatch.inbound` and wait for every confirm. Publishes are
/// pipelined on the channel (in order) and confirmed together.
pub async fn publish_inbound(
    publisher: &Publisher,
    account: &str,
    msgs: &[&Inbound],
) -> anyhow::Result<()> {
    let ch = publisher.channel();
    let mut confirms = Vec::with_capacity(msgs.len());
    for m in msgs {
        let body = serde_json::to_vec(&m.body).context("serializing an inbound message")?;
        let mut headers = FieldTable::default();
        headers.insert(
            broker::H_ACCOUNT.into(),
            AMQPValue::LongString(account.into()),
        );
        if let Some(k) = &m.open_kfid {
            headers.insert(
                broker::H_OPEN_KFID.into(),
                AMQPValue::LongString(k.as_str().into()),
            );
        }
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(m.msgid.as_str().into())
            .with_type(m.msgtype.as_str().into())
            .with_app_id("wxdispatch".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ts) = m.send_time.and_then(|s| u64::try_from(s).ok()) {
            props = props.with_timestamp(ts);
        }
        let rk = m.routing_key(account);
        match ch
            .basic_publish(
                broker::INBOUND.into(),
                rk.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(e) => {
                let msg = e.to_string();
                // Let lapin's auto-recovery finish before the caller retries.
                let _ = ch.wait_for_recovery(e).await;
                anyhow::bail!("publishing to {}: {msg}", broker::INBOUND);
            }
        }
    }
    for c in confirms {
        match c.await {
            Ok(conf) if conf.is_ack() => {}
            Ok(_) => anyhow::bail!("broker refused an inbound message (nack)"),
            Err(e) => anyhow::bail!("waiting for the broker's confirm: {e}"),
        }
    }
    Ok(())
}
