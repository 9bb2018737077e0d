//! What the callbacks share against abuse: the refusal throttle per source and the replay
//! cache of WeCom signatures, and the one way a refusal is logged and answered.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use axum::Extension;
use axum::extract::ConnectInfo;
use axum::response::Response;
use tracing::{debug, warn};

use crate::http::callback::auth::{Reject, too_many_answer};
use crate::http::callback::replay::ReplayCache;
use crate::http::callback::throttle::{FailureThrottle, Limits, Verdict};

/// The peer address, when the server was started with connect info (it is in
/// [`crate::http::server::serve`]; a router driven without it counts every refusal in one
/// bucket).
pub type Peer = Option<Extension<ConnectInfo<SocketAddr>>>;

/// The peer's IP address.
pub fn peer_ip(p: &Peer) -> Option<IpAddr> {
    p.as_ref().map(|Extension(ConnectInfo(a))| a.ip())
}

/// The callbacks' shared guards, one per router.
#[derive(Debug)]
pub struct Shield {
    throttle: Arc<FailureThrottle>,
    replays: ReplayCache,
}

impl Default for Shield {
    fn default() -> Self {
        Self::new(Limits::default())
    }
}

impl Shield {
    pub fn new(limits: Limits) -> Self {
        Self {
            throttle: FailureThrottle::new(limits),
            replays: ReplayCache::default(),
        }
    }

    pub fn replays(&self) -> &ReplayCache {
        &self.replays
    }

    /// Log why (one line, the account truncated; never a secret) and answer the refusal the
    /// same way whatever the reason, after the throttle's delay for this source.
    pub async fn refuse(
        &self,
        peer: Option<IpAddr>,
        route: &'static str,
        account: &str,
        r: Reject,
    ) -> Response {
        let verdict = if r.counts_as_refusal() {
            self.throttle.on_refusal(peer, Instant::now())
        } else {
            Verdict::Now
        };
        let account = crate::text::truncate(account, 64);
        let status = r.status().as_u16();
        let peer = peer.map(|p| p.to_string()).unwrap_or_default();
        match verdict {
            Verdict::Now => {
                warn!(route, account = %account, peer, status, reason = %r, "callback refused");
                r.answer()
            }
            Verdict::After(delay, place) => {
                // Logged at debug: a guessing source would otherwise flood the log.
                debug!(route, account = %account, peer, status, reason = %r,
                    delay_ms = delay.as_millis() as u64, "callback refused (slowed down)");
                tokio::time::sleep(delay).await;
                drop(place);
                r.answer()
            }
            Verdict::TooMany => {
                debug!(route, account = %account, peer, reason = %r,
                    "callback refused (429: too many refusals from this source)");
                too_many_answer()
            }
        }
    }
}
