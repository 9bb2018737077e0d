//! WeCom customer service (`/cgi-bin/…`).
//!
//! `gettoken` (`GET ?corpid=&corpsecret=`): missing corpid 41002, missing secret 41004, unknown
//! corpid 40013, wrong secret 40001; a corp made to refuse ([`SimState::refuse_gettoken`])
//! answers its errcode until [`SimState::accept_gettoken`]; calls are counted per corpid. While a corp's token is
//! valid the same token is returned with its remaining lifetime.
//!
//! Business APIs (`POST ?access_token=`, JSON body) check, in order: the token (missing 41001,
//! unknown 40014, expired 42001); the gate (scripted errcodes, faults, rate → 45009); the body
//! (not a JSON object → 47001); then per API:
//!
//! * `send_msg`: `touser` non-empty (40003); `open_kfid` present (95004) and one of the corp's
//!   (95000); `msgid` ≤ 32 of `[0-9a-zA-Z_-]` (40008; empty = absent); `msgtype` and its
//!   payload ([`super::wecom_msg`]: 40008 / 40058 / 40007 / 45002); the session's state:
//!   4 → 95013, 2 or 3 → 95018; with `enforce_window`, no customer message in the last 48 h →
//!   95002, a sixth message since it → 95001. Success echoes the msgid (or generates one).
//! * `send_msg_on_event`: `code` a welcome_code / msg_code issued by the simulator, unused and
//!   under 20 s old (else 95010; consumed only by a success); `msgtype` text or msgmenu (40008).
//! * `service_state/get`: open_kfid as above, `external_userid` non-empty (40096).
//! * `service_state/trans`: `service_state` an integer 0..=4 (40058); allowed moves 0→1/2/3,
//!   1→2/3, 2→3, 3→3/4 (else 95016); into 3 needs `servicer_userid` (95014). Returns
//!   `msg_code` on the session's first move into 2 or 3, and on every move into 4.
//! * `sync_msg`: `token`, when given, a callback Token under 10 minutes old (95007); `limit`
//!   1..=1000, absent or 0 meaning 1000 (else 40058); `open_kfid` optional when the token or
//!   the corp names exactly one; `cursor` opaque (undecodable → 40058; one from before a
//!   restart or `reset_conversations` reads from the start: duplicates, never losses);
//!   `voice_format` absent, 0 (AMR) or 1 (Silk), else 40058 (counted: `sync_voice_formats`).

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::accepted::NewRecord;
use super::conversations::{INBOUND_RETENTION, REPLY_QUOTA, REPLY_WINDOW};
use super::gate::Api;
use super::reply::{ApiErr, Reply, code, ok, query_param};
use super::respond::finish;
use super::state::SimState;
use super::util::{lock, random_id};
use super::wecom_msg::{self, EVENT_MSG_TYPES, SEND_MSG_TYPES};
// WeCom's allowed service-state moves, the domain's; re-exported for `platform::kf`'s table
// test until it uses the domain's directly.
pub use crate::domain::service_state::transition_allowed;

type Outcome = (Option<usize>, Reply);

/// Largest `limit` sync_msg accepts (and its default).
pub const SYNC_LIMIT_MAX: u64 = 1000;
/// Length of msgids the simulator generates when the caller sends none.
const GENERATED_MSGID_LEN: usize = 32;

/// `GET /cgi-bin/gettoken?corpid=&corpsecret=`.
pub async fn gettoken(State(st): State<Arc<SimState>>, RawQuery(q): RawQuery) -> Response {
    let q = q.as_deref();
    let corpid = query_param(q, "corpid");
    let secret = query_param(q, "corpsecret");
    let (acct, reply) = match st.get_token(corpid.as_deref(), secret.as_deref()) {
        Ok((token, expires_in)) => (
            None,
            Reply::Ok(
                json!({"errcode": 0, "errmsg": "ok", "access_token": token, "expires_in": expires_in}),
            ),
        ),
        Err(e) => {
            let acct = corpid.as_deref().and_then(|c| {
                st.corps
                    .iter()
                    .find(|g| g.corpid == c)
                    .and_then(|g| g.accounts.first().copied())
            });
            (acct, e.into())
        }
    };
    finish(&st, acct, reply).await
}

/// A business request that passed the token check and the gate.
pub(super) struct Authed<'a> {
    pub(super) account: usize,
    pub(super) group: usize,
    pub(super) body: Map<String, Value>,
    /// The exact bytes received (recorded as the accepted body).
    raw: &'a [u8],
}

impl Authed<'_> {
    fn raw_text(&self) -> Cow<'_, str> {
        // Parsed as JSON, so valid UTF-8: this borrows.
        String::from_utf8_lossy(self.raw)
    }
}

/// Token → account → gate → body, common to every business API. `kfid_of` names the
/// open_kfid the request is about (to pick the account when a corp has several).
pub(super) fn prelude<'a>(
    st: &SimState,
    query: Option<&str>,
    raw: &'a [u8],
    api: Api,
    kfid_of: impl FnOnce(&SimState, &Map<String, Value>) -> Option<String>,
) -> Result<Authed<'a>, Outcome> {
    let group = st
        .authenticate(query)
        .map_err(|(a, e)| (a, Reply::Err(e)))?;
    let parsed = serde_json::from_slice::<Value>(raw);
    let obj = match parsed {
        Ok(Value::Object(o)) => Some(o),
        _ => None,
    };
    let kfid = obj.as_ref().and_then(|o| kfid_of(st, o));
    let account = st.account_in_group(group, kfid.as_deref());
    if let Some(r) = st.gate(account, api) {
        return Err((Some(account), r));
    }
    let Some(body) = obj else {
        return Err((
            Some(account),
            ApiErr::hint(code::BAD_JSON, "body is not a JSON object").into(),
        ));
    };
    Ok(Authed {
        account,
        group,
        body,
        raw,
    })
}

pub(super) fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub(super) fn body_kfid(_: &SimState, o: &Map<String, Value>) -> Option<String> {
    str_field(o, "open_kfid").map(str::to_owned)
}

/// The request's open_kfid, which must belong to the token's corp.
pub(super) fn check_kfid<'a>(
    st: &SimState,
    group: usize,
    o: &'a Map<String, Value>,
) -> Result<&'a str, ApiErr> {
    let k = str_field(o, "open_kfid")
        .ok_or_else(|| ApiErr::hint(code::MISSING_OPEN_KFID, "open_kfid missing"))?;
    if !st.corps[group].open_kfids.contains(k) {
        return Err(ApiErr::hint(
            code::INVALID_OPEN_KFID,
            "open_kfid is not one of this corp's",
        ));
    }
    Ok(k)
}

fn generated_msgid() -> String {
    random_id(GENERATED_MSGID_LEN)
}

/// `POST /cgi-bin/kf/send_msg`.
pub async fn send_msg(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (acct, reply) = send_msg_inner(&st, q.as_deref(), &body);
    finish(&st, acct, reply).await
}

fn send_msg_inner(st: &SimState, query: Option<&str>, body: &[u8]) -> Outcome {
    let a = match prelude(st, query, body, Api::KfSendMsg, body_kfid) {
        Ok(a) => a,
        Err(o) => return o,
    };
    (Some(a.account), send_msg_process(st, a).into())
}

fn send_msg_process(st: &SimState, a: Authed<'_>) -> Result<Value, ApiErr> {
    let o = &a.body;
    let touser =
        str_field(o, "touser").ok_or_else(|| ApiErr::hint(code::INVALID_USER, "touser missing"))?;
    let kfid = check_kfid(st, a.group, o)?;
    let msgid = wecom_msg::msgid(o)?;
    let msgtype = wecom_msg::validate(o, SEND_MSG_TYPES)?;
    {
        let mut conv = lock(&st.conv);
        let session = conv.sessions.get_mut(kfid).and_then(|m| m.get_mut(touser));
        match session.as_ref().map(|s| s.state) {
            Some(4) => return Err(ApiErr::new(code::SESSION_ENDED)),
            Some(2 | 3) => {
                return Err(ApiErr::hint(
                    code::STATE_FORBIDS_SEND,
                    "a servicer holds the session",
                ));
            }
            _ => {}
        }
        if st.enforce_window {
            let Some(s) = session else {
                return Err(ApiErr::hint(
                    code::WINDOW_CLOSED,
                    "no customer message from this user",
                ));
            };
            match s.last_customer {
                Some(t) if t.elapsed() <= REPLY_WINDOW => {}
                _ => {
                    return Err(ApiErr::hint(
                        code::WINDOW_CLOSED,
                        "no customer message in the last 48 h",
                    ));
                }
            }
            if s.sends_since_customer >= REPLY_QUOTA {
                return Err(ApiErr::hint(
                    code::QUOTA_EXCEEDED,
                    "5 messages since the customer's last",
                ));
            }
            s.sends_since_customer += 1;
        }
    }
    let msgid = msgid.map_or_else(generated_msgid, str::to_owned);
    st.accept(
        a.account,
        NewRecord {
            api: Api::KfSendMsg,
            recipient: touser,
            msgid: Some(&msgid),
            msgtype,
            plaintext: None,
            body: a.raw_text(),
        },
    );
    Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

/// `POST /cgi-bin/kf/send_msg_on_event`.
pub async fn send_msg_on_event(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (acct, reply) = on_event_inner(&st, q.as_deref(), &body);
    finish(&st, acct, reply).await
}

fn on_event_inner(st: &SimState, query: Option<&str>, body: &[u8]) -> Outcome {
    let code_kfid = |st: &SimState, o: &Map<String, Value>| {
        let c = str_field(o, "code")?;
        lock(&st.conv).codes.get(c).map(|c| c.open_kfid.clone())
    };
    let a = match prelude(st, query, body, Api::KfSendMsgOnEvent, code_kfid) {
        Ok(a) => a,
        Err(o) => return o,
    };
    (Some(a.account), on_event_process(st, a).into())
}

fn on_event_process(st: &SimState, a: Authed<'_>) -> Result<Value, ApiErr> {
    let o = &a.body;
    let code =
        str_field(o, "code").ok_or_else(|| ApiErr::hint(code::INVALID_PARAM, "code missing"))?;
    let msgid = wecom_msg::msgid(o)?;
    let msgtype = wecom_msg::validate(o, EVENT_MSG_TYPES)?;
    let user = {
        let mut conv = lock(&st.conv);
        match conv.codes.get(code) {
            Some(c) if c.expires > Instant::now() => {}
            Some(_) => {
                return Err(ApiErr::hint(
                    code::INVALID_EVENT_CODE,
                    "code expired (20 s)",
                ));
            }
            None => {
                return Err(ApiErr::hint(
                    code::INVALID_EVENT_CODE,
                    "code unknown or already used",
                ));
            }
        }
        conv.codes
            .remove(code)
            .map(|c| c.external_userid)
            .unwrap_or_default()
    };
    let msgid = msgid.map_or_else(generated_msgid, str::to_owned);
    st.accept(
        a.account,
        NewRecord {
            api: Api::KfSendMsgOnEvent,
            recipient: &user,
            msgid: Some(&msgid),
            msgtype,
            plaintext: None,
            body: a.raw_text(),
        },
    );
    Ok(json!({"errcode": 0, "errmsg": "ok", "msgid": msgid}))
}

/// `POST /cgi-bin/kf/service_state/get`.
pub async fn service_state_get(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (acct, reply) = match prelude(&st, q.as_deref(), &body, Api::KfStateGet, body_kfid) {
        Ok(a) => (Some(a.account), state_get_process(&st, &a).into()),
        Err(o) => o,
    };
    finish(&st, acct, reply).await
}

fn user_field(o: &Map<String, Value>) -> Result<&str, ApiErr> {
    str_field(o, "external_userid")
        .ok_or_else(|| ApiErr::hint(code::INVALID_EXTERNAL_USERID, "external_userid missing"))
}

fn state_get_process(st: &SimState, a: &Authed<'_>) -> Result<Value, ApiErr> {
    let kfid = check_kfid(st, a.group, &a.body)?;
    let user = user_field(&a.body)?;
    let conv = lock(&st.conv);
    let (state, servicer) = conv
        .session(kfid, user)
        .map_or((0, ""), |s| (s.state, s.servicer.as_deref().unwrap_or("")));
    Ok(json!({"errcode": 0, "errmsg": "ok", "service_state": state, "servicer_userid": servicer}))
}

/// `POST /cgi-bin/kf/service_state/trans`.
pub async fn service_state_trans(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (acct, reply) = match prelude(&st, q.as_deref(), &body, Api::KfStateTrans, body_kfid) {
        Ok(a) => (Some(a.account), state_trans_process(&st, a).into()),
        Err(o) => o,
    };
    finish(&st, acct, reply).await
}

fn state_trans_process(st: &SimState, a: Authed<'_>) -> Result<Value, ApiErr> {
    let o = &a.body;
    let kfid = check_kfid(st, a.group, o)?;
    let user = user_field(o)?;
    let to = o
        .get("service_state")
        .and_then(Value::as_i64)
        .filter(|s| (0..=4).contains(s))
        .ok_or_else(|| {
            ApiErr::hint(
                code::INVALID_PARAM,
                "service_state must be an integer 0..=4",
            )
        })?;
    let servicer = str_field(o, "servicer_userid");
    if to == 3 && servicer.is_none() {
        return Err(ApiErr::hint(
            code::INVALID_SERVICER,
            "moving to 3 needs servicer_userid",
        ));
    }
    let msg_code = {
        let mut conv = lock(&st.conv);
        let from = conv.session(kfid, user).map_or(0, |s| s.state);
        if !transition_allowed(from, to) {
            return Err(ApiErr::hint(
                code::INVALID_TRANSITION,
                format!("{from} → {to} is not allowed"),
            ));
        }
        let s = conv.session_mut(kfid, user);
        s.state = to;
        s.servicer = if to == 3 {
            servicer.map(str::to_owned)
        } else {
            None
        };
        let issue = match to {
            2 | 3 if !s.serving_code_issued => {
                s.serving_code_issued = true;
                true
            }
            4 => true,
            _ => false,
        };
        issue.then(|| conv.issue_code(kfid, user))
    };
    st.accept(
        a.account,
        NewRecord {
            api: Api::KfStateTrans,
            recipient: user,
            msgid: None,
            msgtype: "service_state",
            plaintext: None,
            body: a.raw_text(),
        },
    );
    let mut reply = ok();
    if let (Some(c), Some(r)) = (msg_code, reply.as_object_mut()) {
        r.insert("msg_code".into(), json!(c));
    }
    Ok(reply)
}

/// `POST /cgi-bin/kf/sync_msg`.
pub async fn sync_msg(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let token_kfid = |st: &SimState, o: &Map<String, Value>| {
        body_kfid(st, o).or_else(|| {
            let t = str_field(o, "token")?;
            lock(&st.conv).sync_tokens.get(t).map(|(k, _)| k.clone())
        })
    };
    let (acct, reply) = match prelude(&st, q.as_deref(), &body, Api::KfSyncMsg, token_kfid) {
        Ok(a) => (Some(a.account), sync_process(&st, &a).into()),
        Err(o) => o,
    };
    finish(&st, acct, reply).await
}

/// A cursor is the cursor epoch and a position, in hex; clients must treat it as opaque.
fn encode_cursor(epoch: u32, pos: usize) -> String {
    format!("{epoch:08x}{pos:012x}")
}

/// `Ok(None)`: a cursor of another epoch (read from the start).
fn decode_cursor(c: &str, epoch: u32) -> Result<Option<usize>, ApiErr> {
    let bad = || ApiErr::hint(code::INVALID_PARAM, "invalid cursor");
    if c.len() != 20 || !c.is_ascii() {
        return Err(bad());
    }
    let e = u32::from_str_radix(&c[..8], 16).map_err(|_| bad())?;
    let p = usize::from_str_radix(&c[8..], 16).map_err(|_| bad())?;
    Ok((e == epoch).then_some(p))
}

fn sync_process(st: &SimState, a: &Authed<'_>) -> Result<Value, ApiErr> {
    let o = &a.body;
    // voice_format: absent (the platform's default, AMR), 0 AMR or 1 Silk; counted for tests.
    let voice = match o.get("voice_format") {
        None => "absent".to_owned(),
        Some(v) => match v.as_u64() {
            Some(n @ (0 | 1)) => n.to_string(),
            _ => {
                return Err(ApiErr::hint(
                    code::INVALID_PARAM,
                    "voice_format must be 0 or 1",
                ));
            }
        },
    };
    *lock(&st.sync_voice_formats).entry(voice).or_insert(0) += 1;
    let limit = match o.get("limit") {
        None | Some(Value::Null) => SYNC_LIMIT_MAX,
        Some(v) => match v.as_u64() {
            Some(0) => SYNC_LIMIT_MAX,
            Some(n) if n <= SYNC_LIMIT_MAX => n,
            _ => return Err(ApiErr::hint(code::INVALID_PARAM, "limit must be 1..=1000")),
        },
    } as usize;
    let epoch = st.cursor_epoch.load(Ordering::Relaxed);
    let cursor = match str_field(o, "cursor") {
        Some(c) => decode_cursor(c, epoch)?,
        None => None,
    };
    let mut conv = lock(&st.conv);
    let now = Instant::now();
    let token_kfid = match str_field(o, "token") {
        Some(t) => match conv.sync_tokens.get(t) {
            Some((k, exp)) if *exp > now => Some(k.clone()),
            _ => {
                return Err(ApiErr::hint(
                    code::INVALID_SYNC_TOKEN,
                    "token unknown or older than 10 minutes",
                ));
            }
        },
        None => None,
    };
    let group = &st.corps[a.group];
    let kfid = match str_field(o, "open_kfid").map(str::to_owned).or(token_kfid) {
        Some(k) => k,
        None if group.open_kfids.len() == 1 => {
            group.open_kfids.iter().next().cloned().unwrap_or_default()
        }
        None => return Err(ApiErr::hint(code::MISSING_OPEN_KFID, "open_kfid missing")),
    };
    if !group.open_kfids.contains(&kfid) {
        return Err(ApiErr::hint(
            code::INVALID_OPEN_KFID,
            "open_kfid is not one of this corp's",
        ));
    }
    let log = conv.logs.entry(kfid).or_default();
    let first_retained = log
        .entries
        .partition_point(|(at, _)| now.saturating_duration_since(*at) > INBOUND_RETENTION);
    let pos = cursor
        .unwrap_or(0)
        .clamp(first_retained, log.entries.len().max(first_retained));
    if log.empty_pages > 0 {
        log.empty_pages -= 1;
        return Ok(json!({
            "errcode": 0, "errmsg": "ok",
            "next_cursor": encode_cursor(epoch, pos), "has_more": 1, "msg_list": [],
        }));
    }
    let end = (pos + limit).min(log.entries.len());
    let page: Vec<Value> = log.entries[pos..end]
        .iter()
        .map(|(_, v)| v.clone())
        .collect();
    let has_more = u8::from(end < log.entries.len());
    Ok(json!({
        "errcode": 0, "errmsg": "ok",
        "next_cursor": encode_cursor(epoch, end), "has_more": has_more, "msg_list": page,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = encode_cursor(7, 1234);
        assert_eq!(decode_cursor(&c, 7), Ok(Some(1234)));
        assert_eq!(decode_cursor(&c, 8), Ok(None));
        for bad in ["", "xyz", "zzzzzzzzzzzzzzzzzzzz", "中中中中中中中中中中"] {
            assert_eq!(
                decode_cursor(bad, 7).map_err(|e| e.code),
                Err(40058),
                "{bad}"
            );
        }
    }
}
