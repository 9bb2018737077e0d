//! Who serves a conversation (a human or the bot), as last learnt: the cache of the lane's
//! gate (the asking is in `gates`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Conversations whose gate state is cached per lane; beyond this the cache starts over.
const GATE_CACHE_MAX: usize = 100_000;

/// Who serves a conversation, cached for `worker.gate_cache_secs`.
#[derive(Default)]
pub struct Gates {
    cache: std::sync::Mutex<HashMap<String, (Instant, bool)>>,
}

impl Gates {
    /// Whether a human serves `conv`, if learnt within `ttl`.
    pub(super) fn cached(&self, conv: &str, ttl: Duration) -> Option<bool> {
        let m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        m.get(conv)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, human)| *human)
    }

    pub(super) fn remember(&self, conv: &str, human: bool) {
        let mut m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: forget stale entries when the map grows.
        if m.len() > GATE_CACHE_MAX {
            m.clear();
        }
        m.insert(conv.to_owned(), (Instant::now(), human));
    }
}
