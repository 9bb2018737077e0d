//! The lane's context ([`LaneCtx`]): one account's settings, clients, limiters and the state
//! its jobs share.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio_util::sync::CancellationToken;

use super::gate_cache::Gates;
use super::parked::Parked;
use super::pause::PauseGate;
use crate::broker::Publisher;
use crate::config::{AccountConfig, Config, RetryConfig};
use crate::domain::job::Job;
use crate::engine::budget::ByteBudget;
use crate::engine::hold::HoldCtx;
use crate::platform::Platform;
use crate::policy::retry::RetrySchedule;
use crate::store::{DeliveryKey, Status, Store};
use crate::telemetry as t;

/// Everything a lane needs; shared by its tasks.
pub struct LaneCtx {
    pub account: AccountConfig,
    pub cfg: Arc<Config>,
    pub platform: Platform,
    pub store: Store,
    pub publisher: Publisher,
    pub limiter: Option<DefaultDirectRateLimiter>,
    /// Broadcast jobs also draw from this one: `worker.broadcast_share` of the rate.
    pub bulk_limiter: Option<DefaultDirectRateLimiter>,
    /// Who-serves queries (kefustate/get, service_state/get) draw from this one, at the
    /// account's rate: the platforms limit each API separately, so they do not take sends'
    /// capacity, and cannot hammer the platform either.
    pub query_limiter: Option<DefaultDirectRateLimiter>,
    pub pause: PauseGate,
    /// Conversations with jobs parked in a delay tier (see [`Parked`]).
    pub parked: Parked,
    /// Human-takeover state per conversation (see [`Gates`]).
    pub gates: Gates,
    /// The worker's byte budget, shared by its lanes ([`LaneCtx::with_budget`]).
    pub budget: Arc<ByteBudget>,
    /// `config.retry` as the retry policy's numbers, read once.
    pub(super) retry: RetrySchedule,
    /// Fires when the lane shuts down (linked to `run`'s shutdown token): a held write is then
    /// retried for the shutdown grace only (see [`crate::engine::hold`]).
    pub(super) stopping: CancellationToken,
    /// The lane's hot-path metric handles, registered once (a labelled `counter!` call
    /// builds and hashes its key on every use).
    pub(super) m: LaneMetrics,
}

/// Metric handles every job touches.
pub(super) struct LaneMetrics {
    pub(super) consumed: metrics::Counter,
    pub(super) sent: metrics::Counter,
    pub(super) e2e: metrics::Histogram,
    pub(super) send_latency: metrics::Histogram,
    pub(super) rate_wait: metrics::Histogram,
    pub(super) inflight: metrics::Gauge,
}

impl LaneMetrics {
    fn new(account: &AccountConfig) -> Self {
        let a = account.name.clone();
        Self {
            consumed: metrics::counter!(t::JOBS_CONSUMED, "account" => a.clone()),
            sent: metrics::counter!(t::DELIVERIES, "account" => a.clone(), "channel" => account.channel.as_str(), "outcome" => Status::Sent.as_str()),
            e2e: metrics::histogram!(t::E2E_LATENCY, "account" => a.clone()),
            send_latency: metrics::histogram!(t::SEND_LATENCY, "account" => a.clone()),
            rate_wait: metrics::histogram!(t::RATE_WAIT, "account" => a),
            inflight: metrics::gauge!(t::INFLIGHT),
        }
    }
}

/// The retry policy's numbers from `config.retry`.
fn retry_schedule(r: &RetryConfig) -> RetrySchedule {
    RetrySchedule {
        in_process_attempts: r.in_process_attempts,
        initial_backoff: Duration::from_millis(r.initial_backoff_ms),
        max_backoff: Duration::from_millis(r.max_backoff_ms),
        total_budget: Duration::from_secs(r.total_budget_secs),
        tiers_secs: r.tiers_secs.clone(),
        unknown_errcode_retries: r.unknown_errcode_retries,
    }
}

impl LaneCtx {
    pub fn new(
        account: AccountConfig,
        cfg: Arc<Config>,
        platform: Platform,
        store: Store,
        publisher: Publisher,
    ) -> Self {
        let account_limiter = || {
            account.rate.period().and_then(|p| {
                let burst = NonZeroU32::new(account.rate.burst()).unwrap_or(NonZeroU32::MIN);
                Quota::with_period(p).map(|q| RateLimiter::direct(q.allow_burst(burst)))
            })
        };
        let limiter = account_limiter();
        let query_limiter = account_limiter();
        let share = cfg.worker.broadcast_share.clamp(0.01, 1.0);
        let bulk_limiter = account.rate.period().and_then(|p| {
            let burst = ((f64::from(account.rate.burst()) * share) as u32).max(1);
            Quota::with_period(p.div_f64(share)).map(|q| {
                RateLimiter::direct(
                    q.allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN)),
                )
            })
        });
        let pause = PauseGate::new(&account.name, &cfg.retry);
        let m = LaneMetrics::new(&account);
        let cfg_budget = cfg.worker.held_bytes_budget;
        Self {
            m,
            retry: retry_schedule(&cfg.retry),
            account,
            cfg,
            platform,
            store,
            publisher,
            limiter,
            bulk_limiter,
            query_limiter,
            pause,
            parked: Parked::default(),
            gates: Gates::default(),
            budget: ByteBudget::new(cfg_budget),
            stopping: CancellationToken::new(),
        }
    }

    /// How a write of `job_id` that the database refused is held ([`crate::engine::hold`]).
    pub(super) fn hold<'a>(&'a self, job_id: &'a str) -> HoldCtx<'a> {
        HoldCtx {
            store: &self.store,
            account: &self.account.name,
            job_id,
            stop: &self.stopping,
            grace: Duration::from_secs(self.cfg.worker.shutdown_grace_secs),
        }
    }

    /// Share `budget` (the worker's, one for all its lanes) instead of a budget of its own.
    pub fn with_budget(mut self, budget: Arc<ByteBudget>) -> Self {
        self.budget = budget;
        self
    }

    /// The identity of `job`'s `deliveries` row.
    pub(super) fn delivery_key(&self, job: &Job) -> DeliveryKey {
        DeliveryKey {
            job_id: job.job_id.clone(),
            account: self.account.name.clone(),
            channel: self.account.channel.as_str(),
            kind: job.kind.as_str(),
            recipient: job.to.clone(),
            open_kfid: job.open_kfid.clone(),
            broadcast_id: None,
        }
    }
}
