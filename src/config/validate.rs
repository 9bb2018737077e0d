//! [`Config::validate`]: every invariant the rest of the program relies on, checked at start.

use std::collections::HashSet;

use anyhow::bail;

use super::account::{env_key_of, valid_account_name};
use super::model::Config;
use super::secret::Secret;
use crate::crypto;
use crate::domain::channel::Channel;

impl Config {
    /// Check every invariant the rest of the program relies on; the error names the key.
    // One check per key in the order of the settings file: a list, not logic; split, the rules
    // of one file would be scattered over several functions.
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
        self.http.validate()?;
        let account_names: Vec<&str> = self.accounts.iter().map(|a| a.name.as_str()).collect();
        super::api_tokens::validate(&self.http.api_tokens, &account_names)?;
        if !(self.worker.broadcast_share > 0.0 && self.worker.broadcast_share <= 1.0) {
            bail!("worker.broadcast_share: must be > 0 and <= 1");
        }
        if self.worker.concurrency == 0 {
            bail!("worker.concurrency: must be at least 1");
        }
        if !(1..=u64::from(u32::MAX)).contains(&self.worker.held_bytes_budget) {
            bail!("worker.held_bytes_budget: must be 1 ..= 4294967295 bytes");
        }
        if self.retry.tiers_secs.is_empty() || self.retry.tiers_secs.contains(&0) {
            bail!("retry.tiers_secs: needs at least one tier, each > 0 seconds");
        }
        if self.outcomes.batch == 0 || self.outcomes.batch > 10_000 {
            bail!("outcomes.batch: must be 1..=10000");
        }
        if self.outcomes.poll_ms == 0 {
            bail!("outcomes.poll_ms: must be at least 1");
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
}
