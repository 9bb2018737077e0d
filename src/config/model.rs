//! The settings tree: every section, its keys, their defaults and why.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::account::AccountConfig;
use super::secret::Secret;
use super::urls::{SecretUrl, with_password};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub http: HttpConfig,
    pub worker: WorkerConfig,
    pub retry: RetryConfig,
    pub sync: SyncConfig,
    /// The outcome events' relay (README "Outcome events").
    pub outcomes: OutcomesConfig,
    pub startup: StartupConfig,
    #[serde(rename = "account")]
    pub accounts: Vec<AccountConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL; the vhost is its path (`%2f` = `/`).
    pub url: SecretUrl,
    /// Unacked deliveries per lane (the bulk queue takes at most 64 more). Bounds how much a
    /// lane re-sends after a crash, and what the AMQP client buffers before the lane takes it:
    /// up to `prefetch` bodies per lane, whatever their size (README "Memory bounds").
    pub prefetch: u16,
    /// Bytes the AMQP client may buffer per lane, counting every delivery at
    /// `worker.max_body_bytes`: each lane's prefetch becomes at most
    /// `prefetch_bytes / worker.max_body_bytes` (at least 1). 0 = no cap (only `prefetch`).
    /// RabbitMQ has no byte prefetch; this is its worst-case equivalent (README "Memory bounds").
    pub prefetch_bytes: u64,
    /// The lanes' delivery limit: a message that kills the process this many times is
    /// dead-lettered by the broker instead of crash-looping the lane. Set by the
    /// `wxdispatch-lanes` policy (`wxdispatch setup`, or a worker that reaches the management
    /// API), not by a queue argument, so changing it changes no declaration.
    pub delivery_limit: u32,
    /// RabbitMQ's management API (`http://host:15672/`), through which `setup` and the workers
    /// set the broker policies (AMQP cannot). Empty: `broker.url`'s host, port 15672, with
    /// `broker.url`'s credentials unless this URL has its own. `"off"`: never used (then
    /// `setup` prints the `rabbitmqctl set_policy` commands instead).
    pub management_url: SecretUrl,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefetch: 512,
            prefetch_bytes: 256 * 1024 * 1024,
            delivery_limit: 20,
            management_url: SecretUrl::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: SecretUrl,
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

/// The two HTTP listeners and the limits that keep a flood of connections from taking the
/// worker down (issue 14: 200 half-sent 380 KB headers took it from 30 to 106 MB and starved
/// `/healthz`). Each listener has its own connection cap, so the admin one (probes, Prometheus)
/// keeps answering while the public one is full.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Public listener: the platforms' callbacks (`/callback/...`) and nothing else. Empty
    /// string disables it.
    pub listen: String,
    /// Admin listener: `/metrics`, `/healthz`, `/readyz` (and future admin routes). Keep it off
    /// the internet: loopback by default; in a pod bind `0.0.0.0` but do not put the port in
    /// the Service. Empty string disables it.
    pub admin_listen: String,
    /// Largest accepted callback body; WeChat's are a few KB.
    pub max_body_bytes: usize,
    /// A request's head (request line and headers) must arrive within this many seconds of its
    /// first byte (or, on a kept-alive connection, of the previous response); else the
    /// connection is closed. Stops slow-loris clients from holding connections.
    pub header_read_timeout_secs: u64,
    /// A connection with no bytes read or written for this many seconds is closed.
    pub idle_timeout_secs: u64,
    /// Largest request head (request line plus headers); a larger one is answered 431 and the
    /// connection closed. At least 8192 (hyper's smallest read buffer).
    pub max_header_bytes: usize,
    /// Open connections on the public listener; beyond it new connections are closed at once.
    pub max_connections: usize,
    /// Open connections on the admin listener (its own cap: health keeps answering when the
    /// public listener is full).
    pub admin_max_connections: usize,
    /// Bearer tokens of the HTTP job API on the admin listener (`[[http.api_tokens]]`, each
    /// by the SHA-256 of its value). None: the job API answers 401 to everybody.
    pub api_tokens: Vec<super::ApiToken>,
    /// Most jobs in one `POST /v1/jobs`. With `worker.max_body_bytes` it bounds the request
    /// body (their product), so one request cannot hold more memory than this many jobs.
    pub jobs_max_batch: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            admin_listen: "127.0.0.1:9465".into(),
            max_body_bytes: 64 * 1024,
            header_read_timeout_secs: 5,
            idle_timeout_secs: 60,
            max_header_bytes: 16 * 1024,
            max_connections: 1024,
            admin_max_connections: 64,
            api_tokens: Vec::new(),
            jobs_max_batch: 100,
        }
    }
}

impl HttpConfig {
    /// The `[http]` invariants (called by [`Config::validate`]); the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        if !self.admin_listen.is_empty()
            && self.admin_listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!(
                "http.admin_listen: '{}' is not host:port",
                self.admin_listen
            );
        }
        if !self.listen.is_empty()
            && self.listen == self.admin_listen
            && !self.listen.ends_with(":0")
        {
            bail!(
                "http.admin_listen: '{}' is also http.listen; the two listeners need different ports",
                self.admin_listen
            );
        }
        if self.header_read_timeout_secs == 0 {
            bail!("http.header_read_timeout_secs: must be at least 1");
        }
        if self.idle_timeout_secs == 0 {
            bail!("http.idle_timeout_secs: must be at least 1");
        }
        if self.max_header_bytes < MIN_HEADER_BYTES {
            bail!("http.max_header_bytes: must be at least {MIN_HEADER_BYTES}");
        }
        if self.max_connections == 0 {
            bail!("http.max_connections: must be at least 1");
        }
        if self.admin_max_connections == 0 {
            bail!("http.admin_max_connections: must be at least 1");
        }
        if self.jobs_max_batch == 0 {
            bail!("http.jobs_max_batch: must be at least 1");
        }
        Ok(())
    }
}

/// hyper's smallest read buffer (it refuses a smaller `max_buf_size`).
pub const MIN_HEADER_BYTES: usize = 8192;

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
    /// Bytes of job bodies all lanes together hold at once (parsed, waiting behind their
    /// conversation, in flight): a delivery takes its body's length before the lane parses
    /// it and gives it back once settled; while none is left the lanes take no deliveries.
    /// A body larger than the budget takes it whole, alone. 1 ..= 4 GiB - 1.
    pub held_bytes_budget: u64,
    /// A dead letter's body longer than this is recorded in `dead_letters` as its first
    /// `dead_letter_body_bytes` bytes, its size and its sha256 (`body_truncated`); the whole
    /// body is in the `wxdispatch.dead` queue. Such a row is not replayed by `dlq replay`.
    pub dead_letter_body_bytes: usize,
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
            held_bytes_budget: 64 * 1024 * 1024,
            dead_letter_body_bytes: 64 * 1024,
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
    /// `voice_format` sent in every sync_msg request: the encoding WeCom gives customers'
    /// voice messages in (`amr`, the platform's default 0, or `silk`, 1).
    pub voice_format: VoiceFormat,
    /// Alert (log once, `wxdispatch_sync_retention_risk`, `/readyz` details) when an
    /// open_kfid has not synced successfully for this long (seconds; 0 = off). sync_msg only
    /// returns the last 3 days: the 48 h default leaves a day to fix the cause before
    /// messages start to fall out of reach.
    pub retention_alert_secs: u64,
}

/// The `voice_format` of `kf/sync_msg` (the platform's value encoding: 0 AMR, 1 Silk).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VoiceFormat {
    /// AMR (0), the platform's default and what most players read.
    #[default]
    Amr,
    /// Silk (1), WeChat's own codec (better quality, needs a Silk decoder).
    Silk,
}

impl VoiceFormat {
    /// The number sync_msg expects.
    pub fn code(self) -> u8 {
        match self {
            Self::Amr => 0,
            Self::Silk => 1,
        }
    }
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            poll_interval_secs: 30,
            page_limit: 1000,
            voice_format: VoiceFormat::Amr,
            retention_alert_secs: 48 * 3600,
        }
    }
}

/// Start-up of `run`: how long it waits for its dependencies.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartupConfig {
    /// Seconds `run` waits at start for Postgres and RabbitMQ to answer (retrying with
    /// jittered exponential backoff, `/healthz` 200 and `/readyz` 503 meanwhile) before it
    /// exits 1 naming the host and the last cause. 0 = one attempt each, fail at once.
    /// 300 covers a broker or database that starts beside the worker (compose, a pod
    /// rescheduled with its dependencies) without a crash loop.
    pub wait_secs: u64,
}

impl Default for StartupConfig {
    fn default() -> Self {
        Self { wait_secs: 300 }
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
            return self.database.url.expose().to_owned();
        }
        with_password(&self.database.url, self.database.password.expose())
            .unwrap_or_else(|| self.database.url.expose().to_owned())
    }
}

#[cfg(test)]
mod http_tests {
    use super::HttpConfig;

    fn err(f: impl FnOnce(&mut HttpConfig)) -> String {
        let mut c = HttpConfig::default();
        f(&mut c);
        format!("{:#}", c.validate().unwrap_err())
    }

    #[test]
    fn http_limits_are_validated_and_the_error_names_the_key() {
        assert!(HttpConfig::default().validate().is_ok());
        assert!(err(|c| c.admin_listen = "nowhere".into()).starts_with("http.admin_listen:"));
        assert!(err(|c| c.admin_listen = c.listen.clone()).starts_with("http.admin_listen:"));
        assert!(err(|c| c.max_header_bytes = 4096).starts_with("http.max_header_bytes:"));
        assert!(
            err(|c| c.header_read_timeout_secs = 0).starts_with("http.header_read_timeout_secs:")
        );
        assert!(err(|c| c.idle_timeout_secs = 0).starts_with("http.idle_timeout_secs:"));
        assert!(err(|c| c.max_connections = 0).starts_with("http.max_connections:"));
        assert!(err(|c| c.admin_max_connections = 0).starts_with("http.admin_max_connections:"));
        // Both on ephemeral ports (tests) is fine; either may be disabled.
        let c = HttpConfig {
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            ..HttpConfig::default()
        };
        assert!(c.validate().is_ok());
    }
}

/// `[outcomes]`: the relay that publishes the outbox (`outcome_events`) to
/// `wxdispatch.outcomes`. Which accounts have events is each `[[account]]`'s `outcomes`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutcomesConfig {
    /// Run the relay in this worker. Turn it off only where another process relays the same
    /// database: events are still written (and wait in `outcome_events`) either way.
    pub relay: bool,
    /// Events published (and deleted) per relay round: one `SELECT … FOR UPDATE SKIP
    /// LOCKED`, that many confirmed publishes in flight, one `DELETE`. 1..=10000.
    pub batch: u32,
    /// How often an idle relay looks for events written by other processes (the lanes of its
    /// own process wake it at once). Bounds the delay of a `failed` / `cancelled` event written
    /// elsewhere, and of everything after a relay restarts.
    pub poll_ms: u64,
}

impl Default for OutcomesConfig {
    fn default() -> Self {
        Self {
            relay: true,
            batch: 500,
            poll_ms: 500,
        }
    }
}
