//! Everything the simulated platforms remember ([`SimState`]): accounts, tokens, the accepted
//! log, counters, conversations. The conversation helpers tests use to drive it are in
//! [`super::drive`]; the pieces of state in [`super::accepted`], [`super::tokens`] and
//! [`super::conversations`].
//!
//! Locking: every piece of state sits behind its own short `std` lock, taken only in
//! synchronous code (never across an await), so concurrent requests only serialize on a few
//! hundred nanoseconds of bookkeeping. The accepted log is an append-only `Vec` of `Arc`s, so a
//! snapshot for the admin API copies pointers, not messages.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::accepted::{Accepted, AcceptedLog, NewRecord, Record};
use super::conversations::Conversations;
use super::gate::{AccountGate, Api};
use super::options::{Faults, SimOptions};
use super::recalls::RecallBook;
use super::reply::{ApiErr, Reply, code, query_param};
use super::tokens::{Lookup, TokenBook};
use super::util::lock;
use crate::config::{AccountConfig, Channel};
use crate::crypto::MsgCrypt;

/// Account name used in the counters when a request names no known account.
pub const UNKNOWN_ACCOUNT: &str = "?";

/// One simulated account.
#[derive(Debug)]
pub(crate) struct Account {
    pub cfg: AccountConfig,
    /// Chatbot: always; WeCom: when a callback key is configured.
    pub crypt: Option<MsgCrypt>,
    pub gate: AccountGate,
}

impl Account {
    pub fn channel_str(&self) -> &'static str {
        self.cfg.channel.as_str()
    }
}

/// Accounts of one corp sharing one secret: they share access tokens. (No `Debug`: it holds
/// the secret.)
pub(crate) struct CorpGroup {
    pub corpid: String,
    secret: String,
    pub accounts: Vec<usize>,
    pub open_kfids: HashSet<String>,
}

/// Counters and state shown by `GET /_sim/stats`.
#[derive(Debug, Clone, Serialize, Default)]
pub struct SimStats {
    pub accepted_total: u64,
    /// account → accepted requests.
    pub accepted: BTreeMap<String, u64>,
    /// `"account:errcode"` → answered errors (incl. faults: `http502`, `http500`, `timeout`).
    pub errcodes: BTreeMap<String, u64>,
    /// corpid → gettoken calls.
    pub gettoken_calls: BTreeMap<String, u64>,
    /// account → msgids accepted more than once.
    pub duplicate_msgids: BTreeMap<String, u64>,
    pub faults: Faults,
}

/// The simulated platforms' state. Shared by the server and whoever holds the [`super::SimHandle`].
pub struct SimState {
    pub(crate) accounts: Vec<Account>,
    by_name: HashMap<String, usize>,
    /// chatbot TOKEN → account.
    pub(crate) chatbot_tokens: HashMap<String, usize>,
    pub(crate) corps: Vec<CorpGroup>,
    /// open_kfid → owning account.
    pub(crate) kfid_owner: HashMap<String, usize>,
    pub(crate) token_ttl: Duration,
    pub(crate) enforce_rate: bool,
    pub(crate) enforce_window: bool,
    faults: RwLock<Faults>,
    tokens: RwLock<TokenBook>,
    gettoken_calls: Mutex<BTreeMap<String, u64>>,
    pub(crate) log: Mutex<AcceptedLog>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub(crate) conv: Mutex<Conversations>,
    /// The messages recalled through kf/recall_msg ([`super::recalls`]).
    pub(crate) recalls: Mutex<RecallBook>,
    /// Changes on every reset so that sync cursors of a previous life restart from the top.
    pub(crate) cursor_epoch: AtomicU32,
    /// Cancelled when the server stops (releases requests held by timeout faults).
    pub(crate) shutdown: CancellationToken,
    /// `voice_format` of the sync_msg requests received (`"0"`, `"1"`, `"absent"`) → count.
    pub(crate) sync_voice_formats: Mutex<BTreeMap<String, u64>>,
}

impl SimState {
    pub(crate) fn new(accounts: Vec<AccountConfig>, opts: &SimOptions) -> anyhow::Result<Self> {
        let mut out = Vec::with_capacity(accounts.len());
        let mut by_name = HashMap::new();
        let mut chatbot_tokens = HashMap::new();
        let mut corps: Vec<CorpGroup> = Vec::new();
        let mut kfid_owner = HashMap::new();
        for (i, cfg) in accounts.into_iter().enumerate() {
            let ctx = || format!("simulator: account '{}'", cfg.name);
            if by_name.insert(cfg.name.clone(), i).is_some() {
                bail!("{}: duplicate account name", ctx());
            }
            let crypt =
                account_crypt(&cfg).with_context(|| format!("{}: encoding_aes_key", ctx()))?;
            let throttle = match cfg.channel {
                Channel::Chatbot => {
                    if cfg.token.is_empty() || crypt.is_none() || cfg.receive_id().is_empty() {
                        bail!(
                            "{}: a chatbot account needs token, encoding_aes_key and appid",
                            ctx()
                        );
                    }
                    // The TOKEN in the URL is what identifies the bot (never printed).
                    if chatbot_tokens
                        .insert(cfg.token.expose().to_owned(), i)
                        .is_some()
                    {
                        bail!("{}: another chatbot account has the same token", ctx());
                    }
                    code::BOT_THROTTLED
                }
                Channel::Wecom => {
                    let corpid = cfg.corpid.clone().unwrap_or_default();
                    if corpid.is_empty() {
                        bail!("{}: a wecom account needs a corpid", ctx());
                    }
                    join_corp(&mut corps, &mut kfid_owner, i, corpid, &cfg);
                    code::WECOM_THROTTLED
                }
            };
            out.push(Account {
                gate: AccountGate::new(&cfg.rate, throttle),
                cfg,
                crypt,
            });
        }
        let n = out.len();
        Ok(Self {
            accounts: out,
            by_name,
            chatbot_tokens,
            corps,
            kfid_owner,
            token_ttl: opts.token_ttl,
            enforce_rate: opts.enforce_rate,
            enforce_window: opts.enforce_window,
            faults: RwLock::new(opts.faults.clone()),
            tokens: RwLock::new(TokenBook::default()),
            gettoken_calls: Mutex::new(BTreeMap::new()),
            log: Mutex::new(AcceptedLog::new(n)),
            errors: Mutex::new(BTreeMap::new()),
            conv: Mutex::new(Conversations::default()),
            recalls: Mutex::new(RecallBook::default()),
            cursor_epoch: AtomicU32::new(rand::random()),
            shutdown: CancellationToken::new(),
            sync_voice_formats: Mutex::new(BTreeMap::new()),
        })
    }

    // ------------------------------------------------------------------ internals

    pub(crate) fn account_index(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    pub(crate) fn account_name(&self, idx: Option<usize>) -> &str {
        idx.and_then(|i| self.accounts.get(i))
            .map_or(UNKNOWN_ACCOUNT, |a| a.cfg.name.as_str())
    }

    pub(crate) fn faults(&self) -> Faults {
        self.faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Scripted errcodes, faults, rate limit (see [`super::gate`]).
    pub(crate) fn gate(&self, account: usize, api: Api) -> Option<Reply> {
        let acct = self.accounts.get(account)?;
        let faults = self.faults.read().unwrap_or_else(|e| e.into_inner());
        acct.gate.check(api, &faults, self.enforce_rate)
    }

    pub(crate) fn count_error(&self, account: Option<usize>, what: &str) {
        let key = format!("{}:{what}", self.account_name(account));
        *lock(&self.errors).entry(key).or_insert(0) += 1;
    }

    /// Record an accepted request; returns its seq.
    pub(crate) fn accept(&self, account: usize, new: NewRecord<'_>) -> u64 {
        if account >= self.accounts.len() {
            return 0;
        }
        lock(&self.log).push(account, new)
    }

    /// Retained records with `seq > since_seq`, optionally of one account, at most `limit`.
    /// Only `Arc`s are copied under the lock.
    pub(crate) fn records_since(
        &self,
        account: Option<&str>,
        since_seq: u64,
        limit: usize,
    ) -> Vec<Arc<Record>> {
        let account = match account {
            Some(name) => match self.account_index(name) {
                Some(i) => Some(i),
                None => return Vec::new(),
            },
            None => None,
        };
        lock(&self.log).since(account, since_seq, limit)
    }

    /// A stored record as the public [`Accepted`] (parses the body).
    pub(crate) fn to_accepted(&self, r: &Record) -> Accepted {
        let acct = &self.accounts[r.account()];
        r.to_accepted(&acct.cfg.name, acct.channel_str())
    }

    /// Retained accepted requests with `seq > since_seq`, optionally of one account.
    pub fn accepted_since(
        &self,
        account: Option<&str>,
        since_seq: u64,
        limit: usize,
    ) -> Vec<Accepted> {
        self.records_since(account, since_seq, limit)
            .iter()
            .map(|r| self.to_accepted(r))
            .collect()
    }

    /// `access_token` of a business request → its corp group.
    pub(crate) fn authenticate(
        &self,
        query: Option<&str>,
    ) -> Result<usize, (Option<usize>, ApiErr)> {
        let token = query_param(query, "access_token")
            .filter(|t| !t.is_empty())
            .ok_or((None, ApiErr::new(code::MISSING_TOKEN)))?;
        let book = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        match book.lookup(&token, Instant::now()) {
            Lookup::Valid(group) => Ok(group),
            Lookup::Unknown => Err((None, ApiErr::new(code::INVALID_TOKEN))),
            Lookup::Expired(group) => {
                let first = self
                    .corps
                    .get(group)
                    .and_then(|g| g.accounts.first().copied());
                Err((first, ApiErr::new(code::TOKEN_EXPIRED)))
            }
        }
    }

    /// The account of `group` a request is for: the owner of its open_kfid, else the first.
    pub(crate) fn account_in_group(&self, group: usize, open_kfid: Option<&str>) -> usize {
        let g = &self.corps[group];
        open_kfid
            .and_then(|k| self.kfid_owner.get(k))
            .filter(|i| g.accounts.contains(i))
            .or(g.accounts.first())
            .copied()
            .unwrap_or(0)
    }

    /// `gettoken`: the current token of the (corpid, secret) group, or a new one.
    pub(crate) fn get_token(
        &self,
        corpid: Option<&str>,
        secret: Option<&str>,
    ) -> Result<(String, u64), ApiErr> {
        let corpid = corpid
            .filter(|c| !c.is_empty())
            .ok_or(ApiErr::new(code::MISSING_CORPID))?;
        *lock(&self.gettoken_calls)
            .entry(corpid.to_owned())
            .or_insert(0) += 1;
        let secret = secret
            .filter(|s| !s.is_empty())
            .ok_or(ApiErr::new(code::MISSING_SECRET))?;
        if !self.corps.iter().any(|g| g.corpid == corpid) {
            return Err(ApiErr::new(code::INVALID_CORPID));
        }
        let group = self
            .corps
            .iter()
            .position(|g| g.corpid == corpid && g.secret == secret)
            .ok_or(ApiErr::new(code::INVALID_SECRET))?;
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(refusal) = book.refusal(group) {
            return Err(ApiErr::new(refusal));
        }
        Ok(book.current_or_issue(group, self.token_ttl, Instant::now()))
    }

    pub(crate) fn warn_unknown(&self, what: &str, account: &str) -> Option<usize> {
        let i = self.account_index(account);
        if i.is_none() {
            tracing::warn!(account, "simulator: {what} for an unknown account ignored");
        }
        i
    }

    // ------------------------------------------------------------------ public API

    /// A snapshot of everything accepted (the last [`MAX_RETAINED_ACCEPTED`](super::MAX_RETAINED_ACCEPTED)), in acceptance
    /// order.
    pub fn accepted(&self) -> Vec<Accepted> {
        self.accepted_since(None, 0, usize::MAX)
    }

    /// Requests accepted since the start or the last [`Self::reset`].
    pub fn accepted_count(&self) -> usize {
        usize::try_from(lock(&self.log).total).unwrap_or(usize::MAX)
    }

    /// Accepted records of one account, in order.
    pub fn accepted_for(&self, account: &str) -> Vec<Accepted> {
        self.accepted_since(Some(account), 0, usize::MAX)
    }

    /// Replace the fault rates (out-of-range probabilities are clamped to 0.0..=1.0).
    pub fn set_faults(&self, f: Faults) {
        let clamp = |p: f64| if p.is_nan() { 0.0 } else { p.clamp(0.0, 1.0) };
        let f = Faults {
            http_5xx: clamp(f.http_5xx),
            timeout: clamp(f.timeout),
            busy: clamp(f.busy),
            throttle: clamp(f.throttle),
            timeout_ms: f.timeout_ms,
        };
        *self.faults.write().unwrap_or_else(|e| e.into_inner()) = f;
    }

    /// Every issued access token becomes expired: its next use is answered 42001.
    pub fn expire_tokens(&self) {
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        book.expire_all(Instant::now());
    }

    /// Every issued access token becomes unknown: its next use is answered 40014.
    pub fn revoke_tokens(&self) {
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        book.revoke_all();
    }

    /// `voice_format` of the sync_msg requests received: `"0"`, `"1"` or `"absent"` → count.
    pub fn sync_voice_formats(&self) -> BTreeMap<String, u64> {
        lock(&self.sync_voice_formats).clone()
    }

    /// From now on gettoken of `account`'s corp answers `errcode` (40001 wrong secret, 40013
    /// bad corpid, 60020 IP not allowed, …) however it is asked; issued tokens stay valid.
    /// False for an unknown or chatbot account.
    pub fn refuse_gettoken(&self, account: &str, errcode: i64) -> bool {
        self.set_gettoken_refusal(account, Some(errcode))
    }

    /// gettoken of `account`'s corp issues tokens again (the secret was fixed).
    pub fn accept_gettoken(&self, account: &str) -> bool {
        self.set_gettoken_refusal(account, None)
    }

    fn set_gettoken_refusal(&self, account: &str, errcode: Option<i64>) -> bool {
        let Some(i) = self.warn_unknown("gettoken refusal", account) else {
            return false;
        };
        let Some(group) = self.corps.iter().position(|g| g.accounts.contains(&i)) else {
            return false;
        };
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        book.set_refusal(group, errcode);
        true
    }

    /// gettoken calls naming `corpid` (successful or not).
    pub fn gettoken_calls(&self, corpid: &str) -> u64 {
        lock(&self.gettoken_calls).get(corpid).copied().unwrap_or(0)
    }

    /// The next `errcodes.len()` *write* requests of `account` (sendmsg, kefustate/change,
    /// send_msg, send_msg_on_event, service_state/trans) are answered with these errcodes, in
    /// order, without being processed; queries a worker makes around a job (kefustate/get,
    /// service_state/get, sync_msg) are not affected (see [`Self::script_api`]). Special
    /// values: [`super::gate::SCRIPT_PASS`] (0) processes the request normally,
    /// [`super::gate::SCRIPT_HTTP_500`] (-2) answers HTTP 500, [`super::gate::SCRIPT_TIMEOUT`]
    /// (-3) holds it like a timeout fault.
    pub fn script(&self, account: &str, errcodes: Vec<i64>) {
        if let Some(i) = self.warn_unknown("script", account) {
            self.accounts[i].gate.script(None, errcodes);
        }
    }

    /// Like [`Self::script`], for the next requests of one API of `account`, named as in
    /// [`Accepted::api`] or `kefustate_get` / `service_state_get` / `sync_msg`. Returns false
    /// (and scripts nothing) for an unknown account or API.
    pub fn script_api(&self, account: &str, api: &str, errcodes: Vec<i64>) -> bool {
        match (
            self.warn_unknown("script_api", account),
            Api::from_name(api),
        ) {
            (Some(i), Some(a)) => {
                self.accounts[i].gate.script(Some(a), errcodes);
                true
            }
            _ => false,
        }
    }

    /// `"account:errcode"` → answered errors, including faults (`account:http502`,
    /// `account:http500`, `account:timeout`); `?` when no account could be identified.
    pub fn errcode_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.errors).clone()
    }

    /// msgids of `account` accepted more than once.
    pub fn duplicate_msgids(&self, account: &str) -> u64 {
        let Some(i) = self.account_index(account) else {
            return 0;
        };
        lock(&self.log).duplicates.get(i).copied().unwrap_or(0)
    }

    pub fn stats(&self) -> SimStats {
        let mut s = SimStats {
            errcodes: self.errcode_counts(),
            gettoken_calls: lock(&self.gettoken_calls).clone(),
            faults: self.faults(),
            ..SimStats::default()
        };
        let log = lock(&self.log);
        s.accepted_total = log.total;
        for (i, a) in self.accounts.iter().enumerate() {
            s.accepted.insert(a.cfg.name.clone(), log.per_account[i]);
            if log.duplicates[i] > 0 {
                s.duplicate_msgids
                    .insert(a.cfg.name.clone(), log.duplicates[i]);
            }
        }
        s
    }

    /// Forget accepted messages and all counters (errcodes, gettoken calls, duplicates) and
    /// pending scripts. Tokens, fault rates and conversation state are kept; accepted `seq`
    /// numbers keep increasing.
    pub fn reset(&self) {
        lock(&self.log).reset();
        lock(&self.recalls).reset();
        lock(&self.errors).clear();
        lock(&self.gettoken_calls).clear();
        for a in &self.accounts {
            a.gate.clear_script();
        }
    }

    /// Forget the conversation side: sessions, kefustates, inbound logs, codes and sync
    /// tokens. Cursors issued before are read from the start of the (new) log.
    pub fn reset_conversations(&self) {
        *lock(&self.conv) = Conversations::default();
        self.cursor_epoch.fetch_add(1, Ordering::Relaxed);
    }
}

impl std::fmt::Debug for SimState {
    /// Names and counts only: the state holds secrets and access tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimState")
            .field(
                "accounts",
                &self
                    .accounts
                    .iter()
                    .map(|a| &a.cfg.name)
                    .collect::<Vec<_>>(),
            )
            .field("accepted", &self.accepted_count())
            .field("enforce_rate", &self.enforce_rate)
            .field("enforce_window", &self.enforce_window)
            .finish_non_exhaustive()
    }
}

/// The account's WXBizMsgCrypt, when it has an EncodingAESKey.
fn account_crypt(cfg: &AccountConfig) -> anyhow::Result<Option<MsgCrypt>> {
    if cfg.encoding_aes_key.is_empty() {
        return Ok(None);
    }
    MsgCrypt::new(
        cfg.token.expose(),
        cfg.encoding_aes_key.expose(),
        cfg.receive_id(),
    )
    .map(Some)
    .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Add WeCom account `i` to the corp group of its (corpid, secret), creating the group, and
/// make it the owner of its open_kfids not owned yet.
fn join_corp(
    corps: &mut Vec<CorpGroup>,
    kfid_owner: &mut HashMap<String, usize>,
    i: usize,
    corpid: String,
    cfg: &AccountConfig,
) {
    let secret = cfg.secret.expose().to_owned();
    let g = match corps
        .iter()
        .position(|g| g.corpid == corpid && g.secret == secret)
    {
        Some(g) => g,
        None => {
            corps.push(CorpGroup {
                corpid,
                secret,
                accounts: Vec::new(),
                open_kfids: HashSet::new(),
            });
            corps.len() - 1
        }
    };
    corps[g].accounts.push(i);
    for k in &cfg.open_kfids {
        corps[g].open_kfids.insert(k.clone());
        kfid_owner.entry(k.clone()).or_insert(i);
    }
}
