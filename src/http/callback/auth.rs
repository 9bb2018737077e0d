//! What every callback checks before it acts — the account, the query, the body size, the
//! WeCom signature and timestamp — and how a refusal is answered.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::config::Channel;
use crate::crypto::{CryptoError, MsgCrypt};
use crate::http::state::AppState;

/// A WeCom callback whose `timestamp` is further than this from our clock is refused: it is
/// either replayed or from a badly skewed sender. WeCom retries a callback within seconds, so
/// five minutes leaves ample room for clock skew without letting an old capture replay.
pub const MAX_TIMESTAMP_SKEW_SECS: i64 = 300;
/// The body WeCom expects from an event callback (anything else makes it retry).
pub const WECOM_ACK: &str = "success";

/// The body of every refusal but 413 and 503: one fixed text, whatever the reason.
pub const REFUSED_BODY: &str = "callback refused\n";
/// The body of a 429 (too many refused callbacks from one source, see [`super::throttle`]).
pub const TOO_MANY_BODY: &str = "too many refused callbacks; retry later\n";
/// `Retry-After` of a 429, in seconds: what the throttle's bucket needs to drain a little.
pub const TOO_MANY_RETRY_AFTER: &str = "10";

/// Why a callback was refused. The reason is logged, never answered: every variant but
/// [`Reject::TooLarge`] (413) and [`Reject::Unavailable`] (503) is answered the same 400
/// with [`REFUSED_BODY`] (see [`Reject::answer`]), so that an unauthenticated sender learns
/// nothing from *why* — no padding oracle, no "receive id mismatch", no "account exists".
#[derive(Debug, thiserror::Error)]
pub enum Reject {
    #[error("no such account")]
    UnknownAccount,
    #[error("account has no callback token/encoding_aes_key configured")]
    NoCredentials,
    #[error("bad query: {0}")]
    BadQuery(String),
    #[error("timestamp is more than {MAX_TIMESTAMP_SKEW_SECS} s away from now")]
    Stale,
    #[error("signature does not match")]
    Signature,
    #[error("unsigned push, and the account sets require_push_signature")]
    Unsigned,
    #[error("body larger than http.max_body_bytes")]
    TooLarge,
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("cannot decrypt: {0}")]
    Decrypt(CryptoError),
    #[error("temporarily unavailable, retry later")]
    Unavailable,
}

impl Reject {
    /// The status answered: 413 and 503 say something the sender needs (send less, retry
    /// later) and nothing about our keys; everything else is one 400.
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    /// Whether the sender is to blame (counted by the throttle); a 503 is ours.
    pub fn counts_as_refusal(&self) -> bool {
        !matches!(self, Reject::Unavailable)
    }

    /// The answer: status and a fixed body chosen by the status alone, the same headers.
    pub fn answer(&self) -> Response {
        let status = self.status();
        let body = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body too large\n",
            StatusCode::SERVICE_UNAVAILABLE => "temporarily unavailable, retry later\n",
            _ => REFUSED_BODY,
        };
        (status, [(CONTENT_TYPE, TEXT_PLAIN)], body).into_response()
    }
}

/// The 429 answered while too many refusals of one source wait (see [`super::throttle`]).
pub fn too_many_answer() -> Response {
    (
        StatusCode::TOO_MANY_REQUESTS,
        [
            (CONTENT_TYPE, TEXT_PLAIN),
            (RETRY_AFTER, TOO_MANY_RETRY_AFTER),
        ],
        TOO_MANY_BODY,
    )
        .into_response()
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

#[derive(Debug, Default, Deserialize)]
pub struct WecomQuery {
    msg_signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    pub(super) echostr: Option<String>,
}

pub(super) fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, Reject> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::BadQuery(format!("{name} missing")))
}

/// A form-decoded base64 value: a raw `+` the sender did not percent-encode arrives as a
/// space. Base64 has no spaces, so turning them back is always right.
pub(super) fn unplus(s: &str) -> String {
    s.replace(' ', "+")
}

/// The account's callback crypt, if it is a WeCom account with callback credentials.
pub(super) fn wecom_crypt(s: &AppState, account: &str) -> Result<MsgCrypt, Reject> {
    let a = s
        .cfg
        .account(account)
        .filter(|a| a.channel == Channel::Wecom)
        .ok_or(Reject::UnknownAccount)?;
    a.crypt().ok_or(Reject::NoCredentials)
}

/// Signature first (unauthenticated input learns nothing else), then freshness.
pub(super) fn authenticate(crypt: &MsgCrypt, q: &WecomQuery, encrypt: &str) -> Result<(), Reject> {
    let sig = required(&q.msg_signature, "msg_signature")?;
    check_signed(crypt, sig, &q.timestamp, &q.nonce, encrypt)
}

/// `sig` over (token, timestamp, nonce, encrypt), compared in constant time, then the
/// timestamp within [`MAX_TIMESTAMP_SKEW_SECS`] of our clock.
fn check_signed(
    crypt: &MsgCrypt,
    sig: &str,
    timestamp: &Option<String>,
    nonce: &Option<String>,
    encrypt: &str,
) -> Result<(), Reject> {
    let ts = required(timestamp, "timestamp")?;
    let nonce = required(nonce, "nonce")?;
    crypt
        .verify(ts, nonce, encrypt, sig)
        .map_err(|_| Reject::Signature)?;
    let ts: i64 = ts
        .trim()
        .parse()
        .map_err(|_| Reject::BadQuery("timestamp is not a number".into()))?;
    if (chrono::Utc::now().timestamp() - ts).abs() > MAX_TIMESTAMP_SKEW_SECS {
        return Err(Reject::Stale);
    }
    Ok(())
}

impl WecomQuery {
    /// The `msg_signature` (only meaningful once [`authenticate`] accepted it).
    pub(super) fn signature(&self) -> Option<&str> {
        self.msg_signature.as_deref()
    }
}

/// The query of a chatbot push. The Dialogue Open Platform sends none; a sender that signs
/// (WXBizMsgCrypt style: `msg_signature` or `signature`, `timestamp`, `nonce`) is verified.
#[derive(Debug, Default, Deserialize)]
pub struct PushQuery {
    msg_signature: Option<String>,
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
}

/// A signed push must carry a valid, fresh signature over its `encrypted`; an unsigned one
/// passes unless `require_signature` (the account's `require_push_signature`). Any one of
/// the signature parameters makes the push signed: then all are required.
pub(super) fn authenticate_push(
    crypt: &MsgCrypt,
    q: &PushQuery,
    encrypted: &str,
    require_signature: bool,
) -> Result<(), Reject> {
    let present = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.is_empty());
    let sig = q
        .msg_signature
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(q.signature.as_deref().filter(|s| !s.is_empty()));
    match sig {
        Some(sig) => check_signed(crypt, sig, &q.timestamp, &q.nonce, encrypted),
        None if present(&q.timestamp) || present(&q.nonce) => {
            Err(Reject::BadQuery("msg_signature missing".into()))
        }
        None if require_signature => Err(Reject::Unsigned),
        None => Ok(()),
    }
}

pub(super) fn query<Q>(q: Result<Query<Q>, QueryRejection>) -> Result<Q, Reject> {
    q.map(|Query(q)| q)
        .map_err(|e| Reject::BadQuery(e.body_text()))
}

pub(super) fn body(s: &AppState, b: Result<Bytes, BytesRejection>) -> Result<Bytes, Reject> {
    let b = b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Reject::TooLarge
        } else {
            Reject::Malformed(e.body_text())
        }
    })?;
    if b.len() > s.cfg.http.max_body_bytes {
        return Err(Reject::TooLarge);
    }
    Ok(b)
}
