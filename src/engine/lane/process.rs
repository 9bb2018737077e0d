//! One job's outcome: wait behind a parked job of its conversation, claim its id, check the
//! allowance and the gate, then send with retries (backoff in process, then a delay tier).
//! Pure of acks and broker state: [`super::finish`] records the outcome and acks.

use std::time::{Duration, Instant};

use super::ctx::LaneCtx;
use super::gates::{self, BotGate};
use super::order::conversation_of;
use super::schedule;
use crate::config::Channel;
use crate::domain::allowance::{self, Allowance};
use crate::domain::job::{Gate, Job, JobKind};
use crate::domain::reason::Reason;
use crate::engine::hold::hold_until_written;
use crate::policy::outcome::Outcome;
use crate::policy::retry::RetryStep;
use crate::policy::{Action, Api, CallResult};
use crate::store::{Claim, ConvState};
use crate::telemetry as t;

/// How often a claim that collided with a concurrent one is retried before giving the
/// message back to the broker.
const CLAIM_BUSY_RETRIES: u32 = 50;
const CLAIM_BUSY_WAIT: Duration = Duration::from_millis(20);

/// Decide a job's outcome: claim, then send with retries (a broadcast job is fanned out by
/// [`fan_out`] instead, never by this).
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
    let (attempts, first_attempt, conv) = match claim(ctx, job).await {
        Ok(c) => c,
        Err(o) => return o,
    };
    // Not due yet: back to a delay tier (claimed first, so a job already sent is a duplicate
    // rather than a job that waits again).
    if let Some(o) = schedule::hold(ctx, job, attempts, parks).await {
        return o;
    }
    let first_attempt = schedule::retry_clock_start(first_attempt, job.not_before);
    if let Some(o) = check_conversation(ctx, job, attempts, conv.as_ref()) {
        return o;
    }
    let budget_left = ctx.retry.budget_left(first_attempt, chrono::Utc::now());
    if let JobKind::Recall(r) = &job.kind {
        // The target's msgid filled in (or the outcome that ends the recall here), the call
        // through the same loop as a send, then the target's row marked.
        let resolved = match super::recall::resolve(ctx, job, r, attempts).await {
            Ok(j) => j,
            Err(o) => return o,
        };
        let sent = send_with_retries(ctx, &resolved, None, attempts, parks, budget_left, bulk);
        return super::recall::mark_if_sent(ctx, job, r, sent.await).await;
    }
    send_with_retries(ctx, job, conv.as_ref(), attempts, parks, budget_left, bulk).await
}

/// Claim the job id: the attempts already made and the first attempt's time (a resumed
/// job), and what Postgres knows of the conversation; or the outcome that ends the job here
/// (a duplicate, or back to the broker).
async fn claim(
    ctx: &LaneCtx,
    job: &Job,
) -> Result<(i32, chrono::DateTime<chrono::Utc>, Option<ConvState>), Outcome> {
    let key = ctx.delivery_key(job);
    let now = chrono::Utc::now();
    for _ in 0..CLAIM_BUSY_RETRIES {
        let claimed = match ctx.store.claim(key.clone()).await {
            Ok(c) => c,
            // Refused by the database: held and retried here, not handed back (a redelivery
            // loop would burn the broker's delivery limit and dead-letter the job unrecorded).
            Err(e) => {
                let held = hold_until_written(ctx.hold(&job.job_id), "claim", e, || {
                    ctx.store.claim(key.clone())
                });
                match Box::pin(held).await {
                    Ok(c) => c,
                    // Shutting down: nothing was sent, so handing the job back is safe.
                    Err(e) => return Err(Outcome::Requeue { why: e.to_string() }),
                }
            }
        };
        match claimed {
            (Claim::New, c) => return Ok((0, now, c)),
            (
                Claim::Resume {
                    attempts,
                    first_attempt_at,
                },
                c,
            ) => return Ok((attempts, first_attempt_at.unwrap_or(now), c)),
            (Claim::Done(s), _) => return Err(Outcome::Duplicate(s.as_str())),
            (Claim::Busy, _) => tokio::time::sleep(CLAIM_BUSY_WAIT).await,
        }
    }
    Err(Outcome::Requeue {
        why: "job id is being claimed concurrently".into(),
    })
}

/// Fan a broadcast job out into its recipients' jobs (see [`crate::engine::broadcast`]).
pub(super) async fn fan_out(ctx: &LaneCtx, job: &Job, body: &[u8]) -> Outcome {
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

/// Before asking the platform: does the WeCom allowance still permit a message? A job the
/// platform would refuse anyway ends here, saving the customer's allowance for messages that
/// can succeed. (Whether a human serves is asked in [`send_with_retries`], which paces and
/// retries that query like a send.)
fn check_conversation(
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
    if ctx.account.channel != Channel::Wecom {
        return None;
    }
    let c = conv?;
    let dead = |reason: &str, errmsg: String| {
        Some(Outcome::Dead {
            reason: reason.into(),
            errcode: None,
            errmsg: Some(errmsg),
            attempts,
        })
    };
    match allowance::check(
        c.last_customer_msg_at,
        c.sent_since_customer,
        chrono::Utc::now(),
    ) {
        Allowance::Allowed => None,
        Allowance::WindowClosed { age } => dead(
            Reason::WindowClosed.as_str(),
            format!(
                "the customer's last message is {} h old (WeCom allows replies within 48 h)",
                age.num_hours()
            ),
        ),
        Allowance::QuotaUsed { sent } => dead(
            Reason::QuotaExhausted.as_str(),
            format!(
                "{sent} messages already sent since the customer's last message (WeCom allows 5)"
            ),
        ),
    }
}

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

/// Count a failed call's error and describe it (errcode, message) for the row and the dead
/// letter; `None` for a call that did not fail.
fn note_error(account: &str, res: &CallResult) -> Option<(Option<i64>, String)> {
    let (label, err) = match res {
        CallResult::Errcode { code, msg } => (code.to_string(), (Some(*code), msg.clone())),
        CallResult::Http(s) => (format!("http_{s}"), (None, format!("HTTP {s}"))),
        CallResult::Transport(e) => ("transport".to_owned(), (None, e.clone())),
        _ => return None,
    };
    metrics::counter!(t::ERRCODES, "account" => account.to_owned(), "errcode" => label)
        .increment(1);
    Some(err)
}

/// Attempt the job until it has an outcome: wait out the account's pause, pass the gate,
/// send (paced), and let [`crate::policy::classify`] and the retry schedule decide what follows.
///
/// Long: one loop whose steps (expiry, pause, gate, call, classify, retry step) read in the
/// order they happen; cut into pieces, each early return would need its own result type.
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
    // In-process backoff waits so far (throttle pauses do not count).
    let mut retries = 0u32;
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
        let gate_failed = match gates::check(ctx, job, conv).await {
            BotGate::HumanServes => {
                ctx.pause.release(probe);
                return Outcome::Suppressed { attempts };
            }
            BotGate::Open => None,
            BotGate::Failed(failed) => Some(failed),
            BotGate::UnknownState(detail) => {
                ctx.pause.release(probe);
                return Outcome::Dead {
                    reason: Reason::UnknownChatbotState.as_str().into(),
                    errcode: None,
                    errmsg: Some(detail),
                    attempts,
                };
            }
        };
        attempts += 1;
        tracing::Span::current().record("attempt", attempts);
        let (res, api) = match gate_failed {
            Some(failed) => failed,
            None => call(ctx, job, bulk).await,
        };
        let action = ctx.retry.classify(ctx.account.channel, api, &res, attempts);
        if let Some(e) = note_error(name, &res) {
            last_err = e;
        }
        ctx.pause.report(probe, &action);
        let dead = |reason: &str, last_err: (Option<i64>, String)| Outcome::Dead {
            reason: reason.into(),
            errcode: last_err.0,
            errmsg: Some(last_err.1),
            attempts,
        };
        match action {
            Action::Deliver => {
                let msgid = match res {
                    CallResult::Ok { msgid } => msgid,
                    _ => None,
                };
                if let JobKind::Transfer(tr) = &job.kind {
                    gates::transferred(ctx, job, tr).await;
                }
                return Outcome::Sent { attempts, msgid };
            }
            Action::DeadLetter { reason, alert } => {
                if alert {
                    tracing::error!(account = %name, errcode = ?last_err.0, errmsg = %last_err.1, "platform reports a configuration problem ({reason})");
                }
                return dead(reason.as_str(), last_err);
            }
            Action::HumanServing => {
                gates::human_took_over(ctx, job).await;
                return if job.gate == Gate::Bot {
                    Outcome::Suppressed { attempts }
                } else {
                    dead(Reason::HumanServing.as_str(), last_err)
                };
            }
            Action::Throttle { .. } => {
                // The account is paused (PauseGate); the job waits there without using its budget.
                metrics::counter!(t::RETRIES, "account" => name.clone(), "kind" => "throttle")
                    .increment(1);
                continue;
            }
            // gettoken refused the account's credentials: the account is paused until the
            // lane's prober gets a token (`super::credentials`); the job waits in the pause,
            // and an attempt that never reached the API does not count.
            Action::CredentialsRefused { .. } => {
                attempts -= 1;
                continue;
            }
            Action::Retry { .. } | Action::RefreshToken => {}
        }
        match ctx
            .retry
            .after_failure(retries, parks, budget_left, rand::random::<f32>())
        {
            RetryStep::Backoff(d) => {
                retries += 1;
                metrics::counter!(t::RETRIES, "account" => name.clone(), "kind" => "transient")
                    .increment(1);
                tracing::debug!(account = %name, attempts, delay_ms = d.as_millis() as u64, error = %last_err.1, "transient failure; retrying");
                tokio::time::sleep(d).await;
            }
            // In-process budget spent: park durably while the total budget lasts (the tier
            // wait must fit in it), so no message is held unacked for long.
            RetryStep::Park { tier_secs } => {
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
            RetryStep::Exhausted => return dead(Reason::RetriesExhausted.as_str(), last_err),
        }
    }
}

/// One platform call, paced, its latency measured.
async fn call(ctx: &LaneCtx, job: &Job, bulk: bool) -> (CallResult, Api) {
    pace(ctx, bulk).await;
    let t0 = Instant::now();
    let r = ctx.platform.execute(job).await;
    ctx.m.send_latency.record(t0.elapsed().as_secs_f64());
    r
}
