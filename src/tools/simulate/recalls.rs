//! What the simulator remembers of recalls ([`super::recall`]): the recalled messages and the
//! ages tests gave sent messages. A leaf: plain data, no state of its own beyond this.

use std::collections::HashMap;

use serde::Serialize;

/// One message the simulated platform recalled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Recalled {
    pub account: String,
    pub open_kfid: String,
    /// The recalled message's msgid.
    pub msgid: String,
    /// Its recipient (external_userid).
    pub recipient: String,
    /// Unix milliseconds when it was sent and when it was recalled.
    pub sent_at_ms: i64,
    pub recalled_at_ms: i64,
}

/// What the simulator remembers of recalls (reset with the accepted log).
#[derive(Debug, Default)]
pub(crate) struct RecallBook {
    /// In recall order.
    recalled: Vec<Recalled>,
    /// (account index, msgid) → how much older than recorded a sent message is made to look
    /// (`SimState::age_sent_message`).
    aged_ms: HashMap<(usize, String), i64>,
}

impl RecallBook {
    pub(crate) fn reset(&mut self) {
        *self = Self::default();
    }

    /// How much older than recorded the message `msgid` of account `account` is made to look.
    pub(crate) fn aged_ms(&self, account: usize, msgid: &str) -> i64 {
        self.aged_ms
            .get(&(account, msgid.to_owned()))
            .copied()
            .unwrap_or(0)
    }

    /// Make the message look `by_ms` older (adds up).
    pub(crate) fn age(&mut self, account: usize, msgid: &str, by_ms: i64) {
        let e = self.aged_ms.entry((account, msgid.to_owned())).or_insert(0);
        *e = e.saturating_add(by_ms);
    }

    pub(crate) fn is_recalled(&self, account: &str, msgid: &str) -> bool {
        self.recalled
            .iter()
            .any(|r| r.account == account && r.msgid == msgid)
    }

    pub(crate) fn push(&mut self, r: Recalled) {
        self.recalled.push(r);
    }

    pub(crate) fn list(&self) -> Vec<Recalled> {
        self.recalled.clone()
    }
}
