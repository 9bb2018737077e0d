//! One platform HTTP call and the reading of its answer: the shared client, the request, the
//! `{errcode, errmsg, msgid}` head that decides the outcome. No URL is ever put into an error:
//! chatbot URLs carry the TOKEN and WeCom URLs the access token.

use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;

use crate::config::Config;
use crate::policy::CallResult;

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
pub(super) async fn call(req: reqwest::RequestBuilder) -> (CallResult, Bytes) {
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
pub(super) async fn call_json(req: reqwest::RequestBuilder) -> (CallResult, Value) {
    let (res, bytes) = call(req).await;
    (res, json_of(&bytes))
}

pub(super) fn json_of(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

/// A POST of an already serialized JSON body.
pub(super) fn post_json(
    http: &reqwest::Client,
    url: reqwest::Url,
    body: Bytes,
) -> reqwest::RequestBuilder {
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

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
