//! What the simulated platforms accepted: the public [`Accepted`] record, and the compact log
//! the state keeps of them (bounded by [`MAX_RETAINED_ACCEPTED`]).

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use super::gate::Api;
use super::util::now_ms;

/// The most accepted records kept in memory (the oldest are dropped first; counters and the
/// duplicate-msgid check still cover all of them). A record is a few hundred bytes, so a
/// benchmark that runs for hours stays within a few hundred MB.
pub const MAX_RETAINED_ACCEPTED: usize = 1_000_000;

/// One request the simulated platform accepted (errcode 0), in acceptance order.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// Global acceptance order, from 1; never reused, not even after [`SimState::reset`](super::SimState::reset).
    pub seq: u64,
    /// Unix milliseconds when accepted.
    pub at_ms: i64,
    pub account: String,
    /// `"chatbot"` or `"wecom"`.
    pub channel: &'static str,
    /// `sendmsg`, `kefustate_change` (chatbot); `send_msg`, `send_msg_on_event`,
    /// `service_state_trans` (WeCom).
    pub api: &'static str,
    /// openid (chatbot) or external_userid (WeCom).
    pub recipient: String,
    /// WeCom: the msgid sent (the job id) or the one the simulator generated.
    pub msgid: Option<String>,
    /// The message type: chatbot `text` or the rich type (`news`, `image`, …); WeCom the
    /// `msgtype`; `kefustate` / `service_state` for transfers.
    pub msgtype: String,
    /// Chatbot: the exact decrypted XML plaintext.
    pub plaintext: Option<String>,
    /// WeCom: the JSON body received. Chatbot: the XML fields as a JSON object
    /// (`{appid, openid, msg, channel, event?, …}`; `channel` as a number).
    pub body: serde_json::Value,
}

/// An accepted request as stored: compact (the body as JSON text, the account as an index),
/// turned into an [`Accepted`] only when read.
#[derive(Debug)]
pub(crate) struct Record {
    seq: u64,
    at_ms: i64,
    account: usize,
    api: Api,
    recipient: Box<str>,
    msgid: Option<Box<str>>,
    msgtype: Box<str>,
    plaintext: Option<Box<str>>,
    body: Box<str>,
}

/// What a handler hands to [`SimState::accept`](super::SimState::accept).
pub(crate) struct NewRecord<'a> {
    pub api: Api,
    pub recipient: &'a str,
    pub msgid: Option<&'a str>,
    pub msgtype: &'a str,
    /// Chatbot: the decrypted plaintext.
    pub plaintext: Option<String>,
    /// The JSON body: WeCom's exact request bytes, the chatbot's fields serialized.
    pub body: Cow<'a, str>,
}

#[derive(Debug, Default)]
pub(crate) struct AcceptedLog {
    pub(crate) next_seq: u64,
    /// The most recent [`MAX_RETAINED_ACCEPTED`] records, in seq order.
    pub(crate) records: VecDeque<Arc<Record>>,
    /// Accepted since the last reset (including records no longer retained).
    pub(crate) total: u64,
    pub(crate) per_account: Vec<u64>,
    pub(crate) msgids: Vec<HashSet<Box<str>>>,
    pub(crate) duplicates: Vec<u64>,
}

impl AcceptedLog {
    /// An empty log for `accounts` accounts; seq numbers start at 1.
    pub(crate) fn new(accounts: usize) -> Self {
        Self {
            next_seq: 1,
            per_account: vec![0; accounts],
            msgids: vec![HashSet::new(); accounts],
            duplicates: vec![0; accounts],
            records: VecDeque::new(),
            total: 0,
        }
    }

    /// Append an accepted request of `account` (an index below the `accounts` of [`Self::new`]);
    /// returns its seq.
    pub(crate) fn push(&mut self, account: usize, new: NewRecord<'_>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let rec = Record {
            seq,
            at_ms: now_ms(),
            account,
            api: new.api,
            recipient: new.recipient.into(),
            msgid: new.msgid.map(Into::into),
            msgtype: new.msgtype.into(),
            plaintext: new.plaintext.map(String::into_boxed_str),
            body: new.body.into(),
        };
        if let Some(id) = &rec.msgid
            && !self.msgids[account].insert(id.clone())
        {
            self.duplicates[account] += 1;
        }
        self.per_account[account] += 1;
        self.total += 1;
        if self.records.len() >= MAX_RETAINED_ACCEPTED {
            self.records.pop_front();
        }
        self.records.push_back(Arc::new(rec));
        seq
    }

    /// Retained records with `seq > since_seq`, optionally of one account, at most `limit`.
    pub(crate) fn since(
        &self,
        account: Option<usize>,
        since_seq: u64,
        limit: usize,
    ) -> Vec<Arc<Record>> {
        let start = self.records.partition_point(|r| r.seq <= since_seq);
        self.records
            .range(start..)
            .filter(|r| account.is_none_or(|a| r.account == a))
            .take(limit)
            .cloned()
            .collect()
    }

    /// Forget records and counters; seq numbers keep increasing.
    pub(crate) fn reset(&mut self) {
        self.records = VecDeque::new();
        self.total = 0;
        self.per_account.iter_mut().for_each(|c| *c = 0);
        self.duplicates.iter_mut().for_each(|c| *c = 0);
        self.msgids.iter_mut().for_each(HashSet::clear);
    }
}

impl Record {
    /// The index of the account that sent it.
    pub(crate) fn account(&self) -> usize {
        self.account
    }

    /// The API that accepted it, its msgid, recipient and time (read by `recall_msg`).
    pub(crate) fn api(&self) -> Api {
        self.api
    }

    pub(crate) fn msgid(&self) -> Option<&str> {
        self.msgid.as_deref()
    }

    pub(crate) fn recipient(&self) -> &str {
        &self.recipient
    }

    pub(crate) fn at_ms(&self) -> i64 {
        self.at_ms
    }

    /// The record as the public [`Accepted`] (parses the body), under its account's name and
    /// channel.
    pub(crate) fn to_accepted(&self, account: &str, channel: &'static str) -> Accepted {
        Accepted {
            seq: self.seq,
            at_ms: self.at_ms,
            account: account.to_owned(),
            channel,
            api: self.api.name(),
            recipient: self.recipient.to_string(),
            msgid: self.msgid.as_deref().map(str::to_owned),
            msgtype: self.msgtype.to_string(),
            plaintext: self.plaintext.as_deref().map(str::to_owned),
            body: serde_json::from_str(&self.body)
                .unwrap_or_else(|_| Value::String(self.body.to_string())),
        }
    }
}
