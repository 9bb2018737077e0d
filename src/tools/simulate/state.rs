//! Everything the simulated platforms remember, and the helpers tests use to drive it.
//!
//! Locking: every piece of state sits behind its own short `std` lock, taken only in
//! synchronous code (never across an await), so concurrent requests only serialize on a few
//! hundred nanoseconds of bookkeeping. The accepted log is an append-only `Vec` of `Arc`s, so a
//! snapshot for the admin API copies pointers, not messages.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use rand::Rng as _;
use rand::distr::Alphanumeric;
use serde::Serialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::gate::{AccountGate, Api};
use super::reply::{ApiErr, Reply, code};
use super::{Accepted, Faults, SimOptions, xml};
use crate::config::{AccountConfig, Channel};
use crate::crypto::MsgCrypt;

/// WeCom's sync_msg callback Token lifetime.
pub const SYNC_TOKEN_TTL: Duration = Duration::from_secs(600);
/// Lifetime of a welcome_code / msg_code for send_msg_on_event.
pub const EVENT_CODE_TTL: Duration = Duration::from_secs(20);
/// WeCom's reply window after a customer's last message.
pub const REPLY_WINDOW: Duration = Duration::from_secs(48 * 3600);
/// Messages a business may send in that window.
pub const REPLY_QUOTA: u32 = 5;
/// sync_msg only returns the last 3 days.
pub const INBOUND_RETENTION: Duration = Duration::from_secs(3 * 24 * 3600);
/// Length of generated access tokens (WeCom's are longer; callers must treat them as opaque).
const ACCESS_TOKEN_LEN: usize = 64;
/// Length of generated msgids, codes and sync tokens.
const ID_LEN: usize = 32;
/// An access token expired this long ago is forgotten (then 40014 instead of 42001).
const TOKEN_MEMORY: Duration = Duration::from_secs(24 * 3600);
/// The most accepted records kept in memory (the oldest are dropped first; counters and the
/// duplicate-msgid check still cover all of them). A record is a few hundred bytes, so a
/// benchmark that runs for hours stays within a few hundred MB.
pub const MAX_RETAINED_ACCEPTED: usize = 1_000_000;
/// Account name used in the counters when a request names no known account.
pub const UNKNOWN_ACCOUNT: &str = "?";

/// Lock a mutex, ignoring poisoning: no code here panics while holding a lock, and a
/// simulator that keeps serving is more useful than one that cascades a test's panic.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn random_id(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

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

struct IssuedToken {
    group: usize,
    expires: Instant,
}

#[derive(Default)]
struct TokenBook {
    by_token: HashMap<String, IssuedToken>,
    /// The token `gettoken` hands out per group while it is valid.
    current: HashMap<usize, String>,
}

/// An accepted request as stored: compact (the body as JSON text, the account as an index),
/// turned into an [`Accepted`] only when read.
#[derive(Debug)]
pub(crate) struct Record {
    seq: u64,
    at_ms: i64,
    account: usize,
    api: Api,
    recipient: Box<str>,
    msgid: Option<Box<str>>,
    msgtype: Box<str>,
    plaintext: Option<Box<str>>,
    body: Box<str>,
}

/// What a handler hands to [`SimState::accept`].
pub(crate) struct NewRecord<'a> {
    pub api: Api,
    pub recipient: &'a str,
    pub msgid: Option<&'a str>,
    pub msgtype: &'a str,
    /// Chatbot: the decrypted plaintext.
    pub plaintext: Option<String>,
    /// The JSON body: WeCom's exact request bytes, the chatbot's fields serialized.
    pub body: Cow<'a, str>,
}

#[derive(Debug, Default)]
struct AcceptedLog {
    next_seq: u64,
    /// The most recent [`MAX_RETAINED_ACCEPTED`] records, in seq order.
    records: VecDeque<Arc<Record>>,
    /// Accepted since the last reset (including records no longer retained).
    total: u64,
    per_account: Vec<u64>,
    msgids: Vec<HashSet<Box<str>>>,
    duplicates: Vec<u64>,
}

/// A WeCom conversation, keyed by (open_kfid, external_userid).
#[derive(Debug, Default)]
pub(crate) struct Session {
    pub state: i64,
    pub servicer: Option<String>,
    /// A msg_code was already returned for a move into 2 or 3 in this session.
    pub serving_code_issued: bool,
    pub last_customer: Option<Instant>,
    pub sends_since_customer: u32,
}

/// Chatbot `status` alongside `kefustate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) enum KefuStatus {
    #[default]
    Asking,
    PersonServing,
    Complete,
}

#[derive(Debug, Default)]
pub(crate) struct InboundLog {
    pub entries: Vec<(Instant, Value)>,
    pub empty_pages: u32,
}

#[derive(Debug)]
pub(crate) struct EventCode {
    pub open_kfid: String,
    pub external_userid: String,
    pub expires: Instant,
}

/// The conversation side of both platforms (phase 2 state and the chatbot kefustate).
#[derive(Debug, Default)]
pub(crate) struct Conversations {
    /// open_kfid → external_userid → session.
    pub sessions: HashMap<String, HashMap<String, Session>>,
    /// chatbot account index → openid → status.
    pub kefu: HashMap<usize, HashMap<String, KefuStatus>>,
    /// open_kfid → inbound log.
    pub logs: HashMap<String, InboundLog>,
    /// callback Token → (open_kfid, expiry).
    pub sync_tokens: HashMap<String, (String, Instant)>,
    /// welcome_code / msg_code → its conversation.
    pub codes: HashMap<String, EventCode>,
}

impl Conversations {
    pub fn session(&self, kfid: &str, user: &str) -> Option<&Session> {
        self.sessions.get(kfid)?.get(user)
    }

    pub fn session_mut(&mut self, kfid: &str, user: &str) -> &mut Session {
        self.sessions
            .entry(kfid.to_owned())
            .or_default()
            .entry(user.to_owned())
            .or_default()
    }

    pub fn issue_code(&mut self, kfid: &str, user: &str) -> String {
        let now = Instant::now();
        self.codes.retain(|_, c| c.expires > now);
        let code = random_id(ID_LEN);
        self.codes.insert(
            code.clone(),
            EventCode {
                open_kfid: kfid.to_owned(),
                external_userid: user.to_owned(),
                expires: now + EVENT_CODE_TTL,
            },
        );
        code
    }

    pub fn issue_sync_token(&mut self, kfid: &str) -> String {
        let now = Instant::now();
        self.sync_tokens.retain(|_, (_, exp)| *exp > now);
        let token = random_id(ID_LEN);
        self.sync_tokens
            .insert(token.clone(), (kfid.to_owned(), now + SYNC_TOKEN_TTL));
        token
    }

    /// Append an inbound entry; `msgid` must already be inside `entry`.
    pub fn append(&mut self, kfid: &str, entry: Value) {
        self.logs
            .entry(kfid.to_owned())
            .or_default()
            .entries
            .push((Instant::now(), entry));
    }
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
    log: Mutex<AcceptedLog>,
    errors: Mutex<BTreeMap<String, u64>>,
    pub(crate) conv: Mutex<Conversations>,
    /// Changes on every reset so that sync cursors of a previous life restart from the top.
    pub(crate) cursor_epoch: AtomicU32,
    /// Cancelled when the server stops (releases requests held by timeout faults).
    pub(crate) shutdown: CancellationToken,
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
            let crypt = if cfg.encoding_aes_key.is_empty() {
                None
            } else {
                Some(
                    MsgCrypt::new(
                        cfg.token.expose(),
                        cfg.encoding_aes_key.expose(),
                        cfg.receive_id(),
                    )
                    .map_err(|e| anyhow::anyhow!("{e}"))
                    .with_context(|| format!("{}: encoding_aes_key", ctx()))?,
                )
            };
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
            log: Mutex::new(AcceptedLog {
                next_seq: 1,
                per_account: vec![0; n],
                msgids: vec![HashSet::new(); n],
                duplicates: vec![0; n],
                records: VecDeque::new(),
                total: 0,
            }),
            errors: Mutex::new(BTreeMap::new()),
            conv: Mutex::new(Conversations::default()),
            cursor_epoch: AtomicU32::new(rand::random()),
            shutdown: CancellationToken::new(),
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
        let mut rec = Record {
            seq: 0,
            at_ms: now_ms(),
            account,
            api: new.api,
            recipient: new.recipient.into(),
            msgid: new.msgid.map(Into::into),
            msgtype: new.msgtype.into(),
            plaintext: new.plaintext.map(String::into_boxed_str),
            body: new.body.into(),
        };
        let mut log = lock(&self.log);
        rec.seq = log.next_seq;
        log.next_seq += 1;
        if let Some(id) = &rec.msgid
            && !log.msgids[account].insert(id.clone())
        {
            log.duplicates[account] += 1;
        }
        log.per_account[account] += 1;
        log.total += 1;
        let seq = rec.seq;
        if log.records.len() >= MAX_RETAINED_ACCEPTED {
            log.records.pop_front();
        }
        log.records.push_back(Arc::new(rec));
        seq
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
        let log = lock(&self.log);
        let start = log.records.partition_point(|r| r.seq <= since_seq);
        log.records
            .range(start..)
            .filter(|r| account.is_none_or(|a| r.account == a))
            .take(limit)
            .cloned()
            .collect()
    }

    /// A stored record as the public [`Accepted`] (parses the body).
    pub(crate) fn to_accepted(&self, r: &Record) -> Accepted {
        let acct = &self.accounts[r.account];
        Accepted {
            seq: r.seq,
            at_ms: r.at_ms,
            account: acct.cfg.name.clone(),
            channel: acct.channel_str(),
            api: r.api.name(),
            recipient: r.recipient.to_string(),
            msgid: r.msgid.as_deref().map(str::to_owned),
            msgtype: r.msgtype.to_string(),
            plaintext: r.plaintext.as_deref().map(str::to_owned),
            body: serde_json::from_str(&r.body)
                .unwrap_or_else(|_| Value::String(r.body.to_string())),
        }
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
        let token = super::reply::query_param(query, "access_token")
            .filter(|t| !t.is_empty())
            .ok_or((None, ApiErr::new(code::MISSING_TOKEN)))?;
        let book = self.tokens.read().unwrap_or_else(|e| e.into_inner());
        let Some(t) = book.by_token.get(token.as_ref()) else {
            return Err((None, ApiErr::new(code::INVALID_TOKEN)));
        };
        if Instant::now() >= t.expires {
            let first = self
                .corps
                .get(t.group)
                .and_then(|g| g.accounts.first().copied());
            return Err((first, ApiErr::new(code::TOKEN_EXPIRED)));
        }
        Ok(t.group)
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
        let now = Instant::now();
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        if let Some(cur) = book.current.get(&group)
            && let Some(t) = book.by_token.get(cur)
            && t.expires > now
        {
            let left = t.expires - now;
            return Ok((cur.clone(), left.as_secs_f64().ceil() as u64));
        }
        book.by_token.retain(|_, t| t.expires + TOKEN_MEMORY > now);
        let token = random_id(ACCESS_TOKEN_LEN);
        book.by_token.insert(
            token.clone(),
            IssuedToken {
                group,
                expires: now + self.token_ttl,
            },
        );
        book.current.insert(group, token.clone());
        Ok((token, self.token_ttl.as_secs_f64().ceil() as u64))
    }

    fn warn_unknown(&self, what: &str, account: &str) -> Option<usize> {
        let i = self.account_index(account);
        if i.is_none() {
            tracing::warn!(account, "simulator: {what} for an unknown account ignored");
        }
        i
    }

    // ------------------------------------------------------------------ public API

    /// A snapshot of everything accepted (the last [`MAX_RETAINED_ACCEPTED`]), in acceptance
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
        let now = Instant::now();
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        for t in book.by_token.values_mut() {
            t.expires = t.expires.min(now);
        }
        book.current.clear();
    }

    /// Every issued access token becomes unknown: its next use is answered 40014.
    pub fn revoke_tokens(&self) {
        let mut book = self.tokens.write().unwrap_or_else(|e| e.into_inner());
        book.by_token.clear();
        book.current.clear();
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
        {
            let mut log = lock(&self.log);
            log.records = VecDeque::new();
            log.total = 0;
            log.per_account.iter_mut().for_each(|c| *c = 0);
            log.duplicates.iter_mut().for_each(|c| *c = 0);
            log.msgids.iter_mut().for_each(HashSet::clear);
        }
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

    // ------------------------------------------------------------------ conversations

    /// A customer's text message to `open_kfid`: appended to its inbound log (origin 3), the
    /// 48-hour window and 5-message quota restart, and an ended session (4) starts anew (0).
    ///
    /// Returns one string that is both the new message's `msgid` and a fresh callback `Token`
    /// (valid 10 minutes) for sync_msg / [`Self::callback_request`].
    pub fn customer_message(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
        text: &str,
    ) -> String {
        self.warn_unknown("customer_message", account);
        let id = random_id(ID_LEN);
        let mut conv = lock(&self.conv);
        conv.append(
            open_kfid,
            json!({
                "msgid": id,
                "open_kfid": open_kfid,
                "external_userid": external_userid,
                "send_time": now_ms() / 1000,
                "origin": 3,
                "msgtype": "text",
                "text": {"content": text},
            }),
        );
        let s = conv.session_mut(open_kfid, external_userid);
        if s.state == 4 {
            *s = Session::default();
        }
        s.last_customer = Some(Instant::now());
        s.sends_since_customer = 0;
        let now = Instant::now();
        conv.sync_tokens.retain(|_, (_, exp)| *exp > now);
        conv.sync_tokens
            .insert(id.clone(), (open_kfid.to_owned(), now + SYNC_TOKEN_TTL));
        id
    }

    /// A fresh callback Token (valid 10 minutes) for sync_msg on `open_kfid`.
    pub fn issue_callback_token(&self, account: &str, open_kfid: &str) -> String {
        self.warn_unknown("issue_callback_token", account);
        lock(&self.conv).issue_sync_token(open_kfid)
    }

    /// The customer opens the conversation: an `enter_session` event (origin 4) with a
    /// `welcome_code` for send_msg_on_event (single use, valid 20 s), which is returned.
    pub fn enter_session(&self, account: &str, open_kfid: &str, external_userid: &str) -> String {
        self.warn_unknown("enter_session", account);
        let mut conv = lock(&self.conv);
        let code = conv.issue_code(open_kfid, external_userid);
        let ev = json!({
            "event_type": "enter_session",
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "scene": "",
            "scene_param": "",
            "welcome_code": code,
        });
        push_event_locked(&mut conv, open_kfid, ev);
        code
    }

    /// Append a system event (origin 4) to `open_kfid`'s inbound log, e.g.
    /// `{"event_type": "msg_send_fail", "external_userid": …, "fail_msgid": …, "fail_type": 4}`.
    /// `open_kfid` is added to the event when missing. Returns the entry's msgid.
    pub fn push_event(&self, account: &str, open_kfid: &str, event: Value) -> String {
        self.warn_unknown("push_event", account);
        push_event_locked(&mut lock(&self.conv), open_kfid, event)
    }

    /// Set a WeCom session's service state (0 new, 1 bot, 2 queued, 3 human, 4 ended)
    /// directly, as a servicer's action in the admin UI would.
    pub fn set_service_state(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
        state: i64,
        servicer: Option<&str>,
    ) {
        self.warn_unknown("set_service_state", account);
        let mut conv = lock(&self.conv);
        let s = conv.session_mut(open_kfid, external_userid);
        s.state = state;
        s.servicer = servicer.filter(|v| !v.is_empty()).map(str::to_owned);
    }

    /// A WeCom session's service state and servicer (0 and none when never seen).
    pub fn service_state(&self, open_kfid: &str, external_userid: &str) -> (i64, Option<String>) {
        let conv = lock(&self.conv);
        conv.session(open_kfid, external_userid)
            .map_or((0, None), |s| (s.state, s.servicer.clone()))
    }

    /// Set a chatbot user's kefustate (`on`: a human serves, the bot must stay silent).
    pub fn set_kefustate(&self, account: &str, openid: &str, on: bool) {
        if let Some(i) = self.warn_unknown("set_kefustate", account) {
            let mut conv = lock(&self.conv);
            let st = conv
                .kefu
                .entry(i)
                .or_default()
                .entry(openid.to_owned())
                .or_default();
            *st = next_kefu_status(*st, on);
        }
    }

    /// A chatbot user's kefustate (`false` when never set).
    pub fn kefustate(&self, account: &str, openid: &str) -> bool {
        let Some(i) = self.account_index(account) else {
            return false;
        };
        let conv = lock(&self.conv);
        conv.kefu
            .get(&i)
            .and_then(|m| m.get(openid))
            .is_some_and(|s| *s == KefuStatus::PersonServing)
    }

    /// The next sync_msg on `open_kfid` returns an empty page with `has_more = 1` (as WeCom
    /// sometimes does); calls add up.
    pub fn inject_empty_page(&self, account: &str, open_kfid: &str) {
        self.warn_unknown("inject_empty_page", account);
        lock(&self.conv)
            .logs
            .entry(open_kfid.to_owned())
            .or_default()
            .empty_pages += 1;
    }

    /// A WeCom `kf_msg_or_event` callback for the worker: `(query, body)` where `query` is
    /// `msg_signature=…&timestamp=…&nonce=…` and `body` the `<xml><ToUserName/><AgentID/>
    /// <Encrypt/></xml>` envelope, signed and encrypted with the account's callback token and
    /// EncodingAESKey (receive id = corpid).
    ///
    /// # Panics
    /// When `account` is unknown or has no callback key: a test set-up mistake. See
    /// [`Self::try_callback_request`].
    pub fn callback_request(
        &self,
        account: &str,
        open_kfid: &str,
        token: &str,
    ) -> (String, String) {
        match self.try_callback_request(account, open_kfid, token) {
            Ok(r) => r,
            Err(e) => panic!("callback_request: {e}"),
        }
    }

    /// [`Self::callback_request`], with an error instead of a panic.
    pub fn try_callback_request(
        &self,
        account: &str,
        open_kfid: &str,
        token: &str,
    ) -> Result<(String, String), String> {
        let (crypt, corpid) = self.callback_crypt(account)?;
        let ts = (now_ms() / 1000).to_string();
        let plain = format!(
            "<xml><ToUserName>{}</ToUserName><CreateTime>{ts}</CreateTime><MsgType>{}</MsgType><Event>{}</Event><Token>{}</Token><OpenKfId>{}</OpenKfId></xml>",
            xml::cdata(corpid),
            xml::cdata("event"),
            xml::cdata("kf_msg_or_event"),
            xml::cdata(token),
            xml::cdata(open_kfid),
        );
        let enc = crypt.encrypt(plain.as_bytes());
        let query = signed_query(crypt, &enc);
        let body = format!(
            "<xml><ToUserName>{}</ToUserName><AgentID>{}</AgentID><Encrypt>{}</Encrypt></xml>",
            xml::cdata(corpid),
            xml::cdata(""),
            xml::cdata(&enc),
        );
        Ok((query, body))
    }

    /// A WeCom callback URL verification (GET) for the worker: `(query, echostr_plain)`; the
    /// query carries `msg_signature`, `timestamp`, `nonce` and the encrypted, URL-encoded
    /// `echostr`; the worker must answer `echostr_plain` as the bare body.
    pub fn verify_url_request(&self, account: &str) -> Result<(String, String), String> {
        let (crypt, _) = self.callback_crypt(account)?;
        let plain = random_id(19);
        let enc = crypt.encrypt(plain.as_bytes());
        let query = signed_query(crypt, &enc);
        Ok((format!("{query}&echostr={}", url_encode(&enc)), plain))
    }

    fn callback_crypt(&self, account: &str) -> Result<(&MsgCrypt, &str), String> {
        let i = self
            .account_index(account)
            .ok_or_else(|| format!("unknown account '{account}'"))?;
        let a = &self.accounts[i];
        if a.cfg.channel != Channel::Wecom {
            return Err(format!("account '{account}' is not a wecom account"));
        }
        let crypt = a
            .crypt
            .as_ref()
            .ok_or_else(|| format!("account '{account}' has no callback token/encoding_aes_key"))?;
        Ok((crypt, a.cfg.corpid.as_deref().unwrap_or("")))
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

/// Chatbot status after a kefustate change.
pub(crate) fn next_kefu_status(cur: KefuStatus, on: bool) -> KefuStatus {
    match (cur, on) {
        (_, true) => KefuStatus::PersonServing,
        (KefuStatus::PersonServing, false) => KefuStatus::Complete,
        (s, false) => s,
    }
}

pub(crate) fn push_event_locked(
    conv: &mut Conversations,
    open_kfid: &str,
    mut event: Value,
) -> String {
    if let Some(o) = event.as_object_mut() {
        o.entry("open_kfid").or_insert_with(|| json!(open_kfid));
    }
    let id = random_id(ID_LEN);
    conv.append(
        open_kfid,
        json!({
            "msgid": id,
            "send_time": now_ms() / 1000,
            "origin": 4,
            "msgtype": "event",
            "event": event,
        }),
    );
    id
}

/// `msg_signature=…&timestamp=…&nonce=…` for a callback carrying `encrypt`.
fn signed_query(crypt: &MsgCrypt, encrypt: &str) -> String {
    let ts = (now_ms() / 1000).to_string();
    let nonce = rand::rng()
        .random_range(100_000_000u64..10_000_000_000)
        .to_string();
    let sig = crypt.signature(&ts, &nonce, encrypt);
    format!("msg_signature={sig}&timestamp={ts}&nonce={nonce}")
}

/// Percent-encode everything but unreserved characters (base64's `+`, `/`, `=` included).
pub(crate) fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
