//! What to do with a platform's answer: the errcode → action table, in one place.
//!
//! [`classify`] is a pure function of the channel, the API and the call's result. "HTTP 200 with
//! errcode ≠ 0" is the common failure shape of both platforms and a first-class case here. The
//! table follows `shared/reference/wechat-api.md`; the README reproduces it for operators.
//!
//! Codes WeChat uses across its APIs (-1 system busy, 45009 / 45011 frequency and minute quota,
//! 45033 too many concurrent calls) mean the same on both channels: the Dialogue platform's
//! gateway answers them too. Anything the table does not know classifies as
//! [`Reason::UnknownErrcode`]; [`with_unknown_retries`] (applied by the retry schedule, which
//! knows the job's attempts) retries it a few times with backoff first, since one odd code in a
//! fault burst should not cost the job, and then dead-letters it (replayable): an unknown code
//! that persists is more often a request problem than a transient one.

use std::time::Duration;

use crate::domain::channel::Channel;
use crate::domain::reason::Reason;

/// The outcome of one HTTP call to a platform, before interpretation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallResult {
    /// HTTP 200 and errcode 0 (or no errcode).
    Ok { msgid: Option<String> },
    /// HTTP 200 with a non-zero errcode.
    Errcode { code: i64, msg: String },
    /// A non-2xx HTTP status.
    Http(u16),
    /// Timeout, connection refused/reset, unreadable body: nothing reliable came back.
    Transport(String),
}

/// Which platform API answered (the same errcode can mean different things).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// A business API: sendmsg, kf/send_msg, service_state, kefustate, …
    Business,
    /// WeCom `gettoken`.
    GetToken,
}

/// What the caller must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Accepted by the platform.
    Deliver,
    /// The access token is invalid or expired: invalidate it, refresh once, retry once.
    RefreshToken,
    /// A transient failure of this request: retry with backoff. `transport` is true when the
    /// platform could not be reached at all (counts toward pausing the account on an outage).
    Retry { transport: bool },
    /// The account is throttled: pause the whole lane at least this long, then retry.
    Throttle { min_pause: Duration },
    /// A human agent serves this conversation (WeCom 95018): gate bot replies.
    HumanServing,
    /// WeCom `gettoken` refused the account's credentials (wrong secret or corpid, or this
    /// server's IP not on the app's allow-list): no job of the account can be sent until an
    /// operator fixes it, and none is at fault. Pause the account (its jobs stay queued, the
    /// attempt does not count) and probe gettoken until it answers (`engine::lane::credentials`).
    CredentialsRefused { code: i64 },
    /// Permanent for this job: dead-letter with this reason. `alert` marks configuration
    /// problems an operator must fix (bad secret, API switched off, IP not allowed, …).
    DeadLetter { reason: Reason, alert: bool },
}

/// WeCom's minute-level frequency block lasts 60 s; asking earlier only extends it.
pub const WECOM_THROTTLE_PAUSE: Duration = Duration::from_secs(60);
/// WeChat's API-wide frequency codes (45009, 45011) block for at least a minute on every API
/// that uses them, the Dialogue platform's included: the same pause as WeCom's.
pub const FREQUENCY_LIMIT_PAUSE: Duration = WECOM_THROTTLE_PAUSE;
/// The Dialogue platform says "too frequent" without a duration; a short pause and a probe.
pub const CHATBOT_THROTTLE_PAUSE: Duration = Duration::from_secs(5);

/// The errcode table. See the module docs.
pub fn classify(channel: Channel, api: Api, result: &CallResult) -> Action {
    use Action::*;
    let dead = |reason| DeadLetter {
        reason,
        alert: false,
    };
    let config = DeadLetter {
        reason: Reason::ConfigError,
        alert: true,
    };
    match result {
        CallResult::Ok { .. } => Deliver,
        CallResult::Transport(_) => Retry { transport: true },
        CallResult::Http(s) if *s >= 500 => Retry { transport: true },
        CallResult::Http(429) => Throttle {
            min_pause: match channel {
                Channel::Wecom => WECOM_THROTTLE_PAUSE,
                Channel::Chatbot => CHATBOT_THROTTLE_PAUSE,
            },
        },
        // 401/403/404: a wrong base_url or a blocked account; nothing a retry fixes.
        CallResult::Http(_) => config,
        CallResult::Errcode { code, .. } => match (channel, api, *code) {
            (_, _, 0) => Deliver,
            // ---- WeChat-wide codes: the same action on both channels ----
            (_, _, -1) => Retry { transport: false }, // system busy
            (_, _, 45009 | 45011) => Throttle {
                min_pause: FREQUENCY_LIMIT_PAUSE, // frequency / minute quota
            },
            (_, _, 45033) => Retry { transport: false }, // too many concurrent calls
            // ---- Dialogue Open Platform ----
            (Channel::Chatbot, _, 1001) => config, // TOKEN invalid
            (Channel::Chatbot, _, 1002) => config, // bot failed review
            (Channel::Chatbot, _, 1003..=1006) => config, // signature problems
            (Channel::Chatbot, _, 1007 | 1008 | 1011) => dead(Reason::InvalidRequest),
            (Channel::Chatbot, _, 1013 | 1019) => config, // encryption parameters / API not enabled
            (Channel::Chatbot, _, 3005) => config,        // account not verified
            (Channel::Chatbot, _, 3014) => dead(Reason::ContentRejected), // sensitive words
            (Channel::Chatbot, _, 210205) => Throttle {
                min_pause: CHATBOT_THROTTLE_PAUSE,
            },
            // ---- WeCom ----
            // gettoken refusing the account's own settings: 40001 wrong secret, 40013 bad
            // corpid, 40091 secret malformed, 41002 / 41004 corpid / secret missing, 60020
            // IP not allowed. All fixed outside the job, none by a retry of it.
            (Channel::Wecom, Api::GetToken, 40001 | 40013 | 40091 | 41002 | 41004 | 60020) => {
                CredentialsRefused { code: *code }
            }
            (Channel::Wecom, Api::Business, 40001 | 40014 | 42001 | 41001) => RefreshToken,
            (Channel::Wecom, Api::GetToken, 40014 | 42001 | 41001) => config,
            (Channel::Wecom, _, 40013 | 40091 | 48002 | 60020 | 95017) => config,
            (Channel::Wecom, _, 40003 | 40096) => dead(Reason::InvalidRecipient),
            (Channel::Wecom, _, 40007) => dead(Reason::InvalidMedia),
            (Channel::Wecom, _, 40008 | 40035 | 40058 | 45002) => dead(Reason::InvalidRequest),
            (Channel::Wecom, _, 95000 | 95004) => dead(Reason::InvalidOpenKfid),
            (Channel::Wecom, _, 95001) => dead(Reason::QuotaExhausted),
            (Channel::Wecom, _, 95002) => dead(Reason::WindowClosed),
            (Channel::Wecom, _, 95013) => dead(Reason::SessionClosed),
            (Channel::Wecom, _, 95018) => HumanServing,
            (Channel::Wecom, _, 95007) => dead(Reason::InvalidSyncToken),
            _ => dead(Reason::UnknownErrcode),
        },
    }
}

/// `action` for a job's `attempt`-th attempt (1-based): an [`Reason::UnknownErrcode`] dead letter
/// becomes a plain retry while `attempt <= unknown_retries`, so a truly unknown code is tried
/// `1 + unknown_retries` times (with the schedule's backoff) before it is dead-lettered.
/// Every other action is returned unchanged.
pub fn with_unknown_retries(action: Action, attempt: u32, unknown_retries: u32) -> Action {
    match action {
        Action::DeadLetter {
            reason: Reason::UnknownErrcode,
            ..
        } if attempt <= unknown_retries => Action::Retry { transport: false },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Channel::*;

    fn code(c: i64) -> CallResult {
        CallResult::Errcode {
            code: c,
            msg: String::new(),
        }
    }
    fn reason(a: Action) -> Reason {
        match a {
            Action::DeadLetter { reason, .. } => reason,
            other => panic!("expected a dead letter, got {other:?}"),
        }
    }

    #[test]
    fn every_reference_errcode_has_its_action() {
        let b = Api::Business;
        // (channel, api, errcode, expected)
        let table: Vec<(Channel, Api, i64, Action)> = vec![
            (Chatbot, b, 0, Action::Deliver),
            (Wecom, b, 0, Action::Deliver),
            (
                Chatbot,
                b,
                210205,
                Action::Throttle {
                    min_pause: CHATBOT_THROTTLE_PAUSE,
                },
            ),
            (
                Wecom,
                b,
                45009,
                Action::Throttle {
                    min_pause: WECOM_THROTTLE_PAUSE,
                },
            ),
            (Wecom, b, -1, Action::Retry { transport: false }),
            (Wecom, b, 45033, Action::Retry { transport: false }),
            (Wecom, b, 40014, Action::RefreshToken),
            (Wecom, b, 42001, Action::RefreshToken),
            (Wecom, b, 41001, Action::RefreshToken),
            (Wecom, b, 40001, Action::RefreshToken),
            (Wecom, b, 95018, Action::HumanServing),
        ];
        // WeChat-wide codes: the same action on both channels.
        let throttle = Action::Throttle {
            min_pause: FREQUENCY_LIMIT_PAUSE,
        };
        let shared: Vec<(i64, Action)> = vec![
            (-1, Action::Retry { transport: false }),
            (45009, throttle.clone()),
            (45011, throttle),
            (45033, Action::Retry { transport: false }),
        ];
        let mut table = table;
        for (c, want) in shared {
            table.push((Chatbot, b, c, want.clone()));
            table.push((Wecom, b, c, want));
        }
        for (ch, api, c, want) in table {
            assert_eq!(classify(ch, api, &code(c)), want, "{ch:?} {c}");
        }
        let dead: Vec<(Channel, Api, i64, &str, bool)> = vec![
            (Chatbot, b, 1001, "config_error", true),
            (Chatbot, b, 1002, "config_error", true),
            (Chatbot, b, 1003, "config_error", true),
            (Chatbot, b, 1006, "config_error", true),
            (Chatbot, b, 1007, "invalid_request", false),
            (Chatbot, b, 1008, "invalid_request", false),
            (Chatbot, b, 1011, "invalid_request", false),
            (Chatbot, b, 1013, "config_error", true),
            (Chatbot, b, 1019, "config_error", true),
            (Chatbot, b, 3005, "config_error", true),
            (Chatbot, b, 3014, "content_rejected", false),
            (Wecom, Api::GetToken, 42001, "config_error", true),
            (Wecom, b, 40013, "config_error", true),
            (Wecom, b, 40091, "config_error", true),
            (Wecom, b, 48002, "config_error", true),
            (Wecom, b, 60020, "config_error", true),
            (Wecom, b, 95017, "config_error", true),
            (Wecom, b, 40003, "invalid_recipient", false),
            (Wecom, b, 40096, "invalid_recipient", false),
            (Wecom, b, 40007, "invalid_media", false),
            (Wecom, b, 40008, "invalid_request", false),
            (Wecom, b, 40035, "invalid_request", false),
            (Wecom, b, 40058, "invalid_request", false),
            (Wecom, b, 45002, "invalid_request", false),
            (Wecom, b, 95000, "invalid_open_kfid", false),
            (Wecom, b, 95004, "invalid_open_kfid", false),
            (Wecom, b, 95001, "quota_exhausted", false),
            (Wecom, b, 95002, "window_closed", false),
            (Wecom, b, 95013, "session_closed", false),
            (Wecom, b, 95007, "invalid_sync_token", false),
            (Wecom, b, 12345, "unknown_errcode", false),
            (Chatbot, b, 99999, "unknown_errcode", false),
        ];
        for (ch, api, c, want, alert) in dead {
            let got = classify(ch, api, &code(c));
            let want_reason: Reason = want.parse().unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                got,
                Action::DeadLetter {
                    reason: want_reason,
                    alert
                },
                "{ch:?} {api:?} {c}"
            );
            assert_eq!(reason(got), want);
        }
    }

    #[test]
    fn gettoken_refusing_the_credentials_pauses_instead_of_dead_lettering() {
        for c in [40001, 40013, 40091, 41002, 41004, 60020] {
            assert_eq!(
                classify(Wecom, Api::GetToken, &code(c)),
                Action::CredentialsRefused { code: c },
                "{c}"
            );
        }
        // The same codes from a business API keep their meaning there.
        assert_eq!(
            classify(Wecom, Api::Business, &code(40001)),
            Action::RefreshToken
        );
        assert_eq!(
            reason(classify(Wecom, Api::Business, &code(60020))),
            "config_error"
        );
        // A gettoken answer that is no refusal of the credentials still dead-letters.
        assert_eq!(
            reason(classify(Wecom, Api::GetToken, &CallResult::Http(404))),
            "config_error"
        );
    }

    #[test]
    fn unknown_errcodes_are_retried_a_few_times_then_dead_lettered() {
        for ch in [Chatbot, Wecom] {
            let unknown = classify(ch, Api::Business, &code(99999));
            assert_eq!(reason(unknown.clone()), "unknown_errcode");
            let per_attempt: Vec<Action> = (1..=4)
                .map(|attempt| with_unknown_retries(unknown.clone(), attempt, 2))
                .collect();
            let retry = Action::Retry { transport: false };
            assert_eq!(
                per_attempt,
                [retry.clone(), retry, unknown.clone(), unknown.clone()],
                "{ch:?}: attempts 1 and 2 retry, 3 and later dead-letter"
            );
            assert_eq!(with_unknown_retries(unknown.clone(), 1, 0), unknown);
        }
        // Known codes keep their action whatever the attempt.
        let known = classify(Chatbot, Api::Business, &code(3014));
        assert_eq!(with_unknown_retries(known.clone(), 1, 2), known);
        let throttle = classify(Chatbot, Api::Business, &code(45009));
        assert_eq!(with_unknown_retries(throttle.clone(), 1, 2), throttle);
    }

    #[test]
    fn transport_and_http_status() {
        for ch in [Chatbot, Wecom] {
            assert_eq!(
                classify(ch, Api::Business, &CallResult::Transport("timeout".into())),
                Action::Retry { transport: true }
            );
            assert_eq!(
                classify(ch, Api::Business, &CallResult::Http(502)),
                Action::Retry { transport: true }
            );
            assert_eq!(
                classify(ch, Api::Business, &CallResult::Http(503)),
                Action::Retry { transport: true }
            );
            assert!(matches!(
                classify(ch, Api::Business, &CallResult::Http(429)),
                Action::Throttle { .. }
            ));
            assert_eq!(
                reason(classify(ch, Api::Business, &CallResult::Http(404))),
                "config_error"
            );
            assert_eq!(
                classify(ch, Api::Business, &CallResult::Ok { msgid: None }),
                Action::Deliver
            );
        }
    }
}
