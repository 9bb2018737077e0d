//! Jobs parked in delay tiers, by conversation: a conversation with a parked job sends
//! nothing until that job has its outcome (later jobs park behind it).

use std::collections::{BTreeMap, HashMap};

use lapin::BasicProperties;

use crate::broker;
use crate::store::Store;
use crate::store::parked::ParkedJob;

pub use crate::broker::H_PARKS;

/// How often the delivery was parked before (its `x-wxdispatch-parks` header).
pub(super) fn parks_of(props: &BasicProperties) -> u32 {
    broker::header_str(props, H_PARKS)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// conversation → seq → (job id, tier seconds)
type ParkedMap = HashMap<String, BTreeMap<i64, (String, u64)>>;

/// Jobs parked in delay tiers, by conversation, mirrored in `parked_jobs` so a lane that
/// fails over to another process keeps the order. Only the lane's own process touches it
/// (single active consumer).
#[derive(Default)]
pub struct Parked {
    /// conversation → seq → (job id, tier seconds)
    map: std::sync::Mutex<ParkedMap>,
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkedMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Load the account's parked jobs (lane start).
    pub async fn load(&self, store: &Store, account: &str) -> anyhow::Result<()> {
        let rows = store.parked_jobs(account).await?;
        let mut m = self.lock();
        m.clear();
        for r in rows {
            m.entry(r.conversation)
                .or_default()
                .insert(r.seq, (r.job_id, r.tier_secs));
        }
        Ok(())
    }

    /// The tier to park `job_id` in when an earlier job of `conv` is parked, else `None`.
    pub fn blocking_tier(&self, conv: &str, job_id: &str) -> Option<u64> {
        let m = self.lock();
        let jobs = m.get(conv)?;
        let (_, (head, tier)) = jobs.iter().next()?;
        (head != job_id).then_some(*tier)
    }

    /// Record that `job_id` is parked in `tier_secs` (keeping its place if already parked).
    pub(super) async fn park(
        &self,
        store: &Store,
        account: &str,
        conv: &str,
        job_id: &str,
        tier_secs: u64,
    ) -> anyhow::Result<()> {
        let seq = {
            let mut m = self.lock();
            let jobs = m.entry(conv.to_owned()).or_default();
            let existing = jobs.iter().find(|(_, (j, _))| j == job_id).map(|(s, _)| *s);
            let seq = existing.unwrap_or_else(|| jobs.keys().next_back().map_or(1, |s| s + 1));
            jobs.insert(seq, (job_id.to_owned(), tier_secs));
            seq
        };
        let job = ParkedJob {
            conversation: conv.to_owned(),
            job_id: job_id.to_owned(),
            seq,
            tier_secs,
        };
        store.park_job(account, &job).await
    }

    /// A parked job reached an outcome: the conversation moves on.
    pub(super) async fn release(
        &self,
        store: &Store,
        account: &str,
        conv: &str,
        job_id: &str,
    ) -> anyhow::Result<()> {
        let was_parked = {
            let mut m = self.lock();
            let Some(jobs) = m.get_mut(conv) else {
                return Ok(());
            };
            let before = jobs.len();
            jobs.retain(|_, (j, _)| j != job_id);
            let removed = jobs.len() != before;
            if jobs.is_empty() {
                m.remove(conv);
            }
            removed
        };
        if was_parked {
            store.unpark_job(account, job_id).await?;
        }
        Ok(())
    }
}
