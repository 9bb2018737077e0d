//! `[[http.api_tokens]]`: who may use the HTTP job API (`POST /v1/jobs`, `GET /v1/jobs/{id}`).
//! A token is configured by the SHA-256 of its value, never the value itself, so the settings
//! file, `check-config` and any log of the config hold nothing that authenticates.

use std::collections::HashSet;

use anyhow::bail;
use serde::{Deserialize, Serialize};

/// One bearer token of the HTTP job API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiToken {
    /// Names the producer in logs and metrics (the token value never appears anywhere).
    pub name: String,
    /// SHA-256 of the token, 64 hex digits (`printf %s "$TOKEN" | sha256sum`, or
    /// `wxdispatch token hash`). A hash, so the file authenticates no one.
    pub sha256: String,
    /// Accounts this token may publish to and read; empty = every account. A producer's token
    /// leaking then reaches only its own accounts.
    #[serde(default)]
    pub accounts: Vec<String>,
    /// Requests per second this token may make (each `POST`, whatever its batch size, and
    /// each `GET`); beyond it, 429 with `Retry-After`. Bounds one producer's share of the
    /// broker and the database.
    #[serde(default = "default_rate")]
    pub rate_per_sec: u32,
    /// Requests this token may make at once above the rate (a burst after a quiet time).
    #[serde(default = "default_burst")]
    pub burst: u32,
}

/// 20 requests/s: a producer posting batches of [`super::HttpConfig::jobs_max_batch`] jobs
/// reaches thousands of jobs per second, more than any account's platform rate.
fn default_rate() -> u32 {
    20
}

/// 40: two seconds' worth.
fn default_burst() -> u32 {
    40
}

impl ApiToken {
    /// The token's SHA-256 as bytes (`None` when `sha256` is not 64 hex digits; validated).
    pub fn digest(&self) -> Option<[u8; 32]> {
        let bytes = hex::decode(&self.sha256).ok()?;
        bytes.try_into().ok()
    }

    /// Whether this token may publish to / read `account`.
    pub fn allows(&self, account: &str) -> bool {
        self.accounts.is_empty() || self.accounts.iter().any(|a| a == account)
    }
}

/// The `[[http.api_tokens]]` invariants; `accounts` are the configured account names.
pub fn validate(tokens: &[ApiToken], accounts: &[&str]) -> anyhow::Result<()> {
    let mut names = HashSet::new();
    let mut digests = HashSet::new();
    for (i, t) in tokens.iter().enumerate() {
        let key = format!("http.api_tokens[{i}]");
        if t.name.is_empty() || t.name.len() > 64 || t.name.chars().any(char::is_control) {
            bail!("{key}.name: must be 1-64 printable chars");
        }
        if !names.insert(t.name.as_str()) {
            bail!("{key}.name: '{}' is used twice", t.name);
        }
        // The length says "a token was pasted instead of its hash" without showing it.
        let Some(d) = t.digest() else {
            bail!(
                "{key}.sha256: must be the 64 hex digits of the token's SHA-256 (got {} chars; `wxdispatch token hash` prints it)",
                t.sha256.chars().count()
            );
        };
        if !digests.insert(d) {
            bail!("{key}.sha256: the same token is configured twice");
        }
        for a in &t.accounts {
            if !accounts.contains(&a.as_str()) {
                bail!("{key}.accounts: '{a}' is not a configured account");
            }
        }
        if t.rate_per_sec == 0 {
            bail!("{key}.rate_per_sec: must be at least 1");
        }
        if t.burst == 0 {
            bail!("{key}.burst: must be at least 1");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, sha256: &str) -> ApiToken {
        ApiToken {
            name: name.into(),
            sha256: sha256.into(),
            accounts: Vec::new(),
            rate_per_sec: 1,
            burst: 1,
        }
    }

    const H: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn tokens_need_a_name_a_hash_known_accounts_and_a_rate() {
        let err = |t: ApiToken| validate(&[t], &["kf"]).unwrap_err().to_string();
        assert!(validate(&[token("crm", H)], &[]).is_ok());
        assert!(err(token("", H)).starts_with("http.api_tokens[0].name:"));
        let pasted = err(token("crm", "my-secret-token"));
        assert!(pasted.starts_with("http.api_tokens[0].sha256:"), "{pasted}");
        assert!(!pasted.contains("my-secret-token"), "{pasted}");
        let mut t = token("crm", H);
        t.accounts = vec!["ghost".into()];
        assert!(err(t).starts_with("http.api_tokens[0].accounts:"));
        let mut t = token("crm", H);
        t.rate_per_sec = 0;
        assert!(err(t).starts_with("http.api_tokens[0].rate_per_sec:"));
        let twice = validate(&[token("a", H), token("b", &H.to_uppercase())], &[]);
        assert!(twice.unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn an_empty_account_list_allows_every_account() {
        let mut t = token("crm", H);
        assert!(t.allows("kf") && t.allows("bot"));
        t.accounts = vec!["kf".into()];
        assert!(t.allows("kf") && !t.allows("bot"));
    }
}
