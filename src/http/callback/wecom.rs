//! WeCom's callbacks: URL verification (GET) and events (POST), of which a
//! `kf_msg_or_event` wakes the sync loop of its open_kfid.

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn};

use crate::http::callback::auth::{
    Reject, WECOM_ACK, WecomQuery, authenticate, body, query, refuse, required, unplus, wecom_crypt,
};
use crate::http::state::AppState;
use crate::xml;

/// `GET /callback/wecom/<account>`: URL verification.
pub(super) async fn wecom_verify(
    State(s): State<AppState>,
    Path(account): Path<String>,
    q: Result<Query<WecomQuery>, QueryRejection>,
) -> Response {
    match verify_url(&s, &account, q) {
        Ok(plain) => {
            info!(account = %account, "WeCom callback URL verified");
            (
                StatusCode::OK,
                [("content-type", "text/plain; charset=utf-8")],
                plain,
            )
                .into_response()
        }
        Err(r) => refuse("wecom_verify", &account, r),
    }
}

fn verify_url(
    s: &AppState,
    account: &str,
    q: Result<Query<WecomQuery>, QueryRejection>,
) -> Result<String, Reject> {
    let crypt = wecom_crypt(s, account)?;
    let q = query(q)?;
    let echostr = unplus(required(&q.echostr, "echostr")?);
    authenticate(&crypt, &q, &echostr)?;
    let plain = crypt.decrypt(&echostr).map_err(Reject::Decrypt)?;
    String::from_utf8(plain).map_err(|_| Reject::Malformed("echostr is not UTF-8".into()))
}

/// `POST /callback/wecom/<account>`: a kf event.
pub(super) async fn wecom_event(
    State(s): State<AppState>,
    Path(account): Path<String>,
    q: Result<Query<WecomQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    match handle_wecom_event(&s, &account, q, b) {
        Ok(()) => (StatusCode::OK, WECOM_ACK).into_response(),
        Err(r) => refuse("wecom_event", &account, r),
    }
}

fn handle_wecom_event(
    s: &AppState,
    account: &str,
    q: Result<Query<WecomQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(), Reject> {
    let crypt = wecom_crypt(s, account)?;
    let q = query(q)?;
    let b = body(s, b)?;
    let text = std::str::from_utf8(&b).map_err(|_| Reject::Malformed("not UTF-8".into()))?;
    let envelope = xml::parse(text).map_err(Reject::Malformed)?;
    let encrypt = envelope
        .field("Encrypt")
        .ok_or_else(|| Reject::Malformed("<Encrypt> missing".into()))?;
    authenticate(&crypt, &q, encrypt)?;
    let plain = crypt.decrypt(encrypt).map_err(Reject::Decrypt)?;
    let inner = std::str::from_utf8(&plain)
        .map_err(|_| Reject::Malformed("decrypted message is not UTF-8".into()))?;
    let msg =
        xml::parse(inner).map_err(|e| Reject::Malformed(format!("decrypted message: {e}")))?;
    let msg_type = msg.field("MsgType").unwrap_or("");
    let event = msg.field("Event").unwrap_or("");
    if msg_type != "event" || event != "kf_msg_or_event" {
        debug!(
            account,
            msg_type, event, "callback event ignored (not kf_msg_or_event)"
        );
        return Ok(());
    }
    let open_kfid = msg
        .field("OpenKfId")
        .ok_or_else(|| Reject::Malformed("kf_msg_or_event without OpenKfId".into()))?;
    let token = msg.field("Token");
    if s.inbound.wake(account, open_kfid, token) {
        debug!(account, open_kfid, "kf_msg_or_event: sync loop woken");
    } else {
        // Authentic, but for an open_kfid this worker does not sync: a 4xx would only
        // make WeCom retry.
        warn!(
            account,
            open_kfid = %crate::text::truncate(open_kfid, 64),
            "kf_msg_or_event for an open_kfid not listed in the account's open_kfids; ignored"
        );
    }
    Ok(())
}
