//! WeCom customer-service administration (`/cgi-bin/kf/…`): kf accounts, servicers, customers
//! and statistics, served with the platform's token checks and validation errcodes from an
//! in-memory model. `wxdispatch kf` ([`crate::platform::kf`]) is the client.
//!
//! Every request is counted per API first (see `/_sim/kf/calls`), then checked like the
//! other WeCom business APIs ([`super::wecom`]): the access token (missing 41001, unknown
//! 40014, expired 42001), then a scripted errcode if one is queued for the API, then the
//! body (not a JSON object → 47001; an empty body is `{}`). Then, per API:
//!
//! | API | checks → errcode |
//! |---|---|
//! | `account/list` (POST `{offset, limit}`; GET lists everything) | limit 1..=100 (else 40058) |
//! | `account/add` `{name, media_id}` | name 1..=16 characters (40058); media_id non-empty (40007), ≤ 128 bytes (40058) → `open_kfid` |
//! | `account/update` `{open_kfid, name?, media_id?}` | open_kfid present (95004) and one of the corp's (95000); name/media_id as above |
//! | `account/del` `{open_kfid}` | open_kfid as above; its servicers go with it |
//! | `add_contact_way` `{open_kfid, scene?}` | open_kfid as above; scene ≤ 32 bytes of `[0-9a-zA-Z_-]` (40058) → `url` |
//! | `servicer/list` (GET `?open_kfid=`) | open_kfid as above → `servicer_list` (status 0) |
//! | `servicer/add`, `servicer/del` `{open_kfid, userid_list}` | open_kfid as above; 1..=100 userids (40058); per user in `result_list`: a malformed userid or one starting with [`MISSING_USERID_PREFIX`] → 60111, already a servicer (add) / not one (del) → 0 "ignored", else 0 "success" |
//! | `customer/batchget` `{external_userid_list, need_enter_session_context?}` | 1..=100 ids (40058); an id with a conversation on one of the corp's kf accounts (a session in the simulator's conversation state) is a customer, any other id is listed in `invalid_external_userid` |
//! | `get_corp_statistic`, `get_servicer_statistic` `{open_kfid, [servicer_userid], start_time, end_time}` | open_kfid as above; times rounded down to 00:00 +08:00, start ≤ end, at most 31 days, not before 180 days ago, not after yesterday (40058); servicer_userid as for servicer/add (60111) → one `statistic_list` entry per day with plausible numbers, a pure function of (open_kfid, day, servicer) |
//!
//! Each corp (the accounts sharing a corpid and secret) starts with one kf account per
//! configured `open_kfids` entry (named after the config account) and no servicers.
//!
//! # Admin endpoints
//!
//! | endpoint | does |
//! |---|---|
//! | `GET /_sim/kf/calls` | `{"calls": {"servicer/add": 3, …}}`: requests received per API (every request, refused ones included) |
//! | `POST /_sim/kf/reset` | zero the call counts and drop queued scripts (the model is kept) |
//! | `POST /_sim/kf/script` `{api, errcodes}` | the API's next requests (after the token check) are answered with these errcodes, in order; 0 processes one normally, -2 answers HTTP 500 |
//! | `GET /_sim/kf/state` | the model: per corp, its kf accounts with their servicers |
//!
//! # Simplifications
//!
//! * WeCom documents the limits these checks enforce, not always the errcode a violation
//!   gets: 40058 ("invalid parameter"), 60111 (userid not found) and the "ignored" per-user
//!   answers are the simulator's choices (callers must branch on errcode ≠ 0 only).
//! * The member directory is open: every well-formed userid is a member except those starting
//!   with [`MISSING_USERID_PREFIX`]. The 500-servicers-per-account and 5000-accounts-per-corp
//!   caps are not enforced.
//! * kf accounts added here are not known to `send_msg`, `sync_msg` and `service_state/*`,
//!   which keep checking the configured open_kfids; a deleted configured account still works
//!   there.
//! * Statistics are synthetic (not derived from the conversations), and not faulted or
//!   rate-limited: the gate's faults and rates apply to the messaging APIs only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::gate::SCRIPT_HTTP_500;
use super::reply::{ApiErr, Reply, code, ok, query_param};
use super::respond::finish;
use super::state::SimState;
use super::util::{lock, random_id};

/// A userid that starts with this is not a member of the corp: servicer/add and /del answer
/// 60111 for it in `result_list`, the statistics API for `servicer_userid`.
pub const MISSING_USERID_PREFIX: &str = "ghost";
/// "userid not found" (per user in `result_list`; the statistics' `servicer_userid`).
pub const USERID_NOT_FOUND: i64 = 60_111;
/// Ids per `userid_list` / `external_userid_list`: "可填充个数：1 ~ 100".
pub const BATCH_MAX: usize = 100;
/// `account/list` page size: "取值范围 1 ~ 100", default 100.
pub const ACCOUNT_PAGE_MAX: u64 = 100;
/// Account name: "不多于16个字符".
pub const NAME_MAX_CHARS: usize = 16;
/// Avatar media_id: "不多于128个字节".
pub const MEDIA_ID_MAX_BYTES: usize = 128;
/// Contact-way scene: "不多于32字节, [0-9a-zA-Z_-]*".
pub const SCENE_MAX_BYTES: usize = 32;
/// A member userid: 1..=64 bytes of `[0-9A-Za-z_-@.]`, starting with a letter or digit.
pub const USERID_MAX_BYTES: usize = 64;
/// Statistics: at most 31 days per query, the last 180 days, up to yesterday.
pub const STATS_MAX_SPAN_DAYS: i64 = 31;
pub const STATS_MAX_AGE_DAYS: i64 = 180;
/// Statistic days start at 00:00 UTC+8.
const DAY_OFFSET_SECS: i64 = 8 * 3600;
const DAY_SECS: i64 = 86_400;
/// Generated open_kfids: `wk` + 30 characters, like the platform's 32.
const GENERATED_KFID_RANDOM_LEN: usize = 30;

/// The kf administration APIs, by the path after `/cgi-bin/kf/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KfApi {
    AccountList,
    AccountAdd,
    AccountUpdate,
    AccountDel,
    AddContactWay,
    ServicerList,
    ServicerAdd,
    ServicerDel,
    CustomerBatchget,
    CorpStatistic,
    ServicerStatistic,
}

impl KfApi {
    pub const ALL: [KfApi; 11] = [
        KfApi::AccountList,
        KfApi::AccountAdd,
        KfApi::AccountUpdate,
        KfApi::AccountDel,
        KfApi::AddContactWay,
        KfApi::ServicerList,
        KfApi::ServicerAdd,
        KfApi::ServicerDel,
        KfApi::CustomerBatchget,
        KfApi::CorpStatistic,
        KfApi::ServicerStatistic,
    ];

    /// The path after `/cgi-bin/kf/`: `account/add`, `servicer/del`, `get_corp_statistic`, …
    pub fn name(self) -> &'static str {
        match self {
            KfApi::AccountList => "account/list",
            KfApi::AccountAdd => "account/add",
            KfApi::AccountUpdate => "account/update",
            KfApi::AccountDel => "account/del",
            KfApi::AddContactWay => "add_contact_way",
            KfApi::ServicerList => "servicer/list",
            KfApi::ServicerAdd => "servicer/add",
            KfApi::ServicerDel => "servicer/del",
            KfApi::CustomerBatchget => "customer/batchget",
            KfApi::CorpStatistic => "get_corp_statistic",
            KfApi::ServicerStatistic => "get_servicer_statistic",
        }
    }

    pub fn from_name(s: &str) -> Option<KfApi> {
        KfApi::ALL.into_iter().find(|a| a.name() == s)
    }
}

#[derive(Debug, Clone)]
struct KfAccount {
    open_kfid: String,
    name: String,
    media_id: String,
    /// userid → status (0 receiving).
    servicers: BTreeMap<String, i64>,
}

/// The kf accounts of one corp group, in creation order.
#[derive(Debug, Default)]
struct CorpBook {
    accounts: Vec<KfAccount>,
}

impl CorpBook {
    fn get_mut(&mut self, kfid: &str) -> Option<&mut KfAccount> {
        self.accounts.iter_mut().find(|a| a.open_kfid == kfid)
    }
}

/// The kf administration side of the simulator.
pub struct KfAdmin {
    sim: Arc<SimState>,
    /// One book per corp group (`SimState::corps` index).
    books: Mutex<Vec<CorpBook>>,
    calls: Mutex<HashMap<KfApi, u64>>,
    scripts: Mutex<HashMap<KfApi, VecDeque<i64>>>,
}

impl KfAdmin {
    fn new(sim: Arc<SimState>) -> Self {
        let books = sim
            .corps
            .iter()
            .map(|g| {
                let mut book = CorpBook::default();
                for &i in &g.accounts {
                    let cfg = &sim.accounts[i].cfg;
                    for k in &cfg.open_kfids {
                        if book.get_mut(k).is_none() {
                            book.accounts.push(KfAccount {
                                open_kfid: k.clone(),
                                name: cfg.name.chars().take(NAME_MAX_CHARS).collect(),
                                media_id: String::new(),
                                servicers: BTreeMap::new(),
                            });
                        }
                    }
                }
                book
            })
            .collect();
        Self {
            sim,
            books: Mutex::new(books),
            calls: Mutex::new(HashMap::new()),
            scripts: Mutex::new(HashMap::new()),
        }
    }

    fn next_scripted(&self, api: KfApi) -> Option<i64> {
        lock(&self.scripts).get_mut(&api)?.pop_front()
    }
}

/// A request that passed the token check and the script.
struct Req {
    group: usize,
    body: Map<String, Value>,
    query: Option<String>,
}

type Outcome = (Option<usize>, Reply);

fn prelude(
    kf: &KfAdmin,
    api: KfApi,
    query: Option<&str>,
    raw: &[u8],
) -> Result<(usize, Req), Outcome> {
    let st = &kf.sim;
    let group = st
        .authenticate(query)
        .map_err(|(a, e)| (a, Reply::Err(e)))?;
    let obj = if raw.iter().all(u8::is_ascii_whitespace) {
        Some(Map::new())
    } else {
        match serde_json::from_slice::<Value>(raw) {
            Ok(Value::Object(o)) => Some(o),
            _ => None,
        }
    };
    let kfid = obj
        .as_ref()
        .and_then(|o| str_field(o, "open_kfid").map(str::to_owned))
        .or_else(|| query_param(query, "open_kfid").map(|c| c.into_owned()));
    let account = st.account_in_group(group, kfid.as_deref());
    match kf.next_scripted(api) {
        None | Some(0) => {}
        Some(SCRIPT_HTTP_500) => {
            return Err((
                Some(account),
                Reply::Http(StatusCode::INTERNAL_SERVER_ERROR),
            ));
        }
        Some(c) => return Err((Some(account), ApiErr::hint(c, "scripted").into())),
    }
    let Some(body) = obj else {
        return Err((
            Some(account),
            ApiErr::hint(code::BAD_JSON, "body is not a JSON object").into(),
        ));
    };
    Ok((
        account,
        Req {
            group,
            body,
            query: query.map(str::to_owned),
        },
    ))
}

async fn serve(
    kf: Arc<KfAdmin>,
    api: KfApi,
    query: Option<String>,
    raw: &[u8],
    process: fn(&KfAdmin, &Req) -> Result<Value, ApiErr>,
) -> Response {
    *lock(&kf.calls).entry(api).or_insert(0) += 1;
    let (acct, reply) = match prelude(&kf, api, query.as_deref(), raw) {
        Ok((account, req)) => (Some(account), process(&kf, &req).into()),
        Err(o) => o,
    };
    finish(&kf.sim, acct, reply).await
}

fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn param(hint: impl Into<std::borrow::Cow<'static, str>>) -> ApiErr {
    ApiErr::hint(code::INVALID_PARAM, hint)
}

fn well_formed_userid(u: &str) -> bool {
    u.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && u.len() <= USERID_MAX_BYTES
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-@.".contains(&b))
}

fn is_member(u: &str) -> bool {
    well_formed_userid(u) && !u.starts_with(MISSING_USERID_PREFIX)
}

/// The body's open_kfid (or the query's, for GET), which must be one of the corp's kf accounts.
fn kfid_of(req: &Req, book: &CorpBook) -> Result<String, ApiErr> {
    let k = str_field(&req.body, "open_kfid")
        .map(str::to_owned)
        .or_else(|| query_param(req.query.as_deref(), "open_kfid").map(|c| c.into_owned()))
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiErr::hint(code::MISSING_OPEN_KFID, "open_kfid missing"))?;
    if book.accounts.iter().any(|a| a.open_kfid == k) {
        Ok(k)
    } else {
        Err(ApiErr::hint(
            code::INVALID_OPEN_KFID,
            "open_kfid is not one of this corp's kf accounts",
        ))
    }
}

fn check_name(v: Option<&Value>) -> Result<Option<String>, ApiErr> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= NAME_MAX_CHARS => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(param("name must be 1..=16 characters")),
    }
}

fn check_media(v: Option<&Value>) -> Result<Option<String>, ApiErr> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => {
            Err(ApiErr::hint(code::INVALID_MEDIA, "media_id empty"))
        }
        Some(Value::String(s)) if s.len() <= MEDIA_ID_MAX_BYTES => Ok(Some(s.clone())),
        Some(_) => Err(param("media_id must be a string of at most 128 bytes")),
    }
}

/// A list field of 1..=100 strings.
fn id_list<'a>(o: &'a Map<String, Value>, key: &'static str) -> Result<Vec<&'a str>, ApiErr> {
    let arr = o
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| param(format!("{key} missing")))?;
    if arr.is_empty() || arr.len() > BATCH_MAX {
        return Err(param(format!(
            "{key} has {} entries; 1..=100 allowed",
            arr.len()
        )));
    }
    arr.iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| param(format!("{key} entries must be strings")))
        })
        .collect()
}

fn avatar(kfid: &str) -> String {
    format!("https://wework.qpic.cn/wwhead/sim{:016x}/0", fnv(&[kfid]))
}

/// FNV-1a over the parts (separated), for stable synthetic values.
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

// ------------------------------------------------------------------------------ accounts

fn account_list(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let num = |k: &str, default: u64| match req.body.get(k) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_u64()
            .ok_or_else(|| param(format!("{k} must be an unsigned integer"))),
    };
    let offset = num("offset", 0)?;
    let limit = num("limit", ACCOUNT_PAGE_MAX)?;
    if !(1..=ACCOUNT_PAGE_MAX).contains(&limit) {
        return Err(param("limit must be 1..=100"));
    }
    let books = lock(&kf.books);
    let list: Vec<Value> = books[req.group]
        .accounts
        .iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(limit).unwrap_or(usize::MAX))
        .map(|a| {
            json!({"open_kfid": a.open_kfid, "name": a.name, "avatar": avatar(&a.open_kfid),
                   "manage_privilege": true})
        })
        .collect();
    Ok(json!({"errcode": 0, "errmsg": "ok", "account_list": list}))
}

fn account_add(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let name = check_name(req.body.get("name"))?.ok_or_else(|| param("name missing"))?;
    let media_id = check_media(req.body.get("media_id"))?
        .ok_or_else(|| ApiErr::hint(code::INVALID_MEDIA, "media_id missing"))?;
    let kfid = format!("wk{}", random_id(GENERATED_KFID_RANDOM_LEN));
    lock(&kf.books)[req.group].accounts.push(KfAccount {
        open_kfid: kfid.clone(),
        name,
        media_id,
        servicers: BTreeMap::new(),
    });
    Ok(json!({"errcode": 0, "errmsg": "ok", "open_kfid": kfid}))
}

fn account_update(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let name = check_name(req.body.get("name"))?;
    let media_id = check_media(req.body.get("media_id"))?;
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    if let Some(a) = book.get_mut(&kfid) {
        if let Some(n) = name {
            a.name = n;
        }
        if let Some(m) = media_id {
            a.media_id = m;
        }
    }
    Ok(ok())
}

fn account_del(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    book.accounts.retain(|a| a.open_kfid != kfid);
    Ok(ok())
}

fn add_contact_way(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let kfid = kfid_of(req, &lock(&kf.books)[req.group])?;
    let scene = match req.body.get("scene") {
        None | Some(Value::Null) => "",
        Some(Value::String(s))
            if s.len() <= SCENE_MAX_BYTES
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            s.as_str()
        }
        Some(_) => return Err(param("scene must be at most 32 bytes of [0-9a-zA-Z_-]")),
    };
    let mut url = format!("https://work.weixin.qq.com/kf/kfc{:016x}", fnv(&[&kfid]));
    if !scene.is_empty() {
        url.push_str(&format!("?enc_scene=ENC{:016x}", fnv(&[&kfid, scene])));
    }
    Ok(json!({"errcode": 0, "errmsg": "ok", "url": url}))
}

// ------------------------------------------------------------------------------ servicers

fn servicer_list(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let books = lock(&kf.books);
    let book = &books[req.group];
    let kfid = kfid_of(req, book)?;
    let list: Vec<Value> = book
        .accounts
        .iter()
        .find(|a| a.open_kfid == kfid)
        .map(|a| {
            a.servicers
                .iter()
                .map(|(u, s)| json!({"userid": u, "status": s}))
                .collect()
        })
        .unwrap_or_default();
    Ok(json!({"errcode": 0, "errmsg": "ok", "servicer_list": list}))
}

fn servicer_add(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    servicer_change(kf, req, true)
}

fn servicer_del(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    servicer_change(kf, req, false)
}

fn servicer_change(kf: &KfAdmin, req: &Req, add: bool) -> Result<Value, ApiErr> {
    let mut books = lock(&kf.books);
    let book = &mut books[req.group];
    let kfid = kfid_of(req, book)?;
    let ids = id_list(&req.body, "userid_list")?;
    let Some(acct) = book.get_mut(&kfid) else {
        return Err(ApiErr::new(code::INVALID_OPEN_KFID));
    };
    let results: Vec<Value> = ids
        .into_iter()
        .map(|u| {
            let (code, msg) = if !is_member(u) {
                (USERID_NOT_FOUND, "userid not found")
            } else if add {
                match acct.servicers.insert(u.to_owned(), 0) {
                    None => (0, "success"),
                    Some(_) => (0, "ignored"),
                }
            } else {
                match acct.servicers.remove(u) {
                    Some(_) => (0, "success"),
                    None => (0, "ignored"),
                }
            };
            json!({"userid": u, "errcode": code, "errmsg": msg})
        })
        .collect();
    Ok(json!({"errcode": 0, "errmsg": "ok", "result_list": results}))
}

// ------------------------------------------------------------------------------ customers

fn customer_batchget(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    let ids = id_list(&req.body, "external_userid_list")?;
    let with_context = req
        .body
        .get("need_enter_session_context")
        .and_then(Value::as_i64)
        == Some(1);
    let mut kfids: HashSet<String> = lock(&kf.books)[req.group]
        .accounts
        .iter()
        .map(|a| a.open_kfid.clone())
        .collect();
    kfids.extend(kf.sim.corps[req.group].open_kfids.iter().cloned());
    let known: HashSet<String> = {
        let conv = lock(&kf.sim.conv);
        ids.iter()
            .filter(|u| {
                kfids.iter().any(|k| {
                    conv.sessions
                        .get(k)
                        .is_some_and(|users| users.contains_key(**u))
                })
            })
            .map(|u| (*u).to_owned())
            .collect()
    };
    let mut seen = HashSet::new();
    let mut customers = Vec::new();
    let mut invalid = Vec::new();
    for u in ids {
        if !seen.insert(u) {
            continue;
        }
        if known.contains(u) {
            let mut c = json!({
                "external_userid": u,
                "nickname": format!("Customer {u}"),
                "avatar": format!("https://wx.qlogo.cn/mmhead/sim{:016x}/0", fnv(&[u])),
                "gender": fnv(&[u, "gender"]) % 3,
                "unionid": "",
            });
            if with_context {
                c["enter_session_context"] = json!({"scene": "", "scene_param": ""});
            }
            customers.push(c);
        } else {
            invalid.push(u);
        }
    }
    Ok(
        json!({"errcode": 0, "errmsg": "ok", "customer_list": customers,
              "invalid_external_userid": invalid}),
    )
}

// ------------------------------------------------------------------------------ statistics

fn corp_statistic(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    statistic(kf, req, false)
}

fn servicer_statistic(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    statistic(kf, req, true)
}

/// 00:00 UTC+8 at or before `t`.
fn day_floor(t: i64) -> i64 {
    (t + DAY_OFFSET_SECS).div_euclid(DAY_SECS) * DAY_SECS - DAY_OFFSET_SECS
}

fn statistic(kf: &KfAdmin, req: &Req, per_servicer: bool) -> Result<Value, ApiErr> {
    let kfid = kfid_of(req, &lock(&kf.books)[req.group])?;
    let time = |k: &str| {
        req.body
            .get(k)
            .and_then(Value::as_i64)
            .filter(|t| *t >= 0)
            .map(day_floor)
            .ok_or_else(|| param(format!("{k} must be a unix timestamp")))
    };
    let (start, end) = (time("start_time")?, time("end_time")?);
    let today = day_floor(Utc::now().timestamp());
    if start > end {
        return Err(param("start_time is after end_time"));
    }
    if (end - start) / DAY_SECS + 1 > STATS_MAX_SPAN_DAYS {
        return Err(param("at most 31 days per query"));
    }
    if end >= today {
        return Err(param("end_time must be yesterday or earlier"));
    }
    if start < today - STATS_MAX_AGE_DAYS * DAY_SECS {
        return Err(param("only the last 180 days are available"));
    }
    let servicer = if per_servicer {
        match req.body.get("servicer_userid") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) if is_member(s) => Some(s.clone()),
            Some(_) => {
                return Err(ApiErr::hint(USERID_NOT_FOUND, "servicer_userid not found"));
            }
        }
    } else {
        None
    };
    let list: Vec<Value> = (0..=(end - start) / DAY_SECS)
        .map(|d| {
            let day = start + d * DAY_SECS;
            let h = fnv(&[&kfid, &day.to_string(), servicer.as_deref().unwrap_or("")]);
            let statistic = if per_servicer {
                servicer_day(h)
            } else {
                corp_day(h)
            };
            json!({"stat_time": day, "statistic": statistic})
        })
        .collect();
    Ok(json!({"errcode": 0, "errmsg": "ok", "statistic_list": list}))
}

/// Bits `shift..shift+8` of `h` as 0..=255.
fn byte(h: u64, shift: u32) -> u64 {
    (h >> shift) & 0xff
}

fn rate(h: u64, shift: u32) -> f64 {
    (byte(h, shift) as f64 / 255.0 * 100.0).round() / 100.0
}

fn corp_day(h: u64) -> Value {
    let sessions = 5 + byte(h, 0) % 60;
    let customers = sessions - byte(h, 8) % (sessions / 4 + 1);
    json!({
        "session_cnt": sessions,
        "customer_cnt": customers,
        "customer_msg_cnt": customers * (2 + byte(h, 16) % 8),
        "upgrade_service_customer_cnt": byte(h, 24) % 3,
        "ai_session_reply_cnt": sessions * (50 + byte(h, 32) % 50) / 100,
        "ai_transfer_rate": rate(h, 40) * 0.5,
        "ai_knowledge_hit_rate": rate(h, 48),
        "msg_rejected_customer_cnt": byte(h, 56) % 2,
    })
}

fn servicer_day(h: u64) -> Value {
    let sessions = 1 + byte(h, 0) % 25;
    let customers = sessions - byte(h, 8) % (sessions / 3 + 1);
    let satisfied = rate(h, 40);
    let middling = ((1.0 - satisfied) * rate(h, 48) * 100.0).round() / 100.0;
    json!({
        "session_cnt": sessions,
        "customer_cnt": customers,
        "customer_msg_cnt": customers * (3 + byte(h, 16) % 10),
        "reply_rate": 0.8 + rate(h, 24) * 0.2,
        "first_reply_average_sec": 5 + byte(h, 32) % 120,
        "satisfaction_investgate_cnt": 0,
        "satisfaction_participation_rate": rate(h, 56),
        "satisfied_rate": satisfied,
        "middling_rate": middling,
        "dissatisfied_rate": ((1.0 - satisfied - middling).max(0.0) * 100.0).round() / 100.0,
        "upgrade_service_customer_cnt": 0,
        "upgrade_service_member_invite_cnt": 0,
        "upgrade_service_member_customer_cnt": 0,
        "upgrade_service_groupchat_invite_cnt": 0,
        "upgrade_service_groupchat_customer_cnt": 0,
        "msg_rejected_customer_cnt": byte(h, 4) % 2,
    })
}

// ------------------------------------------------------------------------------ routes

type Kf = State<Arc<KfAdmin>>;

macro_rules! handler {
    ($name:ident, $api:expr, $process:expr) => {
        async fn $name(State(kf): Kf, RawQuery(q): RawQuery, body: Bytes) -> Response {
            serve(kf, $api, q, &body, $process).await
        }
    };
}

handler!(h_account_list, KfApi::AccountList, account_list);
handler!(h_account_add, KfApi::AccountAdd, account_add);
handler!(h_account_update, KfApi::AccountUpdate, account_update);
handler!(h_account_del, KfApi::AccountDel, account_del);
handler!(h_add_contact_way, KfApi::AddContactWay, add_contact_way);
handler!(h_servicer_list, KfApi::ServicerList, servicer_list);
handler!(h_servicer_add, KfApi::ServicerAdd, servicer_add);
handler!(h_servicer_del, KfApi::ServicerDel, servicer_del);
handler!(
    h_customer_batchget,
    KfApi::CustomerBatchget,
    customer_batchget
);
handler!(h_corp_statistic, KfApi::CorpStatistic, corp_statistic);
handler!(
    h_servicer_statistic,
    KfApi::ServicerStatistic,
    servicer_statistic
);

/// The kf administration APIs and their admin endpoints, with their own state (built from
/// `sim`'s accounts); merge into the simulator's router.
pub(crate) fn routes(sim: Arc<SimState>) -> Router<Arc<SimState>> {
    let kf = Arc::new(KfAdmin::new(sim));
    Router::new()
        .route(
            "/cgi-bin/kf/account/list",
            post(h_account_list).get(h_account_list),
        )
        .route("/cgi-bin/kf/account/add", post(h_account_add))
        .route("/cgi-bin/kf/account/update", post(h_account_update))
        .route("/cgi-bin/kf/account/del", post(h_account_del))
        .route("/cgi-bin/kf/add_contact_way", post(h_add_contact_way))
        .route("/cgi-bin/kf/servicer/list", get(h_servicer_list))
        .route("/cgi-bin/kf/servicer/add", post(h_servicer_add))
        .route("/cgi-bin/kf/servicer/del", post(h_servicer_del))
        .route("/cgi-bin/kf/customer/batchget", post(h_customer_batchget))
        .route("/cgi-bin/kf/get_corp_statistic", post(h_corp_statistic))
        .route(
            "/cgi-bin/kf/get_servicer_statistic",
            post(h_servicer_statistic),
        )
        .route("/_sim/kf/calls", get(admin_calls))
        .route("/_sim/kf/reset", post(admin_reset))
        .route("/_sim/kf/script", post(admin_script))
        .route("/_sim/kf/state", get(admin_state))
        .with_state(kf)
}

async fn admin_calls(State(kf): Kf) -> Response {
    let calls = lock(&kf.calls);
    let map: BTreeMap<&str, u64> = KfApi::ALL
        .iter()
        .map(|a| (a.name(), calls.get(a).copied().unwrap_or(0)))
        .collect();
    Json(json!({ "calls": map })).into_response()
}

async fn admin_reset(State(kf): Kf) -> Response {
    lock(&kf.calls).clear();
    lock(&kf.scripts).clear();
    Json(json!({"ok": true})).into_response()
}

#[derive(Deserialize)]
struct ScriptReq {
    api: String,
    errcodes: Vec<i64>,
}

async fn admin_script(State(kf): Kf, body: Bytes) -> Response {
    let r: ScriptReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("invalid body: {e}")})),
            )
                .into_response();
        }
    };
    let Some(api) = KfApi::from_name(&r.api) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("unknown api '{}'", r.api)})),
        )
            .into_response();
    };
    lock(&kf.scripts).entry(api).or_default().extend(r.errcodes);
    Json(json!({"ok": true})).into_response()
}

async fn admin_state(State(kf): Kf) -> Response {
    let books = lock(&kf.books);
    let corps: Vec<Value> = books
        .iter()
        .enumerate()
        .map(|(g, b)| {
            json!({
                "corpid": kf.sim.corps[g].corpid,
                "accounts": b.accounts.iter().map(|a| json!({
                    "open_kfid": a.open_kfid,
                    "name": a.name,
                    "media_id": a.media_id,
                    "servicers": a.servicers.keys().collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({ "corps": corps })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_floor_is_utc8_midnight() {
        // 2019-04-03 21:00 +08:00 → 2019-04-03 00:00 +08:00 (the docs' own example).
        assert_eq!(day_floor(1_554_296_400), 1_554_220_800);
        assert_eq!(day_floor(1_554_220_800), 1_554_220_800);
    }

    #[test]
    fn userids() {
        assert!(is_member("zhangsan"));
        assert!(is_member("li.si@x-1"));
        assert!(!is_member("ghost-1"));
        assert!(!is_member("_x"));
        assert!(!is_member(""));
        assert!(!is_member(&"u".repeat(65)));
    }

    #[test]
    fn api_names_round_trip() {
        for a in KfApi::ALL {
            assert_eq!(KfApi::from_name(a.name()), Some(a));
        }
    }

    #[test]
    fn synthetic_days_are_plausible() {
        for h in [0u64, u64::MAX, 0x1234_5678_9abc_def0] {
            let c = corp_day(h);
            assert!(c["customer_cnt"].as_u64() <= c["session_cnt"].as_u64());
            let s = servicer_day(h);
            let sum = s["satisfied_rate"].as_f64().unwrap()
                + s["middling_rate"].as_f64().unwrap()
                + s["dissatisfied_rate"].as_f64().unwrap();
            assert!(sum <= 1.0001, "{s}");
        }
    }
}
