//! One account's platform client.
//!
//! [`Platform`] renders a [`Job`] into the platform's request, performs exactly one logical
//! call (plus, for WeCom, the one refresh-and-retry the platform asks for on
//! 40014/42001/41001) and returns a [`CallResult`] for [`crate::policy`] to judge. The
//! channels' paths live in [`super::chatbot`] and [`super::wecom`], the call itself in
//! [`super::http`], WeCom's access tokens in [`super::token`].

use std::collections::HashMap;
use std::sync::Mutex;

use super::token::{TokenManager, TokenStore};
use crate::config::{AccountConfig, Channel};
use crate::crypto::MsgCrypt;
use crate::domain::job::Job;
use crate::policy::{Api, CallResult};

/// One account's platform client.
pub struct Platform {
    pub account: AccountConfig,
    pub(super) http: reqwest::Client,
    pub(super) crypt: Option<MsgCrypt>,
    pub(super) tokens: Option<TokenManager>,
    /// Parsed request URLs by API path, with the token they carry (chatbot: the account's
    /// TOKEN in the path; WeCom: the access token in the query). Parsing and encoding one per
    /// request was ~2 % of a loaded worker; a new access token replaces the entry.
    urls: Mutex<HashMap<String, (String, reqwest::Url)>>,
}

impl std::fmt::Debug for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Platform")
            .field("account", &self.account.name)
            .finish_non_exhaustive()
    }
}

impl Platform {
    /// The client of `account`; a WeCom account shares its access tokens through `tokens`
    /// (a chatbot account needs none and drops it).
    pub fn new(
        account: AccountConfig,
        http: reqwest::Client,
        tokens: impl TokenStore + 'static,
    ) -> Self {
        let crypt = account.crypt();
        let tokens = (account.channel == Channel::Wecom)
            .then(|| TokenManager::new(&account, http.clone(), Box::new(tokens)));
        Self {
            account,
            http,
            crypt,
            tokens,
            urls: Mutex::new(HashMap::new()),
        }
    }

    /// The URL of `path` carrying `token`: from the cache, or made by `make` (given the
    /// base URL) and cached.
    pub(super) fn url<E: std::fmt::Display>(
        &self,
        path: &str,
        token: &str,
        make: impl FnOnce(&str) -> Result<reqwest::Url, E>,
    ) -> Result<reqwest::Url, CallResult> {
        let mut urls = self.urls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((t, u)) = urls.get(path)
            && t == token
        {
            return Ok(u.clone());
        }
        // The message names neither the URL nor the token.
        let u = make(self.base()).map_err(|e| {
            CallResult::Transport(format!(
                "account {}: base_url does not make a valid URL ({e})",
                self.account.name
            ))
        })?;
        urls.insert(path.to_owned(), (token.to_owned(), u.clone()));
        Ok(u)
    }

    pub fn tokens(&self) -> Option<&TokenManager> {
        self.tokens.as_ref()
    }

    fn base(&self) -> &str {
        self.account.base_url().trim_end_matches('/')
    }

    /// Perform the job's platform call once (WeCom: plus one refresh-and-retry on a stale
    /// token). Returns the raw result and the API it came from, for the policy.
    pub async fn execute(&self, job: &Job) -> (CallResult, Api) {
        match self.account.channel {
            Channel::Chatbot => (self.chatbot(job).await, Api::Business),
            Channel::Wecom => self.wecom(job).await,
        }
    }
}
