//! Who serves a conversation, as last learnt: the cache of the lane's gate (the asking is in
//! `gates`). Each entry keeps what was learnt and until when it may be trusted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::domain::chatbot_state::ChatbotState;

/// Conversations whose gate state is cached per lane; beyond this the cache starts over.
const GATE_CACHE_MAX: usize = 100_000;

/// What the gate learnt about a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Served {
    /// WeCom: whether a human has the conversation (service_state 2 or 3).
    Wecom { human: bool },
    /// Chatbot: the conversation's state (kefustate/get `status`, or set by a transfer).
    Chatbot(ChatbotState),
}

/// Who serves a conversation, each entry trusted until its own deadline: `worker.gate_cache_secs`
/// after it was learnt, or sooner when the platform reverts the state sooner (a chatbot
/// transfer's `expires`).
#[derive(Default)]
pub struct Gates {
    cache: std::sync::Mutex<HashMap<String, (Instant, Served)>>,
}

impl Gates {
    /// What serves `conv`, while its entry is still trusted.
    pub(super) fn cached(&self, conv: &str) -> Option<Served> {
        self.cached_at(conv, Instant::now())
    }

    fn cached_at(&self, conv: &str, now: Instant) -> Option<Served> {
        let m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        m.get(conv)
            .filter(|(until, _)| now < *until)
            .map(|(_, served)| *served)
    }

    /// Remember `served` for `conv`, trusted for `ttl` from now.
    pub(super) fn remember(&self, conv: &str, served: Served, ttl: Duration) {
        let mut m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: forget stale entries when the map grows.
        if m.len() > GATE_CACHE_MAX {
            m.clear();
        }
        m.insert(conv.to_owned(), (Instant::now() + ttl, served));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_trusted_until_its_own_deadline() {
        let g = Gates::default();
        let now = Instant::now();
        let needperson = Served::Chatbot(ChatbotState::NeedPerson);
        g.remember("a", needperson, Duration::from_secs(2));
        g.remember("b", Served::Wecom { human: true }, Duration::from_secs(30));
        assert_eq!(g.cached("a"), Some(needperson));
        assert_eq!(g.cached_at("a", now + Duration::from_secs(3)), None);
        assert_eq!(
            g.cached_at("b", now + Duration::from_secs(3)),
            Some(Served::Wecom { human: true })
        );
        assert_eq!(g.cached_at("b", now + Duration::from_secs(31)), None);
        assert_eq!(g.cached("c"), None);
        // A newer answer replaces the older one, deadline included.
        g.remember("b", Served::Wecom { human: false }, Duration::ZERO);
        assert_eq!(g.cached("b"), None);
    }
}
