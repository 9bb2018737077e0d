//! WeCom `POST /cgi-bin/kf/recall_msg` `{open_kfid, msgid}`: take back a message sent through
//! the API within 2 minutes. After the token check and the gate (like every business API):
//! `open_kfid` present (95004) and one of the corp's (95000); `msgid` a message this account
//! accepted through `send_msg` / `send_msg_on_event` and still retained (else 40058), sent at
//! most 2 minutes ago (else 40058), not recalled already (else 40058). The session's
//! 5-message count is not given back: a recalled message still counts.
//!
//! The errcodes WeCom itself answers for an unknown, already recalled or too old msgid are not
//! in our reference (unverified): the simulator answers 40058 (invalid parameter) with a hint
//! naming which, so the worker treats them as a permanent refusal (`invalid_request`).
//!
//! The book of recalls is [`super::recalls`]. Tests see the recalls with [`SimState::recalls`] (and `GET /_sim/recalls`), and make the
//! 2-minute window testable without sleeping with [`SimState::age_sent_message`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, RawQuery, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::gate::Api;
use super::recalls::Recalled;
use super::reply::{ApiErr, code};
use super::respond::finish;
use super::state::SimState;
use super::util::{lock, now_ms};
use super::wecom::{Authed, body_kfid, check_kfid, prelude, str_field};

/// WeCom recalls only messages sent at most this long ago.
pub const RECALL_WINDOW: Duration = Duration::from_secs(120);

/// `POST /cgi-bin/kf/recall_msg`.
pub async fn recall_msg(
    State(st): State<Arc<SimState>>,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Response {
    let (acct, reply) = match prelude(&st, q.as_deref(), &body, Api::KfRecallMsg, body_kfid) {
        Ok(a) => (Some(a.account), recall_process(&st, &a).into()),
        Err(o) => o,
    };
    finish(&st, acct, reply).await
}

fn recall_process(st: &SimState, a: &Authed<'_>) -> Result<Value, ApiErr> {
    let kfid = check_kfid(st, a.group, &a.body)?;
    let msgid = str_field(&a.body, "msgid")
        .ok_or_else(|| ApiErr::hint(code::INVALID_PARAM, "msgid missing"))?;
    let (recipient, sent_at_ms) = {
        let log = lock(&st.log);
        let sent = log.records.iter().rev().find(|r| {
            r.account() == a.account
                && matches!(r.api(), Api::KfSendMsg | Api::KfSendMsgOnEvent)
                && r.msgid() == Some(msgid)
        });
        match sent {
            Some(r) => (r.recipient().to_owned(), r.at_ms()),
            None => {
                return Err(ApiErr::hint(
                    code::INVALID_PARAM,
                    "msgid: no message sent by this account has it",
                ));
            }
        }
    };
    let mut book = lock(&st.recalls);
    let sent_at_ms = sent_at_ms - book.aged_ms(a.account, msgid);
    let now = now_ms();
    if now - sent_at_ms > RECALL_WINDOW.as_millis() as i64 {
        return Err(ApiErr::hint(
            code::INVALID_PARAM,
            "msgid: sent more than 2 minutes ago, too late to recall",
        ));
    }
    let account = st.account_name(Some(a.account)).to_owned();
    if book.is_recalled(&account, msgid) {
        return Err(ApiErr::hint(code::INVALID_PARAM, "msgid: already recalled"));
    }
    book.push(Recalled {
        account,
        open_kfid: kfid.to_owned(),
        msgid: msgid.to_owned(),
        recipient,
        sent_at_ms,
        recalled_at_ms: now,
    });
    Ok(json!({"errcode": 0, "errmsg": "ok"}))
}

impl SimState {
    /// Every message recalled since the last reset, in recall order.
    pub fn recalls(&self) -> Vec<Recalled> {
        lock(&self.recalls).list()
    }

    /// Make the message `msgid` sent by `account` look `by` older than it is, so a test can
    /// reach the end of the 2-minute recall window without waiting. Unknown names are ignored.
    pub fn age_sent_message(&self, account: &str, msgid: &str, by: Duration) {
        if let Some(i) = self.account_index(account) {
            let by_ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
            lock(&self.recalls).age(i, msgid, by_ms);
        }
    }
}

/// `GET /_sim/recalls[?account=]`: the recalls, optionally of one account.
#[derive(Debug, Deserialize)]
pub struct RecallsQuery {
    pub account: Option<String>,
}

pub async fn recalls_route(
    State(st): State<Arc<SimState>>,
    Query(q): Query<RecallsQuery>,
) -> Response {
    let all = st.recalls();
    let list: Vec<&Recalled> = all
        .iter()
        .filter(|r| q.account.as_deref().is_none_or(|a| r.account == a))
        .collect();
    Json(json!({ "recalls": list })).into_response()
}
