//! How the simulator behaves beyond the platforms' fixed rules: [`SimOptions`] and the fault
//! rates ([`Faults`]). A leaf.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An access token's lifetime on WeCom.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7200);
/// How long a `timeout` fault holds a request when `Faults::timeout_ms` is 0: longer than any
/// sane client timeout, so the client gives up first, as it would against a hung platform.
pub const DEFAULT_FAULT_TIMEOUT_MS: u64 = 15_000;

/// How the simulator behaves beyond the platforms' fixed rules.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Lifetime of issued access tokens (default 7200 s, as WeCom).
    pub token_ttl: Duration,
    /// Apply each account's configured `rate`: calls beyond it are answered 45009 (WeCom) /
    /// 210205 (chatbot) without being processed (default true).
    pub enforce_rate: bool,
    /// Initial fault rates (default: none).
    pub faults: Faults,
    /// WeCom's 48-hour / 5-message rules (default false: sends to unknown users succeed). When
    /// true, a send to a user with no recorded customer message, or more than 48 h after it,
    /// is answered 95002, and a sixth send since the last customer message 95001.
    pub enforce_window: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            token_ttl: DEFAULT_TOKEN_TTL,
            enforce_rate: true,
            faults: Faults::default(),
            enforce_window: false,
        }
    }
}

/// Fault rates: each a probability 0.0..=1.0, drawn independently per business request (not
/// `gettoken`, not `/_sim`), checked in field order; the first that fires answers the request
/// without processing it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Answer HTTP 502 (a gateway in front of the platform failing).
    pub http_5xx: f64,
    /// Hold the request `timeout_ms`, then answer 504 (a hung platform; the client should
    /// have timed out by then).
    pub timeout: f64,
    /// Answer errcode -1 ("system busy").
    pub busy: f64,
    /// Answer the throttling errcode: 45009 (WeCom) / 210205 (chatbot).
    pub throttle: f64,
    /// How long a `timeout` fault holds the request; 0 means [`DEFAULT_FAULT_TIMEOUT_MS`].
    pub timeout_ms: u64,
}

impl Faults {
    /// Out-of-range probabilities, by field name (for the admin API and the CLI).
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("http_5xx", self.http_5xx),
            ("timeout", self.timeout),
            ("busy", self.busy),
            ("throttle", self.throttle),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name}: {p} is not a probability in 0.0..=1.0"));
            }
        }
        Ok(())
    }

    /// True when no fault can fire (the common case: skips the random draws).
    pub fn is_none(&self) -> bool {
        self.http_5xx <= 0.0 && self.timeout <= 0.0 && self.busy <= 0.0 && self.throttle <= 0.0
    }

    pub(crate) fn hold_for(&self) -> Duration {
        Duration::from_millis(if self.timeout_ms == 0 {
            DEFAULT_FAULT_TIMEOUT_MS
        } else {
            self.timeout_ms
        })
    }
}
