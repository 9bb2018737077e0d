//! The lane's consumer loop ([`run`]): take deliveries (prefetch- and byte-budget-bounded)
//! while the database is up and accepts writes, queue each behind its conversation, run one job per
//! conversation at a time up to `worker.concurrency`, and on shutdown give back what did not
//! finish.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use lapin::BasicProperties;
use lapin::message::Delivery;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use super::consumers::{CONSUME_RETRY, Consumers};
use super::ctx::LaneCtx;
use super::finish::finish;
use super::order::{Pending, REQUEUED, conversation_key, hand_back};
use super::parked::parks_of;
use super::process::{fan_out, process};
use super::schedule;
use crate::broker::acks::Acks;
use crate::broker::{self, Broker};
use crate::domain::job::{self, JobKind};
use crate::domain::reason::Reason;
use crate::engine::budget::Held;
use crate::policy::outcome::Outcome;
use crate::telemetry as t;

/// How often the lane's owner writes broadcast progress into `broadcasts`.
const BROADCAST_REFRESH: Duration = Duration::from_secs(2);

/// Consume the account's lane until `shutdown` fires; then stop consuming, give in-flight
/// jobs `worker.shutdown_grace_secs` to finish, and return (unfinished ones are released to
/// the broker when the AMQP channel closes). When the broker connection dies the lane
/// consumes again on the next one ([`Broker`]); what it held is redelivered.
///
/// Long: one `select!` over every event source of the lane (finished jobs, shutdown, database
/// health, both consumers) so that their order of precedence is visible in one place.
pub async fn run(
    ctx: Arc<LaneCtx>,
    broker: Arc<Broker>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    ctx.parked
        .load(&ctx.store, &ctx.account.name)
        .await
        .map_err(|e| anyhow::anyhow!("lane {}: loading parked jobs: {e:#}", ctx.account.name))?;
    let queue = broker::lane_queue(&ctx.account.name);
    let tag = format!("wxdispatch-{}-{}", std::process::id(), ctx.account.name);
    let Some(mut cons) = Consumers::open_retrying(&ctx, &broker, &tag, &shutdown).await else {
        return Ok(());
    };
    let refresher = spawn_broadcast_refresher(ctx.clone(), shutdown.clone());
    let prober = tokio::spawn(super::credentials::run(ctx.clone(), shutdown.clone()));
    // While gettoken refuses the credentials the lane takes no new deliveries either.
    let mut refused = ctx.pause.refused();
    // Held writes learn of the shutdown through the lane's context (see `engine::hold`).
    let stopping = {
        let (sd, stop) = (shutdown.clone(), ctx.stopping.clone());
        tokio::spawn(async move {
            sd.cancelled().await;
            stop.cancel();
        })
    };
    info!(account = %ctx.account.name, %queue, "lane consuming (active once the broker picks this consumer)");
    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(1.0);

    let sem = Arc::new(Semaphore::new(ctx.cfg.worker.concurrency));
    let tracker = TaskTracker::new();
    // Finished jobs report back here (an in-process queue, not an AMQP channel):
    // (conversation, whether its job was handed back to the broker).
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel::<(String, bool)>();
    // key present = a task runs for that conversation; the queue holds what waits behind it.
    let mut busy: HashMap<String, VecDeque<Pending>> = HashMap::new();

    let spawn = |key: String, p: Pending| {
        let ctx = ctx.clone();
        let sem = sem.clone();
        let finished = finished_tx.clone();
        let sd = shutdown.clone();
        tracker.spawn(async move {
            let permit = tokio::select! {
                biased;
                // Not started when the shutdown came: the job stays unacked and goes back to
                // the broker, in order, when the AMQP channel closes.
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
            let _ = finished.send((key, requeued));
        });
    };

    // Database health: while Postgres is unreachable the lane takes no new deliveries (the
    // jobs it holds wait inside the store for the database to come back).
    let mut db = ctx.store.health();
    // Held writes (the database refused a claim or a record; see `engine::hold`): while any
    // is held in this process the lane takes no new deliveries either.
    let mut held = ctx.store.write_hold().subscribe();
    let mut holding = false;
    // Whether this process has received a delivery since it (re)registered its consumer, i.e.
    // is the lane's active consumer. See [`on_activation`].
    let mut active = false;
    loop {
        let db_up = *db.borrow_and_update()
            && *held.borrow_and_update() == 0
            && !*refused.borrow_and_update();
        tokio::select! {
            biased;
            Some((key, requeued)) = finished_rx.recv() => {
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
            Ok(()) = held.changed() => {
                let now_holding = *held.borrow() > 0;
                if now_holding != holding {
                    holding = now_holding;
                    if holding {
                        warn!(account = %ctx.account.name, "the database refuses writes; lane stops taking new jobs while they are held");
                    } else {
                        info!(account = %ctx.account.name, "held writes accepted; lane takes new jobs again");
                    }
                }
            }
            _ = ctx.store.probe_until_up(), if !*db.borrow() => {}
            Ok(()) = refused.changed() => {}
            d = cons.consumer.next(), if db_up => match d {
                None | Some(Err(_)) => {
                    if let Some(Err(e)) = d {
                        warn!(account = %ctx.account.name, error = %e, "lane consumer failed; consuming again on a new AMQP channel");
                    } else {
                        warn!(account = %ctx.account.name, "lane consumer cancelled by the broker; consuming again");
                    }
                    metrics::gauge!(t::LANE_CONSUMERS, "account" => ctx.account.name.clone()).set(0.0);
                    // Deliveries of the old AMQP channel still queued here are skipped (their
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
                Some(Ok((delivery, held))) => {
                    if !active {
                        active = true;
                        on_activation(&ctx);
                    }
                    if let Some((key, p)) = enqueue(&ctx, &mut busy, (delivery, held), &cons.acks, false) {
                        spawn(key, p);
                    }
                }
            },
            // Broadcast recipients, after ordinary replies (biased select). A failure here
            // also fails the main consumer (same connection), which reopens both; until
            // then this arm stays quiet.
            d = cons.bulk.next(), if db_up => match d {
                None | Some(Err(_)) => {
                    if cons.amqp.status().connected() {
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
                Some(Ok((delivery, held))) => {
                    if let Some((key, p)) = enqueue(&ctx, &mut busy, (delivery, held), &cons.bulk_acks, true) {
                        spawn(key, p);
                    }
                }
            },
        }
    }

    // Graceful stop: no new deliveries; jobs already sending finish (within the grace period);
    // everything else — queued behind a conversation, waiting for a permit, or unfinished
    // when the grace period ends — stays unacked and goes back to the broker when the AMQP
    // channel closes. One close returns them all in delivery order; nacking the queued ones
    // one by one would not: RabbitMQ may hand those back before earlier deliveries that are
    // returned by the close, and a conversation would then be sent out of order after a
    // restart.
    refresher.abort();
    prober.abort();
    stopping.abort();
    ctx.stopping.cancel();
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

/// The lane's owner writes its account's broadcast progress into `broadcasts` every
/// [`BROADCAST_REFRESH`] until `shutdown`.
fn spawn_broadcast_refresher(
    ctx: Arc<LaneCtx>,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(BROADCAST_REFRESH);
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = shutdown.cancelled() => break }
            if let Err(e) = crate::engine::broadcast::refresh(&ctx.store, &ctx.account.name).await {
                tracing::debug!(account = %ctx.account.name, error = %format!("{e:#}"), "broadcast progress not refreshed");
            }
        }
    })
}

/// Parse a delivery and queue it behind its conversation. Returns it with its conversation
/// key when nothing of that conversation is running: the caller starts it now.
fn enqueue(
    ctx: &LaneCtx,
    busy: &mut HashMap<String, VecDeque<Pending>>,
    (delivery, held): (Delivery, Held),
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
        _held: held,
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
    // After a broker reconnect the deliveries of the old AMQP channel are void: the broker
    // has requeued them and will deliver them again.
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
            // A scheduled broadcast waits as one message and fans out once due.
            JobKind::Broadcast { .. } => match schedule::hold(&ctx, &job, 0, parks).await {
                Some(o) => o,
                None => {
                    // Its recipients' outcome events carry the broadcast's correlation_id and
                    // reply_to (README "Outcome events"): remembered before any recipient runs.
                    if let Err(e) = remember_route(&ctx, &job.job_id, &p.delivery.properties).await
                    {
                        return Outcome::Requeue {
                            why: format!("remembering the broadcast's reply route: {e:#}"),
                        };
                    }
                    Box::pin(fan_out(&ctx, &job, &p.delivery.data)).await
                }
            },
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
                reason: Reason::InternalError.into(),
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

/// Store a broadcast job's `correlation_id` / `reply_to` for its outcome events (nothing
/// when it has neither, or the account has `outcomes = false`).
async fn remember_route(
    ctx: &LaneCtx,
    job_id: &str,
    props: &BasicProperties,
) -> anyhow::Result<()> {
    if !ctx.account.outcomes {
        return Ok(());
    }
    let corr = props.correlation_id().as_ref().map(|s| s.as_str());
    let reply = props.reply_to().as_ref().map(|s| s.as_str());
    ctx.store
        .remember_outcome_route(&ctx.account.name, job_id, corr, reply)
        .await
}

/// Publish time: header `x-wxdispatch-published-ms` (set by the benchmark) or the AMQP
/// timestamp (seconds; set by `wxdispatch send`, `dlq replay` and broadcasts through
/// `Publisher::publish_job`).
fn published_at_ms(props: &BasicProperties) -> Option<i64> {
    if let Some(ms) = broker::header_str(props, broker::H_PUBLISHED_MS).and_then(|s| s.parse().ok())
    {
        return Some(ms);
    }
    props.timestamp().map(|s| s as i64 * 1000)
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
