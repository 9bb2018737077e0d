//! What every callback checks before it acts — the account, the query, the body size, the
//! WeCom signature and timestamp — and how a refusal is answered.

use axum::body::Bytes;
use axum::extract::Query;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::warn;

use crate::config::Channel;
use crate::crypto::{CryptoError, MsgCrypt};
use crate::http::state::AppState;

/// A WeCom callback whose `timestamp` is further than this from our clock is refused: it is
/// either replayed or from a badly skewed sender. WeCom retries a callback within seconds, so
/// five minutes leaves ample room for clock skew without letting an old capture replay.
pub const MAX_TIMESTAMP_SKEW_SECS: i64 = 300;
/// The body WeCom expects from an event callback (anything else makes it retry).
pub const WECOM_ACK: &str = "success";

/// Why a callback was refused.
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
    pub fn status(&self) -> StatusCode {
        match self {
            Reject::UnknownAccount | Reject::NoCredentials => StatusCode::NOT_FOUND,
            Reject::BadQuery(_) | Reject::Malformed(_) | Reject::Decrypt(_) => {
                StatusCode::BAD_REQUEST
            }
            Reject::Stale | Reject::Signature => StatusCode::FORBIDDEN,
            Reject::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Reject::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

/// Log the refusal (one line) and answer it.
pub(super) fn refuse(route: &'static str, account: &str, r: Reject) -> Response {
    let status = r.status();
    warn!(
        route,
        account = %crate::text::truncate(account, 64),
        status = status.as_u16(),
        reason = %r,
        "callback refused"
    );
    (status, format!("{r}\n")).into_response()
}

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
    let ts = required(&q.timestamp, "timestamp")?;
    let nonce = required(&q.nonce, "nonce")?;
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

pub(super) fn query(q: Result<Query<WecomQuery>, QueryRejection>) -> Result<WecomQuery, Reject> {
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
