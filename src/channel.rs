//! The two platforms' HTTP APIs and WeCom's access tokens.
//!
//! [`Platform`] is one account's client: it renders a [`Job`] into the platform's request,
//! performs exactly one logical call (plus, for WeCom, the one refresh-and-retry the platform
//! asks for on 40014/42001/41001) and returns a [`CallResult`] for [`crate::policy`] to judge.
//! No URL is ever logged or put into an error: chatbot URLs carry the TOKEN and WeCom URLs the
//! access token.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{Value, json};

use crate::config::{AccountConfig, Channel, Config, Secret};
use crate::crypto::MsgCrypt;
use crate::job::{self, Job, JobKind};
use crate::policy::{self, Action, Api, CallResult};
use crate::store::{Store, StoredToken};
use crate::telemetry as t;

/// Refresh a WeCom token this long before it expires, so no request races its expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// After `gettoken` fails with a configuration error, do not ask again for this long: the
/// platform blocks gettoken for an hour after about 2000 bad calls.
const GETTOKEN_NEGATIVE_CACHE: Duration = Duration::from_secs(30);
/// Largest platform response we read; real ones are a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Build the shared HTTP client: pooled keep-alive connections, bounded timeouts.
pub fn http_client(cfg: &Config) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.worker.http_timeout_ms))
        .connect_timeout(Duration::from_millis(cfg.worker.connect_timeout_ms))
        .pool_max_idle_per_host(cfg.worker.concurrency.max(8))
        .pool_idle_timeout(Duration::from_secs(60))
        .tcp_nodelay(true)
        .user_agent(concat!("wxdispatch/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| anyhow::anyhow!("building the HTTP client: {e}"))
}

/// POST/GET and read `{errcode, errmsg, ...}`. The error string never contains the URL.
async fn call_json(req: reqwest::RequestBuilder) -> (CallResult, Value) {
    // Boxed: reqwest's request future is large, and it would be moved with every future
    // that awaits this one.
    let resp = match Box::pin(req.send()).await {
        Ok(r) => r,
        Err(e) => {
            return (
                CallResult::Transport(describe(&e.without_url())),
                Value::Null,
            );
        }
    };
    let status = resp.status();
    if !status.is_success() {
        return (CallResult::Http(status.as_u16()), Value::Null);
    }
    let bytes = match resp.bytes().await {
        Ok(b) if b.len() <= MAX_RESPONSE_BYTES => b,
        Ok(b) => {
            return (
                CallResult::Transport(format!("response of {} bytes", b.len())),
                Value::Null,
            );
        }
        Err(e) => {
            return (
                CallResult::Transport(describe(&e.without_url())),
                Value::Null,
            );
        }
    };
    let v: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => {
            return (
                CallResult::Transport("response is not JSON".into()),
                Value::Null,
            );
        }
    };
    let code = v.get("errcode").and_then(Value::as_i64).unwrap_or(0);
    if code != 0 {
        let msg = v
            .get("errmsg")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        return (CallResult::Errcode { code, msg }, v);
    }
    let msgid = v.get("msgid").and_then(Value::as_str).map(str::to_owned);
    (CallResult::Ok { msgid }, v)
}

fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // without_url() was applied by the caller; the chain is safe to show.
        let mut s = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(c) = src {
            s.push_str(": ");
            s.push_str(&c.to_string());
            src = c.source();
        }
        s
    }
}

/// One account's platform client.
pub struct Platform {
    pub account: AccountConfig,
    http: reqwest::Client,
    crypt: Option<MsgCrypt>,
    tokens: Option<TokenManager>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("account", &self.account.name)
            .finish_non_exhaustive()
    }
}

impl Platform {
    pub fn new(account: AccountConfig, http: reqwest::Client, store: Store) -> Self {
        let crypt = account.crypt();
        let tokens = (account.channel == Channel::Wecom).then(|| TokenManager {
            account: account.name.clone(),
            corpid: account.corpid.clone().unwrap_or_default(),
            secret: account.secret.clone(),
            base_url: account.base_url().trim_end_matches('/').to_owned(),
            http: http.clone(),
            store,
            cache: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            failed: Mutex::new(None),
        });
        Self {
            account,
            http,
            crypt,
            tokens,
        }
    }

    pub fn tokens(&self) -> Option<&TokenManager> {
        self.tokens.as_ref()
    }

    fn base(&self) -> &str {
        self.account.base_url().trim_end_matches('/')
    }

    /// Perform the job's platform call once (WeCom: plus one refresh-and-retry on a stale
    /// token). Returns the raw result and the API it came from, for the policy.
    pub async fn execute(&self, job: &Job) -> (CallResult, Api) {
        match self.account.channel {
            Channel::Chatbot => (self.chatbot(job).await, Api::Business),
            Channel::Wecom => self.wecom(job).await,
        }
    }

    async fn chatbot(&self, job: &Job) -> CallResult {
        let Some(crypt) = &self.crypt else {
            return CallResult::Errcode {
                code: 1013,
                msg: "no encoding_aes_key configured".into(),
            };
        };
        let appid = self.account.appid.as_deref().unwrap_or("");
        let (path, xml) = match &job.kind {
            JobKind::Transfer(tr) => (
                "kefustate/change",
                job::chatbot_kefustate_change_xml(
                    appid,
                    &job.to,
                    tr.kefustate.as_deref().unwrap_or("off"),
                ),
            ),
            _ => ("sendmsg", job::chatbot_sendmsg_xml(job, &self.account)),
        };
        let (res, _) = self.chatbot_call(crypt, path, &xml).await;
        res
    }

    async fn chatbot_call(&self, crypt: &MsgCrypt, path: &str, xml: &str) -> (CallResult, Value) {
        let url = format!(
            "{}/openapi/{path}/{}",
            self.base(),
            self.account.token.expose()
        );
        let body = json!({ "encrypt": crypt.encrypt(xml.as_bytes()) });
        call_json(self.http.post(url).json(&body)).await
    }

    /// Chatbot `kefustate/get`: is a human serving this user?
    pub async fn chatbot_human_serving(&self, openid: &str) -> Result<bool, CallResult> {
        let Some(crypt) = &self.crypt else {
            return Ok(false);
        };
        let appid = self.account.appid.as_deref().unwrap_or("");
        let (res, v) = self
            .chatbot_call(
                crypt,
                "kefustate/get",
                &job::chatbot_kefustate_get_xml(appid, openid),
            )
            .await;
        match res {
            CallResult::Ok { .. } => Ok(v.get("kefustate").and_then(Value::as_str) == Some("on")),
            other => Err(other),
        }
    }

    /// WeCom `service_state/get`: the session state (0 new, 1 bot, 2 queued, 3 human, 4 ended).
    pub async fn wecom_service_state(
        &self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<(i64, Option<String>), (CallResult, Api)> {
        let Some(tokens) = &self.tokens else {
            return Ok((0, None));
        };
        let body = json!({ "open_kfid": open_kfid, "external_userid": external_userid });
        match self.wecom_call(tokens, "kf/service_state/get", &body).await {
            ((CallResult::Ok { .. }, _), v) => Ok((
                v.get("service_state").and_then(Value::as_i64).unwrap_or(0),
                v.get("servicer_userid")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned),
            )),
            ((other, api), _) => Err((other, api)),
        }
    }

    async fn wecom(&self, job: &Job) -> (CallResult, Api) {
        let Some(tokens) = &self.tokens else {
            return (
                CallResult::Errcode {
                    code: 40013,
                    msg: "no corpid".into(),
                },
                Api::GetToken,
            );
        };
        let (path, body) = match &job.kind {
            JobKind::EventReply { .. } => ("kf/send_msg_on_event", job::wecom_event_body(job)),
            JobKind::Transfer(tr) => {
                let mut b = json!({
                    "open_kfid": job.open_kfid.as_deref().unwrap_or(""),
                    "external_userid": job.to,
                    "service_state": tr.service_state.unwrap_or(1),
                });
                if let Some(s) = &tr.servicer_userid {
                    b["servicer_userid"] = json!(s);
                }
                ("kf/service_state/trans", b)
            }
            _ => ("kf/send_msg", job::wecom_send_body(job)),
        };
        self.wecom_call(tokens, path, &body).await.0
    }

    /// A WeCom business call with the token protocol: on 40014/42001/41001/40001 invalidate
    /// exactly the generation used, refresh once, retry once.
    pub async fn wecom_call(
        &self,
        tokens: &TokenManager,
        path: &str,
        body: &Value,
    ) -> ((CallResult, Api), Value) {
        let mut refreshed = false;
        loop {
            let tok = match tokens.get().await {
                Ok(t) => t,
                Err(res) => return ((res, Api::GetToken), Value::Null),
            };
            let url = format!("{}/cgi-bin/{path}", self.base());
            let req = self
                .http
                .post(url)
                .query(&[("access_token", tok.token.as_str())])
                .json(body);
            let (res, v) = call_json(req).await;
            if !refreshed
                && policy::classify(Channel::Wecom, Api::Business, &res) == Action::RefreshToken
            {
                refreshed = true;
                Box::pin(tokens.invalidate(tok.generation)).await;
                continue;
            }
            return ((res, Api::Business), v);
        }
    }
}

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

/// Shared ownership handle used by lanes.
pub type SharedPlatform = Arc<Platform>;
