//! WeCom customer-service administration: `wxdispatch kf …`.
//!
//! The whole kf management surface of WeCom (客服账号, 接待人员, 客户, 会话状态, 数据统计) from
//! the same binary, through the same access-token machinery the worker uses: one
//! [`Platform`] per account, shared tokens in Postgres, single-flight refresh, and one
//! invalidate-refresh-retry on 40014/42001/41001/40001 ([`Platform::wecom_call`]). Errcodes are
//! explained with [`policy::classify`], the table the worker uses.
//!
//! | command | API (POST unless noted) | docs |
//! |---|---|---|
//! | `kf account list` | `kf/account/list` `{offset, limit ≤ 100}`, paged | 94661 |
//! | `kf account add` | `kf/account/add` `{name ≤ 16 chars, media_id ≤ 128 B}` → `open_kfid` | 94662 |
//! | `kf account update` | `kf/account/update` `{open_kfid, name?, media_id?}` | 94664 |
//! | `kf account delete` | `kf/account/del` `{open_kfid}` | 94663 |
//! | `kf account link` | `kf/add_contact_way` `{open_kfid, scene? ≤ 32 B of [0-9a-zA-Z_-]}` → `url` | 94665 |
//! | `kf servicer list` | GET `kf/servicer/list?open_kfid=` → `servicer_list` | 94645 |
//! | `kf servicer add/remove` | `kf/servicer/add`, `kf/servicer/del` `{open_kfid, userid_list: 1..=100}` → per-user `result_list` | 94646, 94647 |
//! | `kf customer get` | `kf/customer/batchget` `{external_userid_list: 1..=100}` → `customer_list`, `invalid_external_userid` | 95159 |
//! | `kf session get/transfer` | `kf/service_state/get`, `kf/service_state/trans` | 94669 |
//! | `kf stats corp/servicer` | `kf/get_corp_statistic`, `kf/get_servicer_statistic` `{open_kfid, [servicer_userid], start_time, end_time}` | 95489, 95490 |
//!
//! ("docs" = `https://developer.work.weixin.qq.com/document/path/<n>`; field names as
//! transcribed by silenceper/wechat `work/kf/{account,servicer,customer,servicestate,statistic}.go`
//! and the Perl `QQ::weixin::work::kf` module, which quotes the documentation's tables.)
//!
//! Every input is validated **before any platform call** (lengths, charsets, batch sizes,
//! date ranges, session transitions), so a typo never costs a call or a token. Lists longer
//! than a batch are split into calls of at most 100; a batch the platform refuses stops the
//! command (the results so far are still reported, the rest listed as not attempted).
//!
//! Exit codes (through [`crate::cli`]): 0 success, 2 input refused before any call
//! ([`KfError::Invalid`]), 1 anything else — a platform errcode (printed as `api: errcode N
//! (class): errmsg` on one line), per-user failures in a batch, an unreachable platform.

use std::collections::HashSet;
use std::io::Write;

use chrono::{FixedOffset, NaiveDate, Offset, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{AccountConfig, Channel, Config};
use crate::platform::{self, Platform};
use crate::policy::{self, Action, Api, CallResult};
use crate::store::Store;

// ------------------------------------------------------------------------------- limits

/// `kf/account/add`, `update`: name "不多于16个字符" (characters, not bytes).
pub const MAX_NAME_CHARS: usize = 16;
/// `kf/account/add`, `update`: avatar `media_id` "不多于128个字节" (a temporary media id).
pub const MAX_MEDIA_ID_BYTES: usize = 128;
/// `kf/account/del`, `update`, `add_contact_way`: open_kfid "不多于64字节". Real ones are
/// 32 chars of `[0-9A-Za-z_-]` (`wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q`).
pub const MAX_OPEN_KFID_BYTES: usize = 64;
/// `kf/add_contact_way`: scene "不多于32字节, 字符串取值范围(正则表达式)：[0-9a-zA-Z_-]*".
pub const MAX_SCENE_BYTES: usize = 32;
/// `kf/servicer/add`, `del`: userid_list "可填充个数：1 ~ 100。超过100个需分批调用".
pub const SERVICER_BATCH: usize = 100;
/// `kf/customer/batchget`: external_userid_list "可填充个数：1 ~ 100".
pub const CUSTOMER_BATCH: usize = 100;
/// `kf/account/list`: limit "取值范围 1 ~ 100"; a page shorter than this is the last.
pub const ACCOUNT_PAGE: usize = 100;
/// A corp has at most 5000 kf accounts; 50 pages of 100 cover them, and bound the loop if a
/// platform bug kept answering full pages.
const MAX_ACCOUNT_PAGES: usize = 50;
/// A member's userid: "长度为1~64个字节。只能由数字、字母和“_-@.”四种字符组成，且第一个字符必须是
/// 数字或字母" (通讯录 创建成员). Third-party apps' open_userids are alphanumeric: also valid.
pub const MAX_USERID_BYTES: usize = 64;
/// More ids than this in one command is a mistake (a servicer list holds at most 500; a corp's
/// customer lookups are done in the hundreds), and bounds what one command can cost.
pub const MAX_IDS_PER_COMMAND: usize = 10_000;
/// Statistics: "查询时间区间[start_time, end_time]为闭区间，最大查询跨度为31天" (95489, 95490).
pub const STATS_MAX_SPAN_DAYS: i64 = 31;
/// Statistics: "用户最多可获取最近180天内的数据". Days are counted back from today.
pub const STATS_MAX_AGE_DAYS: i64 = 180;
/// WeCom's statistic days start at midnight China Standard Time (UTC+8, no DST): the docs'
/// example `1645545600` is 2022-02-23 00:00 +08:00, and other times are rounded down to it.
pub const WECOM_UTC_OFFSET_SECS: i32 = 8 * 3600;

/// Service states (`kf/service_state/get`): 0 new, 1 bot, 2 queued, 3 human, 4 ended.
pub const STATE_NAMES: [&str; 5] = ["new", "bot", "queued", "human", "ended"];

/// WeCom's allowed `service_state/trans` moves: 0→1/2/3, 1→2/3, 2→3, 3→3/4
/// (shared/reference/wechat-api.md; 94669 "变更会话状态").
pub fn transition_allowed(from: i64, to: i64) -> bool {
    matches!((from, to), (0, 1..=3) | (1, 2 | 3) | (2, 3) | (3, 3 | 4))
}

fn state_name(s: i64) -> &'static str {
    usize::try_from(s)
        .ok()
        .and_then(|i| STATE_NAMES.get(i))
        .copied()
        .unwrap_or("unknown")
}

// ------------------------------------------------------------------------------- errors

/// Why a kf command failed. Callers branch on the variant: [`KfError::Invalid`] means nothing
/// was sent.
#[derive(Debug, thiserror::Error)]
pub enum KfError {
    /// Bad input, refused before any platform call.
    #[error("{0}")]
    Invalid(String),
    /// The platform answered errcode ≠ 0. `class` is what [`policy::classify`] makes of it.
    #[error("{api}: errcode {code} ({class}): {msg}")]
    Platform {
        api: &'static str,
        code: i64,
        msg: String,
        class: String,
    },
    /// No usable answer: an HTTP error status, a timeout, a connection failure.
    #[error("{api}: {detail} ({class})")]
    Unreachable {
        api: &'static str,
        detail: String,
        class: String,
    },
    /// errcode 0 but not the documented shape.
    #[error("{api}: unexpected response: {detail}")]
    BadResponse { api: &'static str, detail: String },
    /// The session's current state does not allow the move (checked after
    /// `service_state/get`, before `service_state/trans`).
    #[error("{0}")]
    NotAllowed(String),
    /// Every call succeeded but the platform refused some users (per-user errcodes).
    #[error("{api}: {failed} of {total} failed: {summary}")]
    PartlyFailed {
        api: &'static str,
        failed: usize,
        total: usize,
        summary: String,
    },
    /// Postgres (the shared token store) or the HTTP client could not be set up.
    #[error("{0}")]
    Setup(String),
}

impl KfError {
    /// True when the input was refused before any call (exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, KfError::Invalid(_))
    }

    /// The platform's errcode, when it answered one.
    pub fn errcode(&self) -> Option<i64> {
        match self {
            KfError::Platform { code, .. } => Some(*code),
            _ => None,
        }
    }
}

fn invalid(msg: impl Into<String>) -> KfError {
    KfError::Invalid(msg.into())
}

/// What the worker's errcode table says about a failed call, in words for an operator.
fn class_of(api: Api, res: &CallResult) -> String {
    match policy::classify(Channel::Wecom, api, res) {
        Action::Deliver => "ok".into(),
        Action::RefreshToken => "access token rejected again after a refresh".into(),
        Action::Retry { .. } => "transient: try again".into(),
        Action::Throttle { min_pause } => {
            format!("throttled: wait at least {} s", min_pause.as_secs())
        }
        Action::HumanServing => "a human servicer holds the session".into(),
        Action::DeadLetter {
            reason,
            alert: true,
        } => format!("{reason}: check corpid, secret and the kf API permissions"),
        Action::DeadLetter { reason, .. } => reason.into(),
    }
}

fn check(api: &'static str, which: Api, res: CallResult, v: Value) -> Result<Value, KfError> {
    let api = match which {
        Api::GetToken => "gettoken",
        Api::Business => api,
    };
    let class = class_of(which, &res);
    match res {
        CallResult::Ok { .. } => Ok(v),
        CallResult::Errcode { code, msg } => Err(KfError::Platform {
            api,
            code,
            msg: one_line(&msg),
            class,
        }),
        CallResult::Http(s) => Err(KfError::Unreachable {
            api,
            detail: format!("HTTP {s}"),
            class,
        }),
        CallResult::Transport(d) => Err(KfError::Unreachable {
            api,
            detail: one_line(&d),
            class,
        }),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn bad_response(api: &'static str, e: impl std::fmt::Display) -> KfError {
    KfError::BadResponse {
        api,
        detail: e.to_string(),
    }
}

// ------------------------------------------------------------------------------- validation

/// The config's wecom account `name`, or why not.
pub fn wecom_account<'a>(cfg: &'a Config, name: &str) -> Result<&'a AccountConfig, KfError> {
    let wecom: Vec<&str> = cfg
        .accounts
        .iter()
        .filter(|a| a.channel == Channel::Wecom)
        .map(|a| a.name.as_str())
        .collect();
    match cfg.account(name) {
        Some(a) if a.channel == Channel::Wecom => Ok(a),
        Some(_) => Err(invalid(format!(
            "--account {name}: a chatbot account; kf commands need a wecom account ({})",
            list_or_none(&wecom)
        ))),
        None => Err(invalid(format!(
            "--account {name}: no such account in the config (wecom accounts: {})",
            list_or_none(&wecom)
        ))),
    }
}

fn list_or_none(names: &[&str]) -> String {
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

fn id_charset(s: &str, extra: &[u8]) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
}

/// 1..=64 bytes of `[0-9A-Za-z_-]`.
pub fn validate_open_kfid(s: &str) -> Result<(), KfError> {
    if s.is_empty() || s.len() > MAX_OPEN_KFID_BYTES || !id_charset(s, b"_-") {
        return Err(invalid(format!(
            "open_kfid {s:?}: expected 1..={MAX_OPEN_KFID_BYTES} characters of [0-9A-Za-z_-]"
        )));
    }
    Ok(())
}

/// Account name: 1..=16 characters, no control characters.
pub fn validate_name(s: &str) -> Result<(), KfError> {
    let n = s.chars().count();
    if n == 0 || s.trim().is_empty() {
        return Err(invalid("--name: empty"));
    }
    if n > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "--name: {n} characters; WeCom allows at most {MAX_NAME_CHARS}"
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(invalid("--name: contains control characters"));
    }
    Ok(())
}

/// Avatar media_id: 1..=128 bytes, no whitespace or control characters.
pub fn validate_media_id(s: &str) -> Result<(), KfError> {
    if s.is_empty() || s.len() > MAX_MEDIA_ID_BYTES {
        return Err(invalid(format!(
            "--media-id: {} bytes; expected 1..={MAX_MEDIA_ID_BYTES} (a temporary media id from media/upload)",
            s.len()
        )));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("--media-id: contains whitespace"));
    }
    Ok(())
}

/// Contact-way scene: at most 32 bytes of `[0-9a-zA-Z_-]` (empty = no scene).
pub fn validate_scene(s: &str) -> Result<(), KfError> {
    if s.len() > MAX_SCENE_BYTES || !id_charset(s, b"_-") {
        return Err(invalid(format!(
            "--scene {s:?}: expected at most {MAX_SCENE_BYTES} characters of [0-9a-zA-Z_-]"
        )));
    }
    Ok(())
}

/// A member userid: 1..=64 bytes of `[0-9A-Za-z_@.-]`, starting with a letter or digit.
pub fn validate_userid(s: &str) -> Result<(), KfError> {
    let first_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_ok || s.len() > MAX_USERID_BYTES || !id_charset(s, b"_-@.") {
        return Err(invalid(format!(
            "userid {s:?}: expected 1..={MAX_USERID_BYTES} characters of [0-9A-Za-z_-@.] starting with a letter or digit"
        )));
    }
    Ok(())
}

/// An external_userid: the rule the job contract applies to `to` ([`crate::domain::job::valid_recipient`]).
pub fn validate_external_userid(s: &str) -> Result<(), KfError> {
    if !crate::domain::job::valid_recipient(s) {
        return Err(invalid(format!(
            "external_userid {s:?}: expected 1..={} characters without whitespace",
            crate::domain::job::MAX_RECIPIENT_CHARS
        )));
    }
    Ok(())
}

/// Validate every id (all problems in one message), drop repeats (keeping the first), and
/// refuse an empty or oversized list.
fn validate_ids(
    what: &str,
    ids: &[String],
    one: fn(&str) -> Result<(), KfError>,
) -> Result<Vec<String>, KfError> {
    if ids.is_empty() {
        return Err(invalid(format!("no {what} given")));
    }
    if ids.len() > MAX_IDS_PER_COMMAND {
        return Err(invalid(format!(
            "{} {what}s; at most {MAX_IDS_PER_COMMAND} per command",
            ids.len()
        )));
    }
    let bad: Vec<String> = ids
        .iter()
        .filter_map(|id| one(id).err().map(|e| e.to_string()))
        .collect();
    if !bad.is_empty() {
        let shown = bad.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
        let more = if bad.len() > 5 {
            format!(" (and {} more)", bad.len() - 5)
        } else {
            String::new()
        };
        return Err(invalid(format!(
            "{} invalid {what}(s), nothing sent: {shown}{more}",
            bad.len()
        )));
    }
    let mut seen = HashSet::new();
    Ok(ids
        .iter()
        .filter(|id| seen.insert(id.as_str()))
        .cloned()
        .collect())
}

/// A `service_state/trans` target: 1..=4 (0 is never a target), `servicer_userid` required for
/// 3 ("当state=3时要求必填") and refused for the others.
pub fn validate_target(to: i64, servicer: Option<&str>) -> Result<(), KfError> {
    if !(1..=4).contains(&to) {
        return Err(invalid(format!(
            "--state {to}: expected 1 (bot), 2 (queued), 3 (human, with --servicer) or 4 (ended)"
        )));
    }
    match (to, servicer) {
        (3, None) => Err(invalid("--state 3 (human) needs --servicer <userid>")),
        (3, Some(u)) => validate_userid(u),
        (_, Some(_)) => Err(invalid(format!(
            "--servicer is only for --state 3; --state {to} assigns no servicer"
        ))),
        _ => Ok(()),
    }
}

/// A closed range of statistic days as WeCom's `start_time`/`end_time` (the +08:00 midnights).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct StatsRange {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub start_time: i64,
    pub end_time: i64,
}

fn wecom_tz() -> FixedOffset {
    // 8 h is a valid offset; the fallback is never taken.
    FixedOffset::east_opt(WECOM_UTC_OFFSET_SECS).unwrap_or_else(|| Utc.fix())
}

/// Today in WeCom's time zone.
pub fn wecom_today() -> NaiveDate {
    Utc::now().with_timezone(&wecom_tz()).date_naive()
}

/// Unix time of `d` 00:00 +08:00.
pub fn wecom_midnight(d: NaiveDate) -> i64 {
    d.and_hms_opt(0, 0, 0)
        .and_then(|t| t.and_local_timezone(wecom_tz()).single())
        .map_or(0, |t| t.timestamp())
}

/// `--from`/`--to` (YYYY-MM-DD, WeCom's +08:00 days) checked against the platform's rules:
/// `from ≤ to`, `to` at the latest yesterday (a day's numbers are computed the next morning),
/// `from` at most [`STATS_MAX_AGE_DAYS`] back, at most [`STATS_MAX_SPAN_DAYS`] days in all.
pub fn stats_range(from: &str, to: &str, today: NaiveDate) -> Result<StatsRange, KfError> {
    let parse = |flag: &str, s: &str| {
        NaiveDate::parse_from_str(s, "%Y-%m-%d")
            .map_err(|_| invalid(format!("{flag} {s:?}: expected a date YYYY-MM-DD")))
    };
    let (f, t) = (parse("--from", from)?, parse("--to", to)?);
    if f > t {
        return Err(invalid(format!("--from {f} is after --to {t}")));
    }
    let yesterday = today - chrono::Days::new(1);
    if t > yesterday {
        return Err(invalid(format!(
            "--to {t}: WeCom publishes a day's statistics the next day; the latest is {yesterday}"
        )));
    }
    let oldest = today - chrono::Days::new(STATS_MAX_AGE_DAYS as u64);
    if f < oldest {
        return Err(invalid(format!(
            "--from {f}: WeCom keeps {STATS_MAX_AGE_DAYS} days of statistics; the earliest is {oldest}"
        )));
    }
    let days = (t - f).num_days() + 1;
    if days > STATS_MAX_SPAN_DAYS {
        return Err(invalid(format!(
            "{f}..{t} is {days} days; WeCom answers at most {STATS_MAX_SPAN_DAYS} per query"
        )));
    }
    Ok(StatsRange {
        from: f,
        to: t,
        start_time: wecom_midnight(f),
        end_time: wecom_midnight(t),
    })
}

/// The open_kfid a stats command is about: the flag, or the account's only configured one.
pub fn default_open_kfid(account: &AccountConfig, flag: Option<&str>) -> Result<String, KfError> {
    match (flag, account.open_kfids.as_slice()) {
        (Some(k), _) => {
            validate_open_kfid(k)?;
            Ok(k.to_owned())
        }
        (None, [only]) => Ok(only.clone()),
        (None, kfids) => Err(invalid(format!(
            "--open-kfid: required (account {} configures {} open_kfids: {})",
            account.name,
            kfids.len(),
            list_or_none(&kfids.iter().map(String::as_str).collect::<Vec<_>>())
        ))),
    }
}

// ------------------------------------------------------------------------------- results

/// One kf account (`account_list` entry).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KfAccount {
    pub open_kfid: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub avatar: String,
    /// Whether this app may manage the account; not returned to component apps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manage_privilege: Option<bool>,
}

/// One `servicer_list` entry: a member (`userid`) or a department (`department_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Servicer {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department_id: Option<i64>,
    /// 0 receiving, 1 stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_type: Option<i64>,
}

/// The platform's answer for one userid of `servicer/add` / `servicer/del`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserResult {
    pub userid: String,
    #[serde(default)]
    pub errcode: i64,
    #[serde(default)]
    pub errmsg: String,
}

/// A batch command's outcome: what the calls that were made answered, and the first failed
/// call (which stops the command).
#[derive(Debug, Serialize)]
pub struct BatchOutcome<T: Serialize> {
    /// Calls made (including a failed last one).
    pub calls: usize,
    #[serde(flatten)]
    pub done: T,
    /// Ids of the batches after a failed call: never sent.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_attempted: Vec<String>,
    #[serde(skip)]
    pub error: Option<KfError>,
}

/// Call the platform for `ids` in chunks of `size`, one call per chunk, in order: `call`
/// makes the request for a chunk, `merge` adds its answer to the outcome. The first failed
/// call ends the run; the ids of the chunks after it are reported as `not_attempted`.
async fn in_batches<T, R, Fut>(
    ids: &[String],
    size: usize,
    mut call: impl FnMut(&[String]) -> Fut,
    mut merge: impl FnMut(&mut T, &[String], R),
) -> BatchOutcome<T>
where
    T: Serialize + Default,
    Fut: std::future::Future<Output = Result<R, KfError>>,
{
    let mut out = BatchOutcome {
        calls: 0,
        done: T::default(),
        not_attempted: Vec::new(),
        error: None,
    };
    let mut chunks = ids.chunks(size);
    for chunk in chunks.by_ref() {
        out.calls += 1;
        match call(chunk).await {
            Ok(answer) => merge(&mut out.done, chunk, answer),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out.not_attempted = chunks.flatten().cloned().collect();
    out
}

impl<T: Serialize> BatchOutcome<T> {
    /// The failed call's error as JSON (`{api, errcode?, errmsg}`), for `--json`.
    fn error_json(&self) -> Option<Value> {
        self.error.as_ref().map(|e| match e {
            KfError::Platform { api, code, msg, .. } => {
                json!({"api": api, "errcode": code, "errmsg": msg})
            }
            other => json!({"errmsg": other.to_string()}),
        })
    }
}

/// Per-user results of `servicer add` / `remove`.
#[derive(Debug, Default, Serialize)]
pub struct ServicerResults {
    pub result_list: Vec<UserResult>,
}

/// One `customer_list` entry; fields this tool does not know are kept in `extra`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Customer {
    pub external_userid: String,
    #[serde(default)]
    pub nickname: String,
    #[serde(default)]
    pub avatar: String,
    /// 0 unknown, 1 male, 2 female.
    #[serde(default)]
    pub gender: i64,
    #[serde(default)]
    pub unionid: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `customer get`: the customers found and the ids WeCom called invalid.
#[derive(Debug, Default, Serialize)]
pub struct Customers {
    pub customer_list: Vec<Customer>,
    pub invalid_external_userid: Vec<String>,
}

/// A session's state (`service_state/get`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Session {
    pub open_kfid: String,
    pub external_userid: String,
    pub service_state: i64,
    pub state_name: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<String>,
}

/// A completed `service_state/trans`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Transfer {
    pub open_kfid: String,
    pub external_userid: String,
    pub from: i64,
    pub to: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub servicer_userid: Option<String>,
    /// For `send_msg_on_event` (a greeting on the first move into 2/3, a farewell into 4).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub msg_code: Option<String>,
}

/// One day of statistics: `stat_time` (the day's +08:00 midnight) and the platform's
/// `statistic` object as is (absent when nothing happened that day).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DayStat {
    pub stat_time: i64,
    #[serde(default)]
    pub statistic: Map<String, Value>,
}

// ------------------------------------------------------------------------------- client

/// One wecom account's kf administration client.
#[derive(Debug)]
pub struct KfClient {
    platform: Platform,
}

impl KfClient {
    /// A client for `account` (must be a wecom account), sharing tokens through `store`.
    pub fn new(
        account: &AccountConfig,
        http: reqwest::Client,
        store: Store,
    ) -> Result<Self, KfError> {
        if account.channel != Channel::Wecom {
            return Err(invalid(format!(
                "account {}: kf commands need a wecom account",
                account.name
            )));
        }
        Ok(Self {
            platform: Platform::new(account.clone(), http, store),
        })
    }

    /// The config's account `name`, with the config's database (tokens) and HTTP settings.
    pub async fn connect(cfg: &Config, name: &str) -> Result<Self, KfError> {
        let account = wecom_account(cfg, name)?;
        let http = platform::http_client(cfg).map_err(|e| KfError::Setup(format!("{e:#}")))?;
        let store = Store::connect(cfg)
            .await
            .map_err(|e| KfError::Setup(format!("token store: {e:#}")))?;
        Self::new(account, http, store)
    }

    /// The account this client manages.
    pub fn account(&self) -> &AccountConfig {
        &self.platform.account
    }

    /// POST `api` with the token protocol of [`Platform::wecom_call`].
    async fn post(&self, api: &'static str, body: &Value) -> Result<Value, KfError> {
        let tokens = self
            .platform
            .tokens()
            .ok_or_else(|| invalid("not a wecom account"))?;
        let ((res, which), v) = self.platform.wecom_call(tokens, api, body).await;
        check(api, which, res, v)
    }

    /// GET `api?access_token=…&query…` with the same token protocol (`servicer/list` is the
    /// one GET API here).
    async fn get(&self, api: &'static str, query: &[(&str, &str)]) -> Result<Value, KfError> {
        let tokens = self
            .platform
            .tokens()
            .ok_or_else(|| invalid("not a wecom account"))?;
        let ((res, which), v) = self.platform.wecom_get(tokens, api, query).await;
        check(api, which, res, v)
    }

    /// `kf/account/list`, all pages (94661: `{offset, limit}`, "当获取到的 account_list中的账号
    /// 数量小于 指定的limit 的时候,表示已经没有更多的数据").
    pub async fn account_list(&self) -> Result<Vec<KfAccount>, KfError> {
        const API: &str = "kf/account/list";
        let mut out = Vec::new();
        for page in 0..MAX_ACCOUNT_PAGES {
            let v = self
                .post(
                    API,
                    &json!({"offset": page * ACCOUNT_PAGE, "limit": ACCOUNT_PAGE}),
                )
                .await?;
            let list: Vec<KfAccount> = field(API, &v, "account_list")?;
            let n = list.len();
            out.extend(list);
            if n < ACCOUNT_PAGE {
                break;
            }
        }
        Ok(out)
    }

    /// `kf/account/add` `{name, media_id}` → the new `open_kfid` (94662).
    pub async fn account_add(&self, name: &str, media_id: &str) -> Result<String, KfError> {
        const API: &str = "kf/account/add";
        validate_name(name)?;
        validate_media_id(media_id)?;
        let v = self
            .post(API, &json!({"name": name, "media_id": media_id}))
            .await?;
        match v.get("open_kfid").and_then(Value::as_str) {
            Some(k) if !k.is_empty() => Ok(k.to_owned()),
            _ => Err(bad_response(API, "no open_kfid")),
        }
    }

    /// `kf/account/update` `{open_kfid, name?, media_id?}` (94664); at least one change.
    pub async fn account_update(
        &self,
        open_kfid: &str,
        name: Option<&str>,
        media_id: Option<&str>,
    ) -> Result<(), KfError> {
        validate_open_kfid(open_kfid)?;
        if name.is_none() && media_id.is_none() {
            return Err(invalid("nothing to update: give --name and/or --media-id"));
        }
        let mut body = json!({"open_kfid": open_kfid});
        if let Some(n) = name {
            validate_name(n)?;
            body["name"] = json!(n);
        }
        if let Some(m) = media_id {
            validate_media_id(m)?;
            body["media_id"] = json!(m);
        }
        self.post("kf/account/update", &body).await.map(drop)
    }

    /// `kf/account/del` `{open_kfid}` (94663).
    pub async fn account_delete(&self, open_kfid: &str) -> Result<(), KfError> {
        validate_open_kfid(open_kfid)?;
        self.post("kf/account/del", &json!({"open_kfid": open_kfid}))
            .await
            .map(drop)
    }

    /// `kf/add_contact_way` `{open_kfid, scene?}` → the customer-service URL (94665).
    pub async fn account_link(
        &self,
        open_kfid: &str,
        scene: Option<&str>,
    ) -> Result<String, KfError> {
        const API: &str = "kf/add_contact_way";
        validate_open_kfid(open_kfid)?;
        let mut body = json!({"open_kfid": open_kfid});
        if let Some(s) = scene {
            validate_scene(s)?;
            body["scene"] = json!(s);
        }
        let v = self.post(API, &body).await?;
        match v.get("url").and_then(Value::as_str) {
            Some(u) if !u.is_empty() => Ok(u.to_owned()),
            _ => Err(bad_response(API, "no url")),
        }
    }

    /// GET `kf/servicer/list?open_kfid=` → `servicer_list` (94645).
    pub async fn servicer_list(&self, open_kfid: &str) -> Result<Vec<Servicer>, KfError> {
        const API: &str = "kf/servicer/list";
        validate_open_kfid(open_kfid)?;
        let v = self.get(API, &[("open_kfid", open_kfid)]).await?;
        field(API, &v, "servicer_list")
    }

    /// `kf/servicer/add` in batches of [`SERVICER_BATCH`] (94646).
    pub async fn servicer_add(
        &self,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        self.servicer_batch("kf/servicer/add", open_kfid, userids)
            .await
    }

    /// `kf/servicer/del` in batches of [`SERVICER_BATCH`] (94647).
    pub async fn servicer_remove(
        &self,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        self.servicer_batch("kf/servicer/del", open_kfid, userids)
            .await
    }

    async fn servicer_batch(
        &self,
        api: &'static str,
        open_kfid: &str,
        userids: &[String],
    ) -> Result<BatchOutcome<ServicerResults>, KfError> {
        validate_open_kfid(open_kfid)?;
        let ids = validate_ids("userid", userids, validate_userid)?;
        Ok(in_batches(
            &ids,
            SERVICER_BATCH,
            |chunk: &[String]| {
                let body = json!({"open_kfid": open_kfid, "userid_list": chunk});
                async move {
                    self.post(api, &body)
                        .await
                        .and_then(|v| field::<Vec<UserResult>>(api, &v, "result_list"))
                }
            },
            |done: &mut ServicerResults, chunk, mut list| {
                // Every userid sent gets a line, even one the platform left out.
                let answered: HashSet<String> = list.iter().map(|r| r.userid.clone()).collect();
                list.extend(
                    chunk
                        .iter()
                        .filter(|u| !answered.contains(*u))
                        .map(|u| UserResult {
                            userid: u.clone(),
                            errcode: -1,
                            errmsg: "no result returned for this userid".into(),
                        }),
                );
                done.result_list.extend(list);
            },
        )
        .await)
    }

    /// `kf/customer/batchget` in batches of [`CUSTOMER_BATCH`] (95159);
    /// `need_enter_session_context` asks for the last session's scene.
    pub async fn customer_get(
        &self,
        external_userids: &[String],
        with_context: bool,
    ) -> Result<BatchOutcome<Customers>, KfError> {
        const API: &str = "kf/customer/batchget";
        let ids = validate_ids(
            "external_userid",
            external_userids,
            validate_external_userid,
        )?;
        Ok(in_batches(
            &ids,
            CUSTOMER_BATCH,
            |chunk: &[String]| {
                let mut body = json!({"external_userid_list": chunk});
                if with_context {
                    body["need_enter_session_context"] = json!(1);
                }
                async move {
                    let v = self.post(API, &body).await?;
                    Ok((
                        field::<Vec<Customer>>(API, &v, "customer_list")?,
                        field::<Vec<String>>(API, &v, "invalid_external_userid")?,
                    ))
                }
            },
            |done: &mut Customers, _, (found, bad)| {
                done.customer_list.extend(found);
                done.invalid_external_userid.extend(bad);
            },
        )
        .await)
    }

    /// `kf/service_state/get` `{open_kfid, external_userid}` → `service_state`,
    /// `servicer_userid` (94669).
    pub async fn session_get(
        &self,
        open_kfid: &str,
        external_userid: &str,
    ) -> Result<Session, KfError> {
        const API: &str = "kf/service_state/get";
        validate_open_kfid(open_kfid)?;
        validate_external_userid(external_userid)?;
        let v = self
            .post(
                API,
                &json!({"open_kfid": open_kfid, "external_userid": external_userid}),
            )
            .await?;
        let state = v
            .get("service_state")
            .and_then(Value::as_i64)
            .ok_or_else(|| bad_response(API, "no service_state"))?;
        Ok(Session {
            open_kfid: open_kfid.to_owned(),
            external_userid: external_userid.to_owned(),
            service_state: state,
            state_name: state_name(state),
            servicer_userid: v
                .get("servicer_userid")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// `kf/service_state/trans` `{open_kfid, external_userid, service_state, servicer_userid?}`
    /// → `msg_code` (94669), after reading the current state and checking the move is one
    /// WeCom allows ([`transition_allowed`]).
    pub async fn session_transfer(
        &self,
        open_kfid: &str,
        external_userid: &str,
        to: i64,
        servicer: Option<&str>,
    ) -> Result<Transfer, KfError> {
        validate_open_kfid(open_kfid)?;
        validate_external_userid(external_userid)?;
        validate_target(to, servicer)?;
        let cur = self.session_get(open_kfid, external_userid).await?;
        let from = cur.service_state;
        if !transition_allowed(from, to) {
            return Err(KfError::NotAllowed(format!(
                "session {open_kfid}/{external_userid} is in state {from} ({}); WeCom does not allow {from} → {to} ({}); allowed: 0→1/2/3, 1→2/3, 2→3, 3→3/4; nothing sent",
                state_name(from),
                state_name(to)
            )));
        }
        let mut body = json!({
            "open_kfid": open_kfid,
            "external_userid": external_userid,
            "service_state": to,
        });
        if let Some(s) = servicer {
            body["servicer_userid"] = json!(s);
        }
        let v = self.post("kf/service_state/trans", &body).await?;
        Ok(Transfer {
            open_kfid: open_kfid.to_owned(),
            external_userid: external_userid.to_owned(),
            from,
            to,
            servicer_userid: servicer.map(str::to_owned),
            msg_code: v
                .get("msg_code")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
        })
    }

    /// `kf/get_corp_statistic` `{open_kfid, start_time, end_time}` (95489).
    pub async fn stats_corp(
        &self,
        open_kfid: &str,
        range: &StatsRange,
    ) -> Result<Vec<DayStat>, KfError> {
        const API: &str = "kf/get_corp_statistic";
        validate_open_kfid(open_kfid)?;
        let body = json!({
            "open_kfid": open_kfid,
            "start_time": range.start_time,
            "end_time": range.end_time,
        });
        let v = self.post(API, &body).await?;
        field(API, &v, "statistic_list")
    }

    /// `kf/get_servicer_statistic` `{open_kfid, servicer_userid?, start_time, end_time}`
    /// (95490); without a servicer, the account's totals.
    pub async fn stats_servicer(
        &self,
        open_kfid: &str,
        servicer: Option<&str>,
        range: &StatsRange,
    ) -> Result<Vec<DayStat>, KfError> {
        const API: &str = "kf/get_servicer_statistic";
        validate_open_kfid(open_kfid)?;
        let mut body = json!({
            "open_kfid": open_kfid,
            "start_time": range.start_time,
            "end_time": range.end_time,
        });
        if let Some(u) = servicer {
            validate_userid(u)?;
            body["servicer_userid"] = json!(u);
        }
        let v = self.post(API, &body).await?;
        field(API, &v, "statistic_list")
    }
}

/// `v[key]` as `T`; a missing key is an empty list/default (the platform omits empty lists).
fn field<T: serde::de::DeserializeOwned + Default>(
    api: &'static str,
    v: &Value,
    key: &str,
) -> Result<T, KfError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(T::default()),
        Some(x) => T::deserialize(x).map_err(|e| bad_response(api, format!("{key}: {e}"))),
    }
}

// ------------------------------------------------------------------------------- CLI

/// `wxdispatch kf …`
#[derive(Debug, clap::Args)]
pub struct KfArgs {
    #[command(subcommand)]
    pub command: KfCommand,
}

/// Flags every kf command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// The wecom account (from the config) whose corp is managed.
    #[arg(long)]
    pub account: String,
    /// Print one JSON document instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum KfCommand {
    /// Customer-service accounts (open_kfid): list, add, update, delete, link.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Servicers (接待人员) of a kf account: list, add, remove.
    #[command(subcommand)]
    Servicer(ServicerCmd),
    /// WeChat customers by external_userid.
    #[command(subcommand)]
    Customer(CustomerCmd),
    /// A conversation's service state: get, transfer.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Daily statistics of the corp (per kf account) or of servicers.
    #[command(subcommand)]
    Stats(StatsCmd),
}

#[derive(Debug, clap::Subcommand)]
pub enum AccountCmd {
    /// List the corp's kf accounts.
    List {
        #[command(flatten)]
        common: Common,
    },
    /// Add a kf account; prints its new open_kfid.
    Add {
        /// Display name, at most 16 characters.
        #[arg(long)]
        name: String,
        /// Avatar: a temporary media id (media/upload), at most 128 bytes.
        #[arg(long)]
        media_id: String,
        #[command(flatten)]
        common: Common,
    },
    /// Change a kf account's name and/or avatar.
    Update {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// New display name, at most 16 characters.
        #[arg(long)]
        name: Option<String>,
        /// New avatar: a temporary media id, at most 128 bytes.
        #[arg(long)]
        media_id: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete a kf account.
    #[command(alias = "del")]
    Delete {
        /// The kf account (open_kfid).
        open_kfid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Print the account's contact URL (the link customers open).
    Link {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Scene value echoed in enter_session events: at most 32 of [0-9a-zA-Z_-].
        #[arg(long)]
        scene: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ServicerCmd {
    /// List a kf account's servicers.
    List {
        /// The kf account (open_kfid).
        open_kfid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Add members as servicers (any number: sent 100 per call); per-user results.
    Add {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Member userids.
        #[arg(required = true)]
        userids: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Remove servicers (sent 100 per call); per-user results.
    #[command(alias = "del")]
    Remove {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// Member userids.
        #[arg(required = true)]
        userids: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CustomerCmd {
    /// Look customers up (sent 100 per call); unknown ids are listed separately.
    Get {
        /// Customers' external_userids.
        #[arg(required = true)]
        external_userids: Vec<String>,
        /// Also ask for the scene of each customer's last session entry.
        #[arg(long)]
        with_context: bool,
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SessionCmd {
    /// Show a conversation's service state (0 new, 1 bot, 2 queued, 3 human, 4 ended).
    Get {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// The customer (external_userid).
        external_userid: String,
        #[command(flatten)]
        common: Common,
    },
    /// Move a conversation: 1 bot, 2 queue, 3 a servicer (--servicer), 4 end. The current
    /// state is read first; moves WeCom does not allow are refused without a call.
    Transfer {
        /// The kf account (open_kfid).
        open_kfid: String,
        /// The customer (external_userid).
        external_userid: String,
        /// Target state: 1 bot, 2 queued, 3 human (with --servicer), 4 ended.
        #[arg(long, allow_negative_numbers = true)]
        state: i64,
        /// The servicer's userid (required for --state 3).
        #[arg(long)]
        servicer: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// The date flags of the stats commands.
#[derive(Debug, Clone, clap::Args)]
pub struct StatsFlags {
    /// First day, YYYY-MM-DD (WeCom's days: UTC+8); at most 180 days back.
    #[arg(long)]
    pub from: String,
    /// Last day, YYYY-MM-DD; at the latest yesterday; at most 31 days after --from.
    #[arg(long)]
    pub to: String,
    /// The kf account (default: the account's only configured open_kfid).
    #[arg(long)]
    pub open_kfid: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum StatsCmd {
    /// Per-day totals of a kf account: sessions, customers, messages, bot replies, transfers.
    Corp {
        #[command(flatten)]
        range: StatsFlags,
        #[command(flatten)]
        common: Common,
    },
    /// Per-day servicer figures: human sessions, reply rate, first reply time, satisfaction.
    Servicer {
        #[command(flatten)]
        range: StatsFlags,
        /// One servicer's figures (default: the kf account's servicer totals).
        #[arg(long)]
        servicer: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

impl KfCommand {
    fn common(&self) -> &Common {
        match self {
            KfCommand::Account(c) => match c {
                AccountCmd::List { common }
                | AccountCmd::Add { common, .. }
                | AccountCmd::Update { common, .. }
                | AccountCmd::Delete { common, .. }
                | AccountCmd::Link { common, .. } => common,
            },
            KfCommand::Servicer(c) => match c {
                ServicerCmd::List { common, .. }
                | ServicerCmd::Add { common, .. }
                | ServicerCmd::Remove { common, .. } => common,
            },
            KfCommand::Customer(CustomerCmd::Get { common, .. }) => common,
            KfCommand::Session(c) => match c {
                SessionCmd::Get { common, .. } | SessionCmd::Transfer { common, .. } => common,
            },
            KfCommand::Stats(c) => match c {
                StatsCmd::Corp { common, .. } | StatsCmd::Servicer { common, .. } => common,
            },
        }
    }

    /// Every check that needs no call, so bad input never reaches the database or the
    /// platform. (The client methods check again: they are also a library API.)
    fn validate(&self, account: &AccountConfig) -> Result<(), KfError> {
        match self {
            KfCommand::Account(c) => match c {
                AccountCmd::List { .. } => Ok(()),
                AccountCmd::Add { name, media_id, .. } => {
                    validate_name(name)?;
                    validate_media_id(media_id)
                }
                AccountCmd::Update {
                    open_kfid,
                    name,
                    media_id,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    if name.is_none() && media_id.is_none() {
                        return Err(invalid("nothing to update: give --name and/or --media-id"));
                    }
                    name.as_deref().map(validate_name).transpose()?;
                    media_id.as_deref().map(validate_media_id).transpose()?;
                    Ok(())
                }
                AccountCmd::Delete { open_kfid, .. } => validate_open_kfid(open_kfid),
                AccountCmd::Link {
                    open_kfid, scene, ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    scene.as_deref().map(validate_scene).transpose().map(drop)
                }
            },
            KfCommand::Servicer(c) => match c {
                ServicerCmd::List { open_kfid, .. } => validate_open_kfid(open_kfid),
                ServicerCmd::Add {
                    open_kfid, userids, ..
                }
                | ServicerCmd::Remove {
                    open_kfid, userids, ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_ids("userid", userids, validate_userid).map(drop)
                }
            },
            KfCommand::Customer(CustomerCmd::Get {
                external_userids, ..
            }) => validate_ids(
                "external_userid",
                external_userids,
                validate_external_userid,
            )
            .map(drop),
            KfCommand::Session(c) => match c {
                SessionCmd::Get {
                    open_kfid,
                    external_userid,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_external_userid(external_userid)
                }
                SessionCmd::Transfer {
                    open_kfid,
                    external_userid,
                    state,
                    servicer,
                    ..
                } => {
                    validate_open_kfid(open_kfid)?;
                    validate_external_userid(external_userid)?;
                    validate_target(*state, servicer.as_deref())
                }
            },
            KfCommand::Stats(c) => {
                let (range, servicer) = match c {
                    StatsCmd::Corp { range, .. } => (range, None),
                    StatsCmd::Servicer {
                        range, servicer, ..
                    } => (range, servicer.as_deref()),
                };
                stats_range(&range.from, &range.to, wecom_today())?;
                default_open_kfid(account, range.open_kfid.as_deref())?;
                servicer.map(validate_userid).transpose().map(drop)
            }
        }
    }
}

/// Run a `wxdispatch kf …` command: validate, connect, call, print. Errors are [`KfError`]s
/// (wrapped in anyhow only for output failures).
pub async fn run(cfg: Config, args: KfArgs) -> anyhow::Result<()> {
    let cmd = args.command;
    let common = cmd.common().clone();
    let account = wecom_account(&cfg, &common.account)?;
    cmd.validate(account)?;
    let client = KfClient::connect(&cfg, &common.account).await?;
    let mut out = std::io::stdout().lock();
    let json = common.json;
    match cmd {
        KfCommand::Account(c) => account_cmd(&client, c, json, &mut out).await,
        KfCommand::Servicer(c) => servicer_cmd(&client, c, json, &mut out).await,
        KfCommand::Customer(CustomerCmd::Get {
            external_userids,
            with_context,
            ..
        }) => {
            let o = client.customer_get(&external_userids, with_context).await?;
            if json {
                print_json(&mut out, &batch_json(&o)?)?;
            } else {
                let rows: Vec<Vec<String>> = o
                    .done
                    .customer_list
                    .iter()
                    .map(|c| {
                        vec![
                            c.external_userid.clone(),
                            c.nickname.clone(),
                            gender_name(c.gender).into(),
                            dash(&c.unionid),
                        ]
                    })
                    .collect();
                if rows.is_empty() {
                    writeln!(out, "no customers found")?;
                } else {
                    write_table(
                        &mut out,
                        &["EXTERNAL_USERID", "NICKNAME", "GENDER", "UNIONID"],
                        &rows,
                    )?;
                }
                let bad = &o.done.invalid_external_userid;
                if !bad.is_empty() {
                    writeln!(
                        out,
                        "invalid external_userid ({}): {}",
                        bad.len(),
                        bad.join(", ")
                    )?;
                }
                write_not_attempted(&mut out, &o.not_attempted)?;
            }
            out.flush()?;
            finish_batch(o.error)
        }
        KfCommand::Session(c) => session_cmd(&client, c, json, &mut out).await,
        KfCommand::Stats(c) => stats_cmd(&client, c, json, &mut out).await,
    }
}

async fn account_cmd(
    client: &KfClient,
    c: AccountCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match c {
        AccountCmd::List { .. } => {
            let list = client.account_list().await?;
            if json {
                print_json(out, &json!({ "account_list": list }))?;
            } else if list.is_empty() {
                writeln!(out, "no kf accounts")?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a.open_kfid.clone(),
                            a.name.clone(),
                            a.manage_privilege
                                .map_or("-", |p| if p { "yes" } else { "no" })
                                .into(),
                            dash(&a.avatar),
                        ]
                    })
                    .collect();
                write_table(out, &["OPEN_KFID", "NAME", "MANAGE", "AVATAR"], &rows)?;
            }
        }
        AccountCmd::Add { name, media_id, .. } => {
            let k = client.account_add(&name, &media_id).await?;
            if json {
                print_json(out, &json!({"open_kfid": k, "name": name}))?;
            } else {
                writeln!(out, "{k}")?;
            }
        }
        AccountCmd::Update {
            open_kfid,
            name,
            media_id,
            ..
        } => {
            client
                .account_update(&open_kfid, name.as_deref(), media_id.as_deref())
                .await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "updated": true}))?;
            } else {
                writeln!(out, "updated {open_kfid}")?;
            }
        }
        AccountCmd::Delete { open_kfid, .. } => {
            client.account_delete(&open_kfid).await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "deleted": true}))?;
            } else {
                writeln!(out, "deleted {open_kfid}")?;
            }
        }
        AccountCmd::Link {
            open_kfid, scene, ..
        } => {
            let url = client.account_link(&open_kfid, scene.as_deref()).await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "url": url}))?;
            } else {
                writeln!(out, "{url}")?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

async fn servicer_cmd(
    client: &KfClient,
    c: ServicerCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (o, verb) = match c {
        ServicerCmd::List { open_kfid, .. } => {
            let list = client.servicer_list(&open_kfid).await?;
            if json {
                print_json(out, &json!({"open_kfid": open_kfid, "servicer_list": list}))?;
            } else if list.is_empty() {
                writeln!(out, "no servicers on {open_kfid}")?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|s| {
                        vec![
                            s.userid.clone().unwrap_or_else(|| "-".into()),
                            s.department_id.map_or("-".into(), |d| d.to_string()),
                            match s.status {
                                Some(0) => "receiving".into(),
                                Some(1) => "stopped".into(),
                                Some(n) => n.to_string(),
                                None => "-".into(),
                            },
                        ]
                    })
                    .collect();
                write_table(out, &["USERID", "DEPARTMENT", "STATUS"], &rows)?;
            }
            out.flush()?;
            return Ok(());
        }
        ServicerCmd::Add {
            open_kfid, userids, ..
        } => (client.servicer_add(&open_kfid, &userids).await?, "added"),
        ServicerCmd::Remove {
            open_kfid, userids, ..
        } => (
            client.servicer_remove(&open_kfid, &userids).await?,
            "removed",
        ),
    };
    let results = &o.done.result_list;
    let failed: Vec<&UserResult> = results.iter().filter(|r| r.errcode != 0).collect();
    if json {
        print_json(out, &batch_json(&o)?)?;
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.userid.clone(),
                    r.errcode.to_string(),
                    dash(&one_line(&r.errmsg)),
                ]
            })
            .collect();
        if !rows.is_empty() {
            write_table(out, &["USERID", "ERRCODE", "RESULT"], &rows)?;
        }
        writeln!(
            out,
            "{verb} {} of {} userid(s) in {} call(s)",
            results.len() - failed.len(),
            results.len() + o.not_attempted.len(),
            o.calls
        )?;
        write_not_attempted(out, &o.not_attempted)?;
    }
    out.flush()?;
    let api = if verb == "added" {
        "kf/servicer/add"
    } else {
        "kf/servicer/del"
    };
    finish_batch(o.error)?;
    if !failed.is_empty() {
        return Err(KfError::PartlyFailed {
            api,
            failed: failed.len(),
            total: results.len(),
            summary: summarize(&failed),
        }
        .into());
    }
    Ok(())
}

async fn session_cmd(
    client: &KfClient,
    c: SessionCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    match c {
        SessionCmd::Get {
            open_kfid,
            external_userid,
            ..
        } => {
            let s = client.session_get(&open_kfid, &external_userid).await?;
            if json {
                print_json(out, &serde_json::to_value(&s)?)?;
            } else {
                writeln!(out, "state     {} ({})", s.service_state, s.state_name)?;
                writeln!(
                    out,
                    "servicer  {}",
                    s.servicer_userid.as_deref().unwrap_or("-")
                )?;
            }
        }
        SessionCmd::Transfer {
            open_kfid,
            external_userid,
            state,
            servicer,
            ..
        } => {
            let t = client
                .session_transfer(&open_kfid, &external_userid, state, servicer.as_deref())
                .await?;
            if json {
                print_json(out, &serde_json::to_value(&t)?)?;
            } else {
                writeln!(
                    out,
                    "moved {} → {} ({} → {}){}",
                    t.from,
                    t.to,
                    state_name(t.from),
                    state_name(t.to),
                    t.servicer_userid
                        .as_deref()
                        .map(|s| format!(", servicer {s}"))
                        .unwrap_or_default()
                )?;
                writeln!(
                    out,
                    "msg_code  {}",
                    t.msg_code
                        .as_deref()
                        .unwrap_or("- (none issued for this move)")
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The columns the tables show (everything is in `--json`).
const CORP_COLUMNS: [&str; 6] = [
    "session_cnt",
    "customer_cnt",
    "customer_msg_cnt",
    "ai_session_reply_cnt",
    "ai_transfer_rate",
    "msg_rejected_customer_cnt",
];
const SERVICER_COLUMNS: [&str; 6] = [
    "session_cnt",
    "customer_cnt",
    "customer_msg_cnt",
    "reply_rate",
    "first_reply_average_sec",
    "satisfied_rate",
];

async fn stats_cmd(
    client: &KfClient,
    c: StatsCmd,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (flags, servicer) = match &c {
        StatsCmd::Corp { range, .. } => (range, None),
        StatsCmd::Servicer {
            range, servicer, ..
        } => (range, servicer.as_deref()),
    };
    let range = stats_range(&flags.from, &flags.to, wecom_today())?;
    let kfid = default_open_kfid(client.account(), flags.open_kfid.as_deref())?;
    let (days, columns) = match c {
        StatsCmd::Corp { .. } => (client.stats_corp(&kfid, &range).await?, CORP_COLUMNS),
        StatsCmd::Servicer { .. } => (
            client.stats_servicer(&kfid, servicer, &range).await?,
            SERVICER_COLUMNS,
        ),
    };
    if json {
        print_json(
            out,
            &json!({
                "open_kfid": kfid,
                "servicer_userid": servicer,
                "range": range,
                "statistic_list": days,
            }),
        )?;
    } else if days.is_empty() {
        writeln!(out, "no statistics for {}..{}", range.from, range.to)?;
    } else {
        let mut head = vec!["DATE"];
        head.extend(columns);
        let rows: Vec<Vec<String>> = days
            .iter()
            .map(|d| {
                let date = chrono::DateTime::from_timestamp(d.stat_time, 0)
                    .map(|t| t.with_timezone(&wecom_tz()).date_naive().to_string())
                    .unwrap_or_else(|| d.stat_time.to_string());
                let mut row = vec![date];
                row.extend(
                    columns
                        .iter()
                        .map(|k| d.statistic.get(*k).map_or("-".into(), fmt_number)),
                );
                row
            })
            .collect();
        write_table(out, &head, &rows)?;
    }
    out.flush()?;
    Ok(())
}

fn fmt_number(v: &Value) -> String {
    match (v.as_i64(), v.as_f64()) {
        (Some(i), _) => i.to_string(),
        (None, Some(f)) => format!("{f:.2}"),
        _ => v.to_string(),
    }
}

fn gender_name(g: i64) -> &'static str {
    match g {
        1 => "male",
        2 => "female",
        _ => "-",
    }
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_owned()
    }
}

/// `60111 ×2 (userid not found), 40058 ×1 (…)`.
fn summarize(failed: &[&UserResult]) -> String {
    let mut by_code: std::collections::BTreeMap<i64, (usize, &str)> = Default::default();
    for r in failed {
        by_code.entry(r.errcode).or_insert((0, r.errmsg.as_str())).0 += 1;
    }
    by_code
        .into_iter()
        .map(|(c, (n, m))| format!("errcode {c} ×{n} ({})", one_line(m)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn batch_json<T: Serialize>(o: &BatchOutcome<T>) -> anyhow::Result<Value> {
    let mut v = serde_json::to_value(o)?;
    if let (Some(e), Some(obj)) = (o.error_json(), v.as_object_mut()) {
        obj.insert("error".into(), e);
    }
    Ok(v)
}

fn finish_batch(error: Option<KfError>) -> anyhow::Result<()> {
    match error {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

fn write_not_attempted(out: &mut impl Write, ids: &[String]) -> std::io::Result<()> {
    if !ids.is_empty() {
        writeln!(
            out,
            "not sent after the failure ({}): {}",
            ids.len(),
            ids.join(", ")
        )?;
    }
    Ok(())
}

fn print_json(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    writeln!(out, "{v}")
}

/// Terminal columns of `s`: East Asian wide characters (CJK, Hangul, full-width forms — kf
/// account names and nicknames are often Chinese) take two.
fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match u32::from(c) {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x1F300..=0x1F64F
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// Columns padded to their widest cell (in terminal columns).
fn write_table(out: &mut impl Write, head: &[&str], rows: &[Vec<String>]) -> std::io::Result<()> {
    let mut widths: Vec<usize> = head.iter().map(|h| display_width(h)).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(display_width(c));
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == n {
                    c.to_owned()
                } else {
                    let pad = widths[i].saturating_sub(display_width(c));
                    format!("{c}{}", " ".repeat(pad))
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
    };
    writeln!(out, "{}", line(head.to_vec()))?;
    for r in rows {
        writeln!(out, "{}", line(r.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_match_the_reference() {
        let allowed = [
            (0, 1),
            (0, 2),
            (0, 3),
            (1, 2),
            (1, 3),
            (2, 3),
            (3, 3),
            (3, 4),
        ];
        for from in 0..=4 {
            for to in 0..=4 {
                assert_eq!(
                    transition_allowed(from, to),
                    allowed.contains(&(from, to)),
                    "{from}->{to}"
                );
                assert_eq!(
                    transition_allowed(from, to),
                    crate::tools::simulate::wecom::transition_allowed(from, to),
                    "client and simulator agree on {from}->{to}"
                );
            }
        }
    }

    #[test]
    fn names_count_characters_not_bytes() {
        assert!(validate_name("客服小助手一二三四五六七八九十一").is_ok()); // 16 chars, 48 bytes
        assert!(validate_name("客服小助手一二三四五六七八九十一二").is_err()); // 17
        assert!(validate_name("").is_err());
        assert!(validate_name("   ").is_err());
        assert!(validate_name("a\u{7}b").is_err());
        assert!(validate_media_id(&"m".repeat(128)).is_ok());
        assert!(validate_media_id(&"m".repeat(129)).is_err());
        assert!(validate_media_id("a b").is_err());
    }

    #[test]
    fn scenes_userids_and_kfids() {
        assert!(validate_scene("").is_ok());
        assert!(validate_scene("spring-sale_2026").is_ok());
        assert!(validate_scene(&"s".repeat(32)).is_ok());
        assert!(validate_scene(&"s".repeat(33)).is_err());
        assert!(validate_scene("a b").is_err());
        assert!(validate_scene("a=1").is_err());
        assert!(validate_scene("场景").is_err());
        assert!(validate_userid("zhangsan").is_ok());
        assert!(validate_userid("li.si@corp-1_x").is_ok());
        assert!(validate_userid("_x").is_err());
        assert!(validate_userid("").is_err());
        assert!(validate_userid("a b").is_err());
        assert!(validate_userid(&"u".repeat(65)).is_err());
        assert!(validate_open_kfid("wkAJ2GCAAASSm4_FhToWMFea0xAFfd3Q").is_ok());
        assert!(validate_open_kfid("wk/1").is_err());
        assert!(validate_external_userid("wmAJ2GCAAAme1XQRC-NI").is_ok());
        assert!(validate_external_userid("a b").is_err());
    }

    #[test]
    fn id_lists_report_every_bad_id_and_drop_repeats() {
        let ids: Vec<String> = ["a", "b", "a", "c"].map(String::from).to_vec();
        assert_eq!(
            validate_ids("userid", &ids, validate_userid).unwrap(),
            vec!["a", "b", "c"]
        );
        let bad: Vec<String> = ["ok", "", "x y"].map(String::from).to_vec();
        let e = validate_ids("userid", &bad, validate_userid)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("2 invalid userid(s), nothing sent"), "{e}");
        assert!(validate_ids("userid", &[], validate_userid).is_err());
    }

    #[test]
    fn targets_need_a_servicer_exactly_for_state_3() {
        assert!(validate_target(3, Some("zhangsan")).is_ok());
        assert!(validate_target(3, None).is_err());
        assert!(validate_target(2, Some("zhangsan")).is_err());
        assert!(validate_target(4, None).is_ok());
        assert!(validate_target(0, None).is_err());
        assert!(validate_target(5, None).is_err());
    }

    #[test]
    fn stats_ranges_follow_the_platform_rules() {
        let today = NaiveDate::from_ymd_opt(2026, 3, 10).unwrap();
        let r = stats_range("2026-02-08", "2026-03-09", today).unwrap();
        // 2026-02-08 00:00 +08:00 = 2026-02-07 16:00 UTC.
        assert_eq!(r.start_time, 1_770_480_000);
        assert_eq!(r.end_time - r.start_time, 29 * 86_400);
        // 31 days is the widest span; 32 is refused.
        assert!(stats_range("2026-02-07", "2026-03-09", today).is_ok());
        assert!(stats_range("2026-02-06", "2026-03-09", today).is_err());
        // Not today, not the future, not reversed, not older than 180 days, real dates.
        assert!(stats_range("2026-03-10", "2026-03-10", today).is_err());
        assert!(stats_range("2026-03-05", "2026-03-01", today).is_err());
        assert!(stats_range("2025-09-11", "2025-09-12", today).is_ok());
        assert!(stats_range("2025-09-10", "2025-09-12", today).is_err());
        assert!(stats_range("2026-02-30", "2026-03-01", today).is_err());
        assert!(stats_range("03/01/2026", "2026-03-01", today).is_err());
    }

    #[test]
    fn errcodes_are_explained_by_the_policy_table() {
        let e = check(
            "kf/account/add",
            Api::Business,
            CallResult::Errcode {
                code: 95000,
                msg: "invalid open_kfid,\n hint: [x]".into(),
            },
            Value::Null,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "kf/account/add: errcode 95000 (invalid_open_kfid): invalid open_kfid, hint: [x]"
        );
        assert_eq!(e.errcode(), Some(95000));
        let e = check(
            "kf/account/add",
            Api::GetToken,
            CallResult::Errcode {
                code: 40001,
                msg: "invalid credential".into(),
            },
            Value::Null,
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("gettoken: errcode 40001 (config_error"),
            "{e}"
        );
        let e = check(
            "kf/servicer/list",
            Api::Business,
            CallResult::Errcode {
                code: 45009,
                msg: "api freq out of limit".into(),
            },
            Value::Null,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("throttled: wait at least 60 s"),
            "{e}"
        );
    }

    #[test]
    fn tables_align() {
        let mut out = Vec::new();
        write_table(
            &mut out,
            &["A", "BB"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["客服".into(), "2".into()],
            ],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "A     BB\nxyz   1\n客服  2\n" // "客服" is 4 columns wide
        );
    }
}
