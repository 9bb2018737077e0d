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

/// Cancel broadcast `id` (of `account`, or of the one account that has it): recipients not
/// yet sent end `cancelled`. Returns how many.
pub async fn cancel(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<u64> {
    let Some(a) = account_of(store, id, account).await? else {
        match account {
            Some(a) => anyhow::bail!("no broadcast with id '{id}' on account '{a}'"),
            None => anyhow::bail!("no broadcast with id '{id}'"),
        }
    };
    store.cancel_broadcast(&a, id).await
}
