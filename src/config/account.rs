//! One `[[account]]`: its platform, credentials and rate.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::secret::Secret;
use crate::crypto;
use crate::domain::channel::Channel;

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
    /// The Official Account / Mini Program appid rendered in sendmsg's and kefustate's
    /// `<appid>` when a job names no `chatbot.appid` (required there for channels 0, 5, 6).
    /// Not the receive id: WXBizMsgCrypt keeps using `appid`, the platform APPID.
    #[serde(default)]
    pub oa_appid: Option<String>,
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
    /// Chatbot only: refuse a push to `/callback/chatbot/<account>` that does not carry a
    /// signature (`msg_signature` or `signature`, with `timestamp` and `nonce`, in the query).
    /// Off by default because the Dialogue Open Platform signs no push; a signature that *is*
    /// sent is always verified. Turn it on when the platform (or a signing proxy in front of
    /// us) signs every push: an unsigned push then never reaches decryption.
    #[serde(default)]
    pub require_push_signature: bool,
    /// Chatbot only: suppress bot replies (`gate: "bot"`) also while the conversation is in
    /// `needperson` (the bot caught a request for a human, none serves yet). Off by default:
    /// until a human takes over, the bot's reply (often "an agent will be with you shortly")
    /// is the only answer the user gets, and `personserving` is gated either way.
    #[serde(default)]
    pub gate_needperson: bool,
    /// Publish this account's terminal outcomes to `wxdispatch.outcomes` (README "Outcome
    /// events"). On by default; `false` writes no event rows at all (the hot path then skips
    /// the outbox entirely).
    #[serde(default = "outcomes_default")]
    pub outcomes: bool,
}

/// Outcome events are on unless an account turns them off.
fn outcomes_default() -> bool {
    true
}

impl AccountConfig {
    pub fn base_url(&self) -> &str {
        self.base_url.as_deref().unwrap_or(match self.channel {
            Channel::Chatbot => "https://chatbot.weixin.qq.com",
            Channel::Wecom => "https://qyapi.weixin.qq.com",
        })
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
    fn oa_appid(&self) -> Option<&str> {
        self.oa_appid.as_deref().filter(|s| !s.is_empty())
    }
}

/// Account names become queue names and routing keys (`<account>.<msgtype>`), so no dots.
pub(super) fn valid_account_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// How an account is named in `WXDISPATCH__ACCOUNT__<NAME>__KEY`: upper-cased, every
/// non-alphanumeric as `_`.
pub(super) fn env_key_of(name: &str) -> String {
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
