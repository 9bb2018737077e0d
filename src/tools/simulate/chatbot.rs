//! The Dialogue Open Platform (`/openapi/…/{TOKEN}`).
//!
//! Every request is `POST` with the JSON body `{"encrypt": "<base64>"}` (no signature,
//! timestamp or nonce). Checks, in order, and their errcodes:
//!
//! | check | errcode |
//! |---|---|
//! | `{TOKEN}` is no chatbot account's token | 1001 |
//! | gate: script / fault / rate | scripted, -1, 210205, HTTP 502/500/504 |
//! | body is XML (an `<xml><Encrypt>` envelope) | 1019 |
//! | body is not a JSON object (HTTP 200, not 400: the platform answers errcodes) | 1007 |
//! | no `encrypt`, but `signature` / `timestamp` / `nonce` / `Encrypt` (a callback's shape) | 1019 |
//! | no or empty `encrypt` | 1007 |
//! | ciphertext is not base64 / not decryptable with the EncodingAESKey | 1019 |
//! | decrypts, but the receive id is not the account's APPID | 1013 |
//! | plaintext not UTF-8 or not flat `<xml>` | 1007 |
//! | `openid` (/ `msg`, `kefustate`) missing or empty | 1007 |
//! | kefustate/get: `type` not `simple` or `all` (absent = `simple`) | 1007 |
//! | kefustate/change: `kefustate` not one of the four states or on/off; `expires` not a positive integer, or with on/off | 1007 |
//! | `channel` not an integer, `event` not one of the four documented | 1007 |
//! | sendmsg on channel 0, 5 or 6 (or none): `appid` missing or empty | 1007 |
//! | sendmsg on channel 0, 5 or 6 (or none): `appid` is the bot's platform APPID | 1008 |
//! | `msg` starts with `{` but is not a rich message (below) | 1007 |
//!
//! A `msg` whose first non-blank character is `{` must be a JSON object with exactly one key:
//! `news` (`articles`: a non-empty array of objects with a `title`), `image` (`media_id` or
//! `url`), `miniprogrampage` (`title`, `appid`, `pagepath`, and `thumb_media_id` or `thumb_url`)
//! or `multimsg` (a non-empty array of messages, each a text string or a rich *object*, not
//! nested `multimsg`; a rich item as a JSON-encoded string is refused, as the platform would
//! show it as text). Any other `msg` is plain text (links included).
//!
//! `<appid>` carries the Official Account / Mini Program appid on sendmsg channels 0, 5 and 6;
//! the simulator cannot know that appid, so it refuses only its absence and the bot's platform
//! APPID (the receive id, a classic mix-up). On the other channels and on kefustate (whose
//! request names no channel) `<appid>` is optional and not checked.
//!
//! kefustate/get answers `{kefustate}` for `type=simple` and `{kefustate, status}` for
//! `type=all`; the states and their expiry are modelled in [`super::kefu`].
//!
//! Deliberate simplification: the platform's behaviour when a human serves the user
//! (kefustate on) and the bot still sends is unverified; the simulator accepts the message and
//! leaves the gating to the caller.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::accepted::NewRecord;
use super::gate::Api;
use super::kefu;
use super::reply::{ApiErr, Reply, code, ok};
use super::respond::finish;
use super::state::SimState;
use super::util::lock;
use super::xml::{self, Fields};

/// The `event` values sendmsg accepts.
pub const EVENTS: &[&str] = &[
    "waiterQualityEvaluate",
    "waiterEnter",
    "waiterSwitch",
    "waiterQuit",
];

type Outcome = (Option<usize>, Reply);

/// `POST /openapi/sendmsg/{TOKEN}`.
pub async fn sendmsg(
    State(st): State<Arc<SimState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (acct, reply) = sendmsg_inner(&st, &token, &body);
    finish(&st, acct, reply).await
}

/// `POST /openapi/kefustate/get/{TOKEN}`.
pub async fn kefustate_get(
    State(st): State<Arc<SimState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (acct, reply) = kefustate_get_inner(&st, &token, &body);
    finish(&st, acct, reply).await
}

/// `POST /openapi/kefustate/change/{TOKEN}`.
pub async fn kefustate_change(
    State(st): State<Arc<SimState>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (acct, reply) = kefustate_change_inner(&st, &token, &body);
    finish(&st, acct, reply).await
}

/// A decrypted, parsed request of a known account.
struct Opened {
    account: usize,
    plaintext: String,
    fields: Fields,
}

/// Token, gate, decryption, XML, appid + openid: what every chatbot API checks.
fn open(st: &SimState, token: &str, body: &[u8], api: Api) -> Result<Opened, Outcome> {
    let Some(&account) = st.chatbot_tokens.get(token) else {
        return Err((None, ApiErr::new(code::BOT_TOKEN_INVALID).into()));
    };
    if let Some(r) = st.gate(account, api) {
        return Err((Some(account), r));
    }
    let fail = |e: ApiErr| (Some(account), Reply::Err(e));
    let acct = &st.accounts[account];
    let plaintext = decrypt_body(acct.crypt.as_ref(), body).map_err(fail)?;
    let fields = xml::parse(&plaintext)
        .map_err(|e| fail(ApiErr::hint(code::BOT_FIELDS, format!("plaintext: {e}"))))?;
    required(&fields, "openid").map_err(fail)?;
    Ok(Opened {
        account,
        plaintext,
        fields,
    })
}

/// The sendmsg channels whose `<appid>` is the OA / mini-program appid (see the module docs).
const CHANNELS_NEEDING_APPID: [i64; 3] = [0, 5, 6];

/// sendmsg's `<appid>` against its `<channel>` (absent = 0): see the module docs.
fn check_appid(f: &Fields, platform_appid: &str) -> Result<(), ApiErr> {
    let channel = f
        .non_empty("channel")
        .and_then(|c| c.parse::<i64>().ok())
        .unwrap_or(0);
    if !CHANNELS_NEEDING_APPID.contains(&channel) {
        return Ok(());
    }
    match f.non_empty("appid") {
        None => Err(ApiErr::hint(
            code::BOT_FIELDS,
            format!("channel {channel}: appid (the Official Account / Mini Program appid) missing"),
        )),
        Some(a) if a == platform_appid => Err(ApiErr::hint(
            code::BOT_APPID,
            format!(
                "channel {channel}: appid is the bot's platform APPID; \
                 it must be the Official Account / Mini Program appid"
            ),
        )),
        Some(_) => Ok(()),
    }
}

fn required<'a>(f: &'a Fields, name: &str) -> Result<&'a str, ApiErr> {
    f.non_empty(name)
        .ok_or_else(|| ApiErr::hint(code::BOT_FIELDS, format!("{name} missing or empty")))
}

/// The plaintext of a `{"encrypt": …}` body (see the module table for each errcode).
fn decrypt_body(crypt: Option<&crate::crypto::MsgCrypt>, body: &[u8]) -> Result<String, ApiErr> {
    if body.trim_ascii_start().starts_with(b"<") {
        return Err(ApiErr::hint(
            code::BOT_CIPHERTEXT,
            "XML envelope received; send {\"encrypt\": \"...\"} as JSON",
        ));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiErr::hint(code::BOT_FIELDS, "body is not JSON"))?;
    let o = v
        .as_object()
        .ok_or_else(|| ApiErr::hint(code::BOT_FIELDS, "body is not a JSON object"))?;
    let enc = match o.get("encrypt") {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ if [
            "signature",
            "timestamp",
            "nonce",
            "msg_signature",
            "Encrypt",
        ]
        .iter()
        .any(|k| o.contains_key(*k)) =>
        {
            return Err(ApiErr::hint(
                code::BOT_CIPHERTEXT,
                "callback-style fields received; sendmsg takes only {\"encrypt\": \"...\"}",
            ));
        }
        _ => return Err(ApiErr::hint(code::BOT_FIELDS, "encrypt missing or empty")),
    };
    let Some(crypt) = crypt else {
        return Err(ApiErr::hint(
            code::BOT_CIPHERTEXT,
            "account has no EncodingAESKey",
        ));
    };
    let (msg, rid) = crypt
        .decrypt_parts(enc)
        .map_err(|e| ApiErr::hint(code::BOT_CIPHERTEXT, format!("ciphertext: {e}")))?;
    if rid != crypt.receive_id().as_bytes() {
        return Err(ApiErr::hint(
            code::BOT_CRYPT_PARAMS,
            "ciphertext's receive id is not this bot's APPID",
        ));
    }
    String::from_utf8(msg).map_err(|_| ApiErr::hint(code::BOT_FIELDS, "plaintext is not UTF-8"))
}

/// The parsed fields as JSON text; `channel` as a number.
fn fields_json(f: &Fields) -> String {
    let mut m = Map::new();
    for (k, v) in f.iter() {
        let val = match (k, v.parse::<i64>()) {
            ("channel", Ok(n)) => json!(n),
            _ => json!(v),
        };
        m.insert(k.to_owned(), val);
    }
    Value::Object(m).to_string()
}

fn sendmsg_inner(st: &SimState, token: &str, body: &[u8]) -> Outcome {
    let o = match open(st, token, body, Api::SendMsg) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let acct = Some(o.account);
    let fail = |e: ApiErr| (acct, Reply::Err(e));
    let msg = match required(&o.fields, "msg") {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    if let Some(c) = o.fields.non_empty("channel")
        && c.parse::<i64>().is_err()
    {
        return fail(ApiErr::hint(code::BOT_FIELDS, "channel is not an integer"));
    }
    if let Some(ev) = o.fields.non_empty("event")
        && !EVENTS.contains(&ev)
    {
        return fail(ApiErr::hint(
            code::BOT_FIELDS,
            format!("unknown event '{ev}'"),
        ));
    }
    if let Err(e) = check_appid(&o.fields, st.accounts[o.account].cfg.receive_id()) {
        return fail(e);
    }
    let msgtype = match rich_type(msg) {
        Ok(t) => t,
        Err(e) => return fail(ApiErr::hint(code::BOT_FIELDS, format!("msg: {e}"))),
    };
    let body = fields_json(&o.fields);
    st.accept(
        o.account,
        NewRecord {
            api: Api::SendMsg,
            recipient: o.fields.get("openid").unwrap_or_default(),
            msgid: None,
            msgtype,
            plaintext: Some(o.plaintext),
            body: body.into(),
        },
    );
    (acct, Reply::Ok(ok()))
}

fn kefustate_get_inner(st: &SimState, token: &str, body: &[u8]) -> Outcome {
    let o = match open(st, token, body, Api::KefuGet) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let all = match kefu::wants_all(&o.fields) {
        Ok(all) => all,
        Err(e) => return (Some(o.account), ApiErr::hint(code::BOT_FIELDS, e).into()),
    };
    let openid = o.fields.get("openid").unwrap_or_default();
    let status = lock(&st.conv)
        .kefu
        .get(&o.account)
        .and_then(|m| m.get(openid))
        .map(|e| e.at(Instant::now()))
        .unwrap_or_default();
    let mut answer = json!({"errcode": 0, "errmsg": "ok", "kefustate": status.on_off()});
    if all {
        answer["status"] = json!(status.word());
    }
    (Some(o.account), Reply::Ok(answer))
}

fn kefustate_change_inner(st: &SimState, token: &str, body: &[u8]) -> Outcome {
    let o = match open(st, token, body, Api::KefuChange) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let change = match kefu::change_of(&o.fields) {
        Ok(c) => c,
        Err(e) => return (Some(o.account), ApiErr::hint(code::BOT_FIELDS, e).into()),
    };
    let openid = o.fields.get("openid").unwrap_or_default().to_owned();
    lock(&st.conv).apply_kefu(o.account, &openid, change);
    let body = fields_json(&o.fields);
    st.accept(
        o.account,
        NewRecord {
            api: Api::KefuChange,
            recipient: &openid,
            msgid: None,
            msgtype: "kefustate",
            plaintext: Some(o.plaintext),
            body: body.into(),
        },
    );
    (Some(o.account), Reply::Ok(ok()))
}

/// `text`, or the rich type of a `msg` that starts with `{` (see the module docs).
pub fn rich_type(msg: &str) -> Result<&'static str, String> {
    if !msg.trim_start().starts_with('{') {
        return Ok("text");
    }
    let v: Value =
        serde_json::from_str(msg).map_err(|e| format!("starts with '{{' but is not JSON: {e}"))?;
    rich_value(&v, true)
}

// One arm per rich message type, each with the fields the platform requires: a table.
fn rich_value(v: &Value, allow_multi: bool) -> Result<&'static str, String> {
    let o = v
        .as_object()
        .ok_or("a rich message must be a JSON object")?;
    let mut keys = o.keys();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(
            "a rich message has exactly one key (news, image, miniprogrampage, multimsg)".into(),
        );
    };
    let body = &o[key];
    let non_empty = |obj: &Map<String, Value>, k: &str| {
        obj.get(k)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    match key.as_str() {
        "news" => {
            let arts = body
                .get("articles")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .ok_or("news.articles must be a non-empty array")?;
            for (i, a) in arts.iter().enumerate() {
                let a = a
                    .as_object()
                    .ok_or(format!("news.articles[{i}] is not an object"))?;
                if !non_empty(a, "title") {
                    return Err(format!("news.articles[{i}].title missing"));
                }
            }
            Ok("news")
        }
        "image" => {
            let i = body.as_object().ok_or("image must be an object")?;
            if non_empty(i, "media_id") || non_empty(i, "url") {
                Ok("image")
            } else {
                Err("image needs media_id or url".into())
            }
        }
        "miniprogrampage" => {
            let m = body
                .as_object()
                .ok_or("miniprogrampage must be an object")?;
            for k in ["title", "appid", "pagepath"] {
                if !non_empty(m, k) {
                    return Err(format!("miniprogrampage.{k} missing"));
                }
            }
            if !(non_empty(m, "thumb_media_id") || non_empty(m, "thumb_url")) {
                return Err("miniprogrampage needs thumb_media_id or thumb_url".into());
            }
            Ok("miniprogrampage")
        }
        "multimsg" if allow_multi => {
            let items = body
                .as_array()
                .filter(|a| !a.is_empty())
                .ok_or("multimsg must be a non-empty array")?;
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if s.trim_start().starts_with('{') => {
                        return Err(format!(
                            "multimsg[{i}] is a JSON-encoded string; a rich item must be an \
                             object (as a string it would be shown as text)"
                        ));
                    }
                    Value::String(s) if !s.is_empty() => {}
                    Value::Object(_) => {
                        rich_value(item, false).map_err(|e| format!("multimsg[{i}]: {e}"))?;
                    }
                    _ => {
                        return Err(format!(
                            "multimsg[{i}] must be a non-empty string or a rich object"
                        ));
                    }
                }
            }
            Ok("multimsg")
        }
        other => Err(format!("unknown rich message type '{other}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rich_types() {
        assert_eq!(
            rich_type("hello <a href=\"weixin://bizmsgmenu?msgmenuid=1\">x</a>"),
            Ok("text")
        );
        assert_eq!(
            rich_type(r#"{"news":{"articles":[{"title":"t","url":"u"}]}}"#),
            Ok("news")
        );
        assert_eq!(rich_type(r#" {"image":{"media_id":"m"}}"#), Ok("image"));
        assert_eq!(
            rich_type(
                r#"{"miniprogrampage":{"title":"t","appid":"wx1","pagepath":"p","thumb_url":"u"}}"#
            ),
            Ok("miniprogrampage")
        );
        assert_eq!(
            rich_type(
                r#"{"multimsg":["hi",{"image":{"url":"u"}},{"news":{"articles":[{"title":"t"}]}}]}"#
            ),
            Ok("multimsg")
        );
        for bad in [
            "{not json",
            r#"{"news":{"articles":[]}}"#,
            r#"{"image":{}}"#,
            r#"{"miniprogrampage":{"title":"t","appid":"a","pagepath":"p"}}"#,
            r#"{"multimsg":[]}"#,
            r#"{"multimsg":["hi","{\"image\":{\"url\":\"u\"}}"]}"#,
            r#"{"multimsg":[{"multimsg":["x"]}]}"#,
            r#"{"video":{}}"#,
            r#"{"image":{"url":"u"},"news":{}}"#,
        ] {
            assert!(rich_type(bad).is_err(), "{bad}");
        }
    }
}
