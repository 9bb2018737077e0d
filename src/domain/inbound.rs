//! Inbound messages from the platforms, as wxdispatch stores and publishes them: a WeCom
//! `sync_msg` entry (or a chatbot push) read into an [`Inbound`], its identity, its routing
//! word, and the side effect it has on conversations and deliveries ([`Effect`]).
//!
//! Postgres cannot hold U+0000 in `jsonb` or `text`; [`Inbound::stored_body`] is how a body
//! that contains it is stored anyway (see [`NUL_STAND_IN`]).
//!
//! Pure: no clock (the caller passes "now"), no I/O. The engine's sync loop
//! (`crate::engine::inbound`) and the chatbot callback build these; the store applies the
//! effects.

use std::borrow::Cow;

use serde_json::Value;
use sha1::{Digest, Sha1};

use crate::domain::service_state::ServiceState;

/// Longest msgid kept verbatim. AMQP `message_id` is a short string (≤ 255 bytes); a longer
/// platform id (never seen) is replaced by its SHA-1, stably.
pub const MAX_MSGID_LEN: usize = 128;
/// What stands for U+0000 in the `jsonb` copy of a body that contains it (keys and string
/// values): U+FFFD, the replacement character. That copy is for queries only; the exact
/// message is kept beside it as JSON text (see [`Inbound::stored_body`]).
pub const NUL_STAND_IN: char = '\u{FFFD}';
/// Longest msgtype used as a routing-key word; anything longer or not `[a-z0-9_]` is `other`.
const MAX_MSGTYPE_LEN: usize = 32;

/// One inbound message or event, as stored in `inbound_messages` and published.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The platform's msgid (chatbot pushes without one: `sha1:<hex of the plaintext>`).
    pub msgid: String,
    pub open_kfid: Option<String>,
    pub external_userid: Option<String>,
    /// WeCom: 3 customer, 4 system event, 5 human servicer.
    pub origin: Option<i32>,
    /// A routing-key word: the platform's msgtype (`event` for events) or `other`.
    pub msgtype: String,
    /// Unix seconds.
    pub send_time: Option<i64>,
    /// The message as the platform gave it.
    pub body: Value,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id a side effect writes to `conversations` or matches against `deliveries`: absent
/// when it holds a U+0000 (no stored id can, and Postgres `text` would refuse it).
fn id_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    str_at(v, key).filter(|s| !s.contains('\0'))
}

/// True when a string anywhere in `v` (an object key or a string value) contains U+0000.
pub fn has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(has_nul),
        Value::Object(m) => m.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// `s` with every U+0000 replaced by [`NUL_STAND_IN`] (borrowed when it has none).
pub fn replace_nul(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', NUL_STAND_IN.encode_utf8(&mut [0; 4])))
    } else {
        Cow::Borrowed(s)
    }
}

/// `v` with every U+0000 in its keys and string values replaced by [`NUL_STAND_IN`]. Two
/// keys that differ only there would merge (the later one wins); the exact text keeps both.
pub fn without_nul(v: &Value) -> Value {
    let fix = |s: &str| replace_nul(s).into_owned();
    match v {
        Value::String(s) => Value::String(fix(s)),
        Value::Array(a) => Value::Array(a.iter().map(without_nul).collect()),
        Value::Object(m) => {
            Value::Object(m.iter().map(|(k, v)| (fix(k), without_nul(v))).collect())
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => v.clone(),
    }
}

/// A body as `inbound_messages` holds it (see [`Inbound::stored_body`]).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredBody {
    /// `body` (jsonb): the message, with [`NUL_STAND_IN`] for each U+0000.
    pub json: Value,
    /// `body_exact` (text): `None` when `json` is the message itself; otherwise the exact
    /// message as JSON text, in which U+0000 is written as the six characters `\u0000`
    /// (JSON's own escape, so a JSON parser gives the original back).
    pub exact: Option<String>,
}

fn int_at(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `sha1:<hex>` of some bytes: a stable identity for content without a usable id.
pub fn content_id(bytes: &[u8]) -> String {
    format!("sha1:{}", hex::encode(Sha1::digest(bytes)))
}

/// A platform msgid as stored and used as AMQP `message_id` (see [`MAX_MSGID_LEN`]). An id
/// with a U+0000 in it (which no Postgres `text` can hold) is replaced by its SHA-1 too.
pub fn normalize_msgid(id: &str) -> String {
    if id.len() <= MAX_MSGID_LEN && !id.contains('\0') {
        id.to_owned()
    } else {
        content_id(id.as_bytes())
    }
}

/// The routing-key word for a msgtype: itself when `[a-z0-9_]{1,32}`, else `other`.
pub fn routing_word(msgtype: &str) -> String {
    let ok = !msgtype.is_empty()
        && msgtype.len() <= MAX_MSGTYPE_LEN
        && msgtype
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        msgtype.to_owned()
    } else {
        "other".to_owned()
    }
}

impl Inbound {
    /// A `msg_list` entry of sync_msg. `open_kfid` is the loop's, used when the entry has none.
    pub fn from_wecom(v: Value, open_kfid: &str) -> Self {
        let event = v.get("event").filter(|e| e.is_object());
        let msgid = match str_at(&v, "msgid") {
            Some(id) => normalize_msgid(id),
            None => content_id(v.to_string().as_bytes()),
        };
        let msgtype = routing_word(str_at(&v, "msgtype").unwrap_or(if event.is_some() {
            "event"
        } else {
            ""
        }));
        let from_event = |k: &str| event.and_then(|e| str_at(e, k)).map(str::to_owned);
        Self {
            msgid,
            open_kfid: str_at(&v, "open_kfid")
                .map(str::to_owned)
                .or_else(|| from_event("open_kfid"))
                .or_else(|| Some(open_kfid.to_owned())),
            external_userid: str_at(&v, "external_userid")
                .map(str::to_owned)
                .or_else(|| from_event("external_userid")),
            origin: int_at(&v, "origin").and_then(|o| i32::try_from(o).ok()),
            send_time: int_at(&v, "send_time"),
            body: v,
            msgtype,
        }
    }

    /// The body as stored: itself when it has no U+0000 (the usual case), else a copy with
    /// [`NUL_STAND_IN`] plus the exact JSON text (see [`StoredBody`]).
    pub fn stored_body(&self) -> StoredBody {
        if has_nul(&self.body) {
            StoredBody {
                json: without_nul(&self.body),
                exact: Some(self.body.to_string()),
            }
        } else {
            StoredBody {
                json: self.body.clone(),
                exact: None,
            }
        }
    }

    /// `<account>.<msgtype>`: the routing key on exchange `wxdispatch.inbound`.
    pub fn routing_key(&self, account: &str) -> String {
        format!("{account}.{}", self.msgtype)
    }

    /// What this message changes besides its own row (see `crate::engine::inbound`'s docs).
    /// `now` (unix seconds) stands in for a missing `send_time`.
    pub fn effect(&self, now: i64) -> Effect {
        let at = self.send_time.unwrap_or(now);
        let id = |s: &Option<String>| s.clone().filter(|s| !s.contains('\0'));
        let conv = || Some((id(&self.open_kfid)?, id(&self.external_userid)?));
        if self.origin == Some(3) {
            return match conv() {
                Some((open_kfid, external_userid)) => Effect::Customer {
                    open_kfid,
                    external_userid,
                    at,
                },
                None => Effect::None,
            };
        }
        if self.msgtype != "event" {
            return Effect::None;
        }
        let Some(ev) = self.body.get("event") else {
            return Effect::None;
        };
        match str_at(ev, "event_type") {
            Some("session_status_change") => {
                let Some(state) = int_at(ev, "change_type").and_then(ServiceState::after_change)
                else {
                    return Effect::None;
                };
                let Some((open_kfid, external_userid)) = conv() else {
                    return Effect::None;
                };
                let servicer = if state == ServiceState::Ended {
                    None
                } else {
                    id_at(ev, "new_servicer_userid").map(str::to_owned)
                };
                Effect::ServiceState {
                    open_kfid,
                    external_userid,
                    state,
                    servicer,
                    at,
                }
            }
            Some("msg_send_fail") => match id_at(ev, "fail_msgid") {
                Some(id) => Effect::SendFailed {
                    fail_msgid: id.to_owned(),
                    fail_type: int_at(ev, "fail_type").unwrap_or(0),
                },
                None => Effect::None,
            },
            _ => Effect::None,
        }
    }
}

/// A message's side effect on `conversations` / `deliveries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A customer message (origin 3) at `at` (unix seconds).
    Customer {
        open_kfid: String,
        external_userid: String,
        at: i64,
    },
    /// `session_status_change`: the session is now in `state` (see
    /// [`ServiceState::after_change`]); no servicer once it ended.
    ServiceState {
        open_kfid: String,
        external_userid: String,
        state: ServiceState,
        servicer: Option<String>,
        at: i64,
    },
    /// `msg_send_fail`: the message we sent with this msgid was not delivered.
    SendFailed {
        fail_msgid: String,
        fail_type: i64,
    },
}

/// A parsed `sync_msg` answer: one page of messages and where the next one starts.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncPage {
    pub next_cursor: Option<String>,
    /// More pages follow (the platform's `has_more` = 1); possibly after an empty one.
    pub has_more: bool,
    pub msgs: Vec<Inbound>,
}

impl SyncPage {
    /// Read a successful `sync_msg` answer; `open_kfid` is the loop's (see
    /// [`Inbound::from_wecom`]). `has_more` without `next_cursor` is an error: following it
    /// would re-read the same page forever.
    pub fn parse(v: Value, open_kfid: &str) -> Result<Self, String> {
        let has_more = match v.get("has_more") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(x) => match x.as_i64() {
                Some(n) => n != 0,
                None => return Err("has_more is not a number".into()),
            },
        };
        let next_cursor = str_at(&v, "next_cursor").map(str::to_owned);
        let msgs = match v.get("msg_list") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|m| Inbound::from_wecom(m.clone(), open_kfid))
                .collect(),
            Some(_) => return Err("msg_list is not an array".into()),
        };
        if has_more && next_cursor.is_none() {
            return Err("has_more = 1 without next_cursor".into());
        }
        Ok(Self {
            next_cursor,
            has_more,
            msgs,
        })
    }

    /// How far behind the platform this page is, in seconds, at `now`: 0 when it was the last
    /// page, the age of its newest message otherwise (`None` when no message says its time).
    pub fn lag_secs(&self, now: i64) -> Option<f64> {
        if !self.has_more {
            return Some(0.0);
        }
        self.msgs
            .iter()
            .filter_map(|m| m.send_time)
            .max()
            .map(|s| (now - s) as f64)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn customer(msgid: &str, t: i64) -> Value {
        json!({"msgid": msgid, "open_kfid": "wkA", "external_userid": "wmU", "send_time": t,
               "origin": 3, "msgtype": "text", "text": {"content": "hi"}})
    }

    fn event(ev: Value) -> Value {
        json!({"msgid": "e1", "send_time": 100, "origin": 4, "msgtype": "event", "event": ev})
    }

    #[test]
    fn customer_messages_update_the_window() {
        let m = Inbound::from_wecom(customer("m1", 1700000000), "wkX");
        assert_eq!(m.msgtype, "text");
        assert_eq!(m.routing_key("kf"), "kf.text");
        assert_eq!(m.open_kfid.as_deref(), Some("wkA"));
        assert_eq!(
            m.effect(0),
            Effect::Customer {
                open_kfid: "wkA".into(),
                external_userid: "wmU".into(),
                at: 1700000000
            }
        );
    }

    #[test]
    fn session_status_changes_map_to_states() {
        for (ct, state, servicer) in [
            (1, ServiceState::Human, Some("zhangsan")),
            (2, ServiceState::Human, Some("zhangsan")),
            (3, ServiceState::Ended, None),
            (4, ServiceState::Human, Some("zhangsan")),
        ] {
            let m = Inbound::from_wecom(
                event(
                    json!({"event_type": "session_status_change", "open_kfid": "wkA",
                    "external_userid": "wmU", "change_type": ct, "new_servicer_userid": "zhangsan"}),
                ),
                "wkA",
            );
            assert_eq!(m.msgtype, "event");
            assert_eq!(m.routing_key("kf"), "kf.event");
            assert_eq!(m.external_userid.as_deref(), Some("wmU"));
            assert_eq!(
                m.effect(0),
                Effect::ServiceState {
                    open_kfid: "wkA".into(),
                    external_userid: "wmU".into(),
                    state,
                    servicer: servicer.map(str::to_owned),
                    at: 100
                },
                "change_type {ct}"
            );
        }
        let unknown = Inbound::from_wecom(
            event(
                json!({"event_type": "session_status_change", "external_userid": "u", "change_type": 9}),
            ),
            "wkA",
        );
        assert_eq!(unknown.effect(0), Effect::None);
    }

    #[test]
    fn msg_send_fail_names_the_message() {
        let m = Inbound::from_wecom(
            event(
                json!({"event_type": "msg_send_fail", "external_userid": "u", "fail_msgid": "job-1", "fail_type": 4}),
            ),
            "wkA",
        );
        assert_eq!(m.open_kfid.as_deref(), Some("wkA"));
        assert_eq!(
            m.effect(0),
            Effect::SendFailed {
                fail_msgid: "job-1".into(),
                fail_type: 4
            }
        );
    }

    #[test]
    fn odd_entries_never_panic_and_get_stable_ids() {
        for v in [
            json!(null),
            json!([]),
            json!({"msgtype": "Weird.Type", "send_time": "x"}),
            json!({"msgid": "", "event": 5}),
            json!({"msgid": "x".repeat(500)}),
        ] {
            let a = Inbound::from_wecom(v.clone(), "wk");
            let b = Inbound::from_wecom(v, "wk");
            assert_eq!(a.msgid, b.msgid);
            assert!(a.msgid.len() <= MAX_MSGID_LEN.max(45));
            assert!(
                a.msgtype == "other" || a.msgtype == "event",
                "{}",
                a.msgtype
            );
            let _ = a.effect(0);
        }
    }

    #[test]
    fn a_body_with_nul_is_stored_with_a_stand_in_and_its_exact_text() {
        let plain = Inbound::from_wecom(customer("m1", 1), "wk");
        assert_eq!(
            plain.stored_body(),
            StoredBody {
                json: plain.body.clone(),
                exact: None
            }
        );
        let body =
            json!({"msgid": "m2", "text": {"content": "a\u{0}b", "k\u{0}": ["\u{0}", 1, null]}});
        let m = Inbound::from_wecom(body.clone(), "wk");
        let s = m.stored_body();
        assert_eq!(
            s.json,
            json!({"msgid": "m2", "text": {"content": "a\u{FFFD}b", "k\u{FFFD}": ["\u{FFFD}", 1, null]}})
        );
        assert!(!has_nul(&s.json));
        let exact = s.exact.unwrap();
        assert!(!exact.contains('\0'), "no NUL in the text either");
        assert!(exact.contains(r"a\u0000b"), "{exact}");
        let back: Value = serde_json::from_str(&exact).unwrap();
        assert_eq!(back, body, "the exact text gives the original back");
        assert_eq!(m.body, body, "the published body is untouched");
    }

    #[test]
    fn ids_with_nul_are_hashed_or_ignored() {
        let id = normalize_msgid("a\u{0}b");
        assert!(id.starts_with("sha1:") && !id.contains('\0'), "{id}");
        assert_eq!(normalize_msgid("ab"), "ab");
        let m = Inbound::from_wecom(
            event(
                json!({"event_type": "msg_send_fail", "external_userid": "u", "fail_msgid": "j\u{0}", "fail_type": 4}),
            ),
            "wkA",
        );
        assert_eq!(m.effect(0), Effect::None);
        let mut c = Inbound::from_wecom(customer("m1", 5), "wk");
        c.external_userid = Some("w\u{0}".into());
        assert_eq!(c.effect(0), Effect::None);
    }

    #[test]
    fn routing_words() {
        assert_eq!(routing_word("text"), "text");
        assert_eq!(routing_word("business_card"), "business_card");
        assert_eq!(routing_word("a.b"), "other");
        assert_eq!(routing_word("#"), "other");
        assert_eq!(routing_word(""), "other");
        assert_eq!(routing_word(&"a".repeat(40)), "other");
    }

    #[test]
    fn pages_parse_and_empty_pages_with_more_are_followed() {
        let p = SyncPage::parse(
            json!({"errcode": 0, "next_cursor": "c2", "has_more": 1, "msg_list": []}),
            "wk",
        )
        .unwrap();
        assert!(p.has_more && p.msgs.is_empty());
        assert_eq!(p.next_cursor.as_deref(), Some("c2"));
        assert!(SyncPage::parse(json!({"has_more": 1, "msg_list": []}), "wk").is_err());
        assert!(SyncPage::parse(json!({"has_more": 0, "msg_list": {}}), "wk").is_err());
        let p = SyncPage::parse(json!({"has_more": 0}), "wk").unwrap();
        assert!(!p.has_more && p.next_cursor.is_none());
    }

    #[test]
    fn lag_is_the_newest_message_age_until_caught_up() {
        let page = |has_more, times: &[i64]| SyncPage {
            next_cursor: Some("c".into()),
            has_more,
            msgs: times
                .iter()
                .map(|&t| Inbound::from_wecom(customer("m", t), "wk"))
                .collect(),
        };
        assert_eq!(page(true, &[90, 95]).lag_secs(100), Some(5.0));
        assert_eq!(page(false, &[90]).lag_secs(100), Some(0.0));
        assert_eq!(page(true, &[]).lag_secs(100), None);
    }
}
