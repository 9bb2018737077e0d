//! The meeting point of the sync loops and the HTTP callbacks: one `Slot` per
//! `(account, open_kfid)` holding the wake-up and the latest callback Token, plus the
//! publisher inbound messages go out on and the sync-lag gauge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::broker::Publisher;
use crate::config::{Channel, Config};
use crate::telemetry as t;

/// A callback Token is valid for 10 minutes; stop using it a little earlier so that a page
/// request never races its expiry (an expired one costs a 95007 round trip).
const CALLBACK_TOKEN_TTL: Duration = Duration::from_secs(10 * 60 - 30);

/// Shared by the sync loops and the HTTP callback handlers: wakes a loop, holds the callback
/// Token, publishes inbound messages.
pub struct SyncHub {
    slots: HashMap<(String, String), Arc<Slot>>,
    publisher: Publisher,
    /// Per account: lag of each open_kfid; the account's gauge shows the largest.
    lag: Mutex<HashMap<String, HashMap<String, f64>>>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("loops", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The wake-up state of one `(account, open_kfid)` loop.
#[derive(Default)]
pub(super) struct Slot {
    pub(super) notify: Notify,
    /// The latest callback Token and when it arrived. Never logged.
    token: Mutex<Option<(String, Instant)>>,
}

impl Slot {
    pub(super) fn token(&self) -> Option<String> {
        let g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(_, at)| at.elapsed() < CALLBACK_TOKEN_TTL)
            .map(|(t, _)| t.clone())
    }

    /// Forget `used` (a newer Token that arrived meanwhile is kept).
    pub(super) fn drop_token(&self, used: &str) {
        let mut g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_some_and(|(t, _)| t == used) {
            *g = None;
        }
    }
}

impl SyncHub {
    /// One slot per WeCom account and configured open_kfid.
    pub fn new(cfg: &Config, publisher: Publisher) -> Self {
        let slots = cfg
            .accounts
            .iter()
            .filter(|a| a.channel == Channel::Wecom)
            .flat_map(|a| {
                a.open_kfids
                    .iter()
                    .map(|k| ((a.name.clone(), k.clone()), Arc::new(Slot::default())))
            })
            .collect();
        Self {
            slots,
            publisher,
            lag: Mutex::new(HashMap::new()),
        }
    }

    /// Wake the loop of `(account, open_kfid)`, handing it the callback `token` (when not
    /// empty). False when no such loop exists (an open_kfid the config does not list).
    pub fn wake(&self, account: &str, open_kfid: &str, token: Option<&str>) -> bool {
        let Some(slot) = self.slots.get(&(account.to_owned(), open_kfid.to_owned())) else {
            return false;
        };
        if let Some(tok) = token.filter(|t| !t.is_empty()) {
            *slot.token.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((tok.to_owned(), Instant::now()));
        }
        // One stored permit: a wake during a pull causes exactly one more pull.
        slot.notify.notify_one();
        true
    }

    /// The confirm-mode channel inbound messages are published on.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    pub(super) fn slot(&self, account: &str, open_kfid: &str) -> Option<Arc<Slot>> {
        self.slots
            .get(&(account.to_owned(), open_kfid.to_owned()))
            .cloned()
    }

    pub(super) fn set_lag(&self, account: &str, open_kfid: &str, secs: f64) {
        let mut g = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let per = g.entry(account.to_owned()).or_default();
        per.insert(open_kfid.to_owned(), secs.max(0.0));
        let max = per.values().copied().fold(0.0, f64::max);
        metrics::gauge!(t::SYNC_LAG, "account" => account.to_owned()).set(max);
    }
}
