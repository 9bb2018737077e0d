//! WeCom's callbacks: URL verification (GET) and events (POST), of which a
//! `kf_msg_or_event` wakes the sync loop of its open_kfid.

use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tracing::{debug, info, warn};

use crate::http::callback::auth::{
    Reject, WECOM_ACK, WecomQuery, authenticate, body, query, required, unplus, wecom_crypt,
};
use crate::http::callback::shield::{Peer, Shield, peer_ip};
use crate::http::state::AppState;
use crate::xml;

/// `GET /callback/wecom/<account>`: URL verification.
pub(super) async fn wecom_verify(
    State(s): State<AppState>,
    Extension(shield): Extension<Arc<Shield>>,
    peer: Peer,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<WecomQuery>, QueryRejection>,
) -> Response {
    let account = account.map(|Path(a)| a).unwrap_or_default();
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
        Err(r) => {
            shield
                .refuse(peer_ip(&peer), "wecom_verify", &account, r)
                .await
        }
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
    Extension(shield): Extension<Arc<Shield>>,
    peer: Peer,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<WecomQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let account = account.map(|Path(a)| a).unwrap_or_default();
    match handle_wecom_event(&s, &shield, &account, q, b) {
        Ok(()) => (StatusCode::OK, WECOM_ACK).into_response(),
        Err(r) => {
            shield
                .refuse(peer_ip(&peer), "wecom_event", &account, r)
                .await
        }
    }
}

/// Authenticate, decrypt and read the event; a `kf_msg_or_event` seen for the first time
/// wakes its sync loop, a replay (same `msg_signature` inside the freshness window) is
/// acked without waking anything.
fn handle_wecom_event(
    s: &AppState,
    shield: &Shield,
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
    let sig = q.signature().unwrap_or_default();
    if !shield
        .replays()
        .first_sighting(account, sig, Instant::now())
    {
        debug!(account, open_kfid = %crate::text::truncate(open_kfid, 64),
            "kf_msg_or_event replayed (signature already seen); acked, not woken");
        return Ok(());
    }
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
