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
    /// The HTTP job API's tokens, rate limiters and publisher (`POST /v1/jobs`).
    pub jobs: Arc<crate::http::jobs::JobApi>,
    /// How `GET /v1/jobs/{id}` finds a record (set by the worker, [`AppState::with_job_lookup`];
    /// without it that route answers 503).
    pub job_lookup: Option<Arc<dyn crate::http::jobs::JobLookup>>,
}

impl AppState {
    pub fn new(
        cfg: Arc<Config>,
        store: Store,
        broker: Arc<crate::broker::Broker>,
        inbound: Arc<crate::engine::inbound::SyncHub>,
    ) -> Self {
        Self {
            jobs: Arc::new(crate::http::jobs::JobApi::new(&cfg)),
            job_lookup: None,
            cfg,
            store,
            broker,
            inbound,
        }
    }

    /// The same state, `GET /v1/jobs/{id}` answered by `lookup`.
    pub fn with_job_lookup(mut self, lookup: Arc<dyn crate::http::jobs::JobLookup>) -> Self {
        self.job_lookup = Some(lookup);
        self
    }
}

/// What `run` is waiting for while it starts (`/readyz` says it, with 503, until the worker
/// is up): "waiting for rabbitmq at host:5672: <cause>". Shared by the start-up loop, which
/// writes it, and the admin listener, which reads it.
#[derive(Clone, Default)]
pub struct StartupStatus(Arc<std::sync::Mutex<String>>);

impl StartupStatus {
    pub fn set(&self, status: impl Into<String>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = status.into();
    }
    pub fn get(&self) -> String {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
