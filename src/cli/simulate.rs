//! `wxdispatch simulate`: the command line of the platform simulator
//! ([`crate::tools::simulate`]).

use std::net::SocketAddr;
use std::time::Duration;

use crate::config::Config;
use crate::tools::simulate::{
    DEFAULT_FAULT_TIMEOUT_MS, DEFAULT_LISTEN, DEFAULT_TOKEN_TTL, Faults, SimOptions,
};

/// `wxdispatch simulate`: serve the configured accounts' platform APIs locally.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on; point every account's `base_url` at it.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Lifetime of issued WeCom access tokens, in seconds.
    #[arg(long, default_value_t = DEFAULT_TOKEN_TTL.as_secs())]
    pub token_ttl_secs: u64,
    /// Do not apply the accounts' `rate` limits.
    #[arg(long)]
    pub no_rate_limit: bool,
    /// Probability of answering a business request with HTTP 502.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_5xx: f64,
    /// Probability of holding a business request (see --fault-timeout-ms), then answering 504.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_timeout: f64,
    /// How long a timeout fault holds the request, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_FAULT_TIMEOUT_MS)]
    pub fault_timeout_ms: u64,
    /// Probability of answering errcode -1 (system busy).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_busy: f64,
    /// Probability of answering the throttling errcode (45009 / 210205).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_throttle: f64,
    /// Enforce WeCom's 48-hour / 5-message window (sends need a prior customer message).
    #[arg(long)]
    pub enforce_window: bool,
}

impl SimArgs {
    pub fn options(&self) -> SimOptions {
        SimOptions {
            token_ttl: Duration::from_secs(self.token_ttl_secs.max(1)),
            enforce_rate: !self.no_rate_limit,
            faults: Faults {
                http_5xx: self.fault_5xx,
                timeout: self.fault_timeout,
                busy: self.fault_busy,
                throttle: self.fault_throttle,
                timeout_ms: self.fault_timeout_ms,
            },
            enforce_window: self.enforce_window,
        }
    }
}

/// Serve the config's accounts until Ctrl-C or SIGTERM.
pub async fn run(config: &Config, args: SimArgs) -> anyhow::Result<()> {
    crate::tools::simulate::serve(config, args.options(), args.listen).await
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in 0.0..=1.0"))
    }
}
