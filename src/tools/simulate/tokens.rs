//! WeCom access tokens as the simulator issues them: one current token per corp group while it
//! is valid, expired tokens remembered for a while (42001) before they are forgotten (40014).
//!
//! A corp's gettoken can be made to refuse ([`TokenBook::set_refusal`]; tests use
//! `SimState::refuse_gettoken`, as when its secret was reset in the console) and to accept
//! again (`SimState::accept_gettoken`, the secret fixed). Tokens already issued stay valid
//! meanwhile, as on the platform.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::util::random_id;

/// Length of generated access tokens (WeCom's are longer; callers must treat them as opaque).
const ACCESS_TOKEN_LEN: usize = 64;
/// An access token expired this long ago is forgotten (then 40014 instead of 42001).
const TOKEN_MEMORY: Duration = Duration::from_secs(24 * 3600);

struct IssuedToken {
    group: usize,
    expires: Instant,
}

/// Every issued token. (No `Debug`: it holds access tokens.)
#[derive(Default)]
pub(crate) struct TokenBook {
    by_token: HashMap<String, IssuedToken>,
    /// The token `gettoken` hands out per group while it is valid.
    current: HashMap<usize, String>,
    /// Groups whose gettoken answers this errcode instead of a token.
    refused: HashMap<usize, i64>,
}

/// What a presented access token is.
pub(crate) enum Lookup {
    /// Valid, issued to this corp group.
    Valid(usize),
    /// Issued to this corp group, but expired.
    Expired(usize),
    /// Never issued, or forgotten.
    Unknown,
}

impl TokenBook {
    /// The errcode gettoken answers for `group` while it refuses.
    pub(crate) fn refusal(&self, group: usize) -> Option<i64> {
        self.refused.get(&group).copied()
    }

    /// From now on gettoken of `group` answers `errcode` (`None`: issues tokens again).
    pub(crate) fn set_refusal(&mut self, group: usize, errcode: Option<i64>) {
        match errcode {
            Some(c) => self.refused.insert(group, c),
            None => self.refused.remove(&group),
        };
    }

    pub(crate) fn lookup(&self, token: &str, now: Instant) -> Lookup {
        match self.by_token.get(token) {
            None => Lookup::Unknown,
            Some(t) if now >= t.expires => Lookup::Expired(t.group),
            Some(t) => Lookup::Valid(t.group),
        }
    }

    /// `gettoken` for `group`: its current token with the seconds it has left, or a new one
    /// valid `ttl` (expired tokens beyond [`TOKEN_MEMORY`] are forgotten on the way).
    pub(crate) fn current_or_issue(
        &mut self,
        group: usize,
        ttl: Duration,
        now: Instant,
    ) -> (String, u64) {
        if let Some(cur) = self.current.get(&group)
            && let Some(t) = self.by_token.get(cur)
            && t.expires > now
        {
            let left = t.expires - now;
            return (cur.clone(), left.as_secs_f64().ceil() as u64);
        }
        self.by_token.retain(|_, t| t.expires + TOKEN_MEMORY > now);
        let token = random_id(ACCESS_TOKEN_LEN);
        self.by_token.insert(
            token.clone(),
            IssuedToken {
                group,
                expires: now + ttl,
            },
        );
        self.current.insert(group, token.clone());
        (token, ttl.as_secs_f64().ceil() as u64)
    }

    /// Every issued token becomes expired.
    pub(crate) fn expire_all(&mut self, now: Instant) {
        for t in self.by_token.values_mut() {
            t.expires = t.expires.min(now);
        }
        self.current.clear();
    }

    /// Every issued token becomes unknown.
    pub(crate) fn revoke_all(&mut self) {
        self.by_token.clear();
        self.current.clear();
    }
}
