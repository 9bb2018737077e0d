//! Slows down a source that keeps sending callbacks we refuse.
//!
//! A forged chatbot push costs an attacker one request per guess; an oracle attack needs
//! thousands. Every refusal already gets the same answer (see [`super::auth::Reject`]), so
//! the answers carry nothing to learn; this throttle makes guessing slow as well, as defence
//! in depth against what a uniform body cannot hide (timing).
//!
//! Per source address (IPv4, or the /64 of an IPv6 address) a *leaky bucket* counts
//! refusals: each adds one, and the level drains at [`Limits::free_per_window`] per
//! [`Limits::window`]. While the level is at most `free_per_window` a refusal is answered at
//! once; above it, after a delay of [`Limits::step`] per refusal over the limit, at most
//! [`Limits::max_delay`]. At most [`Limits::max_delayed`] refusals of one source wait at a
//! time; one more is answered 429 at once (so parallel guessing gains nothing and waiting
//! requests stay few). What a refused request is answered depends only on the level, never on
//! why it was refused: the slowdown itself is no oracle. Accepted callbacks are never
//! delayed and do not drain the bucket.
//!
//! Memory is bounded: at most [`Limits::max_sources`] sources are tracked; when the table is
//! full, drained entries are swept (at most once per [`SWEEP_EVERY`]), and if it is still
//! full every new source shares one overflow bucket. The lock is never held across an await.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a full table may be swept for drained entries (a sweep is O(table)).
pub const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The throttle's bounds.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Refusals a source may have in one `window` before they are slowed: a misconfigured
    /// but honest sender (a stale key, a skewed clock) is answered at once, a guesser is not.
    pub free_per_window: u32,
    /// The window `free_per_window` drains over.
    pub window: Duration,
    /// Extra delay per refusal over the limit: the 10th one over waits 10 × `step`.
    pub step: Duration,
    /// The longest a refusal is held back. WeCom gives up on a callback after 5 s, and a
    /// longer wait only keeps more requests open.
    pub max_delay: Duration,
    /// Refusals of one source waiting at once; one more is answered 429 without waiting.
    pub max_delayed: u32,
    /// Sources tracked at most (about 64 bytes each).
    pub max_sources: usize,
}

impl Default for Limits {
    /// 20 refusals a minute free, then 100 ms more per refusal up to 2 s, 4 waiting per
    /// source, 4096 sources.
    fn default() -> Self {
        Self {
            free_per_window: 20,
            window: Duration::from_secs(60),
            step: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            max_delayed: 4,
            max_sources: 4096,
        }
    }
}

/// Where a request came from, as the throttle counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    V4([u8; 4]),
    /// The /64 prefix: one host usually holds a whole /64.
    V6([u8; 8]),
    /// No peer address known (a router served without connect info).
    Unknown,
    /// Every new source while the table is full of live entries.
    Overflow,
}

impl Source {
    fn of(ip: Option<IpAddr>) -> Self {
        match ip.map(|ip| ip.to_canonical()) {
            Some(IpAddr::V4(v4)) => Source::V4(v4.octets()),
            Some(IpAddr::V6(v6)) => {
                let mut p = [0u8; 8];
                p.copy_from_slice(&v6.octets()[..8]);
                Source::V6(p)
            }
            None => Source::Unknown,
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The bucket's level at `at`.
    level: f64,
    at: Instant,
    /// Refusals of this source now waiting out their delay.
    delayed: u32,
}

#[derive(Debug)]
struct Table {
    entries: HashMap<Source, Entry>,
    last_sweep: Option<Instant>,
}

/// How to answer one refused callback.
#[derive(Debug)]
pub enum Verdict {
    /// Answer now.
    Now,
    /// Answer after this delay; hold the guard until then (dropping it frees the place).
    After(Duration, Delayed),
    /// Too many of this source are waiting: answer 429 now.
    TooMany,
}

/// The refusal counter of every source (see the module doc).
#[derive(Debug)]
pub struct FailureThrottle {
    limits: Limits,
    table: Mutex<Table>,
}

/// One waiting refusal; its place is freed on drop (also when the client goes away).
#[derive(Debug)]
pub struct Delayed {
    throttle: Arc<FailureThrottle>,
    source: Source,
}

impl Drop for Delayed {
    fn drop(&mut self) {
        let mut t = self.throttle.lock();
        if let Some(e) = t.entries.get_mut(&self.source) {
            e.delayed = e.delayed.saturating_sub(1);
        }
    }
}

impl FailureThrottle {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            table: Mutex::new(Table {
                entries: HashMap::new(),
                last_sweep: None,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Refusals drained per second.
    fn drain_rate(&self) -> f64 {
        f64::from(self.limits.free_per_window) / self.limits.window.as_secs_f64().max(1e-3)
    }

    /// Count one refused callback from `ip` at `now` and say how to answer it.
    pub fn on_refusal(self: &Arc<Self>, ip: Option<IpAddr>, now: Instant) -> Verdict {
        let rate = self.drain_rate();
        let mut t = self.lock();
        let mut source = Source::of(ip);
        if !t.entries.contains_key(&source) && t.entries.len() >= self.limits.max_sources {
            let due = t
                .last_sweep
                .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY);
            if due {
                t.last_sweep = Some(now);
                t.entries
                    .retain(|_, e| e.delayed > 0 || drained(e, now, rate) > 0.0);
            }
            if t.entries.len() >= self.limits.max_sources {
                source = Source::Overflow;
            }
        }
        let e = t.entries.entry(source).or_insert(Entry {
            level: 0.0,
            at: now,
            delayed: 0,
        });
        e.level = drained(e, now, rate) + 1.0;
        e.at = now;
        let over = e.level - f64::from(self.limits.free_per_window);
        if over <= 0.0 {
            return Verdict::Now;
        }
        if e.delayed >= self.limits.max_delayed {
            return Verdict::TooMany;
        }
        e.delayed += 1;
        let delay = self
            .limits
            .step
            .mul_f64(over.ceil())
            .min(self.limits.max_delay);
        drop(t);
        Verdict::After(
            delay,
            Delayed {
                throttle: Arc::clone(self),
                source,
            },
        )
    }

    /// Sources tracked now (for tests and the bound).
    pub fn tracked(&self) -> usize {
        self.lock().entries.len()
    }
}

/// The entry's level drained up to `now`.
fn drained(e: &Entry, now: Instant, rate: f64) -> f64 {
    let secs = now.saturating_duration_since(e.at).as_secs_f64();
    (e.level - secs * rate).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ip(last: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)))
    }

    #[test]
    fn free_refusals_then_growing_bounded_delays_then_429() {
        let th = FailureThrottle::new(Limits::default());
        let now = Instant::now();
        for _ in 0..20 {
            assert!(matches!(th.on_refusal(ip(1), now), Verdict::Now));
        }
        let mut held = Vec::new();
        let mut delays = Vec::new();
        for _ in 0..4 {
            match th.on_refusal(ip(1), now) {
                Verdict::After(d, g) => {
                    delays.push(d);
                    held.push(g);
                }
                v => panic!("expected a delay, got {v:?}"),
            }
        }
        assert_eq!(
            delays,
            [100, 200, 300, 400].map(Duration::from_millis).to_vec()
        );
        // Four are waiting: the next one is not kept waiting.
        assert!(matches!(th.on_refusal(ip(1), now), Verdict::TooMany));
        // Another source is not affected.
        assert!(matches!(th.on_refusal(ip(2), now), Verdict::Now));
        // Once one waiting refusal is answered, the next one waits longer (the 429 counted
        // too) — and never longer than max_delay.
        held.pop();
        match th.on_refusal(ip(1), now) {
            Verdict::After(d, _) => assert_eq!(d, Duration::from_millis(600)),
            v => panic!("expected a delay, got {v:?}"),
        }
        for _ in 0..30 {
            match th.on_refusal(ip(1), now) {
                Verdict::After(d, _) => assert!(d <= Duration::from_secs(2)),
                v => panic!("expected a delay, got {v:?}"),
            }
        }
        match th.on_refusal(ip(1), now) {
            Verdict::After(d, _) => assert_eq!(d, Duration::from_secs(2)),
            v => panic!("expected a delay, got {v:?}"),
        }
    }

    #[test]
    fn the_bucket_drains_and_ipv6_counts_per_64() {
        let th = FailureThrottle::new(Limits::default());
        let now = Instant::now();
        for _ in 0..21 {
            th.on_refusal(ip(1), now);
        }
        // A minute later the bucket has drained by 20: answered at once again.
        let later = now + Duration::from_secs(60);
        assert!(matches!(th.on_refusal(ip(1), later), Verdict::Now));
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::ffff".parse().unwrap();
        for _ in 0..20 {
            th.on_refusal(Some(a), now);
        }
        assert!(matches!(th.on_refusal(Some(b), now), Verdict::After(..)));
    }

    #[test]
    fn the_table_is_bounded_and_new_sources_share_the_overflow_bucket() {
        let th = FailureThrottle::new(Limits {
            max_sources: 8,
            ..Limits::default()
        });
        let now = Instant::now();
        for i in 0..8 {
            th.on_refusal(ip(i), now);
        }
        assert_eq!(th.tracked(), 8);
        // Full of live entries: the next 21 new sources are one bucket.
        for i in 100..120 {
            assert!(matches!(th.on_refusal(ip(i), now), Verdict::Now));
        }
        assert!(matches!(th.on_refusal(ip(200), now), Verdict::After(..)));
        assert_eq!(th.tracked(), 9, "8 sources and the overflow bucket");
        // Once the entries have drained, a sweep makes room again.
        let later = now + Duration::from_secs(120);
        assert!(matches!(th.on_refusal(ip(201), later), Verdict::Now));
        assert!(th.tracked() <= 2, "{}", th.tracked());
    }
}
