//! Why a kf call failed, in words an operator can act on: the platform's errcode explained by
//! the worker's errcode table.

use serde_json::Value;

use crate::config::Channel;
use crate::policy::{self, Action, Api, CallResult};

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

pub(super) fn invalid(msg: impl Into<String>) -> KfError {
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
        Action::CredentialsRefused { .. } => format!(
            "{}: gettoken refused the credentials: check corpid, secret and the IP allow-list",
            crate::domain::reason::Reason::ConfigError
        ),
        Action::DeadLetter {
            reason,
            alert: true,
        } => format!("{reason}: check corpid, secret and the kf API permissions"),
        Action::DeadLetter { reason, .. } => reason.into(),
    }
}

/// The answer of a kf call (`which` tells gettoken from the API itself) as its JSON or why not.
pub(super) fn check(
    api: &'static str,
    which: Api,
    res: CallResult,
    v: Value,
) -> Result<Value, KfError> {
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

/// `s` on one line, its runs of whitespace (newlines included) made one space.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

pub(super) fn bad_response(api: &'static str, e: impl std::fmt::Display) -> KfError {
    KfError::BadResponse {
        api,
        detail: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
