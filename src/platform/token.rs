//! WeCom access tokens: an in-process cache in front of the shared token store, refreshed
//! single-flight and ahead of expiry, with a short negative cache after a refused gettoken.
//!
//! The shared store is a [`TokenStore`]: the platform layer knows what it must do (refresh
//! under a lock that spans processes, invalidate one generation), not that it is Postgres
//! (`crate::store` implements it).

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::config::{AccountConfig, Channel, Secret};
use crate::policy::{self, Action, Api, CallResult};
use crate::telemetry as t;

use super::http::call_json;

/// Refresh a WeCom token this long before it expires, so no request races its expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// After `gettoken` fails with a configuration error, do not ask again for this long: the
/// platform blocks gettoken for an hour after about 2000 bad calls.
const GETTOKEN_NEGATIVE_CACHE: Duration = Duration::from_secs(30);

/// An access token as the shared store holds it.
#[derive(Debug, Clone)]
pub struct StoredToken {
    pub token: String,
    pub expires_at: DateTime<Utc>,
    /// Counts the account's refreshes: an invalidation names the generation it saw rejected,
    /// so a newer token another process fetched meanwhile is kept.
    pub generation: i64,
}

/// The answer of a `gettoken` call: the token and its lifetime in seconds, or the failure.
pub type Fetched = Result<(String, i64), CallResult>;

/// The access tokens shared by every process of the deployment, one per account.
///
/// Object-safe (boxed futures), so a [`TokenManager`] holds any store; it is called only on a
/// refresh or an invalidation, never on a send that finds its token cached.
pub trait TokenStore: Send + Sync {
    /// Single-flight refresh across processes: under a lock on `account` held by one process
    /// at a time, re-read the stored token; if it is still good for `min_valid`, return it
    /// (someone else refreshed, `fetch` is never polled); otherwise await `fetch` and store its
    /// token with the next generation. The outer error is the store's own failure.
    fn refresh<'a>(
        &'a self,
        account: &'a str,
        min_valid: chrono::Duration,
        fetch: BoxFuture<'a, Fetched>,
    ) -> BoxFuture<'a, anyhow::Result<Result<StoredToken, CallResult>>>;

    /// Mark the token of `generation` expired (only that one: a newer token stays).
    fn invalidate<'a>(
        &'a self,
        account: &'a str,
        generation: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>>;
}

/// WeCom access tokens: an in-process cache in front of the shared [`TokenStore`], refreshed
/// single-flight (one refresh per process via a mutex, one per account across processes via
/// the store's lock — in Postgres an advisory lock), ahead of expiry.
pub struct TokenManager {
    account: String,
    corpid: String,
    secret: Secret,
    base_url: String,
    http: reqwest::Client,
    store: Box<dyn TokenStore>,
    cache: RwLock<Option<StoredToken>>,
    refresh: tokio::sync::Mutex<()>,
    /// The last configuration failure of gettoken and when it happened (negative cache).
    failed: Mutex<Option<(Instant, CallResult)>>,
}

impl TokenManager {
    /// The token manager of a WeCom account, sharing its tokens through `store`.
    pub(super) fn new(
        account: &AccountConfig,
        http: reqwest::Client,
        store: Box<dyn TokenStore>,
    ) -> Self {
        Self {
            account: account.name.clone(),
            corpid: account.corpid.clone().unwrap_or_default(),
            secret: account.secret.clone(),
            base_url: account.base_url().trim_end_matches('/').to_owned(),
            http,
            store,
            cache: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
        }
    }

    fn fresh(t: &StoredToken) -> bool {
        let ahead = chrono::Duration::from_std(REFRESH_AHEAD).unwrap_or_default();
        t.expires_at - Utc::now() > ahead
    }

    fn cached(&self) -> Option<StoredToken> {
        let g = self.cache.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().filter(|t| Self::fresh(t)).cloned()
    }

    /// A token valid for at least `REFRESH_AHEAD` (5 min), or the gettoken failure.
    pub async fn get(&self) -> Result<StoredToken, CallResult> {
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        // Boxed: the refresh is rare and its state is large; every send's future would
        // otherwise carry (and move) it.
        Box::pin(self.refresh()).await
    }

    async fn refresh(&self) -> Result<StoredToken, CallResult> {
        let _one = self.refresh.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, res)) = failed
            && at.elapsed() < GETTOKEN_NEGATIVE_CACHE
        {
            return Err(res);
        }
        let ahead = chrono::Duration::from_std(REFRESH_AHEAD).unwrap_or_default();
        let fetched = self
            .store
            .refresh(&self.account, ahead, Box::pin(self.gettoken()))
            .await;
        match fetched {
            Ok(Ok(tok)) => {
                *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Some(tok.clone());
                *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(tok)
            }
            Ok(Err(res)) => {
                if matches!(
                    policy::classify(Channel::Wecom, Api::GetToken, &res),
                    Action::DeadLetter { .. }
                ) {
                    tracing::error!(account = %self.account, result = ?res, "gettoken refused: check corpid/secret; account stopped until fixed");
                    metrics::counter!(t::TOKEN_REFRESH_FAILURES, "account" => self.account.clone())
                        .increment(1);
                    *self.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some((Instant::now(), res.clone()));
                }
                Err(res)
            }
            Err(e) => Err(CallResult::Transport(format!("token store: {e:#}"))),
        }
    }

    async fn gettoken(&self) -> Fetched {
        metrics::counter!(t::TOKEN_REFRESHES, "account" => self.account.clone()).increment(1);
        let url = format!("{}/cgi-bin/gettoken", self.base_url);
        let req = self.http.get(url).query(&[
            ("corpid", self.corpid.as_str()),
            ("corpsecret", self.secret.expose()),
        ]);
        match call_json(req).await {
            (CallResult::Ok { .. }, v) => {
                let token = v
                    .get("access_token")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let expires_in = v.get("expires_in").and_then(Value::as_i64).unwrap_or(7200);
                if token.is_empty() {
                    return Err(CallResult::Transport(
                        "gettoken answered without access_token".into(),
                    ));
                }
                tracing::info!(account = %self.account, expires_in, "access token refreshed");
                Ok((token, expires_in))
            }
            (other, _) => Err(other),
        }
    }

    /// Forget the token of `generation` (here and in Postgres); a newer one is kept.
    pub async fn invalidate(&self, generation: i64) {
        {
            let mut g = self.cache.write().unwrap_or_else(|p| p.into_inner());
            if g.as_ref().is_some_and(|t| t.generation == generation) {
                *g = None;
            }
        }
        if let Err(e) = self.store.invalidate(&self.account, generation).await {
            tracing::warn!(account = %self.account, error = %e, "could not invalidate the stored token");
        }
    }
}

#[cfg(test)]
#[path = "token_tests.rs"]
mod tests;
