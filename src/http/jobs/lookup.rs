//! How `GET /v1/jobs/{id}` finds a delivery record. The record is `ops::status`'s report, and
//! `ops` is on the same layer as `http`: the worker ([`crate::app`]) hands the HTTP state a
//! [`JobLookup`] that calls it, so this layer names no `ops` type.

use futures::future::BoxFuture;
use serde_json::Value;

/// A delivery record found by id.
#[derive(Debug, Clone)]
pub struct Found {
    /// Its account (a token sees only its accounts' records).
    pub account: String,
    /// The record as `GET /v1/jobs/{id}` answers it.
    pub record: Value,
}

/// Why a lookup found nothing to show.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Several accounts have the id and none was named: the message lists them.
    #[error("{0}")]
    Ambiguous(String),
    #[error(transparent)]
    Failed(anyhow::Error),
}

/// Finds the record of a job id (on `account`, or on the one account that has it).
pub trait JobLookup: Send + Sync {
    fn lookup<'a>(
        &'a self,
        id: &'a str,
        account: Option<&'a str>,
    ) -> BoxFuture<'a, Result<Option<Found>, LookupError>>;
}
