//! Broadcast use cases for operators: prepare and publish one, read its progress, cancel it.
//! The fan-out itself is the engine's ([`crate::engine::broadcast`]).

use serde_json::Value;

use super::account_id;
use crate::broker::{self, Publisher};
use crate::config::{AccountConfig, Config};
use crate::domain::job;
use crate::store::Store;

pub use crate::engine::broadcast::{Progress, SkippedRecipients, clean_recipients};

/// A broadcast to publish: the recipients already cleaned by [`clean_recipients`].
#[derive(Debug, Clone)]
pub struct Draft<'a> {
    pub account: &'a AccountConfig,
    pub recipients: &'a [String],
    /// The message object, e.g. `{"text": "Hi"}`.
    pub message: Value,
    /// Broadcast id (default: generated). Publishing the same id again sends nothing twice.
    pub id: Option<String>,
    pub open_kfid: Option<String>,
    /// RFC 3339 time after which remaining recipients are not sent (`expired`).
    pub not_after: Option<String>,
    /// RFC 3339 time before which no recipient is sent (the job's `not_before`).
    pub not_before: Option<String>,
}

/// A broadcast job ready to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub id: String,
    pub body: Vec<u8>,
}

/// Build the broadcast job and validate it here, so a mistake is reported now rather than as
/// a dead letter.
pub fn prepare(d: Draft<'_>, max_body_bytes: usize) -> anyhow::Result<Prepared> {
    anyhow::ensure!(
        d.recipients.len() <= job::MAX_BROADCAST_RECIPIENTS,
        "{} recipients: a broadcast takes at most {}",
        d.recipients.len(),
        job::MAX_BROADCAST_RECIPIENTS
    );
    let id =
        d.id.unwrap_or_else(crate::domain::ids::generate_broadcast_id);
    let mut body = serde_json::json!({"kind": "broadcast", "job_id": id, "to": d.recipients, "message": d.message});
    if let Some(k) = d.open_kfid {
        body["open_kfid"] = Value::String(k);
    }
    if let Some(t) = d.not_after {
        body["not_after"] = Value::String(t);
    }
    if let Some(t) = d.not_before {
        body["not_before"] = Value::String(t);
    }
    let body = serde_json::to_vec(&body)?;
    job::parse(&body, None, d.account, max_body_bytes)
        .map_err(|e| anyhow::anyhow!("invalid broadcast: {e}"))?;
    Ok(Prepared { id, body })
}

/// Publish the broadcast job to its account's lane (with publisher confirms); a worker fans
/// it out.
pub async fn publish(cfg: &Config, p: &Prepared, account: &str) -> anyhow::Result<()> {
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-broadcast").await?;
    broker::declare_topology(&conn, cfg).await?;
    let publisher = Publisher::new(&conn).await?;
    publisher.publish_job(account, &p.id, &p.body).await?;
    let _ = conn.close(200, "bye".into()).await;
    Ok(())
}

/// The account of broadcast `id`: `account` when given, else the one account that has the id
/// (`None`: none has it, or not yet; [`account_id::AmbiguousId`] when several do).
async fn account_of(
    store: &Store,
    id: &str,
    account: Option<&str>,
) -> anyhow::Result<Option<String>> {
    let found = store.broadcast_accounts(id, account).await?;
    Ok(account_id::only("broadcast id", id, found, String::as_str)?)
}

/// Progress of broadcast `id` of `account`, or of the one account that has it when `account`
/// is `None` (`None`: no worker has picked it up yet, or no such id; [`account_id::AmbiguousId`] when
/// several accounts have it and no account was given).
pub async fn progress(
    store: &Store,
    id: &str,
    account: Option<&str>,
) -> anyhow::Result<Option<Progress>> {
    match account_of(store, id, account).await? {
        Some(a) => store.broadcast_progress(&a, id).await,
        None => Ok(None),
    }
}

/// What a cancel did, as far as it can be known when it returns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Cancelled {
    pub id: String,
    pub account: String,
    /// Recipients without an outcome that the cancel marked `cancelled`. An upper bound of
    /// what it prevented: a recipient a lane had already taken (waiting for the rate limiter,
    /// being sent, between retries) is still sent, and its outcome replaces `cancelled`.
    pub marked_cancelled: u64,
    /// The broadcast right after the cancel; its `cancelled` count is final once the
    /// recipients in flight have finished (`broadcast status` counts it again).
    pub progress: Option<Progress>,
}

/// Cancel broadcast `id` (of `account`, or of the one account that has it): recipients not
/// yet sent are marked `cancelled` (see [`Cancelled::marked_cancelled`]).
pub async fn cancel(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<Cancelled> {
    let a = resolve(store, id, account).await?;
    let marked_cancelled = store.cancel_broadcast(&a, id).await?;
    let progress = store.broadcast_progress(&a, id).await?;
    Ok(Cancelled {
        id: id.to_owned(),
        account: a,
        marked_cancelled,
        progress,
    })
}

/// The account of broadcast `id` ([`account_of`]), or an error naming what is missing.
pub async fn resolve(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<String> {
    match account_of(store, id, account).await? {
        Some(a) => Ok(a),
        None => match account {
            Some(a) => anyhow::bail!("no broadcast with id '{id}' on account '{a}'"),
            None => anyhow::bail!("no broadcast with id '{id}'"),
        },
    }
}
