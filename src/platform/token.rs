//! WeCom access tokens: an in-process cache in front of the shared token store, refreshed
//! single-flight and ahead of expiry, with a short negative cache after a failed gettoken.
//!
//! When gettoken refuses the account's credentials (errcodes the policy classifies as
//! [`Action::CredentialsRefused`]: 40001, 40013, …) the manager remembers the *refusal*: every
//! [`TokenManager::get`] answers it without asking the platform, until a
//! [`TokenManager::probe`] (the lane's credentials prober, `engine::lane::credentials`) gets
//! a token. So one refused account costs the platform only the prober's calls, however
//! many jobs and sync loops want a token. [`TokenManager::refusal`] tells who waits for it.
//!
//! The shared store is a [`TokenStore`]: the platform layer knows what it must do (refresh
//! under a lock that spans processes, invalidate one generation), not that it is Postgres
//! (`crate::store` implements it).

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};

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
    /// `(corpid, secret)`, read by every gettoken: [`TokenManager::set_credentials`] replaces
    /// them (the account-update path), so the next probe uses the new ones.
    credentials: RwLock<(String, Secret)>,
    base_url: String,
    http: reqwest::Client,
    store: Box<dyn TokenStore>,
    cache: RwLock<Option<StoredToken>>,
    refresh: tokio::sync::Mutex<()>,
    /// The last configuration failure of gettoken and when it happened (negative cache).
    failed: Mutex<Option<(Instant, CallResult)>>,
    /// The errcode of gettoken's refusal of the credentials, until a probe gets a token.
    /// A watch: the lane's prober waits for it to become `Some`.
    refused: watch::Sender<Option<i64>>,
    /// Woken by [`TokenManager::set_credentials`]: a prober waiting out its backoff probes
    /// at once with the new credentials.
    credentials_changed: Notify,
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
            credentials: RwLock::new((
                account.corpid.clone().unwrap_or_default(),
                account.secret.clone(),
            )),
            base_url: account.base_url().trim_end_matches('/').to_owned(),
            http,
            store,
            cache: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
            refused: watch::Sender::new(None),
            credentials_changed: Notify::new(),
        }
    }

    /// The refusal of the credentials (its errcode) while gettoken refuses them; `None` once
    /// a probe got a token.
    pub fn refusal(&self) -> watch::Receiver<Option<i64>> {
        self.refused.subscribe()
    }

    /// Replace the account's corpid and secret (the hook of an account update: accounts are
    /// static config today, so a changed secret is read at restart) and wake a waiting prober,
    /// which then probes at once with them. The cached token stays: it was issued for the
    /// corp and is valid until it expires or the platform rejects it.
    pub fn set_credentials(&self, corpid: String, secret: Secret) {
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = (corpid, secret);
        // notify_one keeps a permit: a prober between two waits still sees it.
        self.credentials_changed.notify_one();
    }

    /// Resolves when [`TokenManager::set_credentials`] was called (once per call).
    pub async fn credentials_changed(&self) {
        self.credentials_changed.notified().await;
    }

    /// Ask gettoken now, past the refusal and the negative cache (still single-flight and
    /// through the store, so another process's fresh token counts as a success): the
    /// prober's call. On success the refusal ends.
    pub async fn probe(&self) -> Result<StoredToken, CallResult> {
        Box::pin(self.refresh(true)).await
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
        Box::pin(self.refresh(false)).await
    }

    /// The remembered refusal as the result gettoken gave.
    fn refused_result(code: i64) -> CallResult {
        CallResult::Errcode {
            code,
            msg: "gettoken refused the credentials (remembered until a probe succeeds)".into(),
        }
    }

    async fn refresh(&self, probe: bool) -> Result<StoredToken, CallResult> {
        if !probe && let Some(code) = *self.refused.borrow() {
            return Err(Self::refused_result(code));
        }
        let _one = self.refresh.lock().await;
        if let Some(t) = self.cached() {
            return Ok(t);
        }
        if !probe && let Some(code) = *self.refused.borrow() {
            return Err(Self::refused_result(code));
        }
        let failed = self
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some((at, res)) = failed
            && !probe
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
                if self.refused.send_replace(None).is_some() {
                    tracing::info!(account = %self.account, "gettoken accepts the credentials again");
                }
                Ok(tok)
            }
            Ok(Err(res)) => {
                match policy::classify(Channel::Wecom, Api::GetToken, &res) {
                    Action::CredentialsRefused { code } => {
                        metrics::counter!(t::TOKEN_REFRESH_FAILURES, "account" => self.account.clone())
                            .increment(1);
                        if self.refused.send_replace(Some(code)).is_none() {
                            tracing::error!(account = %self.account, errcode = code, result = ?res, "gettoken refused the credentials: check corpid, secret and the IP allow-list; the account is paused until gettoken accepts them");
                        } else {
                            tracing::debug!(account = %self.account, errcode = code, "gettoken still refuses the credentials");
                        }
                    }
                    Action::DeadLetter { .. } => {
                        tracing::error!(account = %self.account, result = ?res, "gettoken failed with a configuration error: check the account's base_url");
                        metrics::counter!(t::TOKEN_REFRESH_FAILURES, "account" => self.account.clone())
                            .increment(1);
                        *self.failed.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((Instant::now(), res.clone()));
                    }
                    _ => {}
                }
                Err(res)
            }
            Err(e) => Err(CallResult::Transport(format!("token store: {e:#}"))),
        }
    }

    async fn gettoken(&self) -> Fetched {
        metrics::counter!(t::TOKEN_REFRESHES, "account" => self.account.clone()).increment(1);
        let url = format!("{}/cgi-bin/gettoken", self.base_url);
        let req = {
            let creds = self.credentials.read().unwrap_or_else(|p| p.into_inner());
            self.http.get(url).query(&[
                ("corpid", creds.0.as_str()),
                ("corpsecret", creds.1.expose()),
            ])
        };
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
