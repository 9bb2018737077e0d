//! The answers of the kf APIs, as the platform documents them (fields this tool does not know
//! are skipped, or kept where an operator may want them).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::KfError;

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
