//! The kf administration model: its APIs, the kf accounts and servicers of each corp, the
//! request prelude (token, script, body) and the field checks every API shares.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use serde_json::{Map, Value};

use crate::tools::simulate::gate::SCRIPT_HTTP_500;
use crate::tools::simulate::reply::{ApiErr, Reply, code, query_param};
use crate::tools::simulate::state::SimState;
use crate::tools::simulate::util::lock;

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
pub(super) const DAY_OFFSET_SECS: i64 = 8 * 3600;
pub(super) const DAY_SECS: i64 = 86_400;
/// Generated open_kfids: `wk` + 30 characters, like the platform's 32.
pub(super) const GENERATED_KFID_RANDOM_LEN: usize = 30;

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
pub(super) struct KfAccount {
    pub(super) open_kfid: String,
    pub(super) name: String,
    pub(super) media_id: String,
    /// userid → status (0 receiving).
    pub(super) servicers: BTreeMap<String, i64>,
}

/// The kf accounts of one corp group, in creation order.
#[derive(Debug, Default)]
pub(super) struct CorpBook {
    pub(super) accounts: Vec<KfAccount>,
}

impl CorpBook {
    pub(super) fn get_mut(&mut self, kfid: &str) -> Option<&mut KfAccount> {
        self.accounts.iter_mut().find(|a| a.open_kfid == kfid)
    }
}

/// The kf administration side of the simulator.
pub struct KfAdmin {
    pub(super) sim: Arc<SimState>,
    /// One book per corp group (`SimState::corps` index).
    pub(super) books: Mutex<Vec<CorpBook>>,
    pub(super) calls: Mutex<HashMap<KfApi, u64>>,
    pub(super) scripts: Mutex<HashMap<KfApi, VecDeque<i64>>>,
}

impl KfAdmin {
    pub(super) fn new(sim: Arc<SimState>) -> Self {
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

    pub(super) fn next_scripted(&self, api: KfApi) -> Option<i64> {
        lock(&self.scripts).get_mut(&api)?.pop_front()
    }
}

/// A request that passed the token check and the script.
pub(super) struct Req {
    pub(super) group: usize,
    pub(super) body: Map<String, Value>,
    pub(super) query: Option<String>,
}

pub(super) type Outcome = (Option<usize>, Reply);

pub(super) fn prelude(
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

pub(super) fn str_field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    o.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

pub(super) fn param(hint: impl Into<std::borrow::Cow<'static, str>>) -> ApiErr {
    ApiErr::hint(code::INVALID_PARAM, hint)
}

pub(super) fn well_formed_userid(u: &str) -> bool {
    u.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && u.len() <= USERID_MAX_BYTES
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-@.".contains(&b))
}

pub(super) fn is_member(u: &str) -> bool {
    well_formed_userid(u) && !u.starts_with(MISSING_USERID_PREFIX)
}

/// The body's open_kfid (or the query's, for GET), which must be one of the corp's kf accounts.
pub(super) fn kfid_of(req: &Req, book: &CorpBook) -> Result<String, ApiErr> {
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

pub(super) fn check_name(v: Option<&Value>) -> Result<Option<String>, ApiErr> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= NAME_MAX_CHARS => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(param("name must be 1..=16 characters")),
    }
}

pub(super) fn check_media(v: Option<&Value>) -> Result<Option<String>, ApiErr> {
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
pub(super) fn id_list<'a>(
    o: &'a Map<String, Value>,
    key: &'static str,
) -> Result<Vec<&'a str>, ApiErr> {
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

pub(super) fn avatar(kfid: &str) -> String {
    format!("https://wework.qpic.cn/wwhead/sim{:016x}/0", fnv(&[kfid]))
}

/// FNV-1a over the parts (separated), for stable synthetic values.
pub(super) fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}
