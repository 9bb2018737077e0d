//! `get_corp_statistic` and `get_servicer_statistic`: synthetic daily figures, a pure
//! function of (open_kfid, day, servicer).

use chrono::Utc;
use serde_json::{Value, json};

use super::model::*;
use crate::tools::simulate::reply::ApiErr;
use crate::tools::simulate::util::lock;

// ------------------------------------------------------------------------------ statistics

pub(super) fn corp_statistic(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    statistic(kf, req, false)
}

pub(super) fn servicer_statistic(kf: &KfAdmin, req: &Req) -> Result<Value, ApiErr> {
    statistic(kf, req, true)
}

/// 00:00 UTC+8 at or before `t`.
pub(super) fn day_floor(t: i64) -> i64 {
    (t + DAY_OFFSET_SECS).div_euclid(DAY_SECS) * DAY_SECS - DAY_OFFSET_SECS
}

pub(super) fn statistic(kf: &KfAdmin, req: &Req, per_servicer: bool) -> Result<Value, ApiErr> {
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
pub(super) fn byte(h: u64, shift: u32) -> u64 {
    (h >> shift) & 0xff
}

pub(super) fn rate(h: u64, shift: u32) -> f64 {
    (byte(h, shift) as f64 / 255.0 * 100.0).round() / 100.0
}

pub(super) fn corp_day(h: u64) -> Value {
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

pub(super) fn servicer_day(h: u64) -> Value {
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
