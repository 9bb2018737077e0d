//! What WeCom accepts: the documented limits of the kf APIs and the checks made on every input
//! **before any platform call**, so a typo never costs a call or a token.

use std::collections::HashSet;

use chrono::{FixedOffset, NaiveDate, Offset, Utc};
use serde::Serialize;

use crate::config::{AccountConfig, Channel, Config};

use super::error::{KfError, invalid};

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
pub(super) const MAX_ACCOUNT_PAGES: usize = 50;
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
pub fn validate_ids(
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

/// WeCom's time zone (UTC+8).
pub fn wecom_tz() -> FixedOffset {
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

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
