//! What every HTTP handler shares.

use std::sync::Arc;

use crate::config::Config;
use crate::store::Store;

#[derive(Clone)]
pub struct AppState {
    pub cfg: Arc<Config>,
    pub store: Store,
    /// The broker connection (replaced on reconnect), for `/readyz`.
    pub broker: Arc<crate::broker::Broker>,
    /// Wakes the sync loops and publishes inbound messages (the callbacks' side).
    pub inbound: Arc<crate::engine::inbound::SyncHub>,
}

impl AppState {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        broker: Arc<crate::broker::Broker>,
        inbound: Arc<crate::engine::inbound::SyncHub>,
    ) -> Self {
        Self {
            cfg,
            store,
            broker,
            inbound,
        }
    }
}
