//! The sync retention alert: sync_msg only returns the last 3 days, so an open_kfid whose
//! sync has been failing (or not running) for days is about to lose customer messages for
//! good. [`RetentionWatch`] keeps, per `(account, open_kfid)`, when it last synced
//! successfully — a page committed by this process, or by another one (the loop reads
//! `sync_cursors.updated_at` when another process holds the pull lock, and at start) — and
//! past `sync.retention_alert_secs` raises the alert: one warning when it starts (one info
//! line when it ends), the gauges `wxdispatch_sync_stale_seconds{account,open_kfid}` and
//! `wxdispatch_sync_retention_risk{account,open_kfid}`, and a line in `/readyz`'s details.
//!
//! `/readyz` stays 200: the worker can still send, answer callbacks and catch up once the
//! cause is fixed; a 503 would only make an orchestrator restart or unroute a process that is
//! not the problem (a refused secret, the platform, a missing permission).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::telemetry as t;

/// How long sync_msg keeps messages readable (the platform's 3 days).
pub const PLATFORM_RETENTION: Duration = Duration::from_secs(72 * 3600);

/// One open_kfid's sync health.
#[derive(Debug, Clone, Copy)]
struct Track {
    /// The last successful sync known (or when the loop started, before the first).
    last_ok: DateTime<Utc>,
    /// The alert is raised (logged once, cleared by a successful sync).
    alerted: bool,
}

/// An open_kfid whose sync is stale past the threshold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRisk {
    pub account: String,
    pub open_kfid: String,
    /// Seconds since its last successful sync.
    pub stale_secs: u64,
}

/// Every sync loop's last success, and the threshold of the alert.
#[derive(Debug)]
pub struct RetentionWatch {
    /// `sync.retention_alert_secs`; `None` (0) turns the alert off (the gauge of staleness
    /// is still kept).
    threshold: Option<Duration>,
    loops: Mutex<BTreeMap<(String, String), Track>>,
}

impl RetentionWatch {
    pub fn new(retention_alert_secs: u64) -> Self {
        Self {
            threshold: (retention_alert_secs > 0)
                .then(|| Duration::from_secs(retention_alert_secs)),
            loops: Mutex::new(BTreeMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(String, String), Track>> {
        self.loops.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sync loop starts: its last success is `last_ok` (from `sync_cursors`), or `now`
    /// for an open_kfid never synced (nothing can be late before anyone tried).
    pub fn start(
        &self,
        account: &str,
        open_kfid: &str,
        last_ok: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    ) {
        let last_ok = last_ok.unwrap_or(now);
        self.lock().insert(
            (account.to_owned(), open_kfid.to_owned()),
            Track {
                last_ok,
                alerted: false,
            },
        );
    }

    /// The open_kfid synced successfully at `at` (a later success already known is kept).
    pub fn synced(&self, account: &str, open_kfid: &str, at: DateTime<Utc>) {
        let mut g = self.lock();
        let tr = g
            .entry((account.to_owned(), open_kfid.to_owned()))
            .or_insert(Track {
                last_ok: at,
                alerted: false,
            });
        tr.last_ok = tr.last_ok.max(at);
    }

    /// Update the open_kfid's gauges and alert as of `now`; returns its staleness.
    pub fn check(&self, account: &str, open_kfid: &str, now: DateTime<Utc>) -> Option<u64> {
        let mut g = self.lock();
        let tr = g.get_mut(&(account.to_owned(), open_kfid.to_owned()))?;
        let stale = stale_secs(tr.last_ok, now);
        let risk = self.over(stale);
        let labels = [
            ("account", account.to_owned()),
            ("open_kfid", open_kfid.to_owned()),
        ];
        metrics::gauge!(t::SYNC_STALE, &labels).set(stale as f64);
        metrics::gauge!(t::SYNC_RETENTION_RISK, &labels).set(if risk { 1.0 } else { 0.0 });
        if risk && !tr.alerted {
            tr.alerted = true;
            let left = PLATFORM_RETENTION.as_secs().saturating_sub(stale);
            warn!(
                account,
                open_kfid,
                stale_secs = stale,
                retention_left_secs = left,
                "sync retention risk: this open_kfid has not synced for a long time; messages older than 3 days can no longer be read from sync_msg"
            );
        } else if !risk && tr.alerted {
            tr.alerted = false;
            info!(
                account,
                open_kfid, "sync retention risk over: the open_kfid synced again"
            );
        }
        Some(stale)
    }

    /// The open_kfids stale past the threshold as of `now` (gauges updated on the way), in
    /// account and open_kfid order.
    pub fn at_risk(&self, now: DateTime<Utc>) -> Vec<AtRisk> {
        let keys: Vec<(String, String)> = self.lock().keys().cloned().collect();
        keys.into_iter()
            .filter_map(|(account, open_kfid)| {
                let stale = self.check(&account, &open_kfid, now)?;
                self.over(stale).then_some(AtRisk {
                    account,
                    open_kfid,
                    stale_secs: stale,
                })
            })
            .collect()
    }

    /// The alert's threshold in seconds (`None`: off).
    pub fn threshold_secs(&self) -> Option<u64> {
        self.threshold.map(|d| d.as_secs())
    }

    fn over(&self, stale_secs: u64) -> bool {
        self.threshold.is_some_and(|t| stale_secs >= t.as_secs())
    }
}

fn stale_secs(last_ok: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    u64::try_from((now - last_ok).num_seconds()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap_or_default()
    }

    #[test]
    fn an_open_kfid_is_at_risk_past_the_threshold_until_it_syncs_again() {
        let w = RetentionWatch::new(100);
        w.start("a", "k1", Some(at(0)), at(0));
        w.start("a", "k2", None, at(100));
        assert_eq!(w.check("a", "k1", at(99)), Some(99));
        assert!(w.at_risk(at(99)).is_empty(), "not yet");
        let risk = w.at_risk(at(150));
        assert_eq!(
            risk,
            [AtRisk {
                account: "a".into(),
                open_kfid: "k1".into(),
                stale_secs: 150
            }],
            "k2 started now (never synced): not late"
        );
        // An older success reported late does not move the last one back.
        w.synced("a", "k1", at(140));
        w.synced("a", "k1", at(120));
        assert_eq!(w.check("a", "k1", at(150)), Some(10));
        assert!(w.at_risk(at(150)).is_empty());
        assert_eq!(w.check("a", "unknown", at(150)), None);
    }

    #[test]
    fn a_zero_threshold_turns_the_alert_off() {
        let w = RetentionWatch::new(0);
        w.start("a", "k", Some(at(0)), at(0));
        assert_eq!(w.threshold_secs(), None);
        assert!(w.at_risk(at(10 * 86_400)).is_empty());
        assert_eq!(
            w.check("a", "k", at(10)),
            Some(10),
            "staleness is still kept"
        );
    }

    #[test]
    fn the_default_threshold_leaves_a_day_of_the_platform_retention() {
        let d = crate::config::SyncConfig::default().retention_alert_secs;
        assert_eq!(d, 48 * 3600);
        assert_eq!(PLATFORM_RETENTION.as_secs() - d, 24 * 3600);
    }
}
