//! One account's lane: consume, order per conversation, rate-limit, send, retry, record, ack.
//!
//! A lane consumes `wxdispatch.<account>` (single active consumer, so one process at a time
//! sends for an account: its rate limit and every conversation's order hold across any
//! number of workers). Deliveries are grouped by *conversation* (recipient, and open_kfid for
//! WeCom): one conversation's jobs run one after the other in delivery order, different
//! conversations run concurrently up to `worker.concurrency`. Prefetch bounds how many
//! deliveries are held, so memory does not grow with the backlog.
//!
//! One job = [`process`] → an [`Outcome`]; [`finish`] records the outcome in Postgres and only
//! then acks (or dead-letters, then records, then acks). A panic inside [`process`] is caught
//! and becomes an `internal_error` dead letter; the lane goes on.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures::{FutureExt, StreamExt};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use lapin::message::Delivery;
use lapin::options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::broker::acks::Acks;
use crate::broker::{self, Broker, DeadHeaders, Publisher};
use crate::config::{AccountConfig, Channel, Config};
use crate::domain::allowance;
use crate::domain::job::{self, Gate, Job, JobError, JobKind};
use crate::platform::Platform;
use crate::policy::{self, Action, Api, CallResult};
use crate::store::{Claim, ConvState, DeadLetter, DeliveryKey, Status, Store};
use crate::telemetry as t;

/// How often a claim that collided with a concurrent one is retried before giving the
/// message back to the broker.
const CLAIM_BUSY_RETRIES: u32 = 50;
const CLAIM_BUSY_WAIT: Duration = Duration::from_millis(20);
/// Before a message is handed back to the broker (database unreachable), wait this long so
/// a persistent outage does not become a hot redelivery loop.
const REQUEUE_DELAY: Duration = Duration::from_millis(500);
/// Prefetch of the bulk (broadcast) queue: enough to keep the broadcast share busy, small
/// enough that broadcast recipients never hold the lane's concurrency.
const BULK_PREFETCH: u16 = 64;
/// How often the lane's owner writes broadcast progress into `broadcasts`.
const BROADCAST_REFRESH: Duration = Duration::from_secs(2);

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
    /// The lane's hot-path metric handles, registered once (a labelled `counter!` call
    /// builds and hashes its key on every use).
    m: LaneMetrics,
}

/// Metric handles every job touches.
struct LaneMetrics {
    consumed: metrics::Counter,
    sent: metrics::Counter,
    e2e: metrics::Histogram,
    send_latency: metrics::Histogram,
    rate_wait: metrics::Histogram,
    inflight: metrics::Gauge,
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
        let pause = PauseGate::new(&account.name, &cfg);
        let m = LaneMetrics::new(&account);
        Self {
            m,
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
        }
    }
}

/// What happened to one job.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Sent {
        attempts: i32,
        msgid: Option<String>,
    },
    Suppressed {
        attempts: i32,
    },
    Expired {
        attempts: i32,
    },
    /// The job id already has an outcome: ack without doing anything.
    Duplicate(Status),
    Dead {
        reason: String,
        errcode: Option<i64>,
        errmsg: Option<String>,
        attempts: i32,
    },
    /// Park the job in the durable delay tier of `tier_secs` and ack it; it comes back to the
    /// lane by itself. `follow` marks a job parked only to stay behind an earlier parked job of
    /// its conversation (it was not attempted).
    Park {
        tier_secs: u64,
        attempts: i32,
        parks: u32,
        follow: bool,
        errcode: Option<i64>,
        error: String,
    },
    /// A broadcast was fanned out into this many recipients' jobs (its record is the
    /// `broadcasts` row).
    FannedOut {
        recipients: usize,
    },
    /// Give the message back to the broker (the database could not be reached).
    Requeue {
        why: String,
    },
}

impl Outcome {
    /// A short name for the job's log span.
    fn name(&self) -> &'static str {
        match self {
            Outcome::Sent { .. } => "sent",
            Outcome::Suppressed { .. } => "suppressed",
            Outcome::Expired { .. } => "expired",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Dead { .. } => "dead",
            Outcome::Park { .. } => "parked",
            Outcome::FannedOut { .. } => "fanned_out",
            Outcome::Requeue { .. } => "requeued",
        }
    }
}

/// A delivery waiting for its conversation.
struct Pending {
    delivery: Delivery,
    /// The ack batch of the channel the delivery came on.
    acks: Arc<Acks>,
    job: Result<Job, JobError>,
    /// From the bulk queue (a broadcast's recipient): rate-limited to the broadcast share.
    bulk: bool,
}

/// Conversation key: jobs with the same key are processed strictly in order.
fn conversation_key(p: &Pending) -> String {
    match &p.job {
        Ok(j) => conversation_of(j),
        // Rejected input has no conversation: it is handled on its own.
        Err(_) => format!("\u{1e}tag:{}", p.delivery.delivery_tag),
    }
}

/// The conversation a job belongs to: (open_kfid, recipient) for WeCom, the openid for the
/// chatbot; a job without a recipient (a broadcast) is its own conversation.
pub fn conversation_of(j: &Job) -> String {
    match &j.open_kfid {
        Some(k) => format!("{k}\u{1f}{}", j.to),
        None if j.to.is_empty() => format!("\u{1e}job:{}", j.job_id),
        None => j.to.clone(),
    }
}

/// Header carrying how often a job was parked (selects its next delay tier).
pub const H_PARKS: &str = "x-wxdispatch-parks";

fn parks_of(props: &BasicProperties) -> u32 {
    broker::header_str(props, H_PARKS)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// conversation → seq → (job id, tier seconds)
type ParkedMap = HashMap<String, std::collections::BTreeMap<i64, (String, u64)>>;

/// Jobs parked in delay tiers, by conversation, mirrored in `parked_jobs` so a lane that
/// fails over to another process keeps the order. Only the lane's own process touches it
/// (single active consumer).
#[derive(Default)]
pub struct Parked {
    /// conversation → seq → (job id, tier seconds)
    map: std::sync::Mutex<ParkedMap>,
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, ParkedMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Load the account's parked jobs (lane start).
    pub async fn load(&self, store: &Store, account: &str) -> anyhow::Result<()> {
        let rows: Vec<(String, String, i64, i32)> = sqlx::query_as(
            "SELECT conversation, job_id, seq, tier_secs FROM parked_jobs WHERE account = $1",
        )
        .bind(account)
        .fetch_all(store.pool())
        .await?;
        let mut m = self.lock();
        m.clear();
        for (conv, job, seq, tier) in rows {
            m.entry(conv)
                .or_default()
                .insert(seq, (job, tier.max(0) as u64));
        }
        Ok(())
    }

    /// The tier to park `job_id` in when an earlier job of `conv` is parked, else `None`.
    pub fn blocking_tier(&self, conv: &str, job_id: &str) -> Option<u64> {
        let m = self.lock();
        let jobs = m.get(conv)?;
        let (_, (head, tier)) = jobs.iter().next()?;
        (head != job_id).then_some(*tier)
    }

    /// Record that `job_id` is parked in `tier_secs` (keeping its place if already parked).
    async fn park(
        &self,
        store: &Store,
        account: &str,
        conv: &str,
        job_id: &str,
        tier_secs: u64,
    ) -> anyhow::Result<()> {
        let seq = {
            let mut m = self.lock();
            let jobs = m.entry(conv.to_owned()).or_default();
            let existing = jobs.iter().find(|(_, (j, _))| j == job_id).map(|(s, _)| *s);
            let seq = existing.unwrap_or_else(|| jobs.keys().next_back().map_or(1, |s| s + 1));
            jobs.insert(seq, (job_id.to_owned(), tier_secs));
            seq
        };
        sqlx::query(
            "INSERT INTO parked_jobs (account, conversation, job_id, seq, tier_secs) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (account, job_id) DO UPDATE SET tier_secs = excluded.tier_secs, parked_at = now()",
        )
        .bind(account)
        .bind(conv)
        .bind(job_id)
        .bind(seq)
        .bind(tier_secs as i32)
        .execute(store.pool())
        .await?;
        Ok(())
    }

    /// A parked job reached an outcome: the conversation moves on.
    async fn release(
        &self,
        store: &Store,
        account: &str,
        conv: &str,
        job_id: &str,
    ) -> anyhow::Result<()> {
        let was_parked = {
            let mut m = self.lock();
            let Some(jobs) = m.get_mut(conv) else {
                return Ok(());
            };
            let before = jobs.len();
            jobs.retain(|_, (j, _)| j != job_id);
            let removed = jobs.len() != before;
            if jobs.is_empty() {
                m.remove(conv);
            }
            removed
        };
        if was_parked {
            sqlx::query("DELETE FROM parked_jobs WHERE account = $1 AND job_id = $2")
                .bind(account)
                .bind(job_id)
                .execute(store.pool())
                .await?;
        }
        Ok(())
    }
}

/// The lane's channels and consumers on one broker connection.
struct Consumers {
    ch: lapin::Channel,
    consumer: lapin::Consumer,
    /// Broadcast recipients: a second queue, its own channel and a smaller prefetch, so the
    /// lane's prefetch stays available to ordinary replies.
    bulk_ch: lapin::Channel,
    bulk: lapin::Consumer,
    /// Each channel's acks, coalesced ([`crate::broker::acks`]).
    acks: Arc<Acks>,
    bulk_acks: Arc<Acks>,
}

/// How long a lane waits before trying again to consume after a failure on a live
/// connection (e.g. its queue was deleted and is being declared again).
const CONSUME_RETRY: Duration = Duration::from_secs(1);

impl Consumers {
    async fn open(ctx: &LaneCtx, conn: &Connection, tag: &str) -> anyhow::Result<Self> {
        let ch = conn.create_channel().await?;
        ch.basic_qos(ctx.cfg.broker.prefetch, BasicQosOptions::default())
            .await?;
        let consumer = ch
            .basic_consume(
                ctx.account.queue().as_str().into(),
                tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let bulk_ch = conn.create_channel().await?;
        bulk_ch
            .basic_qos(
                ctx.cfg.broker.prefetch.min(BULK_PREFETCH),
                BasicQosOptions::default(),
            )
            .await?;
        let bulk = bulk_ch
            .basic_consume(
                broker::bulk_queue(&ctx.account.name).as_str().into(),
                format!("{tag}-bulk").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            ch,
            consumer,
            bulk_ch,
            bulk,
            acks: Acks::start(ctx.account.name.clone()),
            bulk_acks: Acks::start(format!("{} (bulk)", ctx.account.name)),
        })
    }

    /// Open on the broker's current connection, waiting for one and retrying until it works
    /// or `shutdown` fires.
    async fn open_retrying(
        ctx: &LaneCtx,
        broker: &Broker,
        tag: &str,
        shutdown: &CancellationToken,
    ) -> Option<Self> {
        loop {
            let (_, conn) = tokio::select! {
                _ = shutdown.cancelled() => return None,
                c = broker.connection() => c,
            };
            match Self::open(ctx, &conn, tag).await {
                Ok(c) => return Some(c),
                Err(e) => {
                    warn!(account = %ctx.account.name, error = %format!("{e:#}"), "lane cannot consume yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return None,
                        _ = tokio::time::sleep(CONSUME_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Stop deliveries, leave unacked ones to the channel close.
    async fn cancel(&self, tag: &str) {
        let _ = self
            .bulk_ch
            .basic_cancel(
                format!("{tag}-bulk").as_str().into(),
                BasicCancelOptions::default(),
            )
            .await;
        let _ = self
            .ch
            .basic_cancel(tag.into(), BasicCancelOptions::default())
            .await;
    }

    /// Ack what is settled, then close both channels (unacked deliveries go back).
    async fn close(&self) {
        self.acks.close().await;
        self.bulk_acks.close().await;
        let _ = self.ch.close(200, "shutdown".into()).await;
        let _ = self.bulk_ch.close(200, "shutdown".into()).await;
    }
}

/// Consume the account's lane until `shutdown` fires; then stop consuming, give in-flight
/// jobs `worker.shutdown_grace_secs` to finish, and return (unfinished ones are released to
/// the broker when the channel closes). When the broker connection dies the lane consumes
/// again on the next one ([`Broker`]); what it held is redelivered.
pub async fn run(
    ctx: Arc<LaneCtx>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ctx.parked
        .load(&ctx.store, &ctx.account.name)
        .await
        .map_err(|e| anyhow::anyhow!("lane {}: loading parked jobs: {e:#}", ctx.account.name))?;
    let queue = ctx.account.queue();
    let tag = format!("wxdispatch-{}-{}", std::process::id(), ctx.account.name);
    let Some(mut cons) = Consumers::open_retrying(&ctx, &broker, &tag, &shutdown).await else {
        return Ok(());
    };
    let refresher = {
        let ctx = ctx.clone();
        let sd = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BROADCAST_REFRESH);
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = sd.cancelled() => break }
                if let Err(e) =
                    crate::engine::broadcast::refresh(ctx.store.pool(), &ctx.account.name).await
                {
                    tracing::debug!(account = %ctx.account.name, error = %format!("{e:#}"), "broadcast progress not refreshed");
                }
            }
        })
    };
    info!(account = %ctx.account.name, %queue, "lane consuming (active once the broker picks this consumer)");
    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(1.0);

    let sem = Arc::new(Semaphore::new(ctx.cfg.worker.concurrency));
    let tracker = TaskTracker::new();
    // (conversation, whether its job was handed back to the broker)
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<(String, bool)>();
    // key present = a task runs for that conversation; the queue holds what waits behind it.
    let mut busy: HashMap<String, VecDeque<Pending>> = HashMap::new();

    let spawn = |key: String, p: Pending| {
        let ctx = ctx.clone();
        let sem = sem.clone();
        let done = done_tx.clone();
        let sd = shutdown.clone();
        tracker.spawn(async move {
            let permit = tokio::select! {
                biased;
                // Not started when the shutdown came: the job stays unacked and goes back to
                // the broker, in order, when the channel closes.
                _ = sd.cancelled() => None,
                p = sem.acquire() => p.ok(),
            };
            let requeued = match permit {
                Some(_permit) => {
                    // Boxed: the job's future is kilobytes; spawned by value it would be
                    // copied into the task and again when the task finishes.
                    Box::pin(REQUEUED.scope(std::cell::Cell::new(false), async move {
                        handle(ctx, p).await;
                        REQUEUED.with(std::cell::Cell::get)
                    }))
                    .await
                }
                None => false,
            };
            let _ = done.send((key, requeued));
        });
    };

    // Database health: while Postgres is unreachable the lane takes no new deliveries (the
    // jobs it holds wait inside the store for the database to come back).
    let mut db = ctx.store.health();
    // Whether this process has received a delivery since it (re)registered its consumer, i.e.
    // is the lane's active consumer. See [`on_activation`].
    let mut active = false;
    loop {
        let db_up = *db.borrow_and_update();
        tokio::select! {
            biased;
            Some((key, requeued)) = done_rx.recv() => {
                if requeued {
                    // The job went back to the broker: everything queued behind it in its
                    // conversation goes back too, after it and in order, or a later job
                    // would be sent before it.
                    if let Some(q) = busy.remove(&key) {
                        tokio::spawn(hand_back(q));
                    }
                    continue;
                }
                let next = busy.get_mut(&key).and_then(VecDeque::pop_front);
                match next {
                    Some(p) => spawn(key, p),
                    None => { busy.remove(&key); }
                }
            }
            _ = shutdown.cancelled() => break,
            Ok(()) = db.changed() => {
                if *db.borrow() {
                    info!(account = %ctx.account.name, "database back; lane takes new jobs again");
                } else {
                    warn!(account = %ctx.account.name, "database unreachable; lane stops taking new jobs");
                }
            }
            _ = ctx.store.probe_until_up(), if !db_up => {}
            d = cons.consumer.next(), if db_up => match d {
                None | Some(Err(_)) => {
                    if let Some(Err(e)) = d {
                        warn!(account = %ctx.account.name, error = %e, "lane consumer failed; consuming again on a new channel");
                    } else {
                        warn!(account = %ctx.account.name, "lane consumer cancelled by the broker; consuming again");
                    }
                    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(0.0);
                    // Deliveries of the old channel still queued here are skipped (their
                    // ackers are dead) and come again from the broker.
                    cons.close().await;
                    match Consumers::open_retrying(&ctx, &broker, &tag, &shutdown).await {
                        Some(c) => cons = c,
                        None => break,
                    }
                    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(1.0);
                    info!(account = %ctx.account.name, "lane consuming again");
                    // Another process may have become the active consumer meanwhile.
                    active = false;
                }
                Some(Ok(delivery)) => {
                    if !active {
                        active = true;
                        on_activation(&ctx);
                    }
                    if let Some((key, p)) = enqueue(&ctx, &mut busy, delivery, &cons.acks, false) {
                        spawn(key, p);
                    }
                }
            },
            // Broadcast recipients, after ordinary replies (biased select). A failure here
            // also fails the main consumer (same connection), which reopens both; until
            // then this arm stays quiet.
            d = cons.bulk.next(), if db_up => match d {
                None | Some(Err(_)) => {
                    if cons.ch.status().connected() {
                        warn!(account = %ctx.account.name, "bulk consumer stopped; consuming again");
                        cons.close().await;
                        match Consumers::open_retrying(&ctx, &broker, &tag, &shutdown).await {
                            Some(c) => cons = c,
                            None => break,
                        }
                        active = false;
                    } else {
                        tokio::time::sleep(CONSUME_RETRY).await;
                    }
                }
                Some(Ok(delivery)) => {
                    if let Some((key, p)) = enqueue(&ctx, &mut busy, delivery, &cons.bulk_acks, true) {
                        spawn(key, p);
                    }
                }
            },
        }
    }

    // Graceful stop: no new deliveries; jobs already sending finish (within the grace period);
    // everything else — queued behind a conversation, waiting for a permit, or unfinished
    // when the grace period ends — stays unacked and goes back to the broker when the channel
    // closes. One close returns them all in delivery order; nacking the queued ones one by
    // one would not: RabbitMQ may hand those back before earlier deliveries that are returned
    // by the close, and a conversation would then be sent out of order after a restart.
    refresher.abort();
    cons.cancel(&tag).await;
    let held: usize = busy.values().map(VecDeque::len).sum();
    if held > 0 {
        info!(account = %ctx.account.name, held, "queued jobs go back to the broker at close");
    }
    tracker.close();
    let grace = Duration::from_secs(ctx.cfg.worker.shutdown_grace_secs);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(account = %ctx.account.name, "grace period over; releasing unfinished jobs to the broker");
    }
    cons.close().await;
    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(0.0);
    info!(account = %ctx.account.name, "lane stopped");
    Ok(())
}

/// Parse a delivery and queue it behind its conversation. Returns it with its conversation
/// key when nothing of that conversation is running: the caller starts it now.
fn enqueue(
    ctx: &LaneCtx,
    busy: &mut HashMap<String, VecDeque<Pending>>,
    delivery: Delivery,
    acks: &Arc<Acks>,
    bulk: bool,
) -> Option<(String, Pending)> {
    ctx.m.consumed.increment(1);
    acks.delivered(delivery.delivery_tag);
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .map(|s| s.as_str());
    let job = job::parse(
        &delivery.data,
        message_id,
        &ctx.account,
        ctx.cfg.worker.max_body_bytes,
    );
    let p = Pending {
        delivery,
        acks: acks.clone(),
        job,
        bulk,
    };
    let key = conversation_key(&p);
    match busy.get_mut(&key) {
        Some(q) => {
            q.push_back(p);
            None
        }
        None => {
            busy.insert(key.clone(), VecDeque::new());
            Some((key, p))
        }
    }
}

/// Run one job with panic containment, then finish it.
async fn handle(ctx: Arc<LaneCtx>, p: Pending) {
    // After a broker reconnect the deliveries of the old channel are void: the broker has
    // requeued them and will deliver them again.
    if !p.delivery.acker.usable() {
        return;
    }
    ctx.m.inflight.increment(1.0);
    let job = match p.job {
        Ok(j) => j,
        Err(e) => {
            let outcome = Outcome::Dead {
                reason: e.reason.to_owned(),
                errcode: None,
                errmsg: Some(e.detail.clone()),
                attempts: 0,
            };
            finish(
                &ctx,
                &p.delivery,
                &p.acks,
                None,
                e.job_id.as_deref(),
                outcome,
            )
            .await;
            ctx.m.inflight.decrement(1.0);
            return;
        }
    };
    let span = info_span!("job", job.id = %job.job_id, account = %ctx.account.name, kind = job.kind.as_str(), attempt = tracing::field::Empty, outcome = tracing::field::Empty);
    let published_ms = published_at_ms(&p.delivery.properties);
    // Panics stay inside the job: it is dead-lettered as internal_error, the lane goes on.
    let parks = parks_of(&p.delivery.properties);
    let work = async {
        match &job.kind {
            JobKind::Broadcast { .. } => Box::pin(fan_out(&ctx, &job, &p.delivery.data)).await,
            _ => process(&ctx, &job, parks, p.bulk).await,
        }
    };
    let outcome = match std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .instrument(span.clone())
        .await
    {
        Ok(o) => o,
        Err(_) => {
            tracing::error!(parent: &span, "handler panicked; dead-lettering as internal_error");
            Outcome::Dead {
                reason: "internal_error".into(),
                errcode: None,
                errmsg: Some("handler panicked".into()),
                attempts: 0,
            }
        }
    };
    if let (Some(ms), Outcome::Sent { .. }) = (published_ms, &outcome) {
        let now = chrono::Utc::now().timestamp_millis();
        ctx.m.e2e.record((now - ms).max(0) as f64 / 1000.0);
    }
    // Its name only: formatting the whole outcome into every job's span cost a string per
    // job; the details are in the row and in the warnings that need them.
    span.record("outcome", outcome.name());
    finish(
        &ctx,
        &p.delivery,
        &p.acks,
        Some(&job),
        Some(&job.job_id),
        outcome,
    )
    .instrument(span)
    .await;
    ctx.m.inflight.decrement(1.0);
}

/// Publish time: header `x-wxdispatch-published-ms` (set by `wxdispatch send` and the
/// benchmarks) or the AMQP timestamp (seconds).
fn published_at_ms(props: &BasicProperties) -> Option<i64> {
    if let Some(ms) =
        broker::header_str(props, "x-wxdispatch-published-ms").and_then(|s| s.parse().ok())
    {
        return Some(ms);
    }
    props.timestamp().map(|s| s as i64 * 1000)
}

fn delivery_key(account: &AccountConfig, job: &Job) -> DeliveryKey {
    DeliveryKey {
        job_id: job.job_id.clone(),
        account: account.name.clone(),
        channel: account.channel.as_str(),
        kind: job.kind.as_str(),
        recipient: job.to.clone(),
        open_kfid: job.open_kfid.clone(),
        broadcast_id: None,
    }
}

/// Decide a job's outcome: claim, then send with retries. Pure of acks and broker state.
/// Fan a broadcast job out into its recipients' jobs (see [`crate::engine::broadcast`]).
async fn fan_out(ctx: &LaneCtx, job: &Job, body: &[u8]) -> Outcome {
    match crate::engine::broadcast::fan_out(&ctx.store, &ctx.publisher, &ctx.account, job, body)
        .await
    {
        Ok(n) => {
            metrics::counter!(t::BROADCAST_RECIPIENTS, "account" => ctx.account.name.clone())
                .increment(n as u64);
            Outcome::FannedOut { recipients: n }
        }
        Err(e) => Outcome::Requeue {
            why: format!("broadcast fan-out failed: {e:#}"),
        },
    }
}

pub async fn process(ctx: &LaneCtx, job: &Job, parks: u32, bulk: bool) -> Outcome {
    // A conversation with an earlier job parked in a delay tier: this one parks behind it.
    if let Some(tier_secs) = ctx.parked.blocking_tier(&conversation_of(job), &job.job_id) {
        return Outcome::Park {
            tier_secs,
            attempts: 0,
            parks,
            follow: true,
            errcode: None,
            error: "waiting behind an earlier job of the conversation".into(),
        };
    }
    let key = delivery_key(&ctx.account, job);
    let mut attempts = 0i32;
    let mut first_attempt = chrono::Utc::now();
    let mut claimed = false;
    let mut conv = None;
    for _ in 0..CLAIM_BUSY_RETRIES {
        match ctx.store.claim(key.clone()).await {
            Ok((Claim::New, c)) => {
                conv = c;
                claimed = true;
                break;
            }
            Ok((
                Claim::Resume {
                    attempts: a,
                    first_attempt_at,
                },
                c,
            )) => {
                attempts = a;
                first_attempt = first_attempt_at.unwrap_or(first_attempt);
                conv = c;
                claimed = true;
                break;
            }
            Ok((Claim::Done(s), _)) => return Outcome::Duplicate(s),
            Ok((Claim::Busy, _)) => tokio::time::sleep(CLAIM_BUSY_WAIT).await,
            Err(e) => {
                return Outcome::Requeue {
                    why: format!("claim failed: {e:#}"),
                };
            }
        }
    }
    if !claimed {
        return Outcome::Requeue {
            why: "job id is being claimed concurrently".into(),
        };
    }
    if let Some(o) = check_conversation(ctx, job, attempts, conv.as_ref()).await {
        return o;
    }
    let budget_left = chrono::Duration::seconds(ctx.cfg.retry.total_budget_secs as i64)
        - (chrono::Utc::now() - first_attempt);
    send_with_retries(ctx, job, conv.as_ref(), attempts, parks, budget_left, bulk).await
}

/// Before asking the platform: does the WeCom allowance still permit a message? A job the
/// platform would refuse anyway ends here, saving the customer's allowance for messages that
/// can succeed. (Whether a human serves is asked in [`send_with_retries`], which paces and
/// retries that query like a send.)
async fn check_conversation(
    ctx: &LaneCtx,
    job: &Job,
    attempts: i32,
    conv: Option<&ConvState>,
) -> Option<Outcome> {
    if !matches!(job.kind, JobKind::Send) {
        return None;
    }
    if expired(job) {
        return Some(Outcome::Expired { attempts });
    }
    if ctx.account.channel == Channel::Wecom
        && let Some(c) = conv
        && let Some(last) = c.last_customer_msg_at
    {
        let age = chrono::Utc::now() - last;
        if age > allowance::WECOM_WINDOW {
            return Some(Outcome::Dead {
                reason: "window_closed".into(),
                errcode: None,
                errmsg: Some(format!(
                    "the customer's last message is {} h old (WeCom allows replies within 48 h)",
                    age.num_hours()
                )),
                attempts,
            });
        }
        if c.sent_since_customer >= allowance::WECOM_WINDOW_QUOTA {
            return Some(Outcome::Dead {
                reason: "quota_exhausted".into(),
                errcode: None,
                errmsg: Some(format!(
                    "{} messages already sent since the customer's last message (WeCom allows 5)",
                    c.sent_since_customer
                )),
                attempts,
            });
        }
    }
    None
}

/// Who serves a conversation, cached for `worker.gate_cache_secs`.
#[derive(Default)]
pub struct Gates {
    cache: std::sync::Mutex<HashMap<String, (Instant, bool)>>,
}

impl Gates {
    fn cached(&self, conv: &str, ttl: Duration) -> Option<bool> {
        let m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        m.get(conv)
            .filter(|(at, _)| at.elapsed() < ttl)
            .map(|(_, human)| *human)
    }

    fn remember(&self, conv: &str, human: bool) {
        let mut m = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded: forget stale entries when the map grows.
        if m.len() > GATE_CACHE_MAX {
            m.clear();
        }
        m.insert(conv.to_owned(), (Instant::now(), human));
    }

    /// Whether a human serves `job`'s conversation, if known without asking the platform:
    /// cached from an earlier answer, or (WeCom) a state stored recently by the sync loop.
    fn known(&self, ctx: &LaneCtx, job: &Job, conv: Option<&ConvState>) -> Option<bool> {
        let ttl = Duration::from_secs(ctx.cfg.worker.gate_cache_secs);
        if let Some(h) = self.cached(&conversation_of(job), ttl) {
            return Some(h);
        }
        if ctx.account.channel != Channel::Wecom {
            return None;
        }
        let c = conv?;
        let at = c.state_updated_at?;
        let state = c.service_state?;
        ((chrono::Utc::now() - at).to_std().unwrap_or_default() < ttl)
            .then_some(human_state(state.into()))
    }

    /// Ask the platform who serves the conversation (WeCom service_state/get, chatbot
    /// kefustate/get) and remember the answer. A failure is returned for the caller to judge
    /// like a failed send; nothing is remembered then.
    async fn query(&self, ctx: &LaneCtx, job: &Job) -> Result<bool, (CallResult, Api)> {
        let human = match ctx.account.channel {
            Channel::Wecom => {
                let kfid = job.open_kfid.as_deref().unwrap_or("");
                let (s, _) = ctx.platform.wecom_service_state(kfid, &job.to).await?;
                store_service_state(ctx, kfid, job, s).await;
                human_state(s)
            }
            Channel::Chatbot => ctx
                .platform
                .chatbot_human_serving(&job.to)
                .await
                .map_err(|r| (r, Api::Business))?,
        };
        self.remember(&conversation_of(job), human);
        Ok(human)
    }

    /// A transfer job succeeded: the conversation's server is known without asking.
    async fn transferred(&self, ctx: &LaneCtx, job: &Job, tr: &job::Transfer) {
        let conv = conversation_of(job);
        match (
            ctx.account.channel,
            tr.service_state,
            tr.kefustate.as_deref(),
        ) {
            (Channel::Wecom, Some(state), _) => {
                self.remember(&conv, human_state(state));
                let kfid = job.open_kfid.as_deref().unwrap_or("");
                store_service_state(ctx, kfid, job, state).await;
            }
            (Channel::Chatbot, _, Some(k)) => self.remember(&conv, k == "on"),
            _ => {}
        }
    }

    /// The platform said a human serves this conversation (WeCom 95018).
    async fn human_took_over(&self, ctx: &LaneCtx, job: &Job) {
        self.remember(&conversation_of(job), true);
        if let Some(kfid) = job.open_kfid.as_deref() {
            store_service_state(ctx, kfid, job, 3).await;
        }
    }
}

/// WeCom service states 2 (queued for a human) and 3 (a human serves) gate bot replies.
fn human_state(state: i64) -> bool {
    matches!(state, 2 | 3)
}

/// Remember a WeCom conversation's service state; a failure is logged (the gate asks the
/// platform again next time).
async fn store_service_state(ctx: &LaneCtx, kfid: &str, job: &Job, state: i64) {
    let state = i32::try_from(state).unwrap_or(0);
    if let Err(e) = ctx
        .store
        .set_service_state(&ctx.account.name, kfid, &job.to, state)
        .await
    {
        warn!(account = %ctx.account.name, error = %format!("{e:#}"), "could not store the service state");
    }
}

/// Conversations whose gate state is cached per lane; beyond this the cache starts over.
const GATE_CACHE_MAX: usize = 100_000;

fn expired(job: &Job) -> bool {
    job.not_after.is_some_and(|t| chrono::Utc::now() > t)
}

/// Wait for the account's rate limiter (and, for a broadcast recipient, the broadcast share).
async fn pace(ctx: &LaneCtx, bulk: bool) {
    if let Some(l) = &ctx.limiter {
        let t0 = Instant::now();
        if bulk && let Some(b) = &ctx.bulk_limiter {
            b.until_ready().await;
        }
        l.until_ready().await;
        ctx.m.rate_wait.record(t0.elapsed().as_secs_f64());
    }
}

async fn send_with_retries(
    ctx: &LaneCtx,
    job: &Job,
    conv: Option<&ConvState>,
    mut attempts: i32,
    parks: u32,
    budget_left: chrono::Duration,
    bulk: bool,
) -> Outcome {
    let name = &ctx.account.name;
    let r = &ctx.cfg.retry;
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(r.initial_backoff_ms))
        .with_max_delay(Duration::from_millis(r.max_backoff_ms))
        .with_jitter()
        .with_max_times(r.in_process_attempts.saturating_sub(1) as usize)
        .build();
    let mut last_err: (Option<i64>, String) = (None, String::new());
    loop {
        if expired(job) {
            return Outcome::Expired { attempts };
        }
        let probe = ctx.pause.wait().await;
        if expired(job) {
            ctx.pause.release(probe);
            return Outcome::Expired { attempts };
        }
        // gate "bot": is a human serving? Asking the platform is paced (its own limiter at
        // the account's rate), and a failed query is retried (or pauses the account) exactly
        // as a failed send would be; the job is never sent without the answer.
        let mut gate_failed = None;
        if job.gate == Gate::Bot && matches!(job.kind, JobKind::Send) {
            let known = ctx.gates.known(ctx, job, conv);
            let human = match known {
                Some(h) => Ok(h),
                None => {
                    if let Some(l) = &ctx.query_limiter {
                        l.until_ready().await;
                    }
                    Box::pin(ctx.gates.query(ctx, job)).await
                }
            };
            match human {
                Ok(true) => {
                    ctx.pause.release(probe);
                    return Outcome::Suppressed { attempts };
                }
                Ok(false) => {}
                Err(failed) => gate_failed = Some(failed),
            }
        }
        attempts += 1;
        tracing::Span::current().record("attempt", attempts);
        let (res, api) = match gate_failed {
            Some(failed) => failed,
            None => {
                pace(ctx, bulk).await;
                let t0 = Instant::now();
                let r = ctx.platform.execute(job).await;
                ctx.m.send_latency.record(t0.elapsed().as_secs_f64());
                r
            }
        };
        let action = policy::classify(ctx.account.channel, api, &res);
        if let policy::CallResult::Errcode { code, msg } = &res {
            metrics::counter!(t::ERRCODES, "account" => name.clone(), "errcode" => code.to_string()).increment(1);
            last_err = (Some(*code), msg.clone());
        } else if let policy::CallResult::Http(s) = &res {
            metrics::counter!(t::ERRCODES, "account" => name.clone(), "errcode" => format!("http_{s}")).increment(1);
            last_err = (None, format!("HTTP {s}"));
        } else if let policy::CallResult::Transport(e) = &res {
            metrics::counter!(t::ERRCODES, "account" => name.clone(), "errcode" => "transport")
                .increment(1);
            last_err = (None, e.clone());
        }
        let transient = matches!(
            action,
            Action::Retry { .. } | Action::RefreshToken | Action::Throttle { .. }
        );
        ctx.pause.report(probe, &action);
        match action {
            Action::Deliver => {
                let msgid = match res {
                    policy::CallResult::Ok { msgid } => msgid,
                    _ => None,
                };
                if let JobKind::Transfer(tr) = &job.kind {
                    ctx.gates.transferred(ctx, job, tr).await;
                }
                return Outcome::Sent { attempts, msgid };
            }
            Action::DeadLetter { reason, alert } => {
                if alert {
                    tracing::error!(account = %name, errcode = ?last_err.0, errmsg = %last_err.1, "platform reports a configuration problem ({reason})");
                }
                return Outcome::Dead {
                    reason: reason.into(),
                    errcode: last_err.0,
                    errmsg: Some(last_err.1),
                    attempts,
                };
            }
            Action::HumanServing => {
                ctx.gates.human_took_over(ctx, job).await;
                return if job.gate == Gate::Bot {
                    Outcome::Suppressed { attempts }
                } else {
                    Outcome::Dead {
                        reason: "human_serving".into(),
                        errcode: last_err.0,
                        errmsg: Some(last_err.1),
                        attempts,
                    }
                };
            }
            Action::Throttle { .. } => {
                // The account is paused (PauseGate); the job waits there without using its budget.
                metrics::counter!(t::RETRIES, "account" => name.clone(), "kind" => "throttle")
                    .increment(1);
                continue;
            }
            Action::Retry { .. } | Action::RefreshToken => {}
        }
        debug_assert!(transient);
        match backoff.next() {
            Some(d) => {
                metrics::counter!(t::RETRIES, "account" => name.clone(), "kind" => "transient")
                    .increment(1);
                tracing::debug!(account = %name, attempts, delay_ms = d.as_millis() as u64, error = %last_err.1, "transient failure; retrying");
                tokio::time::sleep(d).await;
            }
            None => {
                // In-process budget spent: park durably while the total budget lasts (the
                // tier wait must fit in it), so no message is held unacked for long.
                let tiers = &ctx.cfg.retry.tiers_secs;
                let tier_secs = tiers[(parks as usize).min(tiers.len().saturating_sub(1))];
                if budget_left > chrono::Duration::seconds(tier_secs as i64) {
                    metrics::counter!(t::RETRIES, "account" => name.clone(), "kind" => "parked")
                        .increment(1);
                    return Outcome::Park {
                        tier_secs,
                        attempts,
                        parks: parks + 1,
                        follow: false,
                        errcode: last_err.0,
                        error: last_err.1,
                    };
                }
                return Outcome::Dead {
                    reason: "retries_exhausted".into(),
                    errcode: last_err.0,
                    errmsg: Some(last_err.1),
                    attempts,
                };
            }
        }
    }
}

/// Record the outcome, then ack. Dead letters are published (confirmed) before the record,
/// so a crash in between can only duplicate a dead letter, never lose one.
async fn finish(
    ctx: &LaneCtx,
    delivery: &Delivery,
    acks: &Acks,
    job: Option<&Job>,
    job_id: Option<&str>,
    outcome: Outcome,
) {
    let name = &ctx.account.name;
    let status_row = |status: Status,
                      attempts: i32,
                      errcode: Option<i64>,
                      error: Option<String>,
                      msgid: Option<String>| {
        let key = match job {
            Some(j) => delivery_key(&ctx.account, j),
            None => DeliveryKey {
                job_id: job_id.unwrap_or_default().to_owned(),
                account: name.clone(),
                channel: ctx.account.channel.as_str(),
                kind: "send",
                recipient: String::new(),
                open_kfid: None,
                broadcast_id: None,
            },
        };
        crate::store::Outcome {
            key,
            status,
            attempts,
            errcode,
            error,
            platform_msgid: msgid,
        }
    };
    let record = match &outcome {
        Outcome::Sent { attempts, msgid } => Some(status_row(
            Status::Sent,
            *attempts,
            None,
            None,
            msgid.clone(),
        )),
        Outcome::Suppressed { attempts } => Some(status_row(
            Status::Suppressed,
            *attempts,
            None,
            Some("human agent serving".into()),
            None,
        )),
        Outcome::Expired { attempts } => Some(status_row(
            Status::Expired,
            *attempts,
            None,
            Some("not_after passed".into()),
            None,
        )),
        Outcome::Dead {
            reason,
            errcode,
            errmsg,
            attempts,
        } => {
            let headers = DeadHeaders {
                reason,
                errcode: *errcode,
                errmsg: errmsg.as_deref(),
                account: name,
                attempts: *attempts,
            };
            // The rare branches' futures are boxed: the common path (a send recorded and
            // acked) then does not carry and move their state.
            if let Err(e) = Box::pin(ctx.publisher.dead_letter(
                &delivery.data,
                &delivery.properties,
                &headers,
            ))
            .await
            {
                warn!(account = %name, error = %e, "dead-letter publish failed; message goes back to the queue");
                requeue(delivery, acks).await;
                return;
            }
            metrics::counter!(t::DEAD_LETTERS, "account" => name.clone(), "reason" => reason.clone()).increment(1);
            warn!(account = %name, job.id = job_id.unwrap_or("-"), %reason, errcode = ?errcode, errmsg = errmsg.as_deref().unwrap_or(""), "dead-lettered");
            let dl = DeadLetter {
                job_id: job_id.map(str::to_owned),
                account: name.clone(),
                reason: reason.clone(),
                errcode: *errcode,
                errmsg: errmsg.clone(),
                attempts: *attempts,
                body: delivery.data.clone(),
            };
            if let Err(e) = Box::pin(ctx.store.record_dead_letter(&dl)).await {
                warn!(account = %name, error = %e, "dead letter not recorded in Postgres; message goes back to the queue");
                requeue(delivery, acks).await;
                return;
            }
            let error = match errmsg {
                Some(m) if !m.is_empty() => format!("{reason}: {m}"),
                _ => reason.clone(),
            };
            job_id.map(|_| status_row(Status::Dead, *attempts, *errcode, Some(error), None))
        }
        Outcome::FannedOut { recipients } => {
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), recipients, "broadcast fanned out");
            acks.settled(delivery.delivery_tag, &delivery.acker);
            return;
        }
        Outcome::Duplicate(s) => {
            metrics::counter!(t::DUPLICATES, "account" => name.clone()).increment(1);
            tracing::debug!(account = %name, job.id = job_id.unwrap_or("-"), status = s.as_str(), "duplicate job; already recorded");
            None
        }
        Outcome::Requeue { why } => {
            warn!(account = %name, job.id = job_id.unwrap_or("-"), %why, "giving the message back to the broker");
            requeue(delivery, acks).await;
            return;
        }
        Outcome::Park {
            tier_secs,
            attempts,
            parks,
            follow,
            errcode,
            error,
        } => {
            let Some(j) = job else {
                requeue(delivery, acks).await;
                return;
            };
            // Record first (row + conversation order), then hand the message to the tier,
            // then ack: a crash in between re-runs the job from the lane, never loses it.
            let row = status_row(
                Status::Retrying,
                *attempts,
                *errcode,
                Some(format!("parked {tier_secs}s: {error}")),
                None,
            );
            let conv = conversation_of(j);
            let recorded = Box::pin(async {
                ctx.store.record(row).await?;
                ctx.parked
                    .park(&ctx.store, name, &conv, &j.job_id, *tier_secs)
                    .await
            })
            .await;
            if let Err(e) = recorded {
                warn!(account = %name, error = %format!("{e:#}"), "parking not recorded; message goes back to the queue");
                requeue(delivery, acks).await;
                return;
            }
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            headers.insert(
                H_PARKS.into(),
                lapin::types::AMQPValue::LongString(parks.to_string().into()),
            );
            let props = delivery.properties.clone().with_headers(headers);
            let tier = broker::retry_tier(*tier_secs);
            if let Err(e) =
                Box::pin(ctx.publisher.publish(&tier, name, &delivery.data, props)).await
            {
                warn!(account = %name, error = %e, "publish to the delay tier failed; message goes back to the queue");
                requeue(delivery, acks).await;
                return;
            }
            if !follow {
                tracing::info!(account = %name, job.id = %j.job_id, tier_secs, attempts, %error, "job parked in a delay tier");
            }
            metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => "parked").increment(1);
            acks.settled(delivery.delivery_tag, &delivery.acker);
            return;
        }
    };
    if let Some(row) = record {
        let status = row.status;
        if let Err(e) = ctx.store.record(row).await {
            warn!(account = %name, error = %e, "outcome not recorded; message goes back to the queue");
            requeue(delivery, acks).await;
            return;
        }
        if status == Status::Sent {
            ctx.m.sent.increment(1);
        } else {
            metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => status.as_str()).increment(1);
        }
    } else if matches!(outcome, Outcome::Duplicate(_)) {
        metrics::counter!(t::DELIVERIES, "account" => name.clone(), "channel" => ctx.account.channel.as_str(), "outcome" => "duplicate").increment(1);
    }
    // The job has its outcome (now or earlier, for a duplicate): if it was parked, its
    // conversation moves on.
    if let Some(j) = job
        && let Err(e) = ctx
            .parked
            .release(&ctx.store, name, &conversation_of(j), &j.job_id)
            .await
    {
        warn!(account = %name, error = %format!("{e:#}"), "parked job not released; message goes back to the queue");
        requeue(delivery, acks).await;
        return;
    }
    // Acked with others shortly; if the channel dies first, the broker redelivers and the
    // claim dedupes.
    acks.settled(delivery.delivery_tag, &delivery.acker);
}

/// The first delivery after this process's consumer (re)registered: the process has just become
/// the lane's single active consumer, possibly taking over from one that was sending at the
/// full rate until a moment ago. Its rate limiter starts *empty* rather than with a full
/// burst, so the two processes together still respect the account's rate in every window
/// (the new one continues where the old one may have left off).
fn on_activation(ctx: &LaneCtx) {
    info!(account = %ctx.account.name, "lane active in this process");
    if let Some(l) = &ctx.limiter {
        // Take every cell that is available now (at most one burst).
        for _ in 0..=ctx.account.rate.burst() {
            if l.check().is_err() {
                break;
            }
        }
    }
}

tokio::task_local! {
    /// Set by [`requeue`] for the lane's consumer loop: this conversation's job went back to
    /// the broker, so the jobs queued behind it must follow (see [`hand_back`]).
    static REQUEUED: std::cell::Cell<bool>;
}

/// Give a conversation's queued jobs back to the broker, one after the other in delivery
/// order, after the job ahead of them was requeued: the broker redelivers returned messages
/// in the order they were returned (RabbitMQ 3.x quorum queues: before the rest of the
/// queue), so the conversation keeps its order.
async fn hand_back(q: VecDeque<Pending>) {
    for p in q {
        p.acks.give_back(&p.delivery).await;
    }
}

/// Hand a message back to the broker (its outcome could not be recorded). The lane hands
/// back the jobs queued behind it in its conversation as well, in order.
async fn requeue(delivery: &Delivery, acks: &Acks) {
    let _ = REQUEUED.try_with(|r| r.set(true));
    tokio::time::sleep(REQUEUE_DELAY).await;
    acks.give_back(delivery).await;
}

/// The account-wide pause: throttling (45009/210205/HTTP 429) or an outage (a run of
/// transport failures) stops every job of the account, other accounts keep flowing. When the
/// pause ends one job goes first as a probe; the rest wait for its verdict.
pub struct PauseGate {
    account: String,
    state: std::sync::Mutex<PauseState>,
    notify: Notify,
    consecutive_transport: AtomicU32,
    outage_threshold: u32,
    pause_initial: Duration,
    pause_max: Duration,
    throttle_min: Option<Duration>,
}

#[derive(Default)]
struct PauseState {
    until: Option<Instant>,
    probing: bool,
    /// Consecutive pauses without a successful probe; the next pause doubles.
    level: u32,
}

/// Whether the caller is the probe after a pause (its result decides for everyone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe(bool);

impl PauseGate {
    pub fn new(account: &str, cfg: &Config) -> Self {
        Self {
            account: account.to_owned(),
            state: std::sync::Mutex::new(PauseState::default()),
            notify: Notify::new(),
            consecutive_transport: AtomicU32::new(0),
            outage_threshold: cfg.retry.outage_threshold.max(1),
            pause_initial: Duration::from_secs(cfg.retry.pause_initial_secs),
            pause_max: Duration::from_secs(
                cfg.retry.pause_max_secs.max(cfg.retry.pause_initial_secs),
            ),
            throttle_min: cfg.retry.throttle_pause_secs.map(Duration::from_secs),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PauseState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wait while the account is paused. Returns `Probe(true)` for the one job that tests
    /// the platform after a pause.
    pub async fn wait(&self) -> Probe {
        loop {
            let notified = self.notify.notified();
            let sleep_until = {
                let mut s = self.lock();
                match s.until {
                    None if !s.probing => return Probe(false),
                    None => None, // a probe is out: wait for its verdict
                    Some(u) if u > Instant::now() => Some(u),
                    Some(_) => {
                        s.until = None;
                        s.probing = true;
                        return Probe(true);
                    }
                }
            };
            match sleep_until {
                Some(u) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(u.into()) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    fn pause(&self, min: Duration, why: &str) {
        let mut s = self.lock();
        let scaled = self
            .pause_initial
            .saturating_mul(1 << s.level.min(16))
            .min(self.pause_max);
        let d = scaled.max(min);
        let until = Instant::now() + d;
        if s.until.is_none_or(|u| u < until) {
            s.until = Some(until);
        }
        s.probing = false;
        s.level = s.level.saturating_add(1);
        drop(s);
        metrics::gauge!(t::LANE_PAUSED, "account" => self.account.clone()).set(1.0);
        metrics::counter!(t::LANE_PAUSES, "account" => self.account.clone(), "reason" => why.to_owned()).increment(1);
        warn!(account = %self.account, pause_secs = d.as_secs_f64(), reason = why, "account lane paused");
        self.notify.notify_waiters();
    }

    /// Feed the result of an attempt.
    pub fn report(&self, probe: Probe, action: &Action) {
        match action {
            Action::Throttle { min_pause } => {
                let min = self.throttle_min.unwrap_or(*min_pause);
                self.pause(min, "throttled");
            }
            Action::Retry { transport: true } => {
                let n = self.consecutive_transport.fetch_add(1, Ordering::Relaxed) + 1;
                if probe.0 || n >= self.outage_threshold {
                    self.consecutive_transport.store(0, Ordering::Relaxed);
                    self.pause(Duration::ZERO, "outage");
                }
            }
            _ => {
                self.consecutive_transport.store(0, Ordering::Relaxed);
                let mut s = self.lock();
                if probe.0 || s.probing {
                    let was_paused = s.level > 0;
                    s.probing = false;
                    s.level = 0;
                    drop(s);
                    if was_paused {
                        metrics::gauge!(t::LANE_PAUSED, "account" => self.account.clone()).set(0.0);
                        info!(account = %self.account, "account lane resumed");
                    }
                    self.notify.notify_waiters();
                }
            }
        }
    }

    /// A probe that will not make its call hands the probe role back.
    pub fn release(&self, probe: Probe) {
        if probe.0 {
            self.lock().until = Some(Instant::now());
            self.lock().probing = false;
            self.notify.notify_waiters();
        }
    }

    pub fn is_paused(&self) -> bool {
        let s = self.lock();
        s.probing || s.until.is_some_and(|u| u > Instant::now())
    }
}

/// Channel of the account, for callers that only have the context.
pub fn channel_of(ctx: &LaneCtx) -> Channel {
    ctx.account.channel
}
