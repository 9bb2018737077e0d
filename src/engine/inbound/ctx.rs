//! What a sync loop needs of its account, and nothing of the outbound lane's.

use std::sync::Arc;

use crate::config::{RetryConfig, SyncConfig};
use crate::engine::lane::LaneCtx;
use crate::platform::Platform;
use crate::store::Store;

/// One `(account, open_kfid)` sync loop's context: the account's name, the sync and retry
/// settings, the store, and the account's platform client (shared with its lane, so both use
/// one access-token cache).
pub struct SyncCtx {
    pub account: String,
    /// `sync.page_limit`, `sync.poll_interval_secs`.
    pub sync: SyncConfig,
    /// The backoff after transient failures and the throttle pause override.
    pub retry: RetryConfig,
    pub store: Store,
    /// Whoever owns the client (an `Arc<Platform>`, or the lane that holds it).
    platform: Arc<dyn AsRef<Platform> + Send + Sync>,
}

impl std::fmt::Debug for SyncCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncCtx")
            .field("account", &self.account)
            .finish_non_exhaustive()
    }
}

impl SyncCtx {
    pub fn new(
        account: String,
        sync: SyncConfig,
        retry: RetryConfig,
        store: Store,
        platform: Arc<Platform>,
    ) -> Self {
        Self {
            account,
            sync,
            retry,
            store,
            platform: Arc::new(platform),
        }
    }

    /// The account's platform client.
    pub fn platform(&self) -> &Platform {
        (*self.platform).as_ref()
    }

    /// The context of the lane's account, sharing the lane's platform client.
    ///
    /// A bridge for `app.rs`, which hands the sync loops the lanes' contexts: the sync loop
    /// keeps the lane alive only as the owner of the platform client and reads nothing else
    /// of it. Once the lane holds its client as `Arc<Platform>`, `app.rs` can call
    /// [`SyncCtx::new`] and this (with the `From` and `AsRef` impls below) goes.
    pub fn from_lane(lane: &Arc<LaneCtx>) -> Self {
        Self {
            account: lane.account.name.clone(),
            sync: lane.cfg.sync.clone(),
            retry: lane.cfg.retry.clone(),
            store: lane.store.clone(),
            platform: lane.clone(),
        }
    }
}

impl AsRef<Platform> for LaneCtx {
    fn as_ref(&self) -> &Platform {
        &self.platform
    }
}

impl From<Arc<LaneCtx>> for SyncCtx {
    fn from(lane: Arc<LaneCtx>) -> Self {
        Self::from_lane(&lane)
    }
}
