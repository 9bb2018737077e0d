//! The platforms' HTTP callbacks: WeCom's URL verification and kf events, and the Dialogue
//! Open Platform's message push.
//!
//! | route | does |
//! |---|---|
//! | `GET /callback/wecom/<account>?msg_signature&timestamp&nonce&echostr` | URL verification: answers the decrypted `echostr` as the bare body |
//! | `POST /callback/wecom/<account>?msg_signature&timestamp&nonce` | `<xml><ToUserName/><AgentID/><Encrypt/></xml>`: a `kf_msg_or_event` wakes the [`crate::engine::inbound`] loop of its open_kfid with the callback Token; answers `success` at once |
//! | `POST /callback/chatbot/<account>` | `{"encrypted": "<base64>"}`: decrypted, published to `wxdispatch.inbound` (`<account>.<msgtype>`), stored in `inbound_messages`; answers `success` |
//!
//! WeCom callbacks are authenticated by `msg_signature` (SHA-1 over the account's callback
//! token, timestamp, nonce and ciphertext, compared in constant time) and must be fresh
//! (within [`MAX_TIMESTAMP_SKEW_SECS`]); the ciphertext must decrypt with the account's
//! EncodingAESKey and name its corpid as the receive id. The chatbot push carries no
//! signature: only decryption with the bot's key and APPID authenticates it.
//!
//! Every rejection is a 4xx with a short reason and one `warn` log line (never a secret, never
//! a panic) and stores nothing: unknown account or one without callback credentials 404,
//! missing/malformed parameters or body 400, bad signature or stale timestamp 403, body over
//! `http.max_body_bytes` 413. A chatbot push that cannot be published or stored right now is
//! answered 503 so that the platform retries it.

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quick_xml::Reader;
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::Event;
use serde::Deserialize;
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use crate::broker;
use crate::config::{AccountConfig, Channel};
use crate::crypto::{CryptoError, MsgCrypt};
use crate::engine::inbound::{self, Inbound};
use crate::http::state::AppState;
use crate::telemetry as t;

/// A WeCom callback whose `timestamp` is further than this from our clock is refused: it is
/// either replayed or from a badly skewed sender. WeCom retries a callback within seconds, so
/// five minutes leaves ample room for clock skew without letting an old capture replay.
pub const MAX_TIMESTAMP_SKEW_SECS: i64 = 300;
/// Callback XML is flat (a root and its fields) or close to it; deeper nesting is refused.
const MAX_XML_DEPTH: usize = 8;
/// The body WeCom expects from an event callback (anything else makes it retry).
const WECOM_ACK: &str = "success";

/// The callback routes, merged into [`crate::http::server::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/callback/wecom/{account}",
            get(wecom_verify).post(wecom_event),
        )
        .route("/callback/chatbot/{account}", post(chatbot_push))
}

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
fn refuse(route: &'static str, account: &str, r: Reject) -> Response {
    let status = r.status();
    warn!(
        route,
        account = %broker::truncate(account, 64),
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
    echostr: Option<String>,
}

fn required<'a>(v: &'a Option<String>, name: &str) -> Result<&'a str, Reject> {
    v.as_deref()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Reject::BadQuery(format!("{name} missing")))
}

/// A form-decoded base64 value: a raw `+` the sender did not percent-encode arrives as a
/// space. Base64 has no spaces, so turning them back is always right.
fn unplus(s: &str) -> String {
    s.replace(' ', "+")
}

/// The account's callback crypt, if it is a WeCom account with callback credentials.
fn wecom_crypt(s: &AppState, account: &str) -> Result<MsgCrypt, Reject> {
    let a = s
        .cfg
        .account(account)
        .filter(|a| a.channel == Channel::Wecom)
        .ok_or(Reject::UnknownAccount)?;
    a.crypt().ok_or(Reject::NoCredentials)
}

/// Signature first (unauthenticated input learns nothing else), then freshness.
fn authenticate(crypt: &MsgCrypt, q: &WecomQuery, encrypt: &str) -> Result<(), Reject> {
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

fn query(q: Result<Query<WecomQuery>, QueryRejection>) -> Result<WecomQuery, Reject> {
    q.map(|Query(q)| q)
        .map_err(|e| Reject::BadQuery(e.body_text()))
}

fn body(s: &AppState, b: Result<Bytes, BytesRejection>) -> Result<Bytes, Reject> {
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

/// `GET /callback/wecom/<account>`: URL verification.
async fn wecom_verify(
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
async fn wecom_event(
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
    let envelope = parse_xml(text).map_err(Reject::Malformed)?;
    let encrypt =
        field(&envelope, "Encrypt").ok_or_else(|| Reject::Malformed("<Encrypt> missing".into()))?;
    authenticate(&crypt, &q, encrypt)?;
    let plain = crypt.decrypt(encrypt).map_err(Reject::Decrypt)?;
    let inner = std::str::from_utf8(&plain)
        .map_err(|_| Reject::Malformed("decrypted message is not UTF-8".into()))?;
    let msg = parse_xml(inner).map_err(|e| Reject::Malformed(format!("decrypted message: {e}")))?;
    let msg_type = field(&msg, "MsgType").unwrap_or("");
    let event = field(&msg, "Event").unwrap_or("");
    if msg_type != "event" || event != "kf_msg_or_event" {
        debug!(
            account,
            msg_type, event, "callback event ignored (not kf_msg_or_event)"
        );
        return Ok(());
    }
    let open_kfid = field(&msg, "OpenKfId")
        .ok_or_else(|| Reject::Malformed("kf_msg_or_event without OpenKfId".into()))?;
    let token = field(&msg, "Token");
    if s.inbound.wake(account, open_kfid, token) {
        debug!(account, open_kfid, "kf_msg_or_event: sync loop woken");
    } else {
        // Authentic, but for an open_kfid this worker does not sync: a 4xx would only
        // make WeCom retry.
        warn!(
            account,
            open_kfid = %broker::truncate(open_kfid, 64),
            "kf_msg_or_event for an open_kfid not listed in the account's open_kfids; ignored"
        );
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
struct PushBody {
    encrypted: Option<String>,
}

/// `POST /callback/chatbot/<account>`: the Dialogue Open Platform's push.
async fn chatbot_push(
    State(s): State<AppState>,
    Path(account): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Response {
    match handle_chatbot_push(&s, &account, b).await {
        Ok(()) => (StatusCode::OK, WECOM_ACK).into_response(),
        Err(r) => refuse("chatbot_push", &account, r),
    }
}

async fn handle_chatbot_push(
    s: &AppState,
    account: &str,
    b: Result<Bytes, BytesRejection>,
) -> Result<(), Reject> {
    let a = s
        .cfg
        .account(account)
        .filter(|a| a.channel == Channel::Chatbot)
        .ok_or(Reject::UnknownAccount)?;
    let crypt = a.crypt().ok_or(Reject::NoCredentials)?;
    let b = body(s, b)?;
    let push: PushBody = serde_json::from_slice(&b)
        .map_err(|_| Reject::Malformed("expected {\"encrypted\": \"<base64>\"}".into()))?;
    let enc = push
        .encrypted
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Reject::Malformed("\"encrypted\" missing".into()))?;
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
        parse_xml(trimmed).map_err(|e| Reject::Malformed(format!("decrypted push: {e}")))?
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

fn field<'a>(m: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    m.get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// Parse an XML document into its root element's children as a JSON object: a leaf element
/// becomes a string (text, CDATA and entity references joined), an element with children an
/// object, a repeated name an array. Attributes and comments are ignored; DOCTYPE (and so any
/// custom entity), nesting deeper than [`MAX_XML_DEPTH`], unknown entities, more than one
/// root and trailing content are errors. Never panics.
pub fn parse_xml(text: &str) -> Result<Map<String, Value>, String> {
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
    fn name_of(raw: &[u8]) -> Result<String, String> {
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| "element name is not UTF-8".to_owned())
    }
    let mut r = Reader::from_str(text);
    // (name, children, text) of each open element.
    let mut stack: Vec<(String, Map<String, Value>, String)> = Vec::new();
    let mut root: Option<Map<String, Value>> = None;
    loop {
        let ev = r.read_event().map_err(|e| format!("malformed XML: {e}"))?;
        match ev {
            Event::Start(s) => {
                if root.is_some() {
                    return Err("content after the root element".into());
                }
                if stack.len() >= MAX_XML_DEPTH {
                    return Err(format!("nested deeper than {MAX_XML_DEPTH} levels"));
                }
                stack.push((name_of(s.name().as_ref())?, Map::new(), String::new()));
            }
            Event::Empty(s) => {
                let n = name_of(s.name().as_ref())?;
                match stack.last_mut() {
                    Some((_, m, _)) => put(m, n, Value::String(String::new())),
                    None if root.is_none() => root = Some(Map::new()),
                    None => return Err("content after the root element".into()),
                }
            }
            Event::End(_) => {
                let Some((n, m, txt)) = stack.pop() else {
                    return Err("unbalanced end tag".into());
                };
                match stack.last_mut() {
                    Some((_, pm, _)) => {
                        let v = if m.is_empty() {
                            Value::String(txt)
                        } else {
                            Value::Object(m)
                        };
                        put(pm, n, v);
                    }
                    None => root = Some(m),
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("bad text: {e}"))?;
                match stack.last_mut() {
                    Some((_, _, txt)) => txt.push_str(&s),
                    None if s.trim().is_empty() => {}
                    None => return Err("text outside the root element".into()),
                }
            }
            Event::CData(c) => {
                let s = c.decode().map_err(|e| format!("bad CDATA: {e}"))?;
                match stack.last_mut() {
                    Some((_, _, txt)) => txt.push_str(&s),
                    None => return Err("CDATA outside the root element".into()),
                }
            }
            Event::GeneralRef(g) => {
                let Some((_, _, txt)) = stack.last_mut() else {
                    return Err("entity outside the root element".into());
                };
                if let Some(ch) = g
                    .resolve_char_ref()
                    .map_err(|e| format!("bad character reference: {e}"))?
                {
                    txt.push(ch);
                } else {
                    let n = g.decode().map_err(|e| format!("bad entity: {e}"))?;
                    let v = resolve_predefined_entity(&n)
                        .ok_or_else(|| format!("unknown entity &{n};"))?;
                    txt.push_str(v);
                }
            }
            Event::DocType(_) => return Err("DOCTYPE is not allowed".into()),
            Event::Decl(_) | Event::Comment(_) | Event::PI(_) => {}
            Event::Eof => break,
        }
    }
    if !stack.is_empty() {
        return Err("unclosed element".into());
    }
    root.ok_or_else(|| "no root element".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_wecom_envelope_and_event() {
        let env = parse_xml(
            "<xml><ToUserName><![CDATA[ww1]]></ToUserName><AgentID><![CDATA[]]></AgentID><Encrypt><![CDATA[abc+/=]]></Encrypt></xml>",
        )
        .unwrap();
        assert_eq!(field(&env, "Encrypt"), Some("abc+/="));
        assert_eq!(field(&env, "AgentID"), None);
        let ev = parse_xml(
            "<?xml version=\"1.0\"?>\n<xml>\n  <MsgType>event</MsgType>\n  <Event><![CDATA[kf_msg_or_event]]></Event>\n  <Token>T&amp;1</Token>\n  <OpenKfId>wk&#65;</OpenKfId>\n</xml>\n",
        )
        .unwrap();
        assert_eq!(field(&ev, "Event"), Some("kf_msg_or_event"));
        assert_eq!(field(&ev, "Token"), Some("T&1"));
        assert_eq!(field(&ev, "OpenKfId"), Some("wkA"));
    }

    #[test]
    fn nested_and_repeated_elements() {
        let m = parse_xml("<xml><a><b>1</b><b>2</b></a><c/></xml>").unwrap();
        assert_eq!(m["a"]["b"], serde_json::json!(["1", "2"]));
        assert_eq!(m["c"], serde_json::json!(""));
    }

    #[test]
    fn bad_xml_is_an_error() {
        for bad in [
            "",
            "just text",
            "<xml><a>1</a>",
            "<xml></xml><xml></xml>",
            "<xml><a>&bogus;</a></xml>",
            "<!DOCTYPE x [<!ENTITY a \"b\">]><xml><a>&a;</a></xml>",
            "<xml><a></b></xml>",
            &format!("{}{}", "<a>".repeat(20), "</a>".repeat(20)),
        ] {
            assert!(parse_xml(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chatbot_push_fields() {
        let a = crate::config::AccountConfig {
            name: "bot".into(),
            channel: Channel::Chatbot,
            base_url: None,
            rate: Default::default(),
            appid: Some("APP".into()),
            default_channel: 0,
            corpid: None,
            secret: Default::default(),
            secret_file: None,
            open_kfids: vec![],
            token: Default::default(),
            token_file: None,
            encoding_aes_key: Default::default(),
            encoding_aes_key_file: None,
        };
        let m = chatbot_inbound(
            &a,
            br#"{"MsgId": 42, "msgtype": "Text", "openid": "oU1", "content": "hi", "createtime": 1700000000}"#,
        )
        .unwrap();
        assert_eq!(m.msgid, "42");
        assert_eq!(m.msgtype, "text");
        assert_eq!(m.external_userid.as_deref(), Some("oU1"));
        assert_eq!(m.send_time, Some(1700000000));
        let xml = b"<xml><openid>oU2</openid><event>waiterEnter</event></xml>";
        let m = chatbot_inbound(&a, xml).unwrap();
        assert_eq!(m.msgtype, "event");
        assert_eq!(m.msgid, inbound::content_id(xml));
        assert_eq!(m.msgid, chatbot_inbound(&a, xml).unwrap().msgid);
        assert!(chatbot_inbound(&a, b"[1,2]").is_err());
        assert!(chatbot_inbound(&a, &[0xff, 0xfe]).is_err());
    }

    proptest! {
        #[test]
        fn parse_xml_never_panics(s in "\\PC{0,200}") {
            let _ = parse_xml(&s);
        }

        #[test]
        fn parse_xml_never_panics_on_xmlish(s in "[<>/a-z!\\[\\]CDAT&#;x0-9 ]{0,120}") {
            let _ = parse_xml(&s);
        }
    }
}
