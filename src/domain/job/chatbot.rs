//! Dialogue Open Platform (chatbot) sendmsg messages and extras: the limits and their
//! validation.

use serde_json::{Map, Value, json};

use super::fields::{Fields, R, Reject, check_count, clip, clip_plain, reject, show, type_name};
use super::model::{ChatbotExtras, Transfer};
use super::render::xml_char_ok;
use crate::domain::account::AccountView;
use crate::domain::chatbot_state::{
    ChatbotState, DEFAULT_EXPIRES_SECS, MAX_EXPIRES_SECS, MIN_EXPIRES_SECS,
};
use crate::domain::reason::Reason;

// --- Dialogue Open Platform (chatbot) sendmsg: the platform documents no size limits for `msg`.

/// Longest chatbot text, in bytes. *Unverified*: the platform documents no limit. 4096 bytes
/// (about 1365 CJK characters) is twice WeCom's text limit, far above any readable chat bubble,
/// and keeps a runaway generator from posting megabytes through the encrypted envelope.
pub const CHATBOT_TEXT_MAX_BYTES: usize = 4096;
/// Articles in a chatbot `news` message: 1..=8, the limit WeChat applies to news messages
/// everywhere else (OA customer-service messages).
pub const CHATBOT_NEWS_MAX_ARTICLES: usize = 8;
/// Items of a chatbot `multimsg`. *Unverified*: no documented limit; 10 keeps one reply a
/// readable burst and bounds the size of the encrypted request.
pub const CHATBOT_MULTIMSG_MAX_ITEMS: usize = 10;
/// Message types of the chatbot sendmsg `msg` (CONTRACT.md §4, wechat-api.md "Rich msg").
pub const CHATBOT_MSGTYPES: [&str; 5] = ["text", "news", "image", "miniprogrampage", "multimsg"];
/// The sendmsg channels whose `<appid>` must carry the Official Account or Mini Program appid
/// (sendmsg: "当渠道为0、5、6时，请传入公众号或小程序的appid"; kefustate/get says the same): 0 OA /
/// mini program bound by scan, 5 OA menu H5, 6 mini-program plugin. On the others (7 web H5,
/// 9 WeChat kf) it may be left out.
pub const CHATBOT_CHANNELS_NEEDING_APPID: [i64; 3] = [0, 5, 6];
/// Values of the chatbot `event` field (sendmsg "事件列表").
pub const CHATBOT_EVENTS: [&str; 4] = [
    "waiterQualityEvaluate",
    "waiterEnter",
    "waiterSwitch",
    "waiterQuit",
];

/// The job's `chatbot` extras, checked against the account: on the channels of
/// [`CHATBOT_CHANNELS_NEEDING_APPID`] an appid must come from the job (`chatbot.appid`) or the
/// account (`oa_appid`), else the job is rejected as `missing_appid`.
pub(super) fn chatbot_extras_of(v: Option<&Value>, account: &dyn AccountView) -> R<ChatbotExtras> {
    let extras = chatbot_extras_fields(v)?;
    let channel = extras.channel.unwrap_or(account.default_channel());
    if CHATBOT_CHANNELS_NEEDING_APPID.contains(&channel)
        && extras.appid.is_none()
        && account.oa_appid().is_none()
    {
        return reject(
            Reason::MissingAppid,
            format!(
                "chatbot.appid: missing, and account {} has no oa_appid; channel {channel} needs \
                 the Official Account or Mini Program appid",
                clip(account.name())
            ),
        );
    }
    Ok(extras)
}

fn chatbot_extras_fields(v: Option<&Value>) -> R<ChatbotExtras> {
    let map = match v {
        None | Some(Value::Null) => return Ok(ChatbotExtras::default()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return reject(
                Reason::InvalidChatbot,
                format!("chatbot: expected an object, got {}", type_name(other)),
            );
        }
    };
    let string = |key: &str| -> R<Option<String>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.chars().all(xml_char_ok) => reject(
                Reason::InvalidChatbot,
                format!("chatbot.{key}: contains a character XML cannot carry"),
            ),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => reject(
                Reason::InvalidChatbot,
                format!("chatbot.{key}: expected a string, got {}", type_name(other)),
            ),
        }
    };
    let channel = match map.get("channel") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => Some(n),
            _ => {
                return reject(
                    Reason::InvalidChatbot,
                    format!(
                        "chatbot.channel: {}: expected a non-negative integer",
                        show(v)
                    ),
                );
            }
        },
    };
    let event = string("event")?;
    if let Some(e) = &event
        && !CHATBOT_EVENTS.contains(&e.as_str())
    {
        return reject(
            Reason::InvalidChatbot,
            format!(
                "chatbot.event: {}: expected one of {}",
                clip(e),
                CHATBOT_EVENTS.join(", ")
            ),
        );
    }
    Ok(ChatbotExtras {
        channel,
        event,
        kefuname: string("kefuname")?,
        kefuavatar: string("kefuavatar")?,
        ans_node_name: string("ans_node_name")?,
        // An empty appid is no appid: the account's `oa_appid` stands in for it.
        appid: string("appid")?.filter(|s| !s.is_empty()),
    })
}

/// Validate a chatbot sendmsg message; returns it normalised (see [`super::Message`]). `nested` is set
/// for the items of a `multimsg`, which cannot themselves be `multimsg`.
///
/// Long on purpose: one arm per message type, so the match reads as the table of
/// [`CHATBOT_MSGTYPES`] and their required fields.
pub(super) fn chatbot_payload(
    msgtype: &str,
    payload: &Value,
    path: &str,
    nested: bool,
) -> R<Value> {
    match msgtype {
        "text" => {
            let text = match payload {
                Value::String(s) => s.as_str(),
                Value::Object(_) => {
                    Fields::of(payload, path)?.req_str("content", CHATBOT_TEXT_MAX_BYTES)?
                }
                other => {
                    return reject(
                        Reason::InvalidMessage,
                        format!("{path}: expected a string, got {}", type_name(other)),
                    );
                }
            };
            check_chatbot_text(text, path)?;
            return Ok(Value::String(text.to_owned()));
        }
        "news" => {
            let f = Fields::of(payload, path)?;
            let articles_path = f.at("articles");
            let Some(articles) = f.opt_array("articles")? else {
                return reject(Reason::InvalidMessage, format!("{articles_path}: missing"));
            };
            check_count(articles, &articles_path, 1, CHATBOT_NEWS_MAX_ARTICLES)?;
            for (i, article) in articles.iter().enumerate() {
                let article_path = format!("{articles_path}[{i}]");
                let a = Fields::of(article, &article_path)?;
                a.req_str("title", usize::MAX)?;
                a.opt_str("description", usize::MAX)?;
                a.req_str("url", usize::MAX)?;
                a.opt_str("picurl", usize::MAX)?;
            }
        }
        "image" => {
            let f = Fields::of(payload, path)?;
            let media_id = f.opt_str("media_id", usize::MAX)?;
            let url = f.opt_str("url", usize::MAX)?;
            if media_id.is_none_or(str::is_empty) && url.is_none_or(str::is_empty) {
                return reject(
                    Reason::InvalidMessage,
                    format!("{path}: needs media_id or url"),
                );
            }
        }
        "miniprogrampage" => {
            let f = Fields::of(payload, path)?;
            f.req_str("title", usize::MAX)?;
            f.req_str("appid", usize::MAX)?;
            f.req_str("pagepath", usize::MAX)?;
            let media_id = f.opt_str("thumb_media_id", usize::MAX)?;
            let url = f.opt_str("thumb_url", usize::MAX)?;
            if media_id.is_none_or(str::is_empty) && url.is_none_or(str::is_empty) {
                return reject(
                    Reason::InvalidMessage,
                    format!("{path}: needs thumb_media_id or thumb_url"),
                );
            }
        }
        "multimsg" if nested => {
            return reject(
                Reason::InvalidMessage,
                format!("{path}: a multimsg cannot contain a multimsg"),
            );
        }
        "multimsg" => {
            let Value::Array(items) = payload else {
                return reject(
                    Reason::InvalidMessage,
                    format!("{path}: expected an array, got {}", type_name(payload)),
                );
            };
            check_count(items, path, 1, CHATBOT_MULTIMSG_MAX_ITEMS)?;
            let normalized = items
                .iter()
                .enumerate()
                .map(|(i, item)| multimsg_item(item, &format!("{path}[{i}]")))
                .collect::<R<Vec<Value>>>()?;
            return Ok(Value::Array(normalized));
        }
        other => {
            return reject(
                Reason::UnknownMsgtype,
                format!(
                    "message: {} is not a chatbot message type ({})",
                    clip(other),
                    CHATBOT_MSGTYPES.join(", ")
                ),
            );
        }
    }
    Ok(payload.clone())
}

/// One item of a chatbot `multimsg`, normalised to a one-key object. Accepted: a text string
/// (`"hi"` → `{"text": "hi"}`), the platform's own form of a rich item, a JSON *string*
/// (`"{\"image\":{...}}"` → `{"image": {...}}`), or a one-key object (`{"image": {...}}`).
fn multimsg_item(item: &Value, path: &str) -> R<Value> {
    let parsed;
    let item = match item {
        Value::String(s) if s.trim_start().starts_with('{') => {
            parsed = serde_json::from_str::<Value>(s).map_err(|e| Reject {
                reason: Reason::InvalidMessage,
                detail: format!(
                    "{path}: starts with '{{' but is not a JSON rich message ({})",
                    clip_plain(&e.to_string())
                ),
            })?;
            if !parsed.is_object() {
                return reject(
                    Reason::InvalidMessage,
                    format!("{path}: starts with '{{' but is not a JSON object"),
                );
            }
            &parsed
        }
        Value::String(s) => {
            check_chatbot_text(s, path)?;
            return Ok(json!({ "text": s }));
        }
        other => other,
    };
    let entry = match item {
        Value::Object(map) if map.len() == 1 => map.iter().next(),
        _ => None,
    };
    let Some((ty, inner)) = entry else {
        return reject(
            Reason::InvalidMessage,
            format!(
                "{path}: expected a string or a one-key message object, got {}",
                describe_item(item)
            ),
        );
    };
    let value = chatbot_payload(ty, inner, &format!("{path}.{ty}"), true)?;
    let mut one = Map::new();
    one.insert(ty.clone(), value);
    Ok(Value::Object(one))
}

/// A chatbot text goes verbatim into a CDATA section: non-empty, not starting with `{`, within
/// the limit, and only characters XML 1.0 can carry.
fn check_chatbot_text(text: &str, path: &str) -> R<()> {
    if text.is_empty() {
        return reject(Reason::InvalidMessage, format!("{path}: empty text"));
    }
    // The platform reads a `msg` that starts with '{' as a rich message (JSON).
    if text.trim_start().starts_with('{') {
        return reject(
            Reason::InvalidMessage,
            format!(
                "{path}: a text starting with '{{' would be read as a rich message; \
                 send the typed message (news, image, ...) instead"
            ),
        );
    }
    if text.len() > CHATBOT_TEXT_MAX_BYTES {
        return reject(
            Reason::MessageOverLimit,
            format!(
                "{path}: {} bytes, limit {CHATBOT_TEXT_MAX_BYTES}",
                text.len()
            ),
        );
    }
    if let Some(c) = text.chars().find(|&c| !xml_char_ok(c)) {
        return reject(
            Reason::InvalidMessage,
            format!(
                "{path}: contains U+{:04X}, which XML cannot carry",
                u32::from(c)
            ),
        );
    }
    Ok(())
}

fn describe_item(v: &Value) -> String {
    match v {
        Value::Object(map) => format!("an object with {} keys", map.len()),
        other => type_name(other).to_owned(),
    }
}

/// A chatbot transfer (kefustate/change): `kefustate` one of the four states (`asking`,
/// `personserving`, `complete`, `needperson`), with an optional `expires` (whole seconds,
/// [`MIN_EXPIRES_SECS`]..=[`MAX_EXPIRES_SECS`], default [`DEFAULT_EXPIRES_SECS`]); or the older
/// `on` / `off`, which take no `expires` (their request is sent unchanged, and the platform
/// applies its own rule).
pub(super) fn chatbot_transfer_of(obj: &Map<String, Value>) -> R<Transfer> {
    const STATES: &str = "asking, personserving, complete, needperson (or on, off)";
    let word = match obj.get("kefustate") {
        Some(Value::String(s)) => s.as_str(),
        None | Some(Value::Null) => {
            return reject(
                Reason::InvalidKefustate,
                format!("kefustate: missing (a chatbot transfer needs one of {STATES})"),
            );
        }
        Some(other) => {
            return reject(
                Reason::InvalidKefustate,
                format!("kefustate: {}: expected one of {STATES}", show(other)),
            );
        }
    };
    let (state, legacy) = match (
        ChatbotState::from_name(word),
        ChatbotState::from_kefustate(word),
    ) {
        (Some(s), _) => (s, false),
        (None, Some(s)) => (s, true),
        (None, None) => {
            return reject(
                Reason::InvalidKefustate,
                format!("kefustate: {}: expected one of {STATES}", clip(word)),
            );
        }
    };
    let expires = match obj.get("expires") {
        None | Some(Value::Null) => None,
        Some(_) if legacy => {
            return reject(
                Reason::InvalidExpires,
                format!(
                    "expires: not with kefustate {word} (name the state instead: on is \
                     personserving, off is asking)"
                ),
            );
        }
        Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) if (MIN_EXPIRES_SECS..=MAX_EXPIRES_SECS).contains(&n) => Some(n),
            _ => {
                return reject(
                    Reason::InvalidExpires,
                    format!(
                        "expires: {}: expected whole seconds {MIN_EXPIRES_SECS}..={MAX_EXPIRES_SECS}",
                        show(v)
                    ),
                );
            }
        },
    };
    Ok(Transfer {
        service_state: None,
        servicer_userid: None,
        kefustate: Some(word.to_owned()),
        chatbot_state: Some(state),
        expires: if legacy {
            None
        } else {
            Some(expires.unwrap_or(DEFAULT_EXPIRES_SECS))
        },
    })
}
