//! The dead-letter recorder: what the broker dead-letters *itself* is recorded too.
//!
//! wxdispatch's own dead letters are published with a reason header and recorded in
//! `dead_letters` by whoever dead-lettered them ([`crate::engine::dead_letter`]). The broker
//! dead-letters on its own when a lane's `x-delivery-limit` is reached (or a TTL expires):
//! such a message reaches `wxdispatch.dead` with only the broker's `x-death` header and
//! would be invisible to `dlq list` and `dlq replay`. The recorder consumes
//! [`broker::DEAD_RECORDER`], a second queue on the `wxdispatch.dead` fanout: a message with
//! `x-death` and no `x-wxdispatch-reason` is recorded with reason `delivery_limit` (account
//! from the queue it died in, job id from the body or else the AMQP `message_id`), then
//! acked; a message with a reason header was recorded already and is acked at once.
//!
//! A record the database refuses is held and retried like the lanes' writes
//! ([`crate::engine::hold`]); the message is acked only once it is recorded.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::{self, Broker};
use crate::config::Config;
use crate::domain::reason::Reason;
use crate::engine::hold::{HoldCtx, hold_until_written};
use crate::store::{DeadLetter, Store};
use crate::telemetry as t;

/// The broker's dead letters are rare; a small prefetch is plenty.
const RECORDER_PREFETCH: u16 = 32;
/// Pause before consuming again after the recorder's consumer failed.
const RECORDER_RETRY: Duration = Duration::from_secs(1);

/// The newest entry of a message's `x-death` header: where and why the broker dead-lettered it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Death {
    pub queue: String,
    pub reason: String,
    pub count: i64,
    pub routing_key: Option<String>,
}

fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

fn number(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(i) => Some(*i),
        AMQPValue::LongInt(i) => Some(i64::from(*i)),
        AMQPValue::LongUInt(i) => Some(i64::from(*i)),
        AMQPValue::ShortInt(i) => Some(i64::from(*i)),
        AMQPValue::Timestamp(i) => i64::try_from(*i).ok(),
        _ => None,
    }
}

/// The newest `x-death` entry (RabbitMQ keeps the most recent first), or `None` when the
/// message has no `x-death` header, i.e. the broker did not dead-letter it.
pub fn newest_death(props: &BasicProperties) -> Option<Death> {
    let h = props.headers().as_ref()?;
    let AMQPValue::FieldArray(deaths) = h.inner().get("x-death")? else {
        return None;
    };
    let entry = deaths.as_slice().iter().find_map(|d| match d {
        AMQPValue::FieldTable(t) => Some(t),
        _ => None,
    });
    let Some(entry) = entry else {
        // An `x-death` we cannot read still says "the broker dead-lettered this".
        return Some(Death::default());
    };
    let get = |k: &str| entry.inner().get(k);
    let routing_key = match get("routing-keys") {
        Some(AMQPValue::FieldArray(keys)) => keys.as_slice().iter().find_map(text),
        _ => None,
    };
    Some(Death {
        queue: get("queue").and_then(text).unwrap_or_default(),
        reason: get("reason").and_then(text).unwrap_or_default(),
        count: get("count").and_then(number).unwrap_or(1),
        routing_key,
    })
}

/// The account a broker dead letter belongs to: the configured account (of `accounts`)
/// whose lane or bulk queue it died in, else the routing key it was published with.
pub fn account_of<'a>(
    mut accounts: impl Iterator<Item = &'a str>,
    death: &Death,
    routing_key: &str,
) -> String {
    accounts
        .find(|a| death.queue == broker::lane_queue(a) || death.queue == broker::bulk_queue(a))
        .map(str::to_owned)
        .or_else(|| death.routing_key.clone())
        .unwrap_or_else(|| routing_key.to_owned())
}

/// The job id of a dead message: the body's `job_id` if the body is a readable job, else the
/// AMQP `message_id`.
pub fn job_id_of(body: &[u8], props: &BasicProperties) -> Option<String> {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("job_id")?.as_str().map(str::to_owned))
        .filter(|s| !s.is_empty())
        .or_else(|| props.message_id().as_ref().map(|s| s.to_string()))
}

/// The `dead_letters` row for a message the broker dead-lettered (`None`: not one of those —
/// it has wxdispatch's reason header, or no `x-death`).
pub fn broker_dead_letter(cfg: &Config, d: &Delivery) -> Option<DeadLetter> {
    if broker::header_str(&d.properties, broker::H_REASON).is_some() {
        return None;
    }
    let death = newest_death(&d.properties)?;
    let names = cfg.accounts.iter().map(|a| a.name.as_str());
    let account = account_of(names, &death, d.routing_key.as_str());
    let errmsg = format!(
        "dead-lettered by the broker from {} ({}, {} time(s)); never recorded by a worker",
        if death.queue.is_empty() {
            "an unknown queue"
        } else {
            &death.queue
        },
        if death.reason.is_empty() {
            "no reason given"
        } else {
            &death.reason
        },
        death.count
    );
    Some(DeadLetter {
        job_id: job_id_of(&d.data, &d.properties),
        message_id: d.properties.message_id().as_ref().map(|m| m.to_string()),
        account: crate::text::truncate(&account, 64).to_owned(),
        reason: Reason::DeliveryLimit.into(),
        errcode: None,
        errmsg: Some(errmsg),
        attempts: 0,
        body: d.data.clone(),
    })
}

/// Open the recorder's consumer on the broker's current connection.
async fn consume(broker: &Broker) -> anyhow::Result<(lapin::Channel, lapin::Consumer)> {
    let (_, conn) = broker.connection().await;
    let amqp = conn.create_channel().await?;
    amqp.basic_qos(RECORDER_PREFETCH, BasicQosOptions::default())
        .await?;
    let tag = format!("wxdispatch-dead-recorder-{}", std::process::id());
    let consumer = amqp
        .basic_consume(
            broker::DEAD_RECORDER.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("consuming {}", broker::DEAD_RECORDER))?;
    Ok((amqp, consumer))
}

/// Record one message of the recorder queue; `false` when it must stay unacked (its record
/// was given up at shutdown).
async fn record(cfg: &Config, store: &Store, shutdown: &CancellationToken, d: &Delivery) -> bool {
    let Some(dl) = broker_dead_letter(cfg, d) else {
        debug!("dead letter already recorded by wxdispatch (or not the broker's); acked");
        return true;
    };
    let job_id = dl.job_id.clone().unwrap_or_else(|| "-".into());
    if let Err(e) = store.record_dead_letter(&dl).await {
        let h = HoldCtx {
            store,
            account: &dl.account,
            job_id: &job_id,
            stop: shutdown,
            grace: Duration::from_secs(cfg.worker.shutdown_grace_secs),
        };
        let held = hold_until_written(h, "broker dead letter record", e, || {
            store.record_dead_letter(&dl)
        });
        if Box::pin(held).await.is_err() {
            return false;
        }
    }
    metrics::counter!(t::DEAD_LETTERS, "account" => dl.account.clone(), "reason" => dl.reason.clone()).increment(1);
    warn!(account = %dl.account, job.id = %job_id, errmsg = dl.errmsg.as_deref().unwrap_or(""), "the broker dead-lettered a message (delivery limit); recorded for `dlq list` / `dlq replay`");
    true
}

/// Record the broker's own dead letters until `shutdown`. Consumes again whenever the
/// connection dies or the broker cancels the consumer.
pub async fn run(
    cfg: Arc<Config>,
    broker: Arc<Broker>,
    store: Store,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut current: Option<(lapin::Channel, lapin::Consumer)> = None;
    loop {
        if current.is_none() {
            let opened = tokio::select! {
                _ = shutdown.cancelled() => break,
                c = consume(&broker) => c,
            };
            match opened {
                Ok(c) => current = Some(c),
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot consume the dead-letter recorder queue yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(RECORDER_RETRY) => {}
                    }
                    continue;
                }
            }
        }
        let Some((amqp, consumer)) = current.as_mut() else {
            continue;
        };
        let next = tokio::select! {
            _ = shutdown.cancelled() => break,
            d = consumer.next() => d,
        };
        match next {
            Some(Ok(d)) => {
                if record(&cfg, &store, &shutdown, &d).await {
                    let _ = d.acker.ack(BasicAckOptions::default()).await;
                }
            }
            // The connection died or the broker cancelled the consumer: consume again.
            None | Some(Err(_)) => {
                let _ = amqp.close(200, "reopening".into()).await;
                current = None;
            }
        }
    }
    if let Some((amqp, _)) = current {
        let _ = amqp.close(200, "shutting down".into()).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, ShortString};

    fn death_headers(queue: &str, reason: &str, extra: Option<(&str, &str)>) -> BasicProperties {
        let mut entry = FieldTable::default();
        entry.insert("queue".into(), AMQPValue::LongString(queue.into()));
        entry.insert("reason".into(), AMQPValue::LongString(reason.into()));
        entry.insert("count".into(), AMQPValue::LongLongInt(1));
        entry.insert(
            "routing-keys".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("acme".into())])),
        );
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(entry)])),
        );
        if let Some((k, v)) = extra {
            h.insert(ShortString::from(k), AMQPValue::LongString(v.into()));
        }
        BasicProperties::default().with_headers(h)
    }

    #[test]
    fn reads_the_newest_death() {
        let p = death_headers("wxdispatch.acme", "delivery_limit", None);
        let d = newest_death(&p).unwrap_or_default();
        assert_eq!(d.queue, "wxdispatch.acme");
        assert_eq!(d.reason, "delivery_limit");
        assert_eq!(d.count, 1);
        assert_eq!(d.routing_key.as_deref(), Some("acme"));
        assert_eq!(newest_death(&BasicProperties::default()), None);
    }

    #[test]
    fn account_from_the_queue_then_the_routing_key() {
        let names = || ["bot", "kf-main"].into_iter();
        let bulk = Death {
            queue: "wxdispatch.kf-main.bulk".into(),
            routing_key: Some("wxdispatch.kf-main.bulk".into()),
            ..Death::default()
        };
        assert_eq!(account_of(names(), &bulk, "rk"), "kf-main");
        let other = Death {
            queue: "elsewhere".into(),
            routing_key: Some("acme".into()),
            ..Death::default()
        };
        assert_eq!(account_of(names(), &other, "rk"), "acme");
        assert_eq!(account_of(names(), &Death::default(), "rk"), "rk");
    }

    #[test]
    fn job_id_from_the_body_else_the_message_id() {
        let p = BasicProperties::default().with_message_id("mid-1".into());
        assert_eq!(
            job_id_of(br#"{"job_id":"j-1"}"#, &p).as_deref(),
            Some("j-1")
        );
        assert_eq!(job_id_of(b"not json", &p).as_deref(), Some("mid-1"));
        assert_eq!(job_id_of(b"not json", &BasicProperties::default()), None);
    }
}
