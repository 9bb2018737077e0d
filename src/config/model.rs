//! The settings tree: every section, its keys, their defaults and why.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::account::AccountConfig;
use super::secret::Secret;
use super::urls::with_password;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub sync: SyncConfig,
    #[serde(rename = "account")]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL; the vhost is its path (`%2f` = `/`).
    pub url: String,
    /// Unacked deliveries per lane. Bounds the worker's memory (each held job is at most
    /// `worker.max_body_bytes`) and how much a lane re-sends after a crash.
    pub prefetch: u16,
    /// `x-delivery-limit` on lanes: a message that kills the process this many times is
    /// dead-lettered by the broker instead of crash-looping the lane.
    pub delivery_limit: u32,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 512,
            delivery_limit: 20,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    /// Overrides the URL's password (so the URL itself can live in a ConfigMap).
    pub password: Secret,
    pub password_file: Option<PathBuf>,
    /// Pool size. Status writes are batched, so a handful of connections carry thousands of
    /// jobs per second; the rest serve claims, tokens and the CLI.
    pub max_connections: u32,
    /// Largest batch of status writes in one statement.
    pub batch_max: usize,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/wxdispatch".into(),
            password: Secret::default(),
            password_file: None,
            max_connections: 16,
            batch_max: 1000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Metrics, health and callbacks. Empty string disables the listener.
    pub listen: String,
    /// Largest accepted callback body; WeChat's are a few KB.
    pub max_body_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            max_body_bytes: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Conversations served concurrently per lane (in-flight platform requests).
    pub concurrency: usize,
    /// Seconds `run` waits on SIGTERM for in-flight jobs before releasing them to the broker.
    pub shutdown_grace_secs: u64,
    /// Whole-request timeout for platform calls.
    pub http_timeout_ms: u64,
    /// TCP connect timeout for platform calls.
    pub connect_timeout_ms: u64,
    /// A job body larger than this is dead-lettered as `body_too_large` without parsing.
    pub max_body_bytes: usize,
    /// How long a conversation's human-takeover state is trusted before asking again.
    pub gate_cache_secs: u64,
    /// Share of an account's rate that broadcast jobs may use (0 < share ≤ 1): the rest stays
    /// free for ordinary replies, so they keep their latency while a broadcast runs.
    pub broadcast_share: f64,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 256,
            shutdown_grace_secs: 20,
            http_timeout_ms: 10_000,
            connect_timeout_ms: 3_000,
            max_body_bytes: 4 * 1024 * 1024,
            gate_cache_secs: 30,
            broadcast_share: 0.8,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts made in process (with jittered exponential backoff) before the job is parked
    /// in a durable delay tier.
    pub in_process_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    /// Total time a job may keep retrying, counted from its first attempt; then it is
    /// dead-lettered as `retries_exhausted`.
    pub total_budget_secs: u64,
    /// Durable delay tiers (seconds): a job that exhausted its in-process attempts waits in
    /// `wxdispatch.retry.<secs>s` and comes back to its lane. Attempt n uses tier min(n, last).
    pub tiers_secs: Vec<u64>,
    /// Consecutive transport failures (5xx, timeouts) after which the whole account pauses.
    pub outage_threshold: u32,
    /// First pause of an account lane after throttling or an outage; doubles up to the max.
    pub pause_initial_secs: u64,
    pub pause_max_secs: u64,
    /// Override of the platform's minimum throttle pause (WeCom 45009: 60 s). Only for
    /// tests and simulators: against the real platform, pausing less extends the block.
    pub throttle_pause_secs: Option<u64>,
    /// Retries (with the backoff above) of an errcode the errcode table does not know, before
    /// the job is dead-lettered as `unknown_errcode`: one odd code in a fault burst should not
    /// cost the job, a persistent one is more likely a request problem.
    pub unknown_errcode_retries: u32,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            in_process_attempts: 10,
            initial_backoff_ms: 100,
            max_backoff_ms: 5_000,
            total_budget_secs: 3_600,
            tiers_secs: vec![5, 30, 120, 600],
            outage_threshold: 10,
            pause_initial_secs: 5,
            pause_max_secs: 300,
            throttle_pause_secs: None,
            unknown_errcode_retries: 2,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Poll sync_msg this often when no callback arrives (seconds; 0 = only on callbacks).
    pub poll_interval_secs: u64,
    /// Page size asked of sync_msg (platform maximum 1000).
    pub page_limit: u32,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 30,
            page_limit: 1000,
        }
    }
}

impl Config {
    pub fn account(&self, name: &str) -> Option<&AccountConfig> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// The resolved config as TOML, secrets masked (for `check-config`).
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}"))
    }

    /// The database URL with `[database] password` applied.
    pub fn database_url(&self) -> String {
        if self.database.password.is_empty() {
            return self.database.url.clone();
        }
        with_password(&self.database.url, self.database.password.expose())
            .unwrap_or_else(|| self.database.url.clone())
    }
}
