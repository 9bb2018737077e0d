//! The Dialogue Open Platform's push: decrypted, published to `wxdispatch.inbound`, stored
//! in `inbound_messages` (once: a platform retry of a stored push is answered and dropped).

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{debug, warn};

use crate::config::{AccountConfig, Channel};
use crate::engine::inbound::{self, Inbound};
use crate::http::callback::auth::{PushQuery, Reject, WECOM_ACK, authenticate_push, body, query};
use crate::http::callback::shield::{Peer, Shield, peer_ip};
use crate::http::state::AppState;
use crate::telemetry as t;
use crate::xml;

#[derive(Debug, Deserialize)]
struct PushBody {
    encrypted: Option<String>,
}

/// `POST /callback/chatbot/<account>`: the Dialogue Open Platform's push.
pub(super) async fn chatbot_push(
    State(s): State<AppState>,
    Extension(shield): Extension<Arc<Shield>>,
    peer: Peer,
    account: Result<Path<String>, PathRejection>,
    q: Result<Query<PushQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    let account = account.map(|Path(a)| a).unwrap_or_default();
    match handle_chatbot_push(&s, &account, q, b).await {
        Ok(()) => (StatusCode::OK, WECOM_ACK).into_response(),
        Err(r) => {
            shield
                .refuse(peer_ip(&peer), "chatbot_push", &account, r)
                .await
        }
    }
}

/// Everything up to the decrypted push, in this order: the account and its key, the body,
/// the signature when the push carries one (or the account requires one), the ciphertext.
/// Whatever fails, the caller answers the same refusal.
async fn handle_chatbot_push(
    s: &AppState,
    account: &str,
    q: Result<Query<PushQuery>, QueryRejection>,
    b: Result<Bytes, BytesRejection>,
) -> Result<(), Reject> {
    let a = s
        .cfg
        .account(account)
        .filter(|a| a.channel == Channel::Chatbot)
        .ok_or(Reject::UnknownAccount)?;
    let crypt = a.crypt().ok_or(Reject::NoCredentials)?;
    let q = query(q)?;
    let b = body(s, b)?;
    let push: PushBody = serde_json::from_slice(&b)
        .map_err(|_| Reject::Malformed("expected {\"encrypted\": \"<base64>\"}".into()))?;
    let enc = push
        .encrypted
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Reject::Malformed("\"encrypted\" missing".into()))?;
    authenticate_push(&crypt, &q, &enc, a.require_push_signature)?;
    let plain = crypt.decrypt(&enc).map_err(Reject::Decrypt)?;
    let msg = chatbot_inbound(a, &plain)?;
    let known = s
        .store
        .inbound_stored(account, &[msg.msgid.as_str()])
        .await
        .map_err(|e| {
            warn!(account, error = %format!("{e:#}"), "chatbot push: database unavailable");
            Reject::Unavailable
        })?;
    if !known.is_empty() {
        debug!(account, msgid = %msg.msgid, "chatbot push already stored (platform retry)");
        return Ok(());
    }
    // Publish (confirmed), then store: a failure in between answers 503, the platform
    // retries, and the message is published again (consumers dedupe by message_id).
    inbound::publish_inbound(s.inbound.publisher(), account, &[&msg])
        .await
        .map_err(|e| {
            warn!(account, error = %format!("{e:#}"), "chatbot push: broker unavailable");
            Reject::Unavailable
        })?;
    let inserted = s
        .store
        .insert_inbound(account, std::slice::from_ref(&msg))
        .await
        .map_err(|e| {
            warn!(account, error = %format!("{e:#}"), "chatbot push: not stored");
            Reject::Unavailable
        })?;
    if !inserted.is_empty() {
        metrics::counter!(t::INBOUND_MESSAGES, "account" => account.to_owned(), "kind" => msg.msgtype.clone())
            .increment(1);
    }
    Ok(())
}

/// Read a decrypted chatbot push (XML or a JSON object) into an [`Inbound`]. Fields are
/// looked up case-insensitively: the msgid (`msgid`/`msg_id`; otherwise the plaintext's
/// SHA-1 is the dedupe key), the msgtype (`msgtype`/`msg_type`; `event` when only an `event`
/// field is present, `other` when neither), the user (`openid`/`userid`/`fromusername`) and
/// the time (`createtime`/`create_time`/`timestamp`, unix seconds).
pub fn chatbot_inbound(_account: &AccountConfig, plain: &[u8]) -> Result<Inbound, Reject> {
    let text = std::str::from_utf8(plain)
        .map_err(|_| Reject::Malformed("decrypted push is not UTF-8".into()))?;
    let trimmed = text.trim_start();
    let map = if trimmed.starts_with('<') {
        xml::parse(trimmed)
            .map(|root| xml_object(root.children))
            .map_err(|e| Reject::Malformed(format!("decrypted push: {e}")))?
    } else {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(m)) => m,
            _ => {
                return Err(Reject::Malformed(
                    "decrypted push is neither XML nor a JSON object".into(),
                ));
            }
        }
    };
    let get = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|n| {
            map.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(n))
                .and_then(|(_, v)| match v {
                    Value::String(s) if !s.is_empty() => Some(s.clone()),
                    Value::Number(x) => Some(x.to_string()),
                    _ => None,
                })
        })
    };
    let msgid = get(&["msgid", "msg_id"])
        .map(|id| inbound::normalize_msgid(&id))
        .unwrap_or_else(|| inbound::content_id(plain));
    let msgtype = match get(&["msgtype", "msg_type"]) {
        Some(t) => inbound::routing_word(&t.to_ascii_lowercase()),
        None if get(&["event"]).is_some() => "event".to_owned(),
        None => "other".to_owned(),
    };
    Ok(Inbound {
        msgid,
        open_kfid: None,
        external_userid: get(&["openid", "userid", "fromusername"]),
        origin: None,
        msgtype,
        send_time: get(&["createtime", "create_time", "timestamp"]).and_then(|s| s.parse().ok()),
        body: Value::Object(map),
    })
}

/// An XML element's children as a JSON object, the shape stored and published for a chatbot
/// push: a leaf element becomes a string, an element with children an object, a repeated
/// name an array (in document order). Attributes are not kept.
fn xml_object(children: Vec<xml::Element>) -> Map<String, Value> {
    fn put(m: &mut Map<String, Value>, k: String, v: Value) {
        match m.get_mut(&k) {
            None => {
                m.insert(k, v);
            }
            Some(Value::Array(a)) => a.push(v),
            Some(old) => {
                let first = old.take();
                *old = Value::Array(vec![first, v]);
            }
        }
    }
    let mut m = Map::new();
    for xml::Element {
        name,
        text,
        children,
    } in children
    {
        let v = if children.is_empty() {
            Value::String(text)
        } else {
            Value::Object(xml_object(children))
        };
        put(&mut m, name, v);
    }
    m
}

#[cfg(test)]
#[path = "chatbot_tests.rs"]
mod tests;
