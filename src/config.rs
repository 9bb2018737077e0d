//! The settings tree: `wxdispatch.toml`, overridden key by key from the environment.
//!
//! * File: `--config PATH`, else `$WXDISPATCH_CONFIG`, else `./wxdispatch.toml` if it exists,
//!   else the built-in defaults (which declare no account).
//! * Environment: `WXDISPATCH__SECTION__KEY=value` sets `[section] key`. Accounts are addressed by
//!   name (upper-cased, non-alphanumerics as `_`) or index: `WXDISPATCH__ACCOUNT__SUPPORT__SECRET`,
//!   `WXDISPATCH__ACCOUNT__0__RATE='{ per_second = 5 }'`. A value is read as a TOML value when
//!   it parses as one (numbers, booleans, arrays, inline tables), otherwise as a string.
//! * Secrets (`token`, `secret`, `encoding_aes_key`, `[database] password`) may also be given as
//!   `<key>_file = "path"`. They are held in [`Secret`], whose `Debug`, `Display` and `Serialize`
//!   print `***`, so no log line, error or `check-config` output can carry them.
//!
//! [`Config::validate`] fails fast with one line that names the offending key.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::crypto;
pub use crate::domain::channel::Channel;

/// A credential. Never printed; compare and use through [`Secret::expose`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}
impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { "***" })
    }
}

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

/// An account's rate: `{ per_second = 50, burst = 10 }` or `{ per_minute = 10000 }`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub per_second: Option<u32>,
    pub per_minute: Option<u32>,
    /// Requests allowed back to back; defaults to one second's worth, at least 1.
    pub burst: Option<u32>,
    /// `true` turns the limiter off (benchmarks only).
    #[serde(default)]
    pub unlimited: bool,
}

impl Rate {
    /// Interval between replenished cells.
    pub fn period(&self) -> Option<Duration> {
        if self.unlimited {
            return None;
        }
        match (self.per_second, self.per_minute) {
            (Some(n), _) if n > 0 => Some(Duration::from_secs_f64(1.0 / f64::from(n))),
            (None, Some(n)) if n > 0 => Some(Duration::from_secs_f64(60.0 / f64::from(n))),
            _ => None,
        }
    }
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| {
            self.per_second
                .or(self.per_minute.map(|m| m / 60))
                .unwrap_or(1)
                .max(1)
        })
    }
}

#[derive(Clone, Serialize, Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub channel: Channel,
    #[serde(default)]
    pub base_url: Option<String>,
    #[serde(default)]
    pub rate: Rate,
    // chatbot
    #[serde(default)]
    pub appid: Option<String>,
    #[serde(default)]
    pub default_channel: i64,
    // wecom
    #[serde(default)]
    pub corpid: Option<String>,
    #[serde(default)]
    pub secret: Secret,
    #[serde(default, skip_serializing)]
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub open_kfids: Vec<String>,
    // both: the chatbot TOKEN / WeCom callback token, and the EncodingAESKey
    #[serde(default)]
    pub token: Secret,
    #[serde(default, skip_serializing)]
    pub token_file: Option<PathBuf>,
    #[serde(default)]
    pub encoding_aes_key: Secret,
    #[serde(default, skip_serializing)]
    pub encoding_aes_key_file: Option<PathBuf>,
}

impl AccountConfig {
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(match self.channel {
            Channel::Chatbot => "https://chatbot.weixin.qq.com",
            Channel::Wecom => "https://qyapi.weixin.qq.com",
        })
    }

    /// The lane queue of this account.
    pub fn queue(&self) -> String {
        format!("wxdispatch.{}", self.name)
    }

    /// The WXBizMsgCrypt receive id: the chatbot APPID or the WeCom corpid.
    pub fn receive_id(&self) -> &str {
        match self.channel {
            Channel::Chatbot => self.appid.as_deref().unwrap_or(""),
            Channel::Wecom => self.corpid.as_deref().unwrap_or(""),
        }
    }

    /// The account's WXBizMsgCrypt, when it has a key (chatbot always; WeCom for callbacks).
    pub fn crypt(&self) -> Option<crypto::MsgCrypt> {
        if self.encoding_aes_key.is_empty() {
            return None;
        }
        crypto::MsgCrypt::new(
            self.token.expose(),
            self.encoding_aes_key.expose(),
            self.receive_id(),
        )
        .ok()
    }
}

impl crate::domain::account::AccountView for AccountConfig {
    fn name(&self) -> &str {
        &self.name
    }
    fn channel(&self) -> Channel {
        self.channel
    }
    fn open_kfids(&self) -> &[String] {
        &self.open_kfids
    }
    fn appid(&self) -> Option<&str> {
        self.appid.as_deref()
    }
    fn default_channel(&self) -> i64 {
        self.default_channel
    }
}

/// Account names become queue names and routing keys (`<account>.<msgtype>`), so no dots.
fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

fn env_key_of(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

const ENV_PREFIX: &str = "WXDISPATCH__";

impl Config {
    /// Load from an explicit path, `$WXDISPATCH_CONFIG`, `./wxdispatch.toml` or defaults,
    /// apply environment overrides, resolve `*_file` secrets and validate.
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let env: Vec<(String, String)> = std::env::vars().collect();
        let path = path
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("WXDISPATCH_CONFIG").map(PathBuf::from))
            .or_else(|| {
                let p = PathBuf::from("wxdispatch.toml");
                p.exists().then_some(p)
            });
        let text = match &path {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?,
            None => String::new(),
        };
        let origin = path
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "defaults".into());
        Self::from_toml_with_env(&text, &env).with_context(|| format!("config ({origin})"))
    }

    /// Parse TOML text, apply `WXDISPATCH__…` overrides from `env`, resolve files, validate.
    pub fn from_toml_with_env(text: &str, env: &[(String, String)]) -> anyhow::Result<Self> {
        let mut root: toml::Table =
            toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        for (k, v) in env {
            if let Some(rest) = k.strip_prefix(ENV_PREFIX) {
                apply_env_override(&mut root, rest, v)
                    .with_context(|| format!("environment variable {k}"))?;
            }
        }
        let mut cfg: Config = toml::Value::Table(root)
            .try_into()
            .map_err(|e: toml::de::Error| anyhow::anyhow!("{}", e.message()))?;
        cfg.resolve_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn resolve_files(&mut self) -> anyhow::Result<()> {
        fn read(slot: &mut Secret, file: &Option<PathBuf>, key: &str) -> anyhow::Result<()> {
            if let Some(f) = file {
                let s = std::fs::read_to_string(f)
                    .with_context(|| format!("{key}_file: cannot read {}", f.display()))?;
                *slot = Secret::new(s.trim_end_matches(['\n', '\r']));
            }
            Ok(())
        }
        read(
            &mut self.database.password,
            &self.database.password_file,
            "database.password",
        )?;
        for (i, a) in self.accounts.iter_mut().enumerate() {
            let p = format!("account[{i}] ({})", a.name);
            read(&mut a.secret, &a.secret_file, &format!("{p}.secret"))?;
            read(&mut a.token, &a.token_file, &format!("{p}.token"))?;
            read(
                &mut a.encoding_aes_key,
                &a.encoding_aes_key_file,
                &format!("{p}.encoding_aes_key"),
            )?;
        }
        Ok(())
    }

    /// Check every invariant the rest of the program relies on; the error names the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        if !self.broker.url.starts_with("amqp://") && !self.broker.url.starts_with("amqps://") {
            bail!("broker.url: must start with amqp:// or amqps://");
        }
        if self.broker.prefetch == 0 {
            bail!("broker.prefetch: must be at least 1");
        }
        if !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            bail!("database.url: must start with postgres://");
        }
        if self.database.batch_max == 0 {
            bail!("database.batch_max: must be at least 1");
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            bail!("http.listen: '{}' is not host:port", self.http.listen);
        }
        if !(self.worker.broadcast_share > 0.0 && self.worker.broadcast_share <= 1.0) {
            bail!("worker.broadcast_share: must be > 0 and <= 1");
        }
        if self.worker.concurrency == 0 {
            bail!("worker.concurrency: must be at least 1");
        }
        if self.retry.tiers_secs.is_empty() || self.retry.tiers_secs.contains(&0) {
            bail!("retry.tiers_secs: needs at least one tier, each > 0 seconds");
        }
        if self.sync.page_limit == 0 || self.sync.page_limit > 1000 {
            bail!("sync.page_limit: must be 1..=1000");
        }
        let mut names = HashSet::new();
        for (i, a) in self.accounts.iter().enumerate() {
            let p = format!("account[{i}] ({})", a.name);
            if !valid_account_name(&a.name) {
                bail!(
                    "account[{i}].name: '{}' must be 1-64 chars of [a-z0-9_-]",
                    a.name
                );
            }
            if !names.insert(a.name.as_str()) {
                bail!("{p}.name: duplicate account name");
            }
            if let Some(u) = &a.base_url
                && !(u.starts_with("http://") || u.starts_with("https://"))
            {
                bail!("{p}.base_url: must start with http:// or https://");
            }
            if a.rate.period().is_none() && !a.rate.unlimited {
                bail!(
                    "{p}.rate: set per_second or per_minute (> 0), e.g. rate = {{ per_second = 50, burst = 10 }}"
                );
            }
            if a.rate.burst == Some(0) {
                bail!("{p}.rate.burst: must be at least 1");
            }
            let need = |s: &Secret, key: &str| -> anyhow::Result<()> {
                if s.is_empty() {
                    bail!(
                        "{p}.{key}: missing (set {key}, {key}_file or WXDISPATCH__ACCOUNT__{}__{})",
                        env_key_of(&a.name),
                        key.to_ascii_uppercase()
                    );
                }
                Ok(())
            };
            match a.channel {
                Channel::Chatbot => {
                    need(&a.token, "token")?;
                    need(&a.encoding_aes_key, "encoding_aes_key")?;
                    if a.appid.as_deref().unwrap_or("").is_empty() {
                        bail!("{p}.appid: missing (the platform APPID, used as the receive id)");
                    }
                }
                Channel::Wecom => {
                    if a.corpid.as_deref().unwrap_or("").is_empty() {
                        bail!("{p}.corpid: missing");
                    }
                    need(&a.secret, "secret")?;
                    if a.open_kfids.is_empty() {
                        bail!("{p}.open_kfids: list at least one open_kfid this account sends for");
                    }
                    if a.token.is_empty() != a.encoding_aes_key.is_empty() {
                        bail!(
                            "{p}: callback token and encoding_aes_key go together (set both or neither)"
                        );
                    }
                }
            }
            if !a.encoding_aes_key.is_empty() {
                crypto::decode_aes_key(a.encoding_aes_key.expose())
                    .map_err(|e| anyhow::anyhow!("{p}.encoding_aes_key: {e}"))?;
            }
        }
        Ok(())
    }

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
        // postgres://user[:pw]@host/... → postgres://user:<password>@host/...
        let url = &self.database.url;
        let Some(scheme_end) = url.find("://") else {
            return url.clone();
        };
        let (scheme, rest) = url.split_at(scheme_end + 3);
        let Some(at) = rest.find('@') else {
            return url.clone();
        };
        let user = rest[..at].split(':').next().unwrap_or("");
        let pw: String = self
            .database
            .password
            .expose()
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("{scheme}{user}:{pw}{}", &rest[at..])
    }
}

/// Apply one `SECTION__KEY[__…]` override to the raw TOML table.
fn apply_env_override(root: &mut toml::Table, path: &str, raw: &str) -> anyhow::Result<()> {
    let parts: Vec<String> = path.split("__").map(|p| p.to_ascii_lowercase()).collect();
    if parts.len() < 2 || parts.iter().any(String::is_empty) {
        bail!("expected WXDISPATCH__SECTION__KEY");
    }
    let value = parse_env_value(raw);
    if parts[0] == "account" {
        if parts.len() != 3 {
            bail!("expected WXDISPATCH__ACCOUNT__<NAME or INDEX>__KEY");
        }
        let accounts = root
            .entry("account")
            .or_insert_with(|| toml::Value::Array(Vec::new()))
            .as_array_mut()
            .context("[[account]] must be an array of tables")?;
        let sel = &parts[1];
        let idx = match sel.parse::<usize>() {
            Ok(i) if i < accounts.len() => i,
            Ok(i) => bail!("no account at index {i}"),
            Err(_) => accounts
                .iter()
                .position(|a| {
                    a.get("name")
                        .and_then(toml::Value::as_str)
                        .is_some_and(|n| env_key_of(n).eq_ignore_ascii_case(sel))
                })
                .with_context(|| format!("no account named '{sel}' in the config file"))?,
        };
        let table = accounts[idx]
            .as_table_mut()
            .context("[[account]] entries must be tables")?;
        table.insert(parts[2].clone(), value);
        return Ok(());
    }
    let mut table = root;
    for seg in &parts[..parts.len() - 1] {
        table = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .with_context(|| format!("'{seg}' is not a section"))?;
    }
    table.insert(parts[parts.len() - 1].clone(), value);
    Ok(())
}

fn parse_env_value(raw: &str) -> toml::Value {
    // `x = <raw>` parses for numbers, booleans, arrays and inline tables; anything else is a string.
    let doc = format!("x = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("x")
            .unwrap_or_else(|| toml::Value::String(raw.to_owned())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "jWmYm7qr5nMoAUwZRjGtBxmz3KA1tkAj3ykkR6q2B2C";

    fn base() -> String {
        format!(
            r#"
[[account]]
name = "bot"
channel = "chatbot"
token = "tok-secret-1"
encoding_aes_key = "{KEY}"
appid = "APPID123"
rate = {{ per_second = 50, burst = 10 }}

[[account]]
name = "kf"
channel = "wecom"
corpid = "ww123"
secret = "corp-secret-2"
open_kfids = ["wkA"]
rate = {{ per_minute = 600 }}
"#
        )
    }

    #[test]
    fn parses_defaults_and_accounts() {
        let c = Config::from_toml_with_env(&base(), &[]).unwrap();
        assert_eq!(c.accounts.len(), 2);
        assert_eq!(c.broker.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(c.accounts[1].rate.burst(), 10);
        assert_eq!(c.accounts[0].base_url(), "https://chatbot.weixin.qq.com");
    }

    #[test]
    fn env_overrides_by_name_index_and_section() {
        let env = vec![
            ("WXDISPATCH__ACCOUNT__KF__SECRET".into(), "from-env".into()),
            (
                "WXDISPATCH__ACCOUNT__0__RATE".into(),
                "{ per_second = 7 }".into(),
            ),
            ("WXDISPATCH__BROKER__PREFETCH".into(), "33".into()),
            ("WXDISPATCH__HTTP__LISTEN".into(), "127.0.0.1:1".into()),
        ];
        let c = Config::from_toml_with_env(&base(), &env).unwrap();
        assert_eq!(c.accounts[1].secret.expose(), "from-env");
        assert_eq!(c.accounts[0].rate.per_second, Some(7));
        assert_eq!(c.broker.prefetch, 33);
        assert_eq!(c.http.listen, "127.0.0.1:1");
    }

    #[test]
    fn secrets_from_files_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s");
        std::fs::write(&f, "file-secret-3\n").unwrap();
        let text = base().replace(
            "secret = \"corp-secret-2\"",
            &format!("secret_file = {:?}", f),
        );
        let c = Config::from_toml_with_env(&text, &[]).unwrap();
        assert_eq!(c.accounts[1].secret.expose(), "file-secret-3");
        let shown = format!("{c:?}\n{}", c.to_redacted_toml());
        for s in ["tok-secret-1", "file-secret-3", KEY] {
            assert!(!shown.contains(s), "{s} leaked");
        }
    }

    #[test]
    fn invalid_config_names_the_key() {
        let e = Config::from_toml_with_env(&base().replace("appid = \"APPID123\"", ""), &[])
            .unwrap_err();
        assert!(format!("{e:#}").contains("account[0] (bot).appid"), "{e:#}");
        let e = Config::from_toml_with_env(&base().replace("secret = \"corp-secret-2\"", ""), &[])
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("WXDISPATCH__ACCOUNT__KF__SECRET"),
            "{e:#}"
        );
        let e = Config::from_toml_with_env(&base().replace(KEY, "tooshort"), &[]).unwrap_err();
        assert!(format!("{e:#}").contains("encoding_aes_key"), "{e:#}");
        let e = Config::from_toml_with_env("[broker]\nprefetch = 0\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("broker.prefetch"), "{e:#}");
        let e = Config::from_toml_with_env("[brokr]\nurl = 'x'\n", &[]).unwrap_err();
        assert!(format!("{e:#}").contains("brokr"), "{e:#}");
        let e = Config::from_toml_with_env(&base().replace("name = \"kf\"", "name = \"bot\""), &[])
            .unwrap_err();
        assert!(format!("{e:#}").contains("duplicate"), "{e:#}");
    }

    #[test]
    fn database_password_is_spliced_into_url() {
        let env = vec![("WXDISPATCH__DATABASE__PASSWORD".into(), "p@ss w".into())];
        let c = Config::from_toml_with_env("", &env).unwrap();
        assert_eq!(
            c.database_url(),
            "postgres://postgres:p%40ss%20w@127.0.0.1:5432/wxdispatch"
        );
        assert!(!format!("{c:?}").contains("p@ss"));
    }
}
