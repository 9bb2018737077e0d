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
/// Callback wake-ups of one loop are at least this far apart; the ones in between are
/// coalesced into one deferred wake at the end of the interval. A pull reads every page
/// there is, so one pull per interval serves any number of callbacks: a burst of callbacks
/// (or of replays that got past the replay cache) costs at most one `sync_msg` pull per
/// second per open_kfid, and a lone callback is served at once.
pub const MIN_WAKE_INTERVAL: Duration = Duration::from_secs(1);

/// Shared by the sync loops and the HTTP callback handlers: wakes a loop, holds the callback
/// Token, publishes inbound messages.
pub struct SyncHub {
    slots: HashMap<(String, String), Arc<Slot>>,
    publisher: Publisher,
    /// Per account: lag of each open_kfid; the account's gauge shows the largest.
    lag: Mutex<HashMap<String, HashMap<String, f64>>>,
    /// Each loop's last successful sync, for the retention alert (`/readyz` reads it).
    retention: super::retention::RetentionWatch,
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
    /// Holds one permit: a wake while the loop pulls causes exactly one more pull, so at
    /// most one pull per open_kfid is in flight and any number of wakes during it add one.
    pub(super) notify: Notify,
    /// The latest callback Token and when it arrived. Never logged.
    token: Mutex<Option<(String, Instant)>>,
    /// When the loop was last notified, and whether a deferred wake is pending.
    gate: Mutex<WakeGate>,
}

#[derive(Default)]
struct WakeGate {
    last: Option<Instant>,
    deferred: bool,
}

/// What [`Slot::wake_at`] decided.
#[derive(Debug, PartialEq, Eq)]
enum Wake {
    /// Notified now.
    Now,
    /// Too soon after the last one: notify at this instant (the caller arranges it).
    Defer(Instant),
    /// A deferred wake is already pending: this one is folded into it.
    Coalesced,
}

impl Slot {
    pub(super) fn token(&self) -> Option<String> {
        let g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(_, at)| at.elapsed() < CALLBACK_TOKEN_TTL)
            .map(|(t, _)| t.clone())
    }

    /// Notify the loop now, or decide when, so that notifications are at least
    /// [`MIN_WAKE_INTERVAL`] apart and at most one deferred one is pending.
    fn wake_at(&self, now: Instant) -> Wake {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        if g.deferred {
            return Wake::Coalesced;
        }
        match g.last.map(|at| at + MIN_WAKE_INTERVAL) {
            Some(due) if due > now => {
                g.deferred = true;
                Wake::Defer(due)
            }
            _ => {
                g.last = Some(now);
                drop(g);
                self.notify.notify_one();
                Wake::Now
            }
        }
    }

    /// The deferred wake is due: notify and open the gate for the next one.
    fn wake_deferred(&self, now: Instant) {
        let mut g = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        g.deferred = false;
        g.last = Some(now);
        drop(g);
        self.notify.notify_one();
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
            retention: super::retention::RetentionWatch::new(cfg.sync.retention_alert_secs),
        }
    }

    /// The sync loops' last successes and the retention alert.
    pub fn retention(&self) -> &super::retention::RetentionWatch {
        &self.retention
    }

    /// Wake the loop of `(account, open_kfid)`, handing it the callback `token` (when not
    /// empty). False when no such loop exists (an open_kfid the config does not list).
    /// Wakes are coalesced: at most one per [`MIN_WAKE_INTERVAL`] reaches the loop, the
    /// Token of a coalesced one is still kept (the newest Token is the one used).
    pub fn wake(&self, account: &str, open_kfid: &str, token: Option<&str>) -> bool {
        let Some(slot) = self.slots.get(&(account.to_owned(), open_kfid.to_owned())) else {
            return false;
        };
        if let Some(tok) = token.filter(|t| !t.is_empty()) {
            *slot.token.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((tok.to_owned(), Instant::now()));
        }
        match slot.wake_at(Instant::now()) {
            Wake::Now | Wake::Coalesced => {}
            Wake::Defer(due) => match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    let slot = Arc::clone(slot);
                    rt.spawn(async move {
                        tokio::time::sleep_until(tokio::time::Instant::from_std(due)).await;
                        slot.wake_deferred(Instant::now());
                    });
                }
                // Outside a runtime nothing can wait: wake now rather than lose the wake.
                Err(_) => slot.wake_deferred(Instant::now()),
            },
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_are_spaced_and_coalesced() {
        let slot = Slot::default();
        let t0 = Instant::now();
        assert_eq!(slot.wake_at(t0), Wake::Now);
        let due = t0 + MIN_WAKE_INTERVAL;
        assert_eq!(
            slot.wake_at(t0 + Duration::from_millis(10)),
            Wake::Defer(due)
        );
        for i in 0..500 {
            assert_eq!(
                slot.wake_at(t0 + Duration::from_millis(20 + i)),
                Wake::Coalesced
            );
        }
        slot.wake_deferred(due);
        // Right after the deferred one, the next is deferred again; a second later, at once.
        assert_eq!(
            slot.wake_at(due + Duration::from_millis(1)),
            Wake::Defer(due + MIN_WAKE_INTERVAL)
        );
        slot.wake_deferred(due + MIN_WAKE_INTERVAL);
        assert_eq!(slot.wake_at(due + 3 * MIN_WAKE_INTERVAL), Wake::Now);
    }
}
