//! The outcome events' relay (README "Outcome events"): publishes the outbox
//! (`outcome_events`, written with each recorded outcome) to `wxdispatch.outcomes`.
//!
//! One relay per worker process. A round takes up to `outcomes.batch` pending rows
//! (`FOR UPDATE SKIP LOCKED`: the relays of several processes take different rows), publishes
//! them with publisher confirms, and deletes them in the same transaction; a crash or a failed
//! publish rolls the round back and its rows are published again, with the same
//! `message_id` ([`message_id`]). An event whose job had a `reply_to` is also sent there (the
//! default exchange, so `amq.rabbitmq.reply-to` works too), on a publisher of its own and
//! without `mandatory`: a reply queue that is gone loses that copy, never blocks the relay,
//! and is not retried.
//!
//! The relay wakes when this process's lanes commit events, and polls every
//! `outcomes.poll_ms` for events written elsewhere (`msg_send_fail` of another process, a
//! `broadcast cancel` from the CLI, a relay that was down).

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::broker::{OUTCOMES, Publisher, outcome_routing_key};
use crate::config::Config;
use crate::store::Store;
use crate::store::outbox::EventRow;
use crate::telemetry as t;

/// How long a copy to a `reply_to` may wait for its confirm: a reply route the broker never
/// confirms must not hold the round (and the events behind it) back.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// First and largest pause after a failed round (database or broker away).
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the backlog gauge is refreshed (a `count(*)` of a small table).
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The event's AMQP `message_id`: the same for every publish of the same outcome (a re-publish
/// after a crash, a relay round rolled back), so consumers can dedupe. Derived from
/// (account, job_id, status): `wxo-` and 32 hex digits of their sha256.
pub fn message_id(account: &str, job_id: &str, status: &str) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for part in [account, job_id, status] {
        h.update(part.as_bytes());
        // A separator no part holds (account names and job ids are printable ASCII).
        h.update([0u8]);
    }
    let d = h.finalize();
    format!("wxo-{}", hex::encode(&d[..16]))
}

/// The event's JSON body (README "Outcome events").
pub fn body(e: &EventRow) -> Value {
    let mut o = Map::new();
    let fields = json!({
        "job_id": e.job_id,
        "account": e.account,
        "channel": e.channel,
        "kind": e.kind,
        "recipient": e.recipient,
        "status": e.status,
        "reason": e.reason,
        "errcode": e.errcode,
        "errmsg": e.errmsg,
        "attempts": e.attempts,
        "platform_msgid": e.platform_msgid,
        "broadcast_id": e.broadcast_id,
        "at": e.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    });
    if let Value::Object(f) = fields {
        o.extend(f);
    }
    // A completed broadcast's counts.
    if let Some(Value::Object(d)) = &e.detail {
        for (k, v) in d {
            o.entry(k.clone()).or_insert_with(|| v.clone());
        }
    }
    Value::Object(o)
}

/// Where the copy of an event for `reply_to` goes (a queue name through the default
/// exchange, `amq.rabbitmq.reply-to.…` included), or `None`: empty, or one of wxdispatch's own
/// queues (`wxdispatch.…`: a producer must not make the relay publish into a lane, the dead
/// letters or a delay tier).
pub fn reply_route(reply_to: &str) -> Option<&str> {
    (!reply_to.is_empty() && !reply_to.starts_with("wxdispatch")).then_some(reply_to)
}

/// The event's AMQP properties: JSON, its [`message_id`], the job's `correlation_id`, the
/// outcome's time.
fn properties(e: &EventRow) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(message_id(&e.account, &e.job_id, &e.status).into())
        .with_timestamp(e.at.timestamp().max(0) as u64);
    if let Some(c) = &e.correlation_id {
        p = p.with_correlation_id(c.as_str().into());
    }
    p
}

/// The relay's parts.
pub struct Relay {
    pub cfg: Arc<Config>,
    pub store: Store,
    /// Confirmed publishes to [`OUTCOMES`].
    pub publisher: Publisher,
    /// The copies to `reply_to`, on their own channel: a broker error on a reply route closes
    /// that channel, never the events'.
    pub replies: Publisher,
}

impl Relay {
    /// The relay of a worker: two publishers of its own on `broker` (they follow its
    /// reconnections).
    pub async fn new(
        cfg: Arc<Config>,
        store: Store,
        broker: &Arc<crate::broker::Broker>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            cfg,
            store,
            publisher: broker.publisher().await?,
            replies: broker.publisher().await?,
        })
    }
}

/// Start the relay of a worker: the future to spawn, which runs until `shutdown`.
pub async fn spawn(
    cfg: Arc<Config>,
    store: Store,
    broker: &Arc<crate::broker::Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static> {
    let relay = Relay::new(cfg, store, broker).await?;
    Ok(run(relay, shutdown))
}

/// Run the relay until `shutdown` (returns at once when `outcomes.relay = false`).
pub async fn run(relay: Relay, shutdown: CancellationToken) -> anyhow::Result<()> {
    if !relay.cfg.outcomes.relay {
        debug!("outcome relay off in this worker (outcomes.relay = false)");
        return Ok(());
    }
    let poll = Duration::from_millis(relay.cfg.outcomes.poll_ms);
    let batch = i64::from(relay.cfg.outcomes.batch);
    let mut pause = RETRY_MIN;
    let mut backlog_at: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        if backlog_at.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
            if let Ok(n) = relay.store.outcome_backlog().await {
                metrics::gauge!(t::OUTCOME_BACKLOG).set(n as f64);
            }
            backlog_at = Some(Instant::now());
        }
        match round(&relay, batch).await {
            Ok(n) => {
                pause = RETRY_MIN;
                if n as i64 >= batch {
                    continue; // more are waiting
                }
                tokio::select! {
                    _ = relay.store.outbox_woken() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = shutdown.cancelled() => break,
                }
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "outcome events not published; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => break,
                }
                pause = (pause * 2).min(RETRY_MAX);
            }
        }
    }
    Ok(())
}

/// One round: take, publish (confirmed), delete. Returns how many rows it took.
async fn round(relay: &Relay, batch: i64) -> anyhow::Result<usize> {
    let taken = relay.store.take_outcome_events(batch).await?;
    let n = taken.rows.len();
    if n == 0 {
        return Ok(0);
    }
    let publishes = taken.rows.iter().map(|e| publish(relay, e));
    for r in futures::future::join_all(publishes).await {
        r?;
    }
    // Published: a crash before this commit publishes them again (same message_id).
    taken.done().await?;
    Ok(n)
}

/// Publish one event (and its copy to `reply_to`). An account whose events are off in this
/// process's config (`outcomes = false`) has its row dropped unpublished: rows written from
/// SQL without the account's settings (a `msg_send_fail`) end here.
async fn publish(relay: &Relay, e: &EventRow) -> anyhow::Result<()> {
    if relay
        .cfg
        .accounts
        .iter()
        .any(|a| a.name == e.account && !a.outcomes)
    {
        return Ok(());
    }
    let bytes = serde_json::to_vec(&body(e))?;
    let props = properties(e);
    let key = outcome_routing_key(&e.account, &e.status);
    let main = relay
        .publisher
        .publish(OUTCOMES, &key, &bytes, props.clone());
    let reply = async {
        let Some(to) = e.reply_to.as_deref().and_then(reply_route) else {
            if e.reply_to.as_deref().is_some_and(|s| !s.is_empty()) {
                warn!(account = %e.account, job.id = %e.job_id, "reply_to names a wxdispatch queue; the event is not copied there");
            }
            return;
        };
        let sent = tokio::time::timeout(
            REPLY_TIMEOUT,
            relay.replies.publish("", to, &bytes, props.clone()),
        )
        .await;
        let err = match sent {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("{e:#}"),
            Err(_) => "no confirm".to_owned(),
        };
        metrics::counter!(t::OUTCOME_REPLY_FAILURES, "account" => e.account.clone()).increment(1);
        warn!(account = %e.account, job.id = %e.job_id, error = %err, "outcome event not delivered to the job's reply_to (dropped)");
    };
    let (main, ()) = tokio::join!(main, reply);
    main?;
    metrics::counter!(t::OUTCOME_EVENTS, "account" => e.account.clone(), "outcome" => e.status.clone()).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EventRow {
        EventRow {
            id: 1,
            account: "support".into(),
            job_id: "j-1".into(),
            status: "dead".into(),
            channel: Some("chatbot".into()),
            kind: Some("send".into()),
            recipient: Some("u1".into()),
            reason: Some("invalid_message".into()),
            errcode: Some(40001),
            errmsg: Some("bad".into()),
            attempts: 2,
            platform_msgid: None,
            broadcast_id: None,
            correlation_id: Some("c-9".into()),
            reply_to: None,
            detail: None,
            at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap_or_default(),
        }
    }

    #[test]
    fn message_id_is_deterministic_and_tells_outcomes_apart() {
        let a = message_id("support", "j-1", "sent");
        assert_eq!(a, message_id("support", "j-1", "sent"));
        assert_eq!(a.len(), 4 + 32);
        assert_ne!(a, message_id("support", "j-1", "failed"));
        assert_ne!(a, message_id("sales", "j-1", "sent"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(message_id("ab", "c", "sent"), message_id("a", "bc", "sent"));
    }

    #[test]
    fn body_has_every_field_and_the_completion_counts() {
        let b = body(&row());
        for k in [
            "job_id",
            "account",
            "channel",
            "kind",
            "recipient",
            "status",
            "reason",
            "errcode",
            "errmsg",
            "attempts",
            "platform_msgid",
            "broadcast_id",
            "at",
        ] {
            assert!(b.get(k).is_some(), "{k} missing in {b}");
        }
        assert_eq!(b["errcode"], 40001);
        assert_eq!(b["at"], "2023-11-14T22:13:20.000Z");
        let mut done = row();
        done.detail = Some(json!({"sent": 3, "status": "overwritten?"}));
        let b = body(&done);
        assert_eq!(b["sent"], 3);
        // Detail never overwrites a field of the event itself.
        assert_eq!(b["status"], "dead");
    }

    #[test]
    fn reply_to_never_routes_into_wxdispatch_queues() {
        assert_eq!(reply_route("crm.replies"), Some("crm.replies"));
        assert_eq!(
            reply_route("amq.rabbitmq.reply-to.g1h2AA"),
            Some("amq.rabbitmq.reply-to.g1h2AA")
        );
        assert_eq!(reply_route(""), None);
        assert_eq!(reply_route("wxdispatch.support"), None);
        assert_eq!(reply_route("wxdispatch.dead"), None);
    }

    #[test]
    fn properties_carry_the_message_id_and_correlation_id() {
        let p = properties(&row());
        assert_eq!(
            p.message_id().as_ref().map(|s| s.to_string()),
            Some(message_id("support", "j-1", "dead"))
        );
        assert_eq!(
            p.correlation_id().as_ref().map(|s| s.to_string()),
            Some("c-9".into())
        );
    }
}
