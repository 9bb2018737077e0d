//! WeCom access tokens: an in-process cache in front of the shared token store, refreshed
//! single-flight and ahead of expiry, with a short negative cache after a refused gettoken.

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::Value;

use crate::config::{AccountConfig, Channel, Secret};
use crate::policy::{self, Action, Api, CallResult};
use crate::store::{Store, StoredToken};
use crate::telemetry as t;

use super::http::call_json;

/// Refresh a WeCom token this long before it expires, so no request races its expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// After `gettoken` fails with a configuration error, do not ask again for this long: the
/// platform blocks gettoken for an hour after about 2000 bad calls.
const GETTOKEN_NEGATIVE_CACHE: Duration = Duration::from_secs(30);

/// WeCom access tokens: an in-process cache in front of the `access_tokens` table, refreshed
/// single-flight (one refresh per process via a mutex, one per account across processes via a
/// Postgres advisory lock), ahead of expiry.
pub struct TokenManager {
    account: String,
    corpid: String,
    secret: Secret,
    base_url: String,
    http: reqwest::Client,
    store: Store,
    cache: RwLock<Option<StoredToken>>,
    refresh: tokio::sync::Mutex<()>,
    /// The last configuration failure of gettoken and when it happened (negative cache).
    failed: Mutex<Option<(Instant, CallResult)>>,
}

impl TokenManager {
    /// The token manager of a WeCom account, sharing its tokens through `store`.
    pub(super) fn new(account: &AccountConfig, http: reqwest::Client, store: Store) -> Self {
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

    /// A token valid for at least [`REFRESH_AHEAD`], or the gettoken failure.
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
            .refresh_token(&self.account, ahead, || self.gettoken())
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

    async fn gettoken(&self) -> Result<(String, i64), CallResult> {
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
        if let Err(e) = self.store.invalidate_token(&self.account, generation).await {
            tracing::warn!(account = %self.account, error = %e, "could not invalidate the stored token");
        }
    }
}
