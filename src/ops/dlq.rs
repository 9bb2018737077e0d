//! Dead-letter use cases: list them, plan a replay, execute it. They return data; the
//! command line (`cli::dlq`) parses, asks and prints.
//!
//! Every dead letter is published to the `wxdispatch.dead` queue *and* recorded in the
//! `dead_letters` table (with its body); the table is what these use cases work on, because it
//! can be filtered and it remembers what was replayed (`replayed_at`).
//!
//! ## Replay, and why it is safe
//!
//! A dead-lettered job's `deliveries` row is `dead`, a terminal status: the worker's claim
//! treats a redelivered job in a terminal status as done. So replaying one dead letter is,
//! in this order:
//!
//! 1. in one transaction: reset the delivery row `dead` → `retrying` (`error = 'replayed'`,
//!    retry budget restarted) and record that in `delivery_events`. A row that is `sent` (or
//!    `failed`, reported after a send) is never touched: that dead letter is skipped;
//! 2. wait for the account's rate limiter, then publish the body to exchange `wxdispatch`
//!    with routing key = account, with publisher confirms;
//! 3. set `dead_letters.replayed_at`.
//!
//! The reset is committed *before* the publish, so the worker can never see the replayed
//! message while the row still says `dead`. A crash between the steps is harmless: after 1
//! the row is `retrying` with nothing published, and the dead letter is still unreplayed, so
//! the next `dlq replay` publishes it; after 2 the worker sends it once (a later replay finds
//! the row `sent` and skips it). A failed publish puts the row back to `dead`. Only one
//! `dlq replay` runs at a time (a Postgres advisory lock).
//!
//! Replay goes oldest first, so one conversation's replayed jobs keep their order.
//!
//! Reason words are plain strings here (`Filter::reason`, `DeadLetterRow::reason`); they
//! become `crate::domain::reason::Reason` once that enum exists.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU32;

use anyhow::Context;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use crate::broker::{self, Publisher};
use crate::config::{AccountConfig, Config};
use crate::store::dead_letters::{self, Db, Reset};
use crate::store::{self, Status};

pub use crate::store::dead_letters::{BodyDigest, DeadLetterFilter as Filter, DeadLetterRow};

/// Why a dead letter is not replayed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Skip {
    /// The body could not be read as a job when it died: there is no job to replay.
    NoJobId,
    /// Its account is not in the configuration (e.g. an `unknown_account` dead letter): add
    /// the account, then replay.
    AccountNotConfigured(String),
    /// The job was sent after all (its row is `sent` or `failed`): never sent twice.
    AlreadySent,
    /// The delivery has another final status (e.g. `cancelled`, `expired`).
    Final(String),
    /// Another dead letter of the same job (account and job id) is replayed in this run (the
    /// newest one).
    DuplicateJobId,
    /// Replayed meanwhile, or deleted.
    Gone,
    /// The row keeps only the first bytes of the body (it was longer than
    /// `worker.dead_letter_body_bytes`): never published as if it were the job. The whole
    /// body is in the `wxdispatch.dead` queue.
    Truncated { bytes: i64 },
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skip::NoJobId => f.write_str("no job id (the body was not a readable job)"),
            Skip::AccountNotConfigured(a) => write!(f, "account '{a}' is not configured"),
            Skip::AlreadySent => f.write_str("the job was sent meanwhile"),
            Skip::Final(s) => write!(f, "the delivery is {s}"),
            Skip::DuplicateJobId => {
                f.write_str("a newer dead letter of the same job is replayed instead")
            }
            Skip::Gone => f.write_str("replayed or deleted meanwhile"),
            Skip::Truncated { bytes } => write!(
                f,
                "the row keeps only the first bytes of the {bytes}-byte body; the whole body is in the wxdispatch.dead queue (its sha256 is in `dlq list --json`)"
            ),
        }
    }
}

/// A dead letter and why it is skipped.
#[derive(Debug, Clone)]
pub struct Skipped {
    pub dead_letter: DeadLetterRow,
    pub why: Skip,
}

/// What a replay will do (or, for a dry run, would do): decided from the database before
/// anything is published, so the operator confirms exactly this.
#[derive(Debug, Clone, Default)]
pub struct ReplayPlan {
    /// Oldest first: the order they are re-published in.
    pub replay: Vec<DeadLetterRow>,
    pub skipped: Vec<Skipped>,
}

/// What a replay did.
#[derive(Debug, Clone, Default)]
pub struct ReplaySummary {
    /// Re-published (for a dry run: would be).
    pub replayed: Vec<DeadLetterRow>,
    pub skipped: Vec<Skipped>,
    pub dry_run: bool,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayOptions {
    /// Replay at most this many (oldest matching first).
    pub limit: Option<i64>,
    /// Decide, report, change nothing.
    pub dry_run: bool,
    /// Whether the caller wants progress shown. [`replay`] has no display to show it on
    /// (the command line passes its progress bar to [`execute_replay`]), so it ignores this.
    pub progress: bool,
}

/// A replay that could not run (as opposed to one dead letter that failed).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("another `wxdispatch dlq replay` is running; try again when it is done")]
    AlreadyRunning,
}

/// What a replay reports while it publishes (the command line draws a progress bar).
pub trait ReplayProgress {
    /// Publishing starts, `total` dead letters to go.
    fn start(&mut self, _total: usize) {}
    /// One more dead letter is done (re-published, or skipped at the last moment).
    fn advance(&mut self) {}
    /// Publishing ended: `completed` is false when it stopped at a failure.
    fn finish(&mut self, _completed: bool) {}
}

/// No progress shown.
impl ReplayProgress for () {}

/// A note for a filter that names something no dead letter has (likely a typo).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterHint {
    /// `account` or `reason`.
    pub field: &'static str,
    pub value: String,
    /// Every value of `field` that dead letters have.
    pub seen: Vec<String>,
}

/// `no dead letter has reason 'config_eror' (reasons seen: config_error, invalid_recipient)`.
impl fmt::Display for FilterHint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (field, value) = (self.field, &self.value);
        write!(f, "no dead letter has {field} '{value}' (")?;
        if self.seen.is_empty() {
            f.write_str("there are no dead letters)")
        } else {
            write!(f, "{field}s seen: {})", self.seen.join(", "))
        }
    }
}

/// Dead letters matching `filter`, newest first, at most `limit` (all when `None`).
pub async fn list_dead_letters(
    db: &impl Db,
    filter: &Filter,
    include_replayed: bool,
    limit: Option<i64>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let rows = dead_letters::list(db, filter, include_replayed, limit).await?;
    dead_letters::with_body_digests(db, rows).await
}

/// When `filter` names an account or reason that no dead letter has, say so.
pub async fn filter_hint(db: &impl Db, filter: &Filter) -> anyhow::Result<Option<FilterHint>> {
    if let Some(account) = &filter.account {
        let seen = dead_letters::accounts(db).await?;
        if !seen.contains(account) {
            return Ok(Some(FilterHint {
                field: "account",
                value: account.clone(),
                seen,
            }));
        }
    }
    if let Some(reason) = &filter.reason {
        let seen = dead_letters::reasons(db).await?;
        if !seen.contains(reason) {
            return Ok(Some(FilterHint {
                field: "reason",
                value: reason.clone(),
                seen,
            }));
        }
    }
    Ok(None)
}

/// Decide which unreplayed dead letters matching `filter` can be replayed.
pub async fn plan_replay(
    db: &impl Db,
    cfg: &Config,
    filter: &Filter,
    limit: Option<i64>,
) -> anyhow::Result<ReplayPlan> {
    let rows = dead_letters::unreplayed(db, filter, limit).await?;
    let rows = dead_letters::with_body_digests(db, rows).await?;
    let jobs: Vec<(&str, &str)> = rows
        .iter()
        .filter_map(|r| Some((r.account.as_str(), r.job_id.as_deref()?)))
        .collect();
    let statuses = dead_letters::delivery_statuses(db, &jobs).await?;
    Ok(decide(rows, &statuses, |account| {
        cfg.account(account).is_some()
    }))
}

/// The plan from the dead letters (oldest first), their deliveries' statuses by (account,
/// job id) and which accounts are configured.
fn decide(
    rows: Vec<DeadLetterRow>,
    statuses: &HashMap<(String, String), String>,
    configured: impl Fn(&str) -> bool,
) -> ReplayPlan {
    // Of several dead letters of one job (account and job id), the newest is replayed.
    let mut newest: HashMap<(&str, &str), i64> = HashMap::new();
    for r in &rows {
        if let Some(j) = r.job_id.as_deref() {
            newest.insert((r.account.as_str(), j), r.id);
        }
    }
    let mut plan = ReplayPlan::default();
    for r in &rows {
        let skip = match r.job_id.as_deref() {
            None => Some(Skip::NoJobId),
            Some(_) if !configured(&r.account) => {
                Some(Skip::AccountNotConfigured(r.account.clone()))
            }
            Some(_) if r.body.as_ref().is_some_and(|b| b.truncated) => Some(Skip::Truncated {
                bytes: r.body.as_ref().map_or(0, |b| b.bytes),
            }),
            Some(j) if newest.get(&(r.account.as_str(), j)) != Some(&r.id) => {
                Some(Skip::DuplicateJobId)
            }
            Some(j) => statuses
                .get(&(r.account.clone(), j.to_owned()))
                .and_then(|s| skip_for_status(s)),
        };
        match skip {
            Some(why) => plan.skipped.push(Skipped {
                dead_letter: r.clone(),
                why,
            }),
            None => plan.replay.push(r.clone()),
        }
    }
    plan
}

/// A delivery in this status must not be replayed (`None`: go ahead).
fn skip_for_status(status: &str) -> Option<Skip> {
    match Status::parse(status) {
        Some(Status::Sent | Status::Failed) => Some(Skip::AlreadySent),
        Some(Status::Dead) | Some(Status::Accepted | Status::Retrying | Status::Scheduled) => None,
        Some(other) => Some(Skip::Final(other.as_str().to_owned())),
        None => Some(Skip::Final(status.to_owned())),
    }
}

/// Plan and (unless `dry_run`) execute a replay: connects to Postgres and RabbitMQ itself.
pub async fn replay(
    cfg: &Config,
    filter: &Filter,
    opts: ReplayOptions,
) -> anyhow::Result<ReplaySummary> {
    let pool = store::connect_pool(cfg).await?;
    let res = async {
        let plan = plan_replay(&pool, cfg, filter, opts.limit).await?;
        if opts.dry_run {
            return Ok(ReplaySummary {
                replayed: plan.replay,
                skipped: plan.skipped,
                dry_run: true,
            });
        }
        execute_replay(cfg, &pool, plan, &mut ()).await
    }
    .await;
    pool.close().await;
    res
}

/// Re-publish the plan's dead letters (see the module docs for the steps and their order).
/// Stops at the first failure to publish (the broker is gone: the rest would fail too).
pub async fn execute_replay(
    cfg: &Config,
    db: &impl Db,
    plan: ReplayPlan,
    progress: &mut (dyn ReplayProgress + Send),
) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary {
        replayed: Vec::with_capacity(plan.replay.len()),
        skipped: plan.skipped,
        dry_run: false,
    };
    if plan.replay.is_empty() {
        return Ok(summary);
    }
    let Some(lock) = dead_letters::try_replay_lock(db).await? else {
        return Err(ReplayError::AlreadyRunning.into());
    };
    let res = replay_locked(cfg, db, plan.replay, progress, &mut summary).await;
    lock.unlock().await;
    res.map(|()| summary)
}

async fn replay_locked(
    cfg: &Config,
    db: &impl Db,
    items: Vec<DeadLetterRow>,
    progress: &mut (dyn ReplayProgress + Send),
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-dlq-replay").await?;
    let res = async {
        broker::declare_topology(&conn, cfg).await?;
        let publisher = Publisher::new(&conn).await?;
        let mut limiters: HashMap<String, Option<DefaultDirectRateLimiter>> = HashMap::new();
        let total = items.len();
        progress.start(total);
        for item in items {
            let Some(account) = cfg.account(&item.account) else {
                summary.skipped.push(Skipped {
                    why: Skip::AccountNotConfigured(item.account.clone()),
                    dead_letter: item,
                });
                continue;
            };
            let limiter = limiters
                .entry(account.name.clone())
                .or_insert_with(|| account_limiter(account));
            if let Some(l) = limiter {
                l.until_ready().await;
            }
            match replay_one(db, &publisher, &item).await {
                Ok(None) => summary.replayed.push(item),
                Ok(Some(why)) => summary.skipped.push(Skipped {
                    dead_letter: item,
                    why,
                }),
                Err(e) => {
                    progress.finish(false);
                    return Err(e.context(format!(
                        "replay stopped after {} of {total} dead letter(s)",
                        summary.replayed.len()
                    )));
                }
            }
            progress.advance();
        }
        progress.finish(true);
        anyhow::Ok(())
    }
    .await;
    let _ = conn.close(200, "replay done".into()).await;
    res
}

/// The account's rate limit, as its lane applies it (`None`: unlimited).
fn account_limiter(account: &AccountConfig) -> Option<DefaultDirectRateLimiter> {
    account.rate.period().and_then(|p| {
        let burst = NonZeroU32::new(account.rate.burst()).unwrap_or(NonZeroU32::MIN);
        Quota::with_period(p).map(|q| RateLimiter::direct(q.allow_burst(burst)))
    })
}

/// Replay one dead letter: `Ok(None)` when re-published, `Ok(Some(skip))` when it must not be.
async fn replay_one(
    db: &impl Db,
    publisher: &Publisher,
    dl: &DeadLetterRow,
) -> anyhow::Result<Option<Skip>> {
    let Some(job_id) = dl.job_id.as_deref() else {
        return Ok(Some(Skip::NoJobId));
    };
    let ctx = || format!("replaying dead letter {} (job {job_id})", dl.id);
    let (body, before) =
        match dead_letters::reset_for_replay(db, dl.id, &dl.account, job_id, skip_for_status)
            .await
            .with_context(ctx)?
        {
            Reset::Gone => return Ok(Some(Skip::Gone)),
            Reset::Skip(why) => return Ok(Some(why)),
            Reset::Ready { body, before } => (body, before),
        };
    if let Err(e) = publisher.publish_job(&dl.account, job_id, &body).await {
        // If the message reached the broker after all, the worker finds `dead` and sends
        // nothing; the dead letter stays unreplayed for the next attempt.
        if let Some(b) = before
            && let Err(back) = dead_letters::put_back(db, &dl.account, job_id, dl.id, b).await
        {
            tracing::warn!(job.id = job_id, error = %back, "could not put the delivery back to dead after a failed replay; it stays 'retrying' until replayed again");
        }
        return Err(e).with_context(ctx);
    }
    dead_letters::mark_replayed(db, dl.id)
        .await
        .with_context(|| {
            format!(
                "dead letter {} (job {job_id}) was re-published but not marked replayed",
                dl.id
            )
        })?;
    // debug, not info: one line per job would tear through the progress bar.
    tracing::debug!(dead_letter = dl.id, job.id = job_id, account = %dl.account, "dead letter replayed");
    Ok(None)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;

    #[test]
    fn only_dead_or_unfinished_deliveries_are_replayed() {
        assert_eq!(skip_for_status("dead"), None);
        assert_eq!(skip_for_status("retrying"), None);
        assert_eq!(skip_for_status("accepted"), None);
        assert_eq!(skip_for_status("sent"), Some(Skip::AlreadySent));
        assert_eq!(skip_for_status("failed"), Some(Skip::AlreadySent));
        assert_eq!(
            skip_for_status("cancelled"),
            Some(Skip::Final("cancelled".into()))
        );
        assert_eq!(skip_for_status("weird"), Some(Skip::Final("weird".into())));
    }

    fn dl(id: i64, job: Option<&str>, account: &str) -> DeadLetterRow {
        DeadLetterRow {
            id,
            job_id: job.map(str::to_owned),
            message_id: None,
            account: account.into(),
            reason: "config_error".into(),
            errcode: None,
            errmsg: None,
            attempts: 1,
            dead_at: Utc::now(),
            replayed_at: None,
            body: None,
        }
    }

    #[test]
    fn a_plan_replays_the_newest_dead_letter_of_a_job_and_says_why_it_skips_the_rest() {
        let rows = vec![
            dl(1, Some("a"), "kf"),
            dl(2, None, "kf"),
            dl(3, Some("b"), "ghost"),
            dl(4, Some("a"), "kf"),
            dl(5, Some("c"), "kf"),
            dl(6, Some("d"), "kf"),
        ];
        let statuses = HashMap::from([
            (("kf".to_owned(), "a".to_owned()), "dead".to_owned()),
            (("kf".to_owned(), "c".to_owned()), "sent".to_owned()),
        ]);
        let plan = decide(rows, &statuses, |a| a == "kf");
        let replay: Vec<i64> = plan.replay.iter().map(|r| r.id).collect();
        assert_eq!(replay, vec![4, 6], "oldest first; no row yet is replayable");
        let skipped: Vec<(i64, Skip)> = plan
            .skipped
            .iter()
            .map(|s| (s.dead_letter.id, s.why.clone()))
            .collect();
        assert_eq!(
            skipped,
            vec![
                (1, Skip::DuplicateJobId),
                (2, Skip::NoJobId),
                (3, Skip::AccountNotConfigured("ghost".into())),
                (5, Skip::AlreadySent),
            ]
        );
    }

    #[test]
    fn the_same_job_id_on_two_accounts_is_two_jobs() {
        let rows = vec![dl(1, Some("a"), "kf"), dl(2, Some("a"), "bot")];
        let statuses = HashMap::from([
            (("kf".to_owned(), "a".to_owned()), "sent".to_owned()),
            (("bot".to_owned(), "a".to_owned()), "dead".to_owned()),
        ]);
        let plan = decide(rows, &statuses, |_| true);
        let replay: Vec<i64> = plan.replay.iter().map(|r| r.id).collect();
        assert_eq!(replay, vec![2], "bot's job is dead: replayed");
        let skipped: Vec<(i64, Skip)> = plan
            .skipped
            .iter()
            .map(|s| (s.dead_letter.id, s.why.clone()))
            .collect();
        assert_eq!(skipped, vec![(1, Skip::AlreadySent)], "kf's job was sent");
    }

    #[test]
    fn filter_hints_name_what_was_seen() {
        let hint = FilterHint {
            field: "reason",
            value: "config_eror".into(),
            seen: vec!["config_error".into(), "invalid_recipient".into()],
        };
        assert_eq!(
            hint.to_string(),
            "no dead letter has reason 'config_eror' (reasons seen: config_error, invalid_recipient)"
        );
        let none = FilterHint {
            field: "account",
            value: "kf".into(),
            seen: vec![],
        };
        assert_eq!(
            none.to_string(),
            "no dead letter has account 'kf' (there are no dead letters)"
        );
    }
}
