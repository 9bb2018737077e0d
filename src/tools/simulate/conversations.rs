//! The conversation side of both platforms: WeCom sessions and their service states, the
//! inbound logs `sync_msg` reads, event codes and callback tokens, the chatbot's kefustate.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::kefu::{Change, KefuEntry};
use super::util::{ID_LEN, now_ms, random_id};

/// WeCom's sync_msg callback Token lifetime.
pub const SYNC_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Lifetime of a welcome_code / msg_code for send_msg_on_event.
pub const EVENT_CODE_TTL: Duration = Duration::from_secs(20);
/// WeCom's reply window after a customer's last message.
pub const REPLY_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// Messages a business may send in that window.
pub const REPLY_QUOTA: u32 = 5;
/// sync_msg only returns the last 3 days.
pub const INBOUND_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);

/// A WeCom conversation, keyed by (open_kfid, external_userid).
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub state: i64,
    pub servicer: Option<String>,
    /// A msg_code was already returned for a move into 2 or 3 in this session.
    pub serving_code_issued: bool,
    pub last_customer: Option<Instant>,
    pub sends_since_customer: u32,
}

#[derive(Debug, Default)]
pub(crate) struct InboundLog {
    pub entries: Vec<(Instant, Value)>,
    pub empty_pages: u32,
}

#[derive(Debug)]
pub(crate) struct EventCode {
    pub open_kfid: String,
    pub external_userid: String,
    pub expires: Instant,
}

/// The conversation side of both platforms (phase 2 state and the chatbot kefustate).
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    /// open_kfid → external_userid → session.
    pub sessions: HashMap<String, HashMap<String, Session>>,
    /// chatbot account index → openid → state (see [`super::kefu`]).
    pub kefu: HashMap<usize, HashMap<String, KefuEntry>>,
    /// open_kfid → inbound log.
    pub logs: HashMap<String, InboundLog>,
    /// callback Token → (open_kfid, expiry).
    pub sync_tokens: HashMap<String, (String, Instant)>,
    /// welcome_code / msg_code → its conversation.
    pub codes: HashMap<String, EventCode>,
}

impl Conversations {
    pub fn session(&self, kfid: &str, user: &str) -> Option<&Session> {
        self.sessions.get(kfid)?.get(user)
    }

    pub fn session_mut(&mut self, kfid: &str, user: &str) -> &mut Session {
        self.sessions
            .entry(kfid.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default()
    }

    pub fn issue_code(&mut self, kfid: &str, user: &str) -> String {
        let now = Instant::now();
        self.codes.retain(|_, c| c.expires > now);
        let code = random_id(ID_LEN);
        self.codes.insert(
            code.clone(),
            EventCode {
                open_kfid: kfid.to_owned(),
                external_userid: user.to_owned(),
                expires: now + EVENT_CODE_TTL,
            },
        );
        code
    }

    pub fn issue_sync_token(&mut self, kfid: &str) -> String {
        let now = Instant::now();
        self.sync_tokens.retain(|_, (_, exp)| *exp > now);
        let token = random_id(ID_LEN);
        self.sync_tokens
            .insert(token.clone(), (kfid.to_owned(), now + SYNC_TOKEN_TTL));
        token
    }

    /// Apply a kefustate change to a chatbot user's state, now.
    pub fn apply_kefu(&mut self, account: usize, openid: &str, change: Change) {
        self.kefu
            .entry(account)
            .or_default()
            .entry(openid.to_owned())
            .or_default()
            .apply(change, Instant::now());
    }

    /// Append an inbound entry; `msgid` must already be inside `entry`.
    pub fn append(&mut self, kfid: &str, entry: Value) {
        self.logs
            .entry(kfid.to_owned())
            .or_default()
            .entries
            .push((Instant::now(), entry));
    }
}

pub(crate) fn push_event_locked(
    conv: &mut Conversations,
    open_kfid: &str,
    mut event: Value,
) -> String {
    if let Some(o) = event.as_object_mut() {
        o.entry("open_kfid").or_insert_with(|| json!(open_kfid));
    }
    let id = random_id(ID_LEN);
    conv.append(
        open_kfid,
        json!({
            "msgid": id,
            "send_time": now_ms() / 1000,
            "origin": 4,
            "msgtype": "event",
            "event": event,
        }),
    );
    id
}
