//! What stands between a business request and its processing: scripted errcodes, injected
//! faults and the account's rate limit, checked in that order. A request stopped here is not
//! processed, not accepted, and does not count toward the rate.
//!
//! Scripts target an account's *write* requests (what a job does: sendmsg, kefustate/change,
//! send_msg, send_msg_on_event, service_state/trans), so a test can give "the next job" an
//! errcode whatever queries the worker makes around it; a per-API script reaches any API,
//! queries included. Faults and the rate limit apply to every business API.
//!
//! Everything here is per account and per API, behind short `std` mutexes that are never held
//! across an await, so the gate costs a few hundred nanoseconds per request.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::StatusCode;

use super::Faults;
use super::reply::{ApiErr, Reply};
use super::util::lock;
use crate::config::Rate;

/// Scripted errcode meaning "answer HTTP 500" (errcode -2 is not used by either platform).
pub const SCRIPT_HTTP_500: i64 = -2;
/// Scripted errcode meaning "hold the request like a timeout fault, then answer 504".
pub const SCRIPT_TIMEOUT: i64 = -3;
/// Scripted errcode meaning "process this request normally" (lets a script interleave
/// failures and successes: `[45009, 0, 95001]`).
pub const SCRIPT_PASS: i64 = 0;

/// Tolerance of the sliding rate window: the worker's limiter spaces requests by its clock,
/// the simulator sees them after network and scheduling jitter, which can bring two requests
/// a few milliseconds closer than they were sent.
pub const RATE_WINDOW_SLACK: Duration = Duration::from_millis(50);

/// The business APIs, each with its own rate window (the platforms limit each API separately).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    SendMsg,
    KefuGet,
    KefuChange,
    KfSendMsg,
    KfSendMsgOnEvent,
    KfSyncMsg,
    KfStateGet,
    KfStateTrans,
    KfRecallMsg,
}

impl Api {
    pub const COUNT: usize = 9;
    pub const ALL: [Api; Api::COUNT] = [
        Api::SendMsg,
        Api::KefuGet,
        Api::KefuChange,
        Api::KfSendMsg,
        Api::KfSendMsgOnEvent,
        Api::KfSyncMsg,
        Api::KfStateGet,
        Api::KfStateTrans,
        Api::KfRecallMsg,
    ];

    /// The API named like [`Api::name`] (`sendmsg`, `send_msg`, `sync_msg`, …).
    pub fn from_name(name: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.name() == name)
    }

    /// APIs that deliver or change something (what a job does), as opposed to queries
    /// (kefustate/get, service_state/get, sync_msg) a worker may make around a job.
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Api::SendMsg
                | Api::KefuChange
                | Api::KfSendMsg
                | Api::KfSendMsgOnEvent
                | Api::KfStateTrans
                | Api::KfRecallMsg
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::SendMsg => "sendmsg",
            Api::KefuGet => "kefustate_get",
            Api::KefuChange => "kefustate_change",
            Api::KfSendMsg => "send_msg",
            Api::KfSendMsgOnEvent => "send_msg_on_event",
            Api::KfSyncMsg => "sync_msg",
            Api::KfStateGet => "service_state_get",
            Api::KfStateTrans => "service_state_trans",
            Api::KfRecallMsg => "recall_msg",
        }
    }
}

/// At most `max` calls in any `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub window: Duration,
    pub max: usize,
}

/// The windows an account's configured rate allows, matching a GCRA limiter (governor) with
/// that rate and burst: in any 1 s, `ceil(rate per second) + burst` calls; for a `per_minute`
/// rate also `per_minute + burst` in any 60 s. Empty when the rate is unlimited.
pub fn limits_of(rate: &Rate) -> Vec<Limit> {
    if rate.unlimited || rate.period().is_none() {
        return Vec::new();
    }
    let burst = rate.burst() as usize;
    match (
        rate.per_second.filter(|n| *n > 0),
        rate.per_minute.filter(|n| *n > 0),
    ) {
        (Some(ps), _) => vec![Limit {
            window: Duration::from_secs(1),
            max: ps as usize + burst,
        }],
        (None, Some(pm)) => vec![
            Limit {
                window: Duration::from_secs(1),
                max: (pm as usize).div_ceil(60) + burst,
            },
            Limit {
                window: Duration::from_secs(60),
                max: pm as usize + burst,
            },
        ],
        (None, None) => Vec::new(),
    }
}

/// The arrival times of the most recent allowed calls of one API (as many as the largest limit).
#[derive(Debug, Default)]
struct Window {
    recent: VecDeque<Instant>,
}

impl Window {
    /// Allow and record a call at `now`, or refuse it (not recorded).
    fn admit(&mut self, limits: &[Limit], now: Instant) -> bool {
        let len = self.recent.len();
        for l in limits {
            if len >= l.max {
                // The call l.max back: with this one, l.max + 1 calls would fall in the window.
                let oldest = self.recent[len - l.max];
                if now.saturating_duration_since(oldest) + RATE_WINDOW_SLACK < l.window {
                    return false;
                }
            }
        }
        self.recent.push_back(now);
        let keep = limits.iter().map(|l| l.max).max().unwrap_or(0);
        while self.recent.len() > keep {
            self.recent.pop_front();
        }
        true
    }
}

/// Scripted errcodes waiting for requests.
#[derive(Debug, Default)]
struct Scripts {
    /// For the account's next write requests (any write API).
    writes: VecDeque<i64>,
    /// For the account's next requests of one API (reads included), before `writes`.
    per_api: [VecDeque<i64>; Api::COUNT],
}

impl Scripts {
    fn len(&self) -> usize {
        self.writes.len() + self.per_api.iter().map(VecDeque::len).sum::<usize>()
    }
}

/// One account's gate state.
#[derive(Debug)]
pub(crate) struct AccountGate {
    scripts: Mutex<Scripts>,
    /// Codes queued in `scripts`, read without the lock on every request (almost always 0).
    scripted: AtomicUsize,
    limits: Vec<Limit>,
    windows: [Mutex<Window>; Api::COUNT],
    /// The channel's throttling errcode.
    throttle_code: i64,
}

impl AccountGate {
    pub fn new(rate: &Rate, throttle_code: i64) -> Self {
        Self {
            scripts: Mutex::new(Scripts::default()),
            scripted: AtomicUsize::new(0),
            limits: limits_of(rate),
            windows: std::array::from_fn(|_| Mutex::new(Window::default())),
            throttle_code,
        }
    }

    /// Queue errcodes for the next write requests, or with `api` for the next requests of
    /// that API (after any already queued).
    pub fn script(&self, api: Option<Api>, codes: impl IntoIterator<Item = i64>) {
        let mut s = lock(&self.scripts);
        match api {
            Some(a) => s.per_api[a as usize].extend(codes),
            None => s.writes.extend(codes),
        }
        self.scripted.store(s.len(), Ordering::Release);
    }

    pub fn clear_script(&self) {
        let mut s = lock(&self.scripts);
        *s = Scripts::default();
        self.scripted.store(0, Ordering::Release);
    }

    fn next_scripted(&self, api: Api) -> Option<i64> {
        if self.scripted.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut s = lock(&self.scripts);
        let c = match s.per_api[api as usize].pop_front() {
            Some(c) => Some(c),
            None if api.is_write() => s.writes.pop_front(),
            None => None,
        };
        self.scripted.store(s.len(), Ordering::Release);
        c
    }

    /// `None`: process the request. `Some(reply)`: answer it with that, unprocessed.
    pub fn check(&self, api: Api, faults: &Faults, enforce_rate: bool) -> Option<Reply> {
        match self.next_scripted(api) {
            None | Some(SCRIPT_PASS) => {}
            Some(SCRIPT_HTTP_500) => return Some(Reply::Http(StatusCode::INTERNAL_SERVER_ERROR)),
            Some(SCRIPT_TIMEOUT) => return Some(Reply::Hold),
            Some(c) => return Some(Reply::Err(ApiErr::hint(c, "scripted"))),
        }
        if !faults.is_none() {
            let fires = |p: f64| p > 0.0 && rand::random::<f64>() < p;
            if fires(faults.http_5xx) {
                return Some(Reply::Http(StatusCode::BAD_GATEWAY));
            }
            if fires(faults.timeout) {
                return Some(Reply::Hold);
            }
            if fires(faults.busy) {
                return Some(Reply::Err(ApiErr::hint(
                    super::reply::code::BUSY,
                    "injected fault",
                )));
            }
            if fires(faults.throttle) {
                return Some(Reply::Err(ApiErr::hint(
                    self.throttle_code,
                    "injected fault",
                )));
            }
        }
        if enforce_rate && !self.limits.is_empty() {
            let admitted = lock(&self.windows[api as usize]).admit(&self.limits, Instant::now());
            if !admitted {
                return Some(Reply::Err(ApiErr::hint(
                    self.throttle_code,
                    format!("account rate exceeded on {}", api.name()),
                )));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(ps: Option<u32>, pm: Option<u32>, burst: Option<u32>) -> Rate {
        Rate {
            per_second: ps,
            per_minute: pm,
            burst,
            unlimited: false,
        }
    }

    #[test]
    fn limits_follow_rate_and_burst() {
        assert_eq!(
            limits_of(&rate(Some(50), None, Some(10))),
            vec![Limit {
                window: Duration::from_secs(1),
                max: 60
            }]
        );
        assert_eq!(
            limits_of(&rate(None, Some(600), None)),
            vec![
                Limit {
                    window: Duration::from_secs(1),
                    max: 20
                },
                Limit {
                    window: Duration::from_secs(60),
                    max: 610
                },
            ]
        );
        assert!(
            limits_of(&Rate {
                unlimited: true,
                ..rate(Some(5), None, None)
            })
            .is_empty()
        );
        assert!(limits_of(&rate(None, None, None)).is_empty());
    }

    #[test]
    fn window_admits_max_per_window_then_slides() {
        let limits = [Limit {
            window: Duration::from_secs(1),
            max: 3,
        }];
        let mut w = Window::default();
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(w.admit(&limits, t0 + Duration::from_millis(i)), "call {i}");
        }
        assert!(!w.admit(&limits, t0 + Duration::from_millis(500)));
        // A refused call is not recorded: the window still starts at t0.
        assert!(!w.admit(&limits, t0 + Duration::from_millis(900)));
        assert!(w.admit(
            &limits,
            t0 + Duration::from_millis(1000) - RATE_WINDOW_SLACK
        ));
        assert_eq!(w.recent.len(), 3);
    }

    #[test]
    fn script_comes_before_faults_and_pass_processes() {
        let g = AccountGate::new(&rate(Some(1000), None, None), 45009);
        g.script(None, [95001, SCRIPT_PASS, SCRIPT_HTTP_500]);
        g.script(Some(Api::KfSyncMsg), [95007]);
        let none = Faults::default();
        // Reads are not scripted by the write queue; their own queue comes first.
        assert!(g.check(Api::KfStateGet, &none, true).is_none());
        assert!(
            matches!(g.check(Api::KfSyncMsg, &none, true), Some(Reply::Err(e)) if e.code == 95007)
        );
        assert!(g.check(Api::KfSyncMsg, &none, true).is_none());
        let none = Faults::default();
        assert!(
            matches!(g.check(Api::KfSendMsg, &none, true), Some(Reply::Err(e)) if e.code == 95001)
        );
        assert!(g.check(Api::KfSendMsg, &none, true).is_none());
        assert!(matches!(
            g.check(Api::KfSendMsg, &none, true),
            Some(Reply::Http(StatusCode::INTERNAL_SERVER_ERROR))
        ));
        assert!(g.check(Api::KfSendMsg, &none, true).is_none());
        assert_eq!(g.scripted.load(Ordering::Relaxed), 0);
        let all = Faults {
            busy: 1.0,
            ..Faults::default()
        };
        assert!(matches!(g.check(Api::KfSendMsg, &all, true), Some(Reply::Err(e)) if e.code == -1));
    }
}
