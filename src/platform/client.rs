//! The two platforms' HTTP APIs and WeCom's access tokens.
//!
//! [`Platform`] is one account's client: it renders a [`Job`] into the platform's request,
//! performs exactly one logical call (plus, for WeCom, the one refresh-and-retry the platform
//! asks for on 40014/42001/41001) and returns a [`CallResult`] for [`crate::policy`] to judge.
//! No URL is ever logged or put into an error: chatbot URLs carry the TOKEN and WeCom URLs the
//! access token.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use serde_json::{Value, json};

use crate::config::{AccountConfig, Channel, Config, Secret};
use crate::crypto::MsgCrypt;
use crate::domain::job::{self, Job, JobKind};
use crate::policy::{self, Action, Api, CallResult};
use crate::store::{Store, StoredToken};
use crate::telemetry as t;

/// Refresh a WeCom token this long before it expires, so no request races its expiry.
const REFRESH_AHEAD: Duration = Duration::from_secs(300);
/// After `gettoken` fails with a configuration error, do not ask again for this long: the
/// platform blocks gettoken for an hour after about 2000 bad calls.
const GETTOKEN_NEGATIVE_CACHE: Duration = Duration::from_secs(30);
/// Largest platform response we read. A send's answer is a few hundred bytes; a `sync_msg`
/// page holds up to 1,000 messages.
const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

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

/// The fields of a platform answer that decide its outcome. Other fields are skipped
/// unparsed: the hot path (a send) needs nothing else.
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    errcode: Value,
    #[serde(default)]
    errmsg: Value,
    #[serde(default)]
    msgid: Value,
}

impl Head {
    /// The answer's head. A body that is not an object (or repeats a key, which the typed
    /// parse refuses) is read the lenient way, as a whole `Value`, as it always was.
    fn parse(bytes: &[u8]) -> Option<Self> {
        let object = bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
        if object && let Ok(h) = serde_json::from_slice::<Head>(bytes) {
            return Some(h);
        }
        let v: Value = serde_json::from_slice(bytes).ok()?;
        let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
        Some(Head {
            errcode: field("errcode"),
            errmsg: field("errmsg"),
            msgid: field("msgid"),
        })
    }

    fn result(self) -> CallResult {
        match self.errcode.as_i64().unwrap_or(0) {
            0 => CallResult::Ok {
                msgid: match self.msgid {
                    Value::String(s) => Some(s),
                    _ => None,
                },
            },
            code => CallResult::Errcode {
                code,
                msg: match self.errmsg {
                    Value::String(s) => s,
                    _ => String::new(),
                },
            },
        }
    }
}

/// POST/GET and judge `{errcode, errmsg, msgid}`; the body comes back for callers that read
/// more fields (empty when there is none). The error string never contains the URL.
async fn call(req: reqwest::RequestBuilder) -> (CallResult, Bytes) {
    // Boxed: reqwest's request future is large, and it would be moved with every future
    // that awaits this one.
    let resp = match Box::pin(req.send()).await {
        Ok(r) => r,
        Err(e) => {
            return (
                CallResult::Transport(describe(&e.without_url())),
                Bytes::new(),
            );
        }
    };
    let status = resp.status();
    if !status.is_success() {
        return (CallResult::Http(status.as_u16()), Bytes::new());
    }
    let bytes = match resp.bytes().await {
        Ok(b) if b.len() <= MAX_RESPONSE_BYTES => b,
        Ok(b) => {
            return (
                CallResult::Transport(format!("response of {} bytes", b.len())),
                Bytes::new(),
            );
        }
        Err(e) => {
            return (
                CallResult::Transport(describe(&e.without_url())),
                Bytes::new(),
            );
        }
    };
    match Head::parse(&bytes) {
        Some(h) => (h.result(), bytes),
        None => (
            CallResult::Transport("response is not JSON".into()),
            Bytes::new(),
        ),
    }
}

/// [`call`], with the whole answer as JSON (`Null` when there is none).
pub(crate) async fn call_json(req: reqwest::RequestBuilder) -> (CallResult, Value) {
    let (res, bytes) = call(req).await;
    (res, json_of(&bytes))
}

fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// A POST of an already serialized JSON body.
fn post_json(http: &reqwest::Client, url: reqwest::Url, body: Bytes) -> reqwest::RequestBuilder {
    http.post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
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
    /// Parsed request URLs by API path, with the token they carry (chatbot: the account's
    /// TOKEN in the path; WeCom: the access token in the query). Parsing and encoding one per
    /// request was ~2 % of a loaded worker; a new access token replaces the entry.
    urls: Mutex<HashMap<String, (String, reqwest::Url)>>,
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
            urls: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of `path` carrying `token`: from the cache, or made by `make` (given the
    /// base URL) and cached.
    fn url<E: std::fmt::Display>(
        &self,
        path: &str,
        token: &str,
        make: impl FnOnce(&str) -> Result<reqwest::Url, E>,
    ) -> Result<reqwest::Url, CallResult> {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, u)) = urls.get(path)
            && t == token
        {
            return Ok(u.clone());
        }
        // The message names neither the URL nor the token.
        let u = make(self.base()).map_err(|e| {
            CallResult::Transport(format!(
                "account {}: base_url does not make a valid URL ({e})",
                self.account.name
            ))
        })?;
        urls.insert(path.to_owned(), (token.to_owned(), u.clone()));
        Ok(u)
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

    async fn chatbot_call(&self, crypt: &MsgCrypt, path: &str, xml: &str) -> (CallResult, Bytes) {
        let token = self.account.token.expose();
        let url = match self.url(path, token, |base| {
            reqwest::Url::parse(&format!("{base}/openapi/{path}/{token}"))
        }) {
            Ok(u) => u,
            Err(res) => return (res, Bytes::new()),
        };
        // `{"encrypt": "<base64>"}`: the base64 alphabet needs no JSON escaping.
        let encrypted = crypt.encrypt(xml.as_bytes());
        let mut body = Vec::with_capacity(encrypted.len() + 16);
        body.extend_from_slice(b"{\"encrypt\":\"");
        body.extend_from_slice(encrypted.as_bytes());
        body.extend_from_slice(b"\"}");
        call(post_json(&self.http, url, body.into())).await
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
            CallResult::Ok { .. } => {
                Ok(json_of(&v).get("kefustate").and_then(Value::as_str) == Some("on"))
            }
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
                ("kf/service_state/trans", b.to_string().into_bytes())
            }
            _ => ("kf/send_msg", job::wecom_send_body(job)),
        };
        self.wecom_post(tokens, path, body.into()).await.0
    }

    /// POST a WeCom business API with the token protocol (see [`Self::wecom_request`]),
    /// JSON in and out.
    pub async fn wecom_call(
        &self,
        tokens: &TokenManager,
        path: &str,
        body: &Value,
    ) -> ((CallResult, Api), Value) {
        let (res, bytes) = self
            .wecom_post(tokens, path, body.to_string().into_bytes().into())
            .await;
        (res, json_of(&bytes))
    }

    /// POST a serialized body to a WeCom business API with the token protocol.
    async fn wecom_post(
        &self,
        tokens: &TokenManager,
        path: &str,
        body: Bytes,
    ) -> ((CallResult, Api), Bytes) {
        // Bytes: the retry after a refresh sends the same buffer again, uncopied.
        self.wecom_request(tokens, path, |url| post_json(&self.http, url, body.clone()))
            .await
    }

    /// GET a WeCom business API (`?access_token=…&query…`) with the token protocol, JSON out.
    pub async fn wecom_get(
        &self,
        tokens: &TokenManager,
        path: &str,
        query: &[(&str, &str)],
    ) -> ((CallResult, Api), Value) {
        let (res, bytes) = self
            .wecom_request(tokens, path, |url| self.http.get(url).query(query))
            .await;
        (res, json_of(&bytes))
    }

    /// A WeCom business call with the token protocol: `request` makes the request from the
    /// API's URL with the access token; on 40014/42001/41001/40001 invalidate exactly the
    /// generation used, refresh once, retry once.
    async fn wecom_request(
        &self,
        tokens: &TokenManager,
        path: &str,
        request: impl Fn(reqwest::Url) -> reqwest::RequestBuilder,
    ) -> ((CallResult, Api), Bytes) {
        let mut refreshed = false;
        loop {
            let tok = match tokens.get().await {
                Ok(t) => t,
                Err(res) => return ((res, Api::GetToken), Bytes::new()),
            };
            let url = match self.url(path, &tok.token, |base| {
                let mut u = reqwest::Url::parse(&format!("{base}/cgi-bin/{path}"))
                    .map_err(|e| e.to_string())?;
                u.query_pairs_mut().append_pair("access_token", &tok.token);
                Ok::<_, String>(u)
            }) {
                Ok(u) => u,
                Err(res) => return ((res, Api::Business), Bytes::new()),
            };
            let (res, v) = call(request(url)).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(body: &str) -> Option<CallResult> {
        Head::parse(body.as_bytes()).map(Head::result)
    }

    #[test]
    fn answers_are_judged_by_errcode_errmsg_and_msgid() {
        assert_eq!(
            judge(r#"{"errcode":0,"errmsg":"ok","msgid":"m-1","other":[1,{"x":2}]}"#),
            Some(CallResult::Ok {
                msgid: Some("m-1".into())
            })
        );
        assert_eq!(
            judge(r#" {"errmsg":"ok"}"#),
            Some(CallResult::Ok { msgid: None }),
            "a missing errcode is success"
        );
        assert_eq!(
            judge(r#"{"errcode":45009,"errmsg":"api freq out of limit"}"#),
            Some(CallResult::Errcode {
                code: 45009,
                msg: "api freq out of limit".into()
            })
        );
        assert_eq!(
            judge(r#"{"errcode":40003,"errmsg":7}"#),
            Some(CallResult::Errcode {
                code: 40003,
                msg: String::new()
            })
        );
    }

    #[test]
    fn odd_answers_are_read_the_lenient_way() {
        // a repeated key: the typed parse refuses it, the Value parse keeps the last
        assert_eq!(
            judge(r#"{"errcode":0,"errcode":40001,"errmsg":"invalid credential"}"#),
            Some(CallResult::Errcode {
                code: 40001,
                msg: "invalid credential".into()
            })
        );
        // not an object: nothing says it failed
        assert_eq!(judge("[1,2,3]"), Some(CallResult::Ok { msgid: None }));
        // a string errcode or msgid is not a number / string of the right kind
        assert_eq!(
            judge(r#"{"errcode":"45009","msgid":12}"#),
            Some(CallResult::Ok { msgid: None })
        );
        assert_eq!(judge("<html>busy</html>"), None);
        assert_eq!(judge(r#"{"errcode":0"#), None);
        assert_eq!(json_of(b""), Value::Null);
        assert_eq!(json_of(br#"{"a":1}"#)["a"], 1);
    }
}
