//! What the job API keeps between requests: the tokens' digests and rate limiters, and one
//! confirm-mode publisher opened on first use.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::sync::OnceCell;

use crate::broker::{Broker, Publisher};
use crate::config::{ApiToken, Config};

/// How long a request waits for the broker (the publisher's channel, then each confirm)
/// before answering 503. Below common client timeouts, so the producer hears "retry" rather
/// than nothing; the publisher itself would wait 30 s for a reconnect.
pub const BROKER_WAIT: Duration = Duration::from_secs(10);

/// One configured token as the API uses it.
pub struct Token {
    /// The configured entry (name, allowed accounts, rate).
    pub cfg: ApiToken,
    /// Its SHA-256, decoded once (`None` cannot happen after validation; such a token never
    /// matches).
    pub digest: Option<[u8; 32]>,
    /// Its own limiter: tokens have their own rates, so one keyed limiter (one quota for all
    /// keys) would not do.
    limiter: DefaultDirectRateLimiter,
}

/// The job API's state, shared by every request (`AppState::jobs`).
pub struct JobApi {
    pub tokens: Vec<Token>,
    publisher: OnceCell<Publisher>,
}

impl JobApi {
    pub fn new(cfg: &Config) -> Self {
        let tokens = cfg
            .http
            .api_tokens
            .iter()
            .map(|t| {
                let rate = NonZeroU32::new(t.rate_per_sec).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(t.burst).unwrap_or(NonZeroU32::MIN);
                Token {
                    cfg: t.clone(),
                    digest: t.digest(),
                    limiter: RateLimiter::direct(Quota::per_second(rate).allow_burst(burst)),
                }
            })
            .collect();
        Self {
            tokens,
            publisher: OnceCell::new(),
        }
    }

    /// Take one request from token `i`'s allowance; `Err(seconds)`: over the rate, retry
    /// after that many seconds (at least 1).
    pub fn take(&self, i: usize) -> Result<(), u64> {
        let Some(t) = self.tokens.get(i) else {
            return Err(1);
        };
        t.limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            wait.as_secs_f64().ceil().max(1.0) as u64
        })
    }

    /// The confirm-mode publisher (opened on the first POST, re-opened by the broker on
    /// every reconnect); `None` when the broker does not answer within [`BROKER_WAIT`].
    pub async fn publisher(&self, broker: &std::sync::Arc<Broker>) -> Option<&Publisher> {
        let open = self
            .publisher
            .get_or_try_init(|| async {
                match tokio::time::timeout(BROKER_WAIT, broker.publisher()).await {
                    Ok(p) => p,
                    Err(_) => anyhow::bail!("broker did not answer"),
                }
            })
            .await;
        match open {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "job API: no publisher");
                None
            }
        }
    }
}
