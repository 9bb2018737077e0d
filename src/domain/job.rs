//! The job contract: what upstream publishes, validated once, at the boundary.
//!
//! [`parse`] turns one AMQP message body into a [`Job`] for one account, or into a [`JobError`]
//! whose `reason` is a stable snake_case word (it becomes the dead letter's
//! `x-wxdispatch-reason` header; all of them are listed in [`reason`]) and whose `detail` is one
//! short line naming the field and the offending value or limit, e.g.
//! `message.text.content: 2100 bytes, limit 2048`.
//!
//! ```json
//! {"job_id": "r-20261121-000123", "to": "oUser-openid-or-external-userid", "open_kfid": "wkXXXX",
//!  "message": {"text": "Hello, how can I help?"}, "gate": "bot", "not_after": "2026-11-21T10:00:00Z"}
//! ```
//!
//! The rules, in the order they are checked (CONTRACT.md §4 and §6, limits from
//! `reference/wechat-api.md`):
//!
//! 1. the body fits `max_body`, is UTF-8 and a JSON object;
//! 2. `job_id` (else the AMQP `message_id`) is 1–32 chars of `[0-9A-Za-z_-]`. From here on every
//!    error carries the job id so the rejection can be recorded under it;
//! 3. `kind` (`send` by default; `event_reply` is WeCom only), `to` (a recipient, or for a
//!    broadcast an array of up to [`MAX_BROADCAST_RECIPIENTS`]), `open_kfid` (WeCom; defaulted when
//!    the account has exactly one), `message` (exactly one key, the message type, validated against
//!    the platform's own payload format and limits), `gate`, `not_after`, the `chatbot` extras, and
//!    the kind's own fields (`code`; `service_state`/`servicer_userid`/`kefustate`).
//!
//! Unknown top-level fields are ignored (forward compatibility), and so are fields that do not
//! apply to the account's channel (`chatbot` on a WeCom account, `open_kfid` on a chatbot account).
//! Unknown fields *inside* a message payload are passed through to the platform untouched.
//!
//! The second half renders a job into the platform's request: [`chatbot_sendmsg_xml`] (the
//! plaintext the chatbot channel encrypts), [`chatbot_kefustate_get_xml`],
//! [`chatbot_kefustate_change_xml`], [`wecom_send_body`] and [`wecom_event_body`].
//!
//! Pure code: no I/O, no clock, no randomness. [`parse`] never panics, whatever the input (see the
//! property tests at the bottom).

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use sha1::{Digest, Sha1};

use crate::config::AccountConfig;
use crate::domain::channel::Channel;

/// Longest job id. The job id is sent as WeCom's `msgid`, which is "at most 32 bytes of
/// `[0-9a-zA-Z_-]`" (kf/send_msg); CONTRACT.md §4 adopts the same rule for both channels.
pub const MAX_JOB_ID_LEN: usize = 32;
/// Recipients of one broadcast job (CONTRACT.md §6).
pub const MAX_BROADCAST_RECIPIENTS: usize = 100_000;
/// Longest recipient (`to`), in characters. Real openids are 28 chars and external_userids 32;
/// 128 leaves room for other id schemes without letting pasted garbage through.
pub const MAX_RECIPIENT_CHARS: usize = 128;
/// Input quoted in a `detail` is cut to this many characters: the detail becomes an AMQP header
/// and a log field, and must stay one short line whatever the body holds.
const DETAIL_QUOTE_CHARS: usize = 100;

// --- WeCom kf/send_msg limits: reference/wechat-api.md, and for menu items the field docs of
// --- the kf send_msg API as transcribed in silenceper/wechat `work/kf/sendmsg/message.go`.

/// `text.content`: "最长不超过2048个字节".
pub const WECOM_TEXT_MAX_BYTES: usize = 2048;
/// `link.title` ≤ 128 bytes.
pub const WECOM_LINK_TITLE_MAX_BYTES: usize = 128;
/// `link.desc` ≤ 512 bytes.
pub const WECOM_LINK_DESC_MAX_BYTES: usize = 512;
/// `link.url` ≤ 2048 bytes.
pub const WECOM_LINK_URL_MAX_BYTES: usize = 2048;
/// `miniprogram.title` ≤ 64 bytes.
pub const WECOM_MINIPROGRAM_TITLE_MAX_BYTES: usize = 64;
/// `msgmenu.head_content` ≤ 1024 bytes.
pub const WECOM_MENU_HEAD_MAX_BYTES: usize = 1024;
/// `msgmenu.tail_content` ≤ 1024 bytes.
pub const WECOM_MENU_TAIL_MAX_BYTES: usize = 1024;
/// `msgmenu.list`: "不能多于10个".
pub const WECOM_MENU_MAX_ITEMS: usize = 10;
/// Menu item `click.id`: 1..=64 bytes.
const WECOM_MENU_CLICK_ID_MAX_BYTES: usize = 64;
/// Menu item `click.content`: 1..=128 bytes.
const WECOM_MENU_CLICK_CONTENT_MAX_BYTES: usize = 128;
/// Menu item `view.url`: 1..=2048 bytes.
const WECOM_MENU_VIEW_URL_MAX_BYTES: usize = 2048;
/// Menu item `view.content`: 1..=1024 bytes.
const WECOM_MENU_VIEW_CONTENT_MAX_BYTES: usize = 1024;
/// Menu item `miniprogram.appid`: 1..=32 bytes.
const WECOM_MENU_MP_APPID_MAX_BYTES: usize = 32;
/// Menu item `miniprogram.pagepath`: 1..=1024 bytes.
const WECOM_MENU_MP_PAGEPATH_MAX_BYTES: usize = 1024;
/// Menu item `miniprogram.content`: 1..=1024 bytes.
const WECOM_MENU_MP_CONTENT_MAX_BYTES: usize = 1024;
/// Latitude range of `location` (degrees).
const WECOM_LATITUDE_MAX: f64 = 90.0;
/// Longitude range of `location` (degrees).
const WECOM_LONGITUDE_MAX: f64 = 180.0;

/// Message types of WeCom kf/send_msg (CONTRACT.md §4).
pub const WECOM_MSGTYPES: [&str; 11] = [
    "text",
    "image",
    "voice",
    "video",
    "file",
    "link",
    "miniprogram",
    "msgmenu",
    "location",
    "business_card",
    "ca_link",
];
/// Message types kf/send_msg_on_event accepts ("msgtype text|msgmenu", wechat-api.md).
pub const WECOM_EVENT_MSGTYPES: [&str; 2] = ["text", "msgmenu"];

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
/// Values of the chatbot `event` field (sendmsg "事件列表").
pub const CHATBOT_EVENTS: [&str; 4] = [
    "waiterQualityEvaluate",
    "waiterEnter",
    "waiterSwitch",
    "waiterQuit",
];

/// The stable reason words of a rejected job (the AMQP header `x-wxdispatch-reason`).
pub mod reason {
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const INVALID_UTF8: &str = "invalid_utf8";
    pub const INVALID_JSON: &str = "invalid_json";
    pub const MISSING_JOB_ID: &str = "missing_job_id";
    pub const INVALID_JOB_ID: &str = "invalid_job_id";
    pub const INVALID_KIND: &str = "invalid_kind";
    pub const INVALID_TO: &str = "invalid_to";
    pub const TOO_MANY_RECIPIENTS: &str = "too_many_recipients";
    pub const MISSING_MESSAGE: &str = "missing_message";
    pub const INVALID_MESSAGE: &str = "invalid_message";
    pub const UNKNOWN_MSGTYPE: &str = "unknown_msgtype";
    pub const MESSAGE_OVER_LIMIT: &str = "message_over_limit";
    pub const MISSING_OPEN_KFID: &str = "missing_open_kfid";
    pub const INVALID_OPEN_KFID: &str = "invalid_open_kfid";
    pub const UNKNOWN_OPEN_KFID: &str = "unknown_open_kfid";
    pub const INVALID_GATE: &str = "invalid_gate";
    pub const INVALID_NOT_AFTER: &str = "invalid_not_after";
    pub const INVALID_CHATBOT: &str = "invalid_chatbot";
    pub const INVALID_CODE: &str = "invalid_code";
    pub const INVALID_TRANSFER: &str = "invalid_transfer";

    /// Every reason [`super::parse`] can return.
    pub const ALL: [&str; 20] = [
        BODY_TOO_LARGE,
        INVALID_UTF8,
        INVALID_JSON,
        MISSING_JOB_ID,
        INVALID_JOB_ID,
        INVALID_KIND,
        INVALID_TO,
        TOO_MANY_RECIPIENTS,
        MISSING_MESSAGE,
        INVALID_MESSAGE,
        UNKNOWN_MSGTYPE,
        MESSAGE_OVER_LIMIT,
        MISSING_OPEN_KFID,
        INVALID_OPEN_KFID,
        UNKNOWN_OPEN_KFID,
        INVALID_GATE,
        INVALID_NOT_AFTER,
        INVALID_CHATBOT,
        INVALID_CODE,
        INVALID_TRANSFER,
    ];
}

/// Whether a human agent's presence suppresses the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `"bot"` (default): a bot reply, suppressed while a human serves the conversation
    /// (chatbot kefustate `on`; WeCom service_state 2 or 3).
    Bot,
    /// `"none"`: always sent (e.g. the human agent's own message).
    None,
}

impl Gate {
    pub fn as_str(self) -> &'static str {
        match self {
            Gate::Bot => "bot",
            Gate::None => "none",
        }
    }
}

/// A hand-over to or from a human. Exactly the fields of the account's channel are set.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// WeCom: the target session state, 1..=4 (service_state/trans).
    pub service_state: Option<i64>,
    /// WeCom: the human servicer; present exactly when `service_state == 3`.
    pub servicer_userid: Option<String>,
    /// Chatbot: `"on"` (hand to a human) or `"off"` (back to the bot) (kefustate/change).
    pub kefustate: Option<String>,
}

/// What the job asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Send `message` to `to` (chatbot sendmsg, WeCom kf/send_msg).
    Send,
    /// WeCom kf/send_msg_on_event with the welcome/end `code` (single use, valid 20 s).
    EventReply { code: String },
    /// Hand the conversation over (WeCom service_state/trans, chatbot kefustate/change).
    Transfer(Transfer),
    /// One `message` to many recipients; fanned out with [`fan_out`]. Recipients are kept
    /// verbatim (the broadcast module dedupes and checks each one with [`valid_recipient`]).
    Broadcast { recipients: Vec<String> },
}

impl JobKind {
    pub fn as_str(&self) -> &'static str {
        match self {
            JobKind::Send => "send",
            JobKind::EventReply { .. } => "event_reply",
            JobKind::Transfer(_) => "transfer",
            JobKind::Broadcast { .. } => "broadcast",
        }
    }
}

/// A validated message: its type and the platform payload for it.
///
/// Normalised: a WeCom bare-string text becomes `{"content": s}`; a chatbot text is always the
/// bare string (`{"content": s}` is accepted too); the items of a chatbot `multimsg` are one-key
/// objects (`{"text": s}`, `{"news": {...}}`, ...), a bare string item becoming `{"text": s}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub msgtype: String,
    pub payload: serde_json::Value,
}

/// Optional chatbot sendmsg extras (the job's `chatbot` object).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChatbotExtras {
    /// The sendmsg `channel` number; `None` = the account's `default_channel`.
    pub channel: Option<i64>,
    /// One of [`CHATBOT_EVENTS`].
    pub event: Option<String>,
    pub kefuname: Option<String>,
    pub kefuavatar: Option<String>,
    pub ans_node_name: Option<String>,
    /// The OA / mini-program appid. Validated and kept, but not rendered: the contract puts the
    /// platform APPID in sendmsg's `<appid>` and the format has no other field for it (see
    /// [`chatbot_sendmsg_xml`]).
    pub appid: Option<String>,
}

/// One validated job.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The idempotency key (also WeCom's `msgid`).
    pub job_id: String,
    pub kind: JobKind,
    /// The recipient: openid (chatbot) or external_userid (WeCom); empty for a broadcast.
    pub to: String,
    /// WeCom: always `Some` after [`parse`] (defaulted when the account has exactly one
    /// open_kfid). Chatbot: `None`.
    pub open_kfid: Option<String>,
    /// `Some` for send, event_reply and broadcast; `None` for transfer.
    pub message: Option<Message>,
    /// Chatbot accounts only; default (all `None`) on WeCom accounts.
    pub chatbot: ChatbotExtras,
    pub gate: Gate,
    /// Not sent after this instant (then the job is `expired`).
    pub not_after: Option<DateTime<Utc>>,
}

/// Why a job is rejected. `reason` is a stable snake_case word that names the problem (it becomes
/// the AMQP header x-wxdispatch-reason; see [`reason`]); `detail` is one human line naming the
/// field and value/limit (e.g. "message.text.content: 2100 bytes, limit 2048"); `job_id` is the
/// job id when one could be extracted and is valid even though something else is wrong (so the
/// rejection can be recorded).
///
/// When the body cannot be read at all (`body_too_large`, `invalid_utf8`, `invalid_json`),
/// `job_id` is the AMQP `message_id` if that is a valid job id: the contract lets it stand in for
/// the body's `job_id`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct JobError {
    pub reason: &'static str,
    pub detail: String,
    pub job_id: Option<String>,
}

/// 1..=32 of `[0-9A-Za-z_-]`.
pub fn valid_job_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_JOB_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A plausible recipient id: 1..=[`MAX_RECIPIENT_CHARS`] characters, no whitespace and no
/// control characters (no platform id has them; they only come from upstream bugs). Used for
/// `to` by [`parse`], and by the broadcast fan-out for each recipient.
pub fn valid_recipient(s: &str) -> bool {
    !s.is_empty()
        && s.chars().count() <= MAX_RECIPIENT_CHARS
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// Deterministic per-recipient job id of a broadcast: `"b"` + the first 31 hex digits of
/// SHA-1(broadcast_id ‖ "\n" ‖ recipient). A valid job id of exactly 32 chars, the same in every
/// run and process, 124 bits wide (collisions are out of reach for any number of recipients).
/// The newline cannot occur in a job id, so (broadcast_id, recipient) pairs never alias.
pub fn derive_job_id(broadcast_id: &str, recipient: &str) -> String {
    let mut h = Sha1::new();
    h.update(broadcast_id.as_bytes());
    h.update(b"\n");
    h.update(recipient.as_bytes());
    let hex = hex::encode(h.finalize());
    let mut id = String::with_capacity(MAX_JOB_ID_LEN);
    id.push('b');
    id.push_str(&hex[..MAX_JOB_ID_LEN - 1]);
    id
}

/// The per-recipient `Send` job of a broadcast: derived job id, `to = recipient`, and the same
/// message, gate, not_after, open_kfid and chatbot extras.
pub fn fan_out(broadcast: &Job, recipient: &str) -> Job {
    Job {
        job_id: derive_job_id(&broadcast.job_id, recipient),
        kind: JobKind::Send,
        to: recipient.to_owned(),
        open_kfid: broadcast.open_kfid.clone(),
        message: broadcast.message.clone(),
        chatbot: broadcast.chatbot.clone(),
        gate: broadcast.gate,
        not_after: broadcast.not_after,
    }
}

// ------------------------------------------------------------------------------------------------
// Parsing
// ------------------------------------------------------------------------------------------------

/// A rejection before the job id is attached.
struct Reject {
    reason: &'static str,
    detail: String,
}

type R<T> = Result<T, Reject>;

fn reject<T>(reason: &'static str, detail: impl Into<String>) -> R<T> {
    Err(Reject {
        reason,
        detail: detail.into(),
    })
}

/// Parse and validate one AMQP message body for `account`. `message_id` is the AMQP message_id
/// property, used as job_id when the body has none. Never panics on any input.
pub fn parse(
    body: &[u8],
    message_id: Option<&str>,
    account: &AccountConfig,
    max_body: usize,
) -> Result<Job, JobError> {
    let early = |reason: &'static str, detail: String| JobError {
        reason,
        detail,
        job_id: message_id.filter(|m| valid_job_id(m)).map(str::to_owned),
    };
    if body.len() > max_body {
        let n = body.len();
        return Err(early(
            reason::BODY_TOO_LARGE,
            format!("body: {n} bytes, limit {max_body}"),
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        early(
            reason::INVALID_UTF8,
            format!("body: invalid UTF-8 at byte {at}"),
        )
    })?;
    // A UTF-8 byte order mark is harmless; some producers write one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text).map_err(|e| {
        early(
            reason::INVALID_JSON,
            format!("body: {}", clip_plain(&e.to_string())),
        )
    })?;
    let Value::Object(obj) = value else {
        return Err(early(
            reason::INVALID_JSON,
            format!("body: expected a JSON object, got {}", type_name(&value)),
        ));
    };
    let job_id = job_id_of(&obj, message_id).map_err(|r| JobError {
        reason: r.reason,
        detail: r.detail,
        job_id: None,
    })?;
    parse_fields(&obj, &job_id, account).map_err(|r| JobError {
        reason: r.reason,
        detail: r.detail,
        job_id: Some(job_id),
    })
}

fn job_id_of(obj: &Map<String, Value>, message_id: Option<&str>) -> R<String> {
    const RULE: &str = "must be 1-32 chars of [0-9A-Za-z_-]";
    match obj.get("job_id") {
        None | Some(Value::Null) => match message_id {
            None | Some("") => reject(
                reason::MISSING_JOB_ID,
                "job_id: missing (set the body's job_id or the AMQP message_id property)",
            ),
            Some(m) if valid_job_id(m) => Ok(m.to_owned()),
            Some(m) => reject(
                reason::INVALID_JOB_ID,
                format!(
                    "message_id property (no job_id in the body): {}: {RULE}",
                    clip(m)
                ),
            ),
        },
        Some(Value::String(s)) if valid_job_id(s) => Ok(s.clone()),
        Some(Value::String(s)) => reject(
            reason::INVALID_JOB_ID,
            format!("job_id: {}: {RULE}", clip(s)),
        ),
        Some(other) => reject(
            reason::INVALID_JOB_ID,
            format!("job_id: expected a string, got {}", type_name(other)),
        ),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KindTag {
    Send,
    EventReply,
    Transfer,
    Broadcast,
}

fn parse_fields(obj: &Map<String, Value>, job_id: &str, account: &AccountConfig) -> R<Job> {
    let channel = account.channel;
    let kind = kind_of(obj.get("kind"), account)?;

    let (to, recipients) = if kind == KindTag::Broadcast {
        (String::new(), recipients_of(obj.get("to"))?)
    } else {
        (recipient_of(obj.get("to"))?, Vec::new())
    };

    let open_kfid = match channel {
        Channel::Wecom => Some(open_kfid_of(obj.get("open_kfid"), account)?),
        Channel::Chatbot => None,
    };

    let message = match (kind, obj.get("message")) {
        (KindTag::Transfer, None | Some(Value::Null)) => None,
        (KindTag::Transfer, Some(_)) => {
            // Sending it would be silently skipped; say so instead.
            return reject(
                reason::INVALID_MESSAGE,
                "message: a transfer job carries no message (publish a separate send job)",
            );
        }
        (_, m) => Some(message_of(m, channel, kind == KindTag::EventReply)?),
    };

    let gate = match obj.get("gate") {
        None | Some(Value::Null) => Gate::Bot,
        Some(Value::String(s)) if s == "bot" => Gate::Bot,
        Some(Value::String(s)) if s == "none" => Gate::None,
        Some(other) => {
            return reject(
                reason::INVALID_GATE,
                format!("gate: {}: expected \"bot\" or \"none\"", show(other)),
            );
        }
    };

    let not_after = match obj.get("not_after") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(e) => {
                return reject(
                    reason::INVALID_NOT_AFTER,
                    format!("not_after: {}: not an RFC 3339 time ({e})", clip(s)),
                );
            }
        },
        Some(other) => {
            return reject(
                reason::INVALID_NOT_AFTER,
                format!(
                    "not_after: expected an RFC 3339 string, got {}",
                    type_name(other)
                ),
            );
        }
    };

    let chatbot = match channel {
        Channel::Chatbot => chatbot_extras_of(obj.get("chatbot"))?,
        Channel::Wecom => ChatbotExtras::default(),
    };

    let kind = match kind {
        KindTag::Send => JobKind::Send,
        KindTag::Broadcast => JobKind::Broadcast { recipients },
        KindTag::EventReply => JobKind::EventReply {
            code: code_of(obj.get("code"))?,
        },
        KindTag::Transfer => JobKind::Transfer(transfer_of(obj, channel)?),
    };

    Ok(Job {
        job_id: job_id.to_owned(),
        kind,
        to,
        open_kfid,
        message,
        chatbot,
        gate,
        not_after,
    })
}

fn kind_of(v: Option<&Value>, account: &AccountConfig) -> R<KindTag> {
    let name = match v {
        None | Some(Value::Null) => return Ok(KindTag::Send),
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return reject(
                reason::INVALID_KIND,
                format!("kind: expected a string, got {}", type_name(other)),
            );
        }
    };
    match (name, account.channel) {
        ("send", _) => Ok(KindTag::Send),
        ("transfer", _) => Ok(KindTag::Transfer),
        ("broadcast", _) => Ok(KindTag::Broadcast),
        ("event_reply", Channel::Wecom) => Ok(KindTag::EventReply),
        ("event_reply", Channel::Chatbot) => reject(
            reason::INVALID_KIND,
            format!(
                "kind: event_reply is WeCom only (account {} is a chatbot account)",
                account.name
            ),
        ),
        (other, _) => reject(
            reason::INVALID_KIND,
            format!(
                "kind: {}: expected send, event_reply, transfer or broadcast",
                clip(other)
            ),
        ),
    }
}

fn recipient_of(v: Option<&Value>) -> R<String> {
    match v {
        None | Some(Value::Null) => reject(reason::INVALID_TO, "to: missing"),
        Some(Value::String(s)) => {
            check_recipient(s, "to")?;
            Ok(s.clone())
        }
        Some(Value::Array(_)) => reject(
            reason::INVALID_TO,
            "to: an array of recipients needs kind \"broadcast\"",
        ),
        Some(other) => reject(
            reason::INVALID_TO,
            format!("to: expected a string, got {}", type_name(other)),
        ),
    }
}

fn check_recipient(s: &str, path: &str) -> R<()> {
    if s.is_empty() {
        return reject(reason::INVALID_TO, format!("{path}: empty"));
    }
    let n = s.chars().count();
    if n > MAX_RECIPIENT_CHARS {
        return reject(
            reason::INVALID_TO,
            format!("{path}: {n} chars, limit {MAX_RECIPIENT_CHARS}"),
        );
    }
    if !valid_recipient(s) {
        return reject(
            reason::INVALID_TO,
            format!(
                "{path}: {}: contains whitespace or a control character",
                clip(s)
            ),
        );
    }
    Ok(())
}

fn recipients_of(v: Option<&Value>) -> R<Vec<String>> {
    let items = match v {
        Some(Value::Array(items)) => items,
        None | Some(Value::Null) => {
            return reject(
                reason::INVALID_TO,
                "to: missing (a broadcast needs an array of recipients)",
            );
        }
        Some(other) => {
            return reject(
                reason::INVALID_TO,
                format!(
                    "to: a broadcast needs an array of recipients, got {}",
                    type_name(other)
                ),
            );
        }
    };
    if items.is_empty() {
        return reject(reason::INVALID_TO, "to: empty array (no recipients)");
    }
    if items.len() > MAX_BROADCAST_RECIPIENTS {
        return reject(
            reason::TOO_MANY_RECIPIENTS,
            format!(
                "to: {} recipients, limit {MAX_BROADCAST_RECIPIENTS}",
                items.len()
            ),
        );
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => reject(
                reason::INVALID_TO,
                format!("to[{i}]: expected a string, got {}", type_name(other)),
            ),
        })
        .collect()
}

fn open_kfid_of(v: Option<&Value>, account: &AccountConfig) -> R<String> {
    let kfids = &account.open_kfids;
    match v {
        None | Some(Value::Null) => match kfids.as_slice() {
            [only] => Ok(only.clone()),
            _ => reject(
                reason::MISSING_OPEN_KFID,
                format!(
                    "open_kfid: missing, and account {} has {} open_kfids (name one)",
                    account.name,
                    kfids.len()
                ),
            ),
        },
        Some(Value::String(s)) if s.is_empty() => {
            reject(reason::INVALID_OPEN_KFID, "open_kfid: empty string")
        }
        Some(Value::String(s)) if kfids.iter().any(|k| k == s) => Ok(s.clone()),
        Some(Value::String(s)) => reject(
            reason::UNKNOWN_OPEN_KFID,
            format!(
                "open_kfid: {} is not one of account {}'s open_kfids",
                clip(s),
                account.name
            ),
        ),
        Some(other) => reject(
            reason::INVALID_OPEN_KFID,
            format!("open_kfid: expected a string, got {}", type_name(other)),
        ),
    }
}

fn code_of(v: Option<&Value>) -> R<String> {
    match v {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        None | Some(Value::Null) => reject(
            reason::INVALID_CODE,
            "code: missing (event_reply needs the event's welcome_code or msg_code)",
        ),
        Some(Value::String(_)) => reject(reason::INVALID_CODE, "code: empty string"),
        Some(other) => reject(
            reason::INVALID_CODE,
            format!("code: expected a string, got {}", type_name(other)),
        ),
    }
}

fn transfer_of(obj: &Map<String, Value>, channel: Channel) -> R<Transfer> {
    match channel {
        Channel::Wecom => {
            let state = match obj.get("service_state") {
                None | Some(Value::Null) => {
                    return reject(
                        reason::INVALID_TRANSFER,
                        "service_state: missing (a WeCom transfer needs the target state 1-4)",
                    );
                }
                Some(v) => match v.as_i64() {
                    Some(n) if (1..=4).contains(&n) => n,
                    _ => {
                        return reject(
                            reason::INVALID_TRANSFER,
                            format!(
                                "service_state: {}: expected an integer 1-4 (1 bot, 2 queued, 3 human, 4 ended)",
                                show(v)
                            ),
                        );
                    }
                },
            };
            let servicer = match obj.get("servicer_userid") {
                None | Some(Value::Null) => None,
                Some(Value::String(s)) if s.is_empty() => None,
                Some(Value::String(s)) => Some(s.clone()),
                Some(other) => {
                    return reject(
                        reason::INVALID_TRANSFER,
                        format!(
                            "servicer_userid: expected a string, got {}",
                            type_name(other)
                        ),
                    );
                }
            };
            match (state, &servicer) {
                (3, None) => reject(
                    reason::INVALID_TRANSFER,
                    "servicer_userid: required with service_state 3 (human servicer)",
                ),
                // The platform: "第一次进入【3 人工接待】时必填，其他情况不填".
                (s, Some(_)) if s != 3 => reject(
                    reason::INVALID_TRANSFER,
                    format!("servicer_userid: only allowed with service_state 3, not {s}"),
                ),
                _ => Ok(Transfer {
                    service_state: Some(state),
                    servicer_userid: servicer,
                    kefustate: None,
                }),
            }
        }
        Channel::Chatbot => match obj.get("kefustate") {
            Some(Value::String(s)) if s == "on" || s == "off" => Ok(Transfer {
                service_state: None,
                servicer_userid: None,
                kefustate: Some(s.clone()),
            }),
            None | Some(Value::Null) => reject(
                reason::INVALID_TRANSFER,
                "kefustate: missing (a chatbot transfer needs \"on\" or \"off\")",
            ),
            Some(other) => reject(
                reason::INVALID_TRANSFER,
                format!("kefustate: {}: expected \"on\" or \"off\"", show(other)),
            ),
        },
    }
}

fn chatbot_extras_of(v: Option<&Value>) -> R<ChatbotExtras> {
    let map = match v {
        None | Some(Value::Null) => return Ok(ChatbotExtras::default()),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return reject(
                reason::INVALID_CHATBOT,
                format!("chatbot: expected an object, got {}", type_name(other)),
            );
        }
    };
    let string = |key: &str| -> R<Option<String>> {
        match map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.chars().all(xml_char_ok) => reject(
                reason::INVALID_CHATBOT,
                format!("chatbot.{key}: contains a character XML cannot carry"),
            ),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => reject(
                reason::INVALID_CHATBOT,
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
                    reason::INVALID_CHATBOT,
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
            reason::INVALID_CHATBOT,
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
        appid: string("appid")?,
    })
}

// --- messages -----------------------------------------------------------------------------------

fn message_of(v: Option<&Value>, channel: Channel, event_reply: bool) -> R<Message> {
    let map = match v {
        None | Some(Value::Null) => return reject(reason::MISSING_MESSAGE, "message: missing"),
        Some(Value::Object(map)) => map,
        Some(other) => {
            return reject(
                reason::INVALID_MESSAGE,
                format!(
                    "message: expected an object with one key, the message type; got {}",
                    type_name(other)
                ),
            );
        }
    };
    let mut entries = map.iter();
    let (msgtype, payload) = match (entries.next(), entries.next()) {
        (Some(entry), None) => entry,
        _ => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(5).collect();
            return reject(
                reason::INVALID_MESSAGE,
                format!(
                    "message: expected exactly one key (the message type), got {}: {}",
                    map.len(),
                    clip(&keys.join(", "))
                ),
            );
        }
    };
    let path = format!("message.{msgtype}");
    let payload = match channel {
        Channel::Chatbot => chatbot_payload(msgtype, payload, &path, false)?,
        Channel::Wecom => {
            if event_reply
                && WECOM_MSGTYPES.contains(&msgtype.as_str())
                && !WECOM_EVENT_MSGTYPES.contains(&msgtype.as_str())
            {
                return reject(
                    reason::UNKNOWN_MSGTYPE,
                    format!(
                        "message: {msgtype} cannot be sent by event_reply (only text, msgmenu)"
                    ),
                );
            }
            wecom_payload(msgtype, payload, &path)?
        }
    };
    Ok(Message {
        msgtype: msgtype.clone(),
        payload,
    })
}

/// Typed access to the fields of one object inside a message, with error details that name
/// the full path (`message.link.title`).
struct Fields<'a> {
    map: &'a Map<String, Value>,
    path: &'a str,
}

impl<'a> Fields<'a> {
    fn of(v: &'a Value, path: &'a str) -> R<Self> {
        match v {
            Value::Object(map) => Ok(Self { map, path }),
            other => reject(
                reason::INVALID_MESSAGE,
                format!("{path}: expected an object, got {}", type_name(other)),
            ),
        }
    }

    fn at(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    /// An optional string of at most `max_bytes` (`null` = absent).
    fn opt_str(&self, key: &str, max_bytes: usize) -> R<Option<&'a str>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() > max_bytes => reject(
                reason::MESSAGE_OVER_LIMIT,
                format!("{}: {} bytes, limit {max_bytes}", self.at(key), s.len()),
            ),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => reject(
                reason::INVALID_MESSAGE,
                format!(
                    "{}: expected a string, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }

    /// An optional string that, when present, is not empty.
    fn opt_nonempty(&self, key: &str, max_bytes: usize) -> R<Option<&'a str>> {
        match self.opt_str(key, max_bytes)? {
            Some("") => reject(
                reason::INVALID_MESSAGE,
                format!("{}: empty string", self.at(key)),
            ),
            other => Ok(other),
        }
    }

    /// A required non-empty string of at most `max_bytes`.
    fn req_str(&self, key: &str, max_bytes: usize) -> R<&'a str> {
        match self.opt_str(key, max_bytes)? {
            Some("") => reject(
                reason::INVALID_MESSAGE,
                format!("{}: empty string", self.at(key)),
            ),
            Some(s) => Ok(s),
            None => reject(
                reason::INVALID_MESSAGE,
                format!("{}: missing", self.at(key)),
            ),
        }
    }

    /// A required number within `-limit..=limit`.
    fn req_coordinate(&self, key: &str, limit: f64) -> R<f64> {
        match self.map.get(key) {
            Some(v @ Value::Number(n)) => match n.as_f64() {
                Some(x) if (-limit..=limit).contains(&x) => Ok(x),
                _ => reject(
                    reason::INVALID_MESSAGE,
                    format!(
                        "{}: {}: out of range -{limit}..{limit}",
                        self.at(key),
                        show(v)
                    ),
                ),
            },
            None | Some(Value::Null) => reject(
                reason::INVALID_MESSAGE,
                format!("{}: missing", self.at(key)),
            ),
            Some(other) => reject(
                reason::INVALID_MESSAGE,
                format!(
                    "{}: expected a number, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }

    /// A required nested object.
    fn object(&self, key: &str, path: &'a str) -> R<Fields<'a>> {
        match self.map.get(key) {
            None | Some(Value::Null) => reject(reason::INVALID_MESSAGE, format!("{path}: missing")),
            Some(v) => Fields::of(v, path),
        }
    }

    /// An optional array (`null` = absent).
    fn opt_array(&self, key: &str) -> R<Option<&'a Vec<Value>>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(other) => reject(
                reason::INVALID_MESSAGE,
                format!(
                    "{}: expected an array, got {}",
                    self.at(key),
                    type_name(other)
                ),
            ),
        }
    }
}

/// Items of an array counted against `lo..=hi` (`lo` short: invalid; `hi` exceeded: over limit).
fn check_count(items: &[Value], path: &str, lo: usize, hi: usize) -> R<()> {
    let n = items.len();
    if n < lo {
        return reject(
            reason::INVALID_MESSAGE,
            format!("{path}: {n} items, needs at least {lo}"),
        );
    }
    if n > hi {
        return reject(
            reason::MESSAGE_OVER_LIMIT,
            format!("{path}: {n} items, limit {hi}"),
        );
    }
    Ok(())
}

/// Validate a WeCom kf/send_msg payload; returns it normalised.
fn wecom_payload(msgtype: &str, payload: &Value, path: &str) -> R<Value> {
    match msgtype {
        "text" => {
            let normalized = match payload {
                Value::String(s) => json!({ "content": s }),
                Value::Object(_) => payload.clone(),
                other => {
                    return reject(
                        reason::INVALID_MESSAGE,
                        format!(
                            "{path}: expected a string or {{\"content\": string}}, got {}",
                            type_name(other)
                        ),
                    );
                }
            };
            Fields::of(&normalized, path)?.req_str("content", WECOM_TEXT_MAX_BYTES)?;
            return Ok(normalized);
        }
        "image" | "voice" | "video" | "file" => {
            Fields::of(payload, path)?.req_str("media_id", usize::MAX)?;
        }
        "link" => {
            let f = Fields::of(payload, path)?;
            f.req_str("title", WECOM_LINK_TITLE_MAX_BYTES)?;
            f.opt_str("desc", WECOM_LINK_DESC_MAX_BYTES)?;
            f.req_str("url", WECOM_LINK_URL_MAX_BYTES)?;
            f.req_str("thumb_media_id", usize::MAX)?;
        }
        "miniprogram" => {
            let f = Fields::of(payload, path)?;
            f.req_str("appid", usize::MAX)?;
            // Optional on the platform ("title 否"), truncated there past 64 bytes; we reject.
            f.opt_str("title", WECOM_MINIPROGRAM_TITLE_MAX_BYTES)?;
            f.req_str("thumb_media_id", usize::MAX)?;
            f.req_str("pagepath", usize::MAX)?;
        }
        "msgmenu" => {
            let f = Fields::of(payload, path)?;
            let head = f.opt_str("head_content", WECOM_MENU_HEAD_MAX_BYTES)?;
            let tail = f.opt_str("tail_content", WECOM_MENU_TAIL_MAX_BYTES)?;
            let list = f.opt_array("list")?;
            if let Some(items) = list {
                let list_path = f.at("list");
                check_count(items, &list_path, 0, WECOM_MENU_MAX_ITEMS)?;
                for (i, item) in items.iter().enumerate() {
                    wecom_menu_item(item, &format!("{list_path}[{i}]"))?;
                }
            }
            let empty = head.is_none_or(str::is_empty)
                && tail.is_none_or(str::is_empty)
                && list.is_none_or(Vec::is_empty);
            if empty {
                return reject(
                    reason::INVALID_MESSAGE,
                    format!("{path}: empty (set head_content, list or tail_content)"),
                );
            }
        }
        "location" => {
            let f = Fields::of(payload, path)?;
            f.opt_str("name", usize::MAX)?;
            f.opt_str("address", usize::MAX)?;
            f.req_coordinate("latitude", WECOM_LATITUDE_MAX)?;
            f.req_coordinate("longitude", WECOM_LONGITUDE_MAX)?;
        }
        "business_card" => {
            Fields::of(payload, path)?.req_str("userid", usize::MAX)?;
        }
        "ca_link" => {
            Fields::of(payload, path)?.req_str("link_url", usize::MAX)?;
        }
        other => {
            return reject(
                reason::UNKNOWN_MSGTYPE,
                format!(
                    "message: {} is not a WeCom message type ({})",
                    clip(other),
                    WECOM_MSGTYPES.join(", ")
                ),
            );
        }
    }
    Ok(payload.clone())
}

fn wecom_menu_item(item: &Value, path: &str) -> R<()> {
    let f = Fields::of(item, path)?;
    let ty = f.req_str("type", usize::MAX)?;
    let sub_path = format!("{path}.{ty}");
    match ty {
        "click" => {
            let c = f.object("click", &sub_path)?;
            c.opt_nonempty("id", WECOM_MENU_CLICK_ID_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_CLICK_CONTENT_MAX_BYTES)?;
        }
        "view" => {
            let c = f.object("view", &sub_path)?;
            c.req_str("url", WECOM_MENU_VIEW_URL_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_VIEW_CONTENT_MAX_BYTES)?;
        }
        "miniprogram" => {
            let c = f.object("miniprogram", &sub_path)?;
            c.req_str("appid", WECOM_MENU_MP_APPID_MAX_BYTES)?;
            c.req_str("pagepath", WECOM_MENU_MP_PAGEPATH_MAX_BYTES)?;
            c.req_str("content", WECOM_MENU_MP_CONTENT_MAX_BYTES)?;
        }
        "text" => {
            // No documented length for a text item in our sources: only non-empty is checked.
            let c = f.object("text", &sub_path)?;
            c.req_str("content", usize::MAX)?;
        }
        other => {
            return reject(
                reason::INVALID_MESSAGE,
                format!(
                    "{path}.type: {}: expected click, view, miniprogram or text",
                    clip(other)
                ),
            );
        }
    }
    Ok(())
}

/// Validate a chatbot sendmsg message; returns it normalised (see [`Message`]). `nested` is set
/// for the items of a `multimsg`, which cannot themselves be `multimsg`.
fn chatbot_payload(msgtype: &str, payload: &Value, path: &str, nested: bool) -> R<Value> {
    match msgtype {
        "text" => {
            let text = match payload {
                Value::String(s) => s.as_str(),
                Value::Object(_) => {
                    Fields::of(payload, path)?.req_str("content", CHATBOT_TEXT_MAX_BYTES)?
                }
                other => {
                    return reject(
                        reason::INVALID_MESSAGE,
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
                return reject(reason::INVALID_MESSAGE, format!("{articles_path}: missing"));
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
                    reason::INVALID_MESSAGE,
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
                    reason::INVALID_MESSAGE,
                    format!("{path}: needs thumb_media_id or thumb_url"),
                );
            }
        }
        "multimsg" if nested => {
            return reject(
                reason::INVALID_MESSAGE,
                format!("{path}: a multimsg cannot contain a multimsg"),
            );
        }
        "multimsg" => {
            let Value::Array(items) = payload else {
                return reject(
                    reason::INVALID_MESSAGE,
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
                reason::UNKNOWN_MSGTYPE,
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
                reason: reason::INVALID_MESSAGE,
                detail: format!(
                    "{path}: starts with '{{' but is not a JSON rich message ({})",
                    clip_plain(&e.to_string())
                ),
            })?;
            if !parsed.is_object() {
                return reject(
                    reason::INVALID_MESSAGE,
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
            reason::INVALID_MESSAGE,
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
        return reject(reason::INVALID_MESSAGE, format!("{path}: empty text"));
    }
    // The platform reads a `msg` that starts with '{' as a rich message (JSON).
    if text.trim_start().starts_with('{') {
        return reject(
            reason::INVALID_MESSAGE,
            format!(
                "{path}: a text starting with '{{' would be read as a rich message; \
                 send the typed message (news, image, ...) instead"
            ),
        );
    }
    if text.len() > CHATBOT_TEXT_MAX_BYTES {
        return reject(
            reason::MESSAGE_OVER_LIMIT,
            format!(
                "{path}: {} bytes, limit {CHATBOT_TEXT_MAX_BYTES}",
                text.len()
            ),
        );
    }
    if let Some(c) = text.chars().find(|&c| !xml_char_ok(c)) {
        return reject(
            reason::INVALID_MESSAGE,
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

// --- detail helpers -----------------------------------------------------------------------------

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Cut to [`DETAIL_QUOTE_CHARS`] characters, marking the cut with "…".
fn clip_plain(s: &str) -> String {
    match s.char_indices().nth(DETAIL_QUOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// A value quoted for a detail: clipped, escaped onto one line.
fn clip(s: &str) -> String {
    format!("{:?}", clip_plain(s))
}

/// A JSON value for a detail: scalars shown (clipped), containers by type.
fn show(v: &Value) -> String {
    match v {
        Value::String(s) => clip(s),
        Value::Number(n) => clip_plain(&n.to_string()),
        Value::Bool(b) => b.to_string(),
        other => type_name(other).to_owned(),
    }
}

// ------------------------------------------------------------------------------------------------
// Rendering
// ------------------------------------------------------------------------------------------------

/// Characters XML 1.0 allows (`Char` production); Rust strings hold no surrogates.
fn xml_char_ok(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
}

/// `<name><![CDATA[value]]></name>`. A `]]>` inside the value is split across two CDATA
/// sections (`]]]]><![CDATA[>`); characters XML cannot carry are dropped ([`parse`] already
/// rejects them in the fields it validates; this guards hand-built jobs).
fn push_cdata_element(out: &mut String, name: &str, value: &str) {
    out.push('<');
    out.push_str(name);
    out.push_str("><![CDATA[");
    let clean: String = value.chars().filter(|&c| xml_char_ok(c)).collect();
    out.push_str(&clean.replace("]]>", "]]]]><![CDATA[>"));
    out.push_str("]]></");
    out.push_str(name);
    out.push('>');
}

/// The sendmsg `msg` string of one chatbot message: a text is the string itself; a rich message
/// is the JSON string `{"<type>": payload}`; a multimsg is `{"multimsg": [...]}` whose items are
/// themselves `msg` strings (a text item the bare string, a rich item its JSON string). The
/// platform's answer examples show text items as strings (`{"multimsg":["first text"]}`); that
/// rich items are likewise JSON *strings*, not nested objects, is *unverified*.
fn chatbot_msg(msgtype: &str, payload: &Value) -> String {
    match (msgtype, payload) {
        ("text", Value::String(s)) => s.clone(),
        ("text", Value::Object(map)) => match map.get("content") {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        },
        ("multimsg", Value::Array(items)) => {
            let parts: Vec<Value> = items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Value::String(s.clone()),
                    Value::Object(map) => match map.iter().next() {
                        Some((ty, inner)) => Value::String(chatbot_msg(ty, inner)),
                        None => Value::String(String::new()),
                    },
                    other => Value::String(other.to_string()),
                })
                .collect();
            json!({ "multimsg": parts }).to_string()
        }
        (ty, payload) => {
            let mut one = Map::new();
            one.insert(ty.to_owned(), payload.clone());
            Value::Object(one).to_string()
        }
    }
}

/// Chatbot sendmsg plaintext XML:
/// `<xml><appid/><openid/><msg/><channel>N</channel>[<event/><kefuname/><kefuavatar/><ans_node_name/>]</xml>`,
/// strings in CDATA.
///
/// `appid` is `account.appid`, the platform APPID (CONTRACT.md §2; the simulator checks it).
/// `job.chatbot.appid` (the OA / mini-program appid) is deliberately not rendered: the format has
/// no separate field for it. Note that the platform's third-party-kefu sendmsg page describes
/// `<appid>` itself as "当渠道为0、5、6时，请传入公众号或小程序的appid，渠道为7时非必填或传入token";
/// if that turns out to be what the platform enforces, `<appid>` should become
/// `job.chatbot.appid` with this APPID as the fallback (a one-line change here).
/// `channel`: `job.chatbot.channel`, else `account.default_channel`.
pub fn chatbot_sendmsg_xml(job: &Job, account: &AccountConfig) -> String {
    let extras = &job.chatbot;
    let appid = account.appid.as_deref().unwrap_or("");
    let msg = job
        .message
        .as_ref()
        .map(|m| chatbot_msg(&m.msgtype, &m.payload))
        .unwrap_or_default();
    let channel = extras.channel.unwrap_or(account.default_channel);

    let mut out = String::with_capacity(128 + msg.len());
    out.push_str("<xml>");
    push_cdata_element(&mut out, "appid", appid);
    push_cdata_element(&mut out, "openid", &job.to);
    push_cdata_element(&mut out, "msg", &msg);
    out.push_str(&format!("<channel>{channel}</channel>"));
    for (name, value) in [
        ("event", &extras.event),
        ("kefuname", &extras.kefuname),
        ("kefuavatar", &extras.kefuavatar),
        ("ans_node_name", &extras.ans_node_name),
    ] {
        if let Some(v) = value {
            push_cdata_element(&mut out, name, v);
        }
    }
    out.push_str("</xml>");
    out
}

/// Chatbot kefustate/get plaintext XML: appid, openid, `type` = `simple`.
pub fn chatbot_kefustate_get_xml(appid: &str, openid: &str) -> String {
    let mut out = String::from("<xml>");
    push_cdata_element(&mut out, "appid", appid);
    push_cdata_element(&mut out, "openid", openid);
    push_cdata_element(&mut out, "type", "simple");
    out.push_str("</xml>");
    out
}

/// Chatbot kefustate/change plaintext XML: appid, openid, kefustate (`on` | `off`).
pub fn chatbot_kefustate_change_xml(appid: &str, openid: &str, kefustate: &str) -> String {
    let mut out = String::from("<xml>");
    push_cdata_element(&mut out, "appid", appid);
    push_cdata_element(&mut out, "openid", openid);
    push_cdata_element(&mut out, "kefustate", kefustate);
    out.push_str("</xml>");
    out
}

/// A WeCom request body serialized straight from the job: string fields, then `msgtype` and
/// the `<msgtype>` payload. (Building a `serde_json::Value` map first and cloning the payload
/// into it was ~3 % of a loaded worker.) The msgtypes are validated WeCom names, so the
/// payload's key never collides with a field name.
struct WecomBody<'a> {
    fields: &'a [(&'static str, &'a str)],
    message: Option<&'a Message>,
}

impl serde::Serialize for WecomBody<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.fields {
            map.serialize_entry(k, v)?;
        }
        if let Some(m) = self.message {
            map.serialize_entry("msgtype", &m.msgtype)?;
            map.serialize_entry(&m.msgtype, &m.payload)?;
        }
        map.end()
    }
}

impl WecomBody<'_> {
    fn to_vec(&self) -> Vec<u8> {
        // Strings and JSON values only: serializing them cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// WeCom kf/send_msg body: `{"touser", "open_kfid", "msgid": job_id, "msgtype", "<msgtype>": payload}`.
pub fn wecom_send_body(job: &Job) -> Vec<u8> {
    WecomBody {
        fields: &[
            ("touser", &job.to),
            ("open_kfid", job.open_kfid.as_deref().unwrap_or("")),
            ("msgid", &job.job_id),
        ],
        message: job.message.as_ref(),
    }
    .to_vec()
}

/// WeCom kf/send_msg_on_event body: `{"code", "msgid", "msgtype", "<msgtype>": payload}`.
pub fn wecom_event_body(job: &Job) -> Vec<u8> {
    let code = match &job.kind {
        JobKind::EventReply { code } => code.as_str(),
        _ => "",
    };
    WecomBody {
        fields: &[("code", code), ("msgid", &job.job_id)],
        message: job.message.as_ref(),
    }
    .to_vec()
}

// ------------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    /// The worker's default `max_body_bytes`.
    const MAX: usize = 4 * 1024 * 1024;

    fn chatbot() -> AccountConfig {
        serde_json::from_value(json!({
            "name": "bot", "channel": "chatbot", "appid": "PLATFORMAPPID01", "default_channel": 7,
            "token": "t", "encoding_aes_key": "k"
        }))
        .unwrap()
    }
    fn wecom() -> AccountConfig {
        serde_json::from_value(json!({
            "name": "kf", "channel": "wecom", "corpid": "ww1", "secret": "s", "open_kfids": ["wkA"]
        }))
        .unwrap()
    }
    fn wecom2() -> AccountConfig {
        serde_json::from_value(json!({
            "name": "kf2", "channel": "wecom", "corpid": "ww1", "secret": "s",
            "open_kfids": ["wkA", "wkB"]
        }))
        .unwrap()
    }

    fn p(account: &AccountConfig, body: &Value) -> Result<Job, JobError> {
        parse(body.to_string().as_bytes(), None, account, MAX)
    }
    fn ok(account: &AccountConfig, body: Value) -> Job {
        p(account, &body).unwrap_or_else(|e| panic!("{body}: {e}"))
    }

    #[test]
    fn job_id_validity() {
        assert!(valid_job_id("r-20261121-000123"));
        assert!(valid_job_id("a"));
        assert!(valid_job_id(&"x".repeat(32)));
        assert!(!valid_job_id(""));
        assert!(!valid_job_id(&"x".repeat(33)));
        assert!(!valid_job_id("a b"));
        assert!(!valid_job_id("a.b"));
        assert!(!valid_job_id("é"));
    }

    #[test]
    fn minimal_jobs_get_defaults() {
        let j = ok(
            &wecom(),
            json!({"job_id": "j1", "to": "wmU", "message": {"text": "hi"}}),
        );
        assert_eq!(j.kind, JobKind::Send);
        assert_eq!(j.kind.as_str(), "send");
        assert_eq!(
            j.open_kfid.as_deref(),
            Some("wkA"),
            "the only open_kfid is the default"
        );
        assert_eq!(j.gate, Gate::Bot);
        assert_eq!(j.not_after, None);
        assert_eq!(j.chatbot, ChatbotExtras::default());
        assert_eq!(
            j.message,
            Some(Message {
                msgtype: "text".into(),
                payload: json!({"content": "hi"})
            })
        );

        let j = ok(
            &chatbot(),
            json!({"job_id": "j1", "to": "oU", "message": {"text": "hi"},
            "open_kfid": "ignored-on-chatbot", "unknown_future_field": [1, 2]}),
        );
        assert_eq!(j.open_kfid, None);
        assert_eq!(j.message.unwrap().payload, json!("hi"));
    }

    #[test]
    fn job_id_from_message_id_and_body_wins() {
        let body = json!({"to": "oU", "message": {"text": "hi"}}).to_string();
        let j = parse(body.as_bytes(), Some("amqp-id-1"), &chatbot(), MAX).unwrap();
        assert_eq!(j.job_id, "amqp-id-1");
        let body = json!({"job_id": "body-id", "to": "oU", "message": {"text": "hi"}}).to_string();
        let j = parse(body.as_bytes(), Some("amqp-id-1"), &chatbot(), MAX).unwrap();
        assert_eq!(j.job_id, "body-id");
    }

    #[test]
    fn full_job_fields() {
        let j = ok(
            &wecom2(),
            json!({"job_id": "j1", "to": "wmU", "open_kfid": "wkB", "message": {"text": {"content": "x"}},
                   "gate": "none", "not_after": "2026-11-21T18:00:00+08:00"}),
        );
        assert_eq!(j.open_kfid.as_deref(), Some("wkB"));
        assert_eq!(j.gate, Gate::None);
        assert_eq!(
            j.not_after.unwrap().to_rfc3339(),
            "2026-11-21T10:00:00+00:00",
            "not_after normalised to UTC"
        );
        let j = ok(
            &chatbot(),
            json!({"job_id": "j1", "to": "oU", "message": {"text": "x"}, "chatbot": {
                "channel": 9, "event": "waiterEnter", "kefuname": "Ann", "kefuavatar": "https://a/b.png",
                "ans_node_name": "billing", "appid": "wxOA"}}),
        );
        assert_eq!(
            j.chatbot,
            ChatbotExtras {
                channel: Some(9),
                event: Some("waiterEnter".into()),
                kefuname: Some("Ann".into()),
                kefuavatar: Some("https://a/b.png".into()),
                ans_node_name: Some("billing".into()),
                appid: Some("wxOA".into()),
            }
        );
        // On a WeCom account the chatbot extras are ignored, even malformed.
        let j = ok(
            &wecom(),
            json!({"job_id": "j1", "to": "wmU", "message": {"text": "x"}, "chatbot": 5}),
        );
        assert_eq!(j.chatbot, ChatbotExtras::default());
    }

    #[test]
    fn kinds() {
        let j = ok(
            &wecom(),
            json!({"job_id": "j1", "kind": "event_reply", "to": "wmU", "code": "C0DE",
            "message": {"msgmenu": {"head_content": "Rate us", "list": [
                {"type": "click", "click": {"id": "1", "content": "Good"}}]}}}),
        );
        assert_eq!(
            j.kind,
            JobKind::EventReply {
                code: "C0DE".into()
            }
        );
        assert_eq!(j.kind.as_str(), "event_reply");

        let j = ok(
            &wecom(),
            json!({"job_id": "j1", "kind": "transfer", "to": "wmU",
            "service_state": 3, "servicer_userid": "zhangsan"}),
        );
        assert_eq!(
            j.kind,
            JobKind::Transfer(Transfer {
                service_state: Some(3),
                servicer_userid: Some("zhangsan".into()),
                kefustate: None
            })
        );
        assert_eq!(j.message, None);
        let j = ok(
            &wecom(),
            json!({"job_id": "j1", "kind": "transfer", "to": "wmU", "service_state": 4}),
        );
        assert_eq!(j.kind.as_str(), "transfer");

        let j = ok(
            &chatbot(),
            json!({"job_id": "j1", "kind": "transfer", "to": "oU", "kefustate": "on"}),
        );
        assert_eq!(
            j.kind,
            JobKind::Transfer(Transfer {
                service_state: None,
                servicer_userid: None,
                kefustate: Some("on".into())
            })
        );

        let j = ok(
            &chatbot(),
            json!({"job_id": "B1", "kind": "broadcast", "to": ["u1", "u2", "u1", ""],
            "message": {"text": "news!"}}),
        );
        assert_eq!(
            j.kind,
            JobKind::Broadcast {
                recipients: vec!["u1".into(), "u2".into(), "u1".into(), "".into()]
            },
            "recipients kept verbatim"
        );
        assert_eq!(j.to, "");
        assert_eq!(j.kind.as_str(), "broadcast");
    }

    /// One concrete bad input per reason word: (account, body, expected reason, job_id expected).
    #[test]
    fn every_reason() {
        let c = chatbot();
        let w = wecom();
        let w2 = wecom2();
        let big_recipients: Vec<String> = (0..=MAX_BROADCAST_RECIPIENTS)
            .map(|i| format!("u{i}"))
            .collect();
        #[rustfmt::skip]
        let cases: Vec<(&str, &AccountConfig, Value)> = vec![
            (reason::MISSING_JOB_ID, &c, json!({"to": "oU", "message": {"text": "hi"}})),
            (reason::MISSING_JOB_ID, &c, json!({"job_id": null, "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_JOB_ID, &c, json!({"job_id": "has space", "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_JOB_ID, &c, json!({"job_id": "x".repeat(33), "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_JOB_ID, &c, json!({"job_id": 12, "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_JOB_ID, &c, json!({"job_id": "", "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_KIND, &c, json!({"job_id": "j", "kind": "shout", "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_KIND, &c, json!({"job_id": "j", "kind": 1, "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_KIND, &c, json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "oU", "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "to": "", "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "to": 42, "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "to": "o".repeat(129), "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "to": "oU\n", "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "to": ["a"], "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "kind": "broadcast", "to": "u1", "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "kind": "broadcast", "to": [], "message": {"text": "hi"}})),
            (reason::INVALID_TO, &c, json!({"job_id": "j", "kind": "broadcast", "to": ["u1", 2], "message": {"text": "hi"}})),
            (reason::TOO_MANY_RECIPIENTS, &c, json!({"job_id": "j", "kind": "broadcast", "to": big_recipients, "message": {"text": "hi"}})),
            (reason::MISSING_MESSAGE, &c, json!({"job_id": "j", "to": "oU"})),
            (reason::MISSING_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": null})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": "hi"})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "a", "image": {"url": "u"}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": ""}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "a\u{0}b"}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": []}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": [{"title": "t"}]}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"image": {}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"miniprogrampage": {"title": "t", "appid": "wx"}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"miniprogrampage": {"title": "t", "appid": "wx", "pagepath": "p"}}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": []}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [{"multimsg": ["a"]}]}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [3]}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": ["{not json"]}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": ["{\"image\":{}}"]}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": " {\"news\":{}}"}})),
            (reason::INVALID_MESSAGE, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU", "kefustate": "on", "message": {"text": "x"}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"text": 5}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"image": {"media_id": ""}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"link": {"title": "t", "url": "u"}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"location": {"latitude": 91, "longitude": 0}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"location": {"latitude": 0, "longitude": "1"}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"list": [{"type": "bogus"}]}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {}}})),
            (reason::INVALID_MESSAGE, &w, json!({"job_id": "j", "to": "wmU", "message": {"business_card": {"userid": 7}}})),
            (reason::UNKNOWN_MSGTYPE, &c, json!({"job_id": "j", "to": "oU", "message": {"link": {}}})),
            (reason::UNKNOWN_MSGTYPE, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": [{"voice": {}}]}})),
            (reason::UNKNOWN_MSGTYPE, &w, json!({"job_id": "j", "to": "wmU", "message": {"news": {}}})),
            (reason::UNKNOWN_MSGTYPE, &w, json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "wmU", "message": {"image": {"media_id": "m"}}})),
            (reason::MESSAGE_OVER_LIMIT, &w, json!({"job_id": "j", "to": "wmU", "message": {"text": "x".repeat(2049)}})),
            (reason::MESSAGE_OVER_LIMIT, &w, json!({"job_id": "j", "to": "wmU", "message": {"link": {"title": "t".repeat(129), "url": "u", "thumb_media_id": "m"}}})),
            (reason::MESSAGE_OVER_LIMIT, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"list": vec![json!({"type": "text", "text": {"content": "a"}}); 11]}}})),
            (reason::MESSAGE_OVER_LIMIT, &w, json!({"job_id": "j", "to": "wmU", "message": {"msgmenu": {"head_content": "h".repeat(1025)}}})),
            (reason::MESSAGE_OVER_LIMIT, &w, json!({"job_id": "j", "to": "wmU", "message": {"miniprogram": {"appid": "wx", "title": "t".repeat(65), "thumb_media_id": "m", "pagepath": "p"}}})),
            (reason::MESSAGE_OVER_LIMIT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "x".repeat(4097)}})),
            (reason::MESSAGE_OVER_LIMIT, &c, json!({"job_id": "j", "to": "oU", "message": {"news": {"articles": vec![json!({"title": "t", "url": "u"}); 9]}}})),
            (reason::MESSAGE_OVER_LIMIT, &c, json!({"job_id": "j", "to": "oU", "message": {"multimsg": vec![json!("a"); 11]}})),
            (reason::MISSING_OPEN_KFID, &w2, json!({"job_id": "j", "to": "wmU", "message": {"text": "hi"}})),
            (reason::INVALID_OPEN_KFID, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": 3, "message": {"text": "hi"}})),
            (reason::INVALID_OPEN_KFID, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": "", "message": {"text": "hi"}})),
            (reason::UNKNOWN_OPEN_KFID, &w, json!({"job_id": "j", "to": "wmU", "open_kfid": "wkZ", "message": {"text": "hi"}})),
            (reason::INVALID_GATE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "gate": "human"})),
            (reason::INVALID_GATE, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "gate": true})),
            (reason::INVALID_NOT_AFTER, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_after": "tomorrow"})),
            (reason::INVALID_NOT_AFTER, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "not_after": 1700000000})),
            (reason::INVALID_CHATBOT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": "x"})),
            (reason::INVALID_CHATBOT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"event": "waiterDance"}})),
            (reason::INVALID_CHATBOT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"channel": "7"}})),
            (reason::INVALID_CHATBOT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"channel": -1}})),
            (reason::INVALID_CHATBOT, &c, json!({"job_id": "j", "to": "oU", "message": {"text": "hi"}, "chatbot": {"kefuname": 1}})),
            (reason::INVALID_CODE, &w, json!({"job_id": "j", "kind": "event_reply", "to": "wmU", "message": {"text": "hi"}})),
            (reason::INVALID_CODE, &w, json!({"job_id": "j", "kind": "event_reply", "code": "", "to": "wmU", "message": {"text": "hi"}})),
            (reason::INVALID_CODE, &w, json!({"job_id": "j", "kind": "event_reply", "code": 1, "to": "wmU", "message": {"text": "hi"}})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU"})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 0})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 5})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": "2"})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 3})),
            (reason::INVALID_TRANSFER, &w, json!({"job_id": "j", "kind": "transfer", "to": "wmU", "service_state": 2, "servicer_userid": "z"})),
            (reason::INVALID_TRANSFER, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU", "kefustate": "maybe"})),
            (reason::INVALID_TRANSFER, &c, json!({"job_id": "j", "kind": "transfer", "to": "oU"})),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for (want, account, body) in cases {
            let shown = clip_plain(&body.to_string());
            let e = p(account, &body).expect_err(&shown);
            assert_eq!(e.reason, want, "{shown}: {e}");
            let id_expected = !matches!(want, "missing_job_id" | "invalid_job_id");
            assert_eq!(
                e.job_id.is_some(),
                id_expected,
                "{shown}: job_id {:?}",
                e.job_id
            );
            if let Some(id) = &e.job_id {
                assert_eq!(id, "j");
            }
            assert!(
                e.detail.chars().count() < 300,
                "detail too long: {}",
                e.detail
            );
            seen.insert(want);
        }
        // The three pre-JSON reasons are covered in `unreadable_bodies`.
        for r in reason::ALL {
            if ![
                reason::BODY_TOO_LARGE,
                reason::INVALID_UTF8,
                reason::INVALID_JSON,
            ]
            .contains(&r)
            {
                assert!(seen.contains(r), "no test case for {r}");
            }
        }
    }

    #[test]
    fn unreadable_bodies() {
        let c = chatbot();
        let good = json!({"job_id": "j1", "to": "oU", "message": {"text": "hi"}}).to_string();
        let e = parse(good.as_bytes(), Some("mid-1"), &c, good.len() - 1).unwrap_err();
        assert_eq!(e.reason, "body_too_large");
        assert_eq!(
            e.detail,
            format!("body: {} bytes, limit {}", good.len(), good.len() - 1)
        );
        assert_eq!(
            e.job_id.as_deref(),
            Some("mid-1"),
            "the message_id stands in"
        );
        assert!(
            parse(good.as_bytes(), None, &c, good.len()).is_ok(),
            "limit is inclusive"
        );

        let e = parse(b"{\"job_id\": \"j\xff\"}", None, &c, MAX).unwrap_err();
        assert_eq!(
            (e.reason, e.detail.as_str()),
            ("invalid_utf8", "body: invalid UTF-8 at byte 13")
        );
        assert_eq!(e.job_id, None);

        let e = parse(b"{\"job_id\": ", Some("not valid!"), &c, MAX).unwrap_err();
        assert_eq!(e.reason, "invalid_json");
        assert!(
            e.detail.starts_with("body: EOF while parsing"),
            "{}",
            e.detail
        );
        assert_eq!(e.job_id, None, "an invalid message_id is not used");

        let e = parse(b"[1,2]", None, &c, MAX).unwrap_err();
        assert_eq!(
            (e.reason, e.detail.as_str()),
            ("invalid_json", "body: expected a JSON object, got an array")
        );

        // A huge malformed body is not echoed.
        let junk = format!("{{\"a\": \"{}", "z".repeat(100_000));
        let e = parse(junk.as_bytes(), None, &c, 1 << 20).unwrap_err();
        assert_eq!(e.reason, "invalid_json");
        assert!(e.detail.len() < 200, "{}", e.detail);

        // A byte order mark is tolerated.
        let bom = format!("\u{feff}{good}");
        assert_eq!(parse(bom.as_bytes(), None, &c, MAX).unwrap().job_id, "j1");
    }

    #[test]
    fn details_name_field_and_limit() {
        let detail = |a: &AccountConfig, body: Value| p(a, &body).unwrap_err().detail;
        assert_eq!(
            detail(
                &wecom(),
                json!({"job_id": "j", "to": "u", "message": {"text": "x".repeat(2100)}})
            ),
            "message.text.content: 2100 bytes, limit 2048"
        );
        assert_eq!(
            detail(
                &wecom(),
                json!({"job_id": "j", "to": "u", "message": {"text": {"content": "x".repeat(2100)}}})
            ),
            "message.text.content: 2100 bytes, limit 2048"
        );
        assert_eq!(
            detail(
                &wecom(),
                json!({"job_id": "j", "to": "u", "message": {"msgmenu": {"list": [
                {"type": "click", "click": {"content": "c".repeat(129)}}]}}})
            ),
            "message.msgmenu.list[0].click.content: 129 bytes, limit 128"
        );
        assert_eq!(
            detail(
                &wecom(),
                json!({"job_id": "j", "to": "u", "message": {"location": {"latitude": -90.5, "longitude": 0}}})
            ),
            "message.location.latitude: -90.5: out of range -90..90"
        );
        assert_eq!(
            detail(
                &chatbot(),
                json!({"job_id": "j", "to": "u", "message": {"multimsg": ["a", {"news": {"articles": [{"url": "u"}]}}]}})
            ),
            "message.multimsg[1].news.articles[0].title: missing"
        );
        assert_eq!(
            detail(
                &chatbot(),
                json!({"job_id": "j", "kind": "broadcast", "to": ["a", null], "message": {"text": "x"}})
            ),
            "to[1]: expected a string, got null"
        );
        assert_eq!(
            detail(
                &wecom(),
                json!({"job_id": "j", "to": "u", "open_kfid": "wkZ", "message": {"text": "x"}})
            ),
            "open_kfid: \"wkZ\" is not one of account kf's open_kfids"
        );
        let long_kind = "k".repeat(5000);
        let d = detail(
            &chatbot(),
            json!({"job_id": "j", "kind": long_kind, "to": "u"}),
        );
        assert!(
            d.starts_with("kind: \"kkk") && d.contains('…') && d.len() < 200,
            "{d}"
        );
    }

    #[test]
    fn accepts_every_wecom_type() {
        let cases = [
            json!({"text": "plain"}),
            json!({"text": {"content": "x".repeat(2048)}}),
            json!({"image": {"media_id": "MEDIA"}}),
            json!({"voice": {"media_id": "MEDIA"}}),
            json!({"video": {"media_id": "MEDIA"}}),
            json!({"file": {"media_id": "MEDIA"}}),
            json!({"link": {"title": "t".repeat(128), "desc": "d", "url": "https://x", "thumb_media_id": "M"}}),
            json!({"miniprogram": {"appid": "wx1", "title": "t", "thumb_media_id": "M", "pagepath": "p/i"}}),
            json!({"msgmenu": {"head_content": "Rate us", "tail_content": "Thanks", "list": [
                {"type": "click", "click": {"id": "101", "content": "Good"}},
                {"type": "view", "view": {"url": "https://x", "content": "Site"}},
                {"type": "miniprogram", "miniprogram": {"appid": "wx1", "pagepath": "p", "content": "App"}},
                {"type": "text", "text": {"content": "plain", "no_newline": 1}}]}}),
            json!({"location": {"name": "HQ", "address": "1 Rd", "latitude": 22.5, "longitude": -180}}),
            json!({"business_card": {"userid": "zhangsan"}}),
            json!({"ca_link": {"link_url": "https://work.weixin.qq.com/ca/x"}}),
        ];
        let mut types = Vec::new();
        for message in cases {
            let j = ok(
                &wecom(),
                json!({"job_id": "j", "to": "wmU", "message": message}),
            );
            let m = j.message.unwrap();
            if m.msgtype != "text" {
                assert_eq!(m.payload, message[&m.msgtype], "payload kept verbatim");
            }
            types.push(m.msgtype);
        }
        types.dedup();
        assert_eq!(types, WECOM_MSGTYPES);
        // event_reply takes text and msgmenu.
        for message in [
            json!({"text": "hi"}),
            json!({"msgmenu": {"head_content": "h"}}),
        ] {
            ok(
                &wecom(),
                json!({"job_id": "j", "kind": "event_reply", "code": "c", "to": "u", "message": message}),
            );
        }
    }

    #[test]
    fn accepts_every_chatbot_type() {
        let news = json!({"articles": [{"title": "T", "description": "D", "url": "https://x", "picurl": "https://p"}]});
        let cases = [
            (
                json!({"text": "hi <a href=\"weixin://bizmsgmenu?msgmenucontent=Yes&msgmenuid=1\">Yes</a>"}),
                None,
            ),
            (json!({"text": {"content": "hi"}}), Some(json!("hi"))),
            (json!({"news": news}), None),
            (json!({"image": {"url": "https://img"}}), None),
            (json!({"image": {"media_id": "M"}}), None),
            (
                json!({"miniprogrampage": {"title": "T", "appid": "wx1", "pagepath": "p", "thumb_url": "https://t"}}),
                None,
            ),
            (
                json!({"multimsg": ["first", {"text": "second"}, {"news": news}, "{\"image\":{\"url\":\"u\"}}"]}),
                Some(
                    json!([{"text": "first"}, {"text": "second"}, {"news": news}, {"image": {"url": "u"}}]),
                ),
            ),
        ];
        let mut types = Vec::new();
        for (message, normalized) in cases {
            let j = ok(
                &chatbot(),
                json!({"job_id": "j", "to": "oU", "message": message}),
            );
            let m = j.message.unwrap();
            let want = normalized.unwrap_or_else(|| message[&m.msgtype].clone());
            assert_eq!(m.payload, want);
            types.push(m.msgtype);
        }
        types.dedup();
        assert_eq!(types, CHATBOT_MSGTYPES);
    }

    #[test]
    fn derive_job_id_is_stable_valid_and_distinct() {
        let a = derive_job_id("B-2026-11", "oUser1");
        assert_eq!(a, derive_job_id("B-2026-11", "oUser1"));
        // Pinned: this value must never change, or re-processing a broadcast would re-send.
        assert_eq!(a, "bcc64f1cc0d4d3a28de72142b86e2c11");
        assert_eq!(a.len(), 32);
        assert!(valid_job_id(&a));
        assert_ne!(a, derive_job_id("B-2026-11", "oUser2"));
        assert_ne!(a, derive_job_id("B-2026-12", "oUser1"));
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|i| derive_job_id("B", &format!("u{i}")))
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(valid_job_id(&derive_job_id("B", "")));
    }

    #[test]
    fn fan_out_copies_everything_but_recipient_and_id() {
        let b = ok(
            &wecom2(),
            json!({"job_id": "B1", "kind": "broadcast", "to": ["u1", "u2"], "open_kfid": "wkB",
                   "message": {"text": "sale"}, "gate": "none", "not_after": "2030-01-01T00:00:00Z"}),
        );
        let one = fan_out(&b, "u2");
        assert_eq!(one.job_id, derive_job_id("B1", "u2"));
        assert_eq!(one.kind, JobKind::Send);
        assert_eq!(one.to, "u2");
        assert_eq!(one.open_kfid.as_deref(), Some("wkB"));
        assert_eq!(one.message, b.message);
        assert_eq!(one.gate, Gate::None);
        assert_eq!(one.not_after, b.not_after);
        assert_eq!(one.chatbot, b.chatbot);
    }

    #[test]
    fn renders_chatbot_sendmsg_text() {
        let j = ok(
            &chatbot(),
            json!({"job_id": "j", "to": "oUser", "message": {"text": "Hi ]]> there"}}),
        );
        assert_eq!(
            chatbot_sendmsg_xml(&j, &chatbot()),
            "<xml><appid><![CDATA[PLATFORMAPPID01]]></appid><openid><![CDATA[oUser]]></openid>\
             <msg><![CDATA[Hi ]]]]><![CDATA[> there]]></msg><channel>7</channel></xml>"
        );
    }

    #[test]
    fn renders_chatbot_sendmsg_extras_and_rich() {
        let j = ok(
            &chatbot(),
            json!({"job_id": "j", "to": "oUser", "message": {"image": {"url": "https://i/1.png"}},
                   "chatbot": {"channel": 0, "event": "waiterEnter", "kefuname": "Ann", "kefuavatar": "https://a.png",
                               "ans_node_name": "Billing", "appid": "wxOA"}}),
        );
        // The OA appid of the extras is not rendered: <appid> is the platform APPID.
        assert_eq!(
            chatbot_sendmsg_xml(&j, &chatbot()),
            "<xml><appid><![CDATA[PLATFORMAPPID01]]></appid><openid><![CDATA[oUser]]></openid>\
             <msg><![CDATA[{\"image\":{\"url\":\"https://i/1.png\"}}]]></msg><channel>0</channel>\
             <event><![CDATA[waiterEnter]]></event><kefuname><![CDATA[Ann]]></kefuname>\
             <kefuavatar><![CDATA[https://a.png]]></kefuavatar><ans_node_name><![CDATA[Billing]]></ans_node_name></xml>"
        );
    }

    #[test]
    fn renders_chatbot_multimsg_items_as_msg_strings() {
        let j = ok(
            &chatbot(),
            json!({"job_id": "j", "to": "o", "message": {"multimsg": ["one", {"image": {"media_id": "M"}}]}}),
        );
        let xml = chatbot_sendmsg_xml(&j, &chatbot());
        let msg = xml
            .split("<msg><![CDATA[")
            .nth(1)
            .and_then(|s| s.split("]]></msg>").next())
            .unwrap();
        assert_eq!(
            msg,
            r#"{"multimsg":["one","{\"image\":{\"media_id\":\"M\"}}"]}"#
        );
        let back: Value = serde_json::from_str(msg).unwrap();
        assert_eq!(
            back["multimsg"][1]
                .as_str()
                .map(serde_json::from_str::<Value>)
                .unwrap()
                .unwrap(),
            json!({"image": {"media_id": "M"}})
        );
    }

    #[test]
    fn cdata_split_round_trips_through_an_xml_parser() {
        let nasty = "a]]>b]]]]>c<d>&e]]";
        let mut out = String::from("<xml>");
        push_cdata_element(&mut out, "msg", nasty);
        out.push_str("</xml>");
        let mut reader = quick_xml::Reader::from_str(&out);
        let mut text = String::new();
        loop {
            match reader.read_event().unwrap() {
                quick_xml::events::Event::CData(c) => {
                    text.push_str(std::str::from_utf8(&c.into_inner()).unwrap())
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(text, nasty);
        // Characters XML cannot carry are dropped from hand-built values.
        let mut out = String::new();
        push_cdata_element(&mut out, "x", "a\u{1}b\u{FFFF}c\td");
        assert_eq!(out, "<x><![CDATA[abc\td]]></x>");
    }

    #[test]
    fn renders_kefustate_xml() {
        assert_eq!(
            chatbot_kefustate_get_xml("APPID", "oU"),
            "<xml><appid><![CDATA[APPID]]></appid><openid><![CDATA[oU]]></openid><type><![CDATA[simple]]></type></xml>"
        );
        assert_eq!(
            chatbot_kefustate_change_xml("APPID", "oU", "off"),
            "<xml><appid><![CDATA[APPID]]></appid><openid><![CDATA[oU]]></openid><kefustate><![CDATA[off]]></kefustate></xml>"
        );
    }

    #[test]
    fn renders_wecom_bodies() {
        let j = ok(
            &wecom(),
            json!({"job_id": "r-1", "to": "wmUser", "message": {"text": "Hello"}}),
        );
        let parsed = |b: Vec<u8>| serde_json::from_slice::<Value>(&b).unwrap();
        assert_eq!(
            parsed(wecom_send_body(&j)),
            json!({"touser": "wmUser", "open_kfid": "wkA", "msgid": "r-1", "msgtype": "text",
                   "text": {"content": "Hello"}})
        );
        let menu = json!({"head_content": "Rate", "list": [{"type": "click", "click": {"id": "1", "content": "Good"}}]});
        let j = ok(
            &wecom(),
            json!({"job_id": "r-2", "kind": "event_reply", "code": "WELCOME", "to": "wmUser",
                                    "message": {"msgmenu": menu}}),
        );
        assert_eq!(
            parsed(wecom_event_body(&j)),
            json!({"code": "WELCOME", "msgid": "r-2", "msgtype": "msgmenu", "msgmenu": menu})
        );
        let j = ok(
            &wecom(),
            json!({"job_id": "r-3", "to": "wmUser",
                                    "message": {"location": {"latitude": 1.5, "longitude": 2, "name": "HQ"}}}),
        );
        assert_eq!(
            String::from_utf8(wecom_send_body(&j)).unwrap(),
            r#"{"touser":"wmUser","open_kfid":"wkA","msgid":"r-3","msgtype":"location","location":{"latitude":1.5,"longitude":2,"name":"HQ"}}"#
        );
    }

    // --- property tests -----------------------------------------------------------------------

    /// Field names and message types, so generated bodies hit the validators.
    #[rustfmt::skip]
    const KEYS: &[&str] = &[
        "job_id", "kind", "to", "open_kfid", "message", "gate", "not_after", "chatbot", "code",
        "service_state", "servicer_userid", "kefustate", "text", "content", "image", "media_id",
        "url", "news", "articles", "title", "description", "picurl", "miniprogrampage", "appid",
        "pagepath", "thumb_url", "thumb_media_id", "multimsg", "voice", "video", "file", "link",
        "desc", "miniprogram", "msgmenu", "head_content", "list", "tail_content", "type", "click",
        "id", "view", "location", "latitude", "longitude", "name", "address", "business_card",
        "userid", "ca_link", "link_url", "channel", "event", "kefuname", "kefuavatar",
    ];
    /// Values that are valid somewhere, and a few that are tricky.
    #[rustfmt::skip]
    const WORDS: &[&str] = &[
        "j1", "send", "event_reply", "transfer", "broadcast", "bot", "none", "wkA", "wkB", "on",
        "off", "waiterEnter", "2026-11-21T10:00:00Z", "oUser", "click", "view", "text",
        "miniprogram", "]]>", "", "{", r#"{"image":{"url":"u"}}"#,
    ];

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-5i64..6).prop_map(|n| json!(n)),
            any::<i64>().prop_map(|n| json!(n)),
            (-200.0f64..200.0).prop_map(|f| json!(f)),
            prop::sample::select(WORDS).prop_map(|s| json!(s)),
            "\\PC{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(prop::sample::select(KEYS), inner, 0..6).prop_map(
                    |m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
                ),
            ]
        })
    }

    fn arb_object(max_keys: usize) -> impl Strategy<Value = Map<String, Value>> {
        prop::collection::btree_map(prop::sample::select(KEYS), arb_json(), 0..max_keys)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    /// A one-key message of a real type with an arbitrary payload.
    fn arb_message() -> impl Strategy<Value = Value> {
        let types: Vec<&str> = WECOM_MSGTYPES
            .iter()
            .chain(&CHATBOT_MSGTYPES)
            .copied()
            .collect();
        (prop::sample::select(types), arb_json()).prop_map(|(t, payload)| json!({ t: payload }))
    }

    /// Either an arbitrary object of known keys, or a valid job with a few fields overridden
    /// (so the deep validation is reached, not only the first checks).
    fn arb_body() -> impl Strategy<Value = Value> {
        prop_oneof![
            arb_object(8).prop_map(Value::Object),
            (arb_object(3), proptest::option::of(arb_message())).prop_map(
                |(overrides, message)| {
                    let mut body =
                        json!({"job_id": "j1", "to": "oUser", "message": {"text": "hi"}});
                    if let Some(m) = message {
                        body["message"] = m;
                    }
                    for (k, v) in overrides {
                        body[k.as_str()] = v;
                    }
                    body
                }
            ),
        ]
    }

    /// What every outcome of `parse` must satisfy, whatever the input.
    fn check_outcome(r: &Result<Job, JobError>, account: &AccountConfig) {
        match r {
            Ok(j) => {
                assert!(valid_job_id(&j.job_id));
                match &j.kind {
                    JobKind::Broadcast { recipients } => {
                        assert!(j.to.is_empty());
                        assert!((1..=MAX_BROADCAST_RECIPIENTS).contains(&recipients.len()));
                    }
                    _ => assert!(valid_recipient(&j.to)),
                }
                assert_eq!(j.message.is_none(), matches!(j.kind, JobKind::Transfer(_)));
                match account.channel {
                    Channel::Wecom => {
                        let kfid = j.open_kfid.as_ref().expect("wecom job has an open_kfid");
                        assert!(account.open_kfids.contains(kfid));
                        let body: Value = serde_json::from_slice(&wecom_send_body(j)).unwrap();
                        if let Some(m) = &j.message {
                            assert!(WECOM_MSGTYPES.contains(&m.msgtype.as_str()));
                            assert_eq!(body[&m.msgtype], m.payload);
                            if m.msgtype == "text" {
                                let c = m.payload["content"].as_str().unwrap();
                                assert!(!c.is_empty() && c.len() <= WECOM_TEXT_MAX_BYTES);
                            }
                        }
                        let _: Value = serde_json::from_slice(&wecom_event_body(j)).unwrap();
                    }
                    Channel::Chatbot => {
                        assert_eq!(j.open_kfid, None);
                        if let Some(m) = &j.message {
                            assert!(CHATBOT_MSGTYPES.contains(&m.msgtype.as_str()));
                        }
                        let xml = chatbot_sendmsg_xml(j, account);
                        assert!(
                            xml.starts_with("<xml><appid><![CDATA[") && xml.ends_with("</xml>")
                        );
                    }
                }
            }
            Err(e) => {
                assert!(
                    reason::ALL.contains(&e.reason),
                    "unlisted reason {}",
                    e.reason
                );
                assert!(
                    e.detail.chars().count() <= 400,
                    "detail too long: {}",
                    e.detail
                );
                assert!(!e.detail.contains('\n'), "detail is one line: {}", e.detail);
                if let Some(id) = &e.job_id {
                    assert!(valid_job_id(id));
                }
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..600),
                                 mid in proptest::option::of("[ -~]{0,40}")) {
            for account in [chatbot(), wecom(), wecom2()] {
                let r = parse(&body, mid.as_deref(), &account, 512);
                check_outcome(&r, &account);
            }
        }

        #[test]
        fn never_panics_on_json_ish_strings(s in "[{}\\[\\]\":,0-9a-z_ .\\\\-]{0,300}") {
            for account in [chatbot(), wecom()] {
                check_outcome(&parse(s.as_bytes(), None, &account, MAX), &account);
            }
        }

        #[test]
        fn never_panics_on_structured_json(body in arb_body(), mid in proptest::option::of("j[0-9]")) {
            let text = body.to_string();
            for account in [chatbot(), wecom(), wecom2()] {
                check_outcome(&parse(text.as_bytes(), mid.as_deref(), &account, MAX), &account);
            }
        }
    }

    /// The structured generator must actually reach the deep validation (not only fail early).
    #[test]
    fn structured_generator_reaches_valid_jobs() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = arb_body();
        let mut reasons = std::collections::BTreeSet::new();
        let mut oks = 0;
        for _ in 0..2_000 {
            let body = strategy.new_tree(&mut runner).unwrap().current();
            match p(&wecom(), &body) {
                Ok(_) => oks += 1,
                Err(e) => {
                    reasons.insert(e.reason);
                }
            }
        }
        assert!(oks > 0, "no generated body was accepted");
        assert!(reasons.len() >= 8, "only reached {reasons:?}");
    }
}
