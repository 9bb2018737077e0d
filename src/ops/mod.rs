//! Operating it: dead-letter tooling (`dlq list`, `dlq replay`) and delivery statistics
//! (`stats`), read from Postgres.
//!
//! Every dead letter is published to the `wxdispatch.dead` queue *and* recorded in the
//! `dead_letters` table (with its body); the table is what these commands work on, because it
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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::io::{BufRead, IsTerminal, Write};
use std::num::NonZeroU32;

use anyhow::Context;
use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::broker::{self, Publisher};
use crate::config::{AccountConfig, Config};
use crate::store::{self, Status};

/// `dlq list` shows this many rows unless `--limit` says otherwise: enough to see a pattern,
/// short enough for a terminal.
pub const DEFAULT_LIST_LIMIT: i64 = 50;
/// Replays of more dead letters than this show a progress bar (fewer finish at once).
const PROGRESS_MIN_ITEMS: usize = 10;
/// Skip summaries name at most this many dead-letter ids per reason.
const MAX_IDS_SHOWN: usize = 10;
/// `dlq list` cuts the platform's errmsg to this many bytes to keep one line per row.
const ERRMSG_WIDTH: usize = 48;
/// Key of the advisory lock that lets one `dlq replay` run at a time.
const REPLAY_LOCK: &str = "wxdispatch.dlq.replay";
/// The `deliveries.error` of a row reset by a replay.
const REPLAYED_ERROR: &str = "replayed";
/// Reason words are snake_case and short (see `job::reason` and `policy`).
const MAX_REASON_LEN: usize = 64;

// ---------------------------------------------------------------------------- CLI arguments

/// `wxdispatch dlq …`
#[derive(Debug, clap::Args)]
pub struct DlqArgs {
    #[command(subcommand)]
    pub command: DlqCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum DlqCommand {
    /// List dead letters, newest first.
    List(ListArgs),
    /// Re-publish matching dead letters to their account's lane (after fixing the cause).
    Replay(ReplayArgs),
}

/// Which dead letters a command works on. All given filters must match.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Filter {
    /// Only this account (the routing key the job was published with).
    #[arg(long)]
    pub account: Option<String>,
    /// Only this reason, e.g. config_error, invalid_recipient, retries_exhausted.
    #[arg(long, value_parser = parse_reason)]
    pub reason: Option<String>,
    /// Only this platform errcode, e.g. 95017.
    #[arg(long, allow_negative_numbers = true)]
    pub errcode: Option<i64>,
    /// Only dead letters since then: a duration back from now (90s, 30m, 2h, 7d, 1h30m), an
    /// RFC 3339 time (2026-11-21T10:00:00Z) or a date (2026-11-21, midnight UTC).
    #[arg(long, value_name = "DURATION|TIME", value_parser = parse_since)]
    pub since: Option<DateTime<Utc>>,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// Show at most this many rows.
    #[arg(long, default_value_t = DEFAULT_LIST_LIMIT, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: i64,
    /// Also show dead letters that were already replayed.
    #[arg(long)]
    pub include_replayed: bool,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub filter: Filter,
    /// Replay at most this many (the oldest matching first).
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    pub limit: Option<i64>,
    /// Show what would be replayed; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation (required when stdin is not a terminal).
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// `wxdispatch stats`
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Deliveries created (and dead letters recorded) since then: a duration back from now
    /// (30m, 24h, 7d) or an RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME", default_value = "24h", value_parser = parse_since)]
    pub since: DateTime<Utc>,
    /// Only this account.
    #[arg(long)]
    pub account: Option<String>,
    /// One JSON object instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// A usage problem found after parsing (exit code 2 in `cli`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// `--since`: a duration back from now, an RFC 3339 time or a date.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_since_at(s, Utc::now())
}

/// [`parse_since`] relative to `now` (pure, for tests).
pub fn parse_since_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc());
    }
    let d = parse_duration(s).ok_or_else(|| {
        format!(
            "expected a duration like 90s, 30m, 2h, 7d or 1h30m, or a time like 2026-11-21T10:00:00Z, got '{s}'"
        )
    })?;
    now.checked_sub_signed(d)
        .ok_or_else(|| format!("'{s}' reaches too far back"))
}

/// `90s`, `30m`, `2h`, `7d`, `2w`, or a sequence like `1h30m`. Every number needs a unit.
fn parse_duration(s: &str) -> Option<TimeDelta> {
    if s.is_empty() {
        return None;
    }
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            'w' => 7 * 86_400,
            _ => return None,
        };
        if digits.is_empty() {
            return None;
        }
        let n: i64 = digits.parse().ok()?;
        digits.clear();
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !digits.is_empty() {
        return None;
    }
    TimeDelta::try_seconds(total)
}

/// `--reason`: a snake_case word.
pub fn parse_reason(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_REASON_LEN
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "a reason is a snake_case word like config_error or invalid_recipient, got '{s}'"
        ))
    }
}

// ---------------------------------------------------------------------------- listing

/// One row of `dead_letters` (without the body).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterRow {
    pub id: i64,
    /// `None` when the body could not be read as a job (it cannot be replayed).
    pub job_id: Option<String>,
    pub account: String,
    pub reason: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: i32,
    pub dead_at: DateTime<Utc>,
    pub replayed_at: Option<DateTime<Utc>>,
}

impl DeadLetterRow {
    fn from_row(r: &sqlx::postgres::PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            id: r.try_get("id")?,
            job_id: r.try_get("job_id")?,
            account: r.try_get("account")?,
            reason: r.try_get("reason")?,
            errcode: r.try_get("errcode")?,
            errmsg: r.try_get("errmsg")?,
            attempts: r.try_get("attempts")?,
            dead_at: r.try_get("dead_at")?,
            replayed_at: r.try_get("replayed_at")?,
        })
    }
}

/// Where `dead_letters` lives may not be migrated yet: say what to do.
const NOT_MIGRATED_HINT: &str = "reading dead letters (has `wxdispatch migrate` run?)";

/// Dead letters matching `filter`, newest first, at most `limit` (all when `None`).
pub async fn list_dead_letters(
    pool: &PgPool,
    filter: &Filter,
    include_replayed: bool,
    limit: Option<i64>,
) -> anyhow::Result<Vec<DeadLetterRow>> {
    let rows = sqlx::query(
        "SELECT id, job_id, account, reason, errcode, errmsg, attempts, dead_at, replayed_at
         FROM dead_letters
         WHERE ($1::text IS NULL OR account = $1)
           AND ($2::text IS NULL OR reason = $2)
           AND ($3::bigint IS NULL OR errcode = $3)
           AND ($4::timestamptz IS NULL OR dead_at >= $4)
           AND ($5 OR replayed_at IS NULL)
         ORDER BY dead_at DESC, id DESC
         LIMIT $6",
    )
    .bind(&filter.account)
    .bind(&filter.reason)
    .bind(filter.errcode)
    .bind(filter.since)
    .bind(include_replayed)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context(NOT_MIGRATED_HINT)?;
    rows.iter()
        .map(DeadLetterRow::from_row)
        .collect::<Result<_, _>>()
        .context("reading dead letters")
}

/// A note when a filter names something no dead letter has (likely a typo), e.g.
/// `no dead letter has reason 'config_eror' (reasons seen: config_error, invalid_recipient)`.
async fn filter_hint(pool: &PgPool, filter: &Filter) -> anyhow::Result<Option<String>> {
    for (column, value) in [("account", &filter.account), ("reason", &filter.reason)] {
        let Some(value) = value else { continue };
        let seen: Vec<String> = match column {
            "account" => {
                sqlx::query_scalar("SELECT DISTINCT account FROM dead_letters ORDER BY 1")
                    .fetch_all(pool)
                    .await?
            }
            _ => {
                sqlx::query_scalar("SELECT DISTINCT reason FROM dead_letters ORDER BY 1")
                    .fetch_all(pool)
                    .await?
            }
        };
        if !seen.contains(value) {
            let list = if seen.is_empty() {
                "there are no dead letters".to_owned()
            } else {
                format!("{column}s seen: {}", seen.join(", "))
            };
            return Ok(Some(format!(
                "no dead letter has {column} '{value}' ({list})"
            )));
        }
    }
    Ok(None)
}

// ---------------------------------------------------------------------------- replay

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
    /// Another dead letter of the same job id is replayed in this run (the newest one).
    DuplicateJobId,
    /// Replayed meanwhile, or deleted.
    Gone,
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
    /// Show a progress bar on stderr (when it is a terminal and the replay is not tiny).
    pub progress: bool,
}

/// Decide which unreplayed dead letters matching `filter` can be replayed.
pub async fn plan_replay(
    pool: &PgPool,
    cfg: &Config,
    filter: &Filter,
    limit: Option<i64>,
) -> anyhow::Result<ReplayPlan> {
    let rows = sqlx::query(
        "SELECT id, job_id, account, reason, errcode, errmsg, attempts, dead_at, replayed_at
         FROM dead_letters
         WHERE replayed_at IS NULL
           AND ($1::text IS NULL OR account = $1)
           AND ($2::text IS NULL OR reason = $2)
           AND ($3::bigint IS NULL OR errcode = $3)
           AND ($4::timestamptz IS NULL OR dead_at >= $4)
         ORDER BY dead_at, id
         LIMIT $5",
    )
    .bind(&filter.account)
    .bind(&filter.reason)
    .bind(filter.errcode)
    .bind(filter.since)
    .bind(limit)
    .fetch_all(pool)
    .await
    .context(NOT_MIGRATED_HINT)?;
    let rows: Vec<DeadLetterRow> = rows
        .iter()
        .map(DeadLetterRow::from_row)
        .collect::<Result<_, _>>()
        .context("reading dead letters")?;

    let ids: Vec<&str> = rows.iter().filter_map(|r| r.job_id.as_deref()).collect();
    let statuses: HashMap<String, String> =
        sqlx::query("SELECT job_id, status FROM deliveries WHERE job_id = ANY($1)")
            .bind(&ids)
            .fetch_all(pool)
            .await
            .context("reading the dead letters' deliveries")?
            .iter()
            .map(|r| Ok((r.try_get("job_id")?, r.try_get("status")?)))
            .collect::<Result<_, sqlx::Error>>()
            .context("reading the dead letters' deliveries")?;

    // Of several dead letters of one job, the newest is replayed.
    let mut newest: HashMap<&str, i64> = HashMap::new();
    for r in &rows {
        if let Some(j) = r.job_id.as_deref() {
            newest.insert(j, r.id);
        }
    }
    let mut plan = ReplayPlan::default();
    for r in &rows {
        let skip = match r.job_id.as_deref() {
            None => Some(Skip::NoJobId),
            Some(_) if cfg.account(&r.account).is_none() => {
                Some(Skip::AccountNotConfigured(r.account.clone()))
            }
            Some(j) if newest.get(j) != Some(&r.id) => Some(Skip::DuplicateJobId),
            Some(j) => statuses.get(j).and_then(|s| skip_for_status(s)),
        };
        match skip {
            Some(why) => plan.skipped.push(Skipped {
                dead_letter: r.clone(),
                why,
            }),
            None => plan.replay.push(r.clone()),
        }
    }
    Ok(plan)
}

/// A delivery in this status must not be replayed (`None`: go ahead).
fn skip_for_status(status: &str) -> Option<Skip> {
    match Status::parse(status) {
        Some(Status::Sent | Status::Failed) => Some(Skip::AlreadySent),
        Some(Status::Dead) | Some(Status::Accepted | Status::Retrying) => None,
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
    let plan = plan_replay(&pool, cfg, filter, opts.limit).await?;
    let res = if opts.dry_run {
        Ok(ReplaySummary {
            replayed: plan.replay,
            skipped: plan.skipped,
            dry_run: true,
        })
    } else {
        execute_replay(cfg, &pool, plan, opts.progress).await
    };
    pool.close().await;
    res
}

/// Re-publish the plan's dead letters (see the module docs for the steps and their order).
/// Stops at the first failure to publish (the broker is gone: the rest would fail too).
pub async fn execute_replay(
    cfg: &Config,
    pool: &PgPool,
    plan: ReplayPlan,
    progress: bool,
) -> anyhow::Result<ReplaySummary> {
    let mut summary = ReplaySummary {
        replayed: Vec::with_capacity(plan.replay.len()),
        skipped: plan.skipped,
        dry_run: false,
    };
    if plan.replay.is_empty() {
        return Ok(summary);
    }
    let mut lock = pool.acquire().await.context("connecting to the database")?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
        .bind(REPLAY_LOCK)
        .fetch_one(&mut *lock)
        .await
        .context("taking the replay lock")?;
    if !locked {
        anyhow::bail!("another `wxdispatch dlq replay` is running; try again when it is done");
    }
    let res = replay_locked(cfg, pool, plan.replay, progress, &mut summary).await;
    // Also released when the connection closes; unlock so a pooled connection does not keep it.
    let _ = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(REPLAY_LOCK)
        .execute(&mut *lock)
        .await;
    res.map(|()| summary)
}

async fn replay_locked(
    cfg: &Config,
    pool: &PgPool,
    items: Vec<DeadLetterRow>,
    progress: bool,
    summary: &mut ReplaySummary,
) -> anyhow::Result<()> {
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-dlq-replay").await?;
    let res = async {
        broker::declare_topology(&conn, cfg).await?;
        let publisher = Publisher::new(&conn).await?;
        let mut limiters: HashMap<String, Option<DefaultDirectRateLimiter>> = HashMap::new();
        let bar = (progress && items.len() > PROGRESS_MIN_ITEMS).then(|| progress_bar(items.len()));
        let total = items.len();
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
            match replay_one(pool, &publisher, &item).await {
                Ok(None) => summary.replayed.push(item),
                Ok(Some(why)) => summary.skipped.push(Skipped {
                    dead_letter: item,
                    why,
                }),
                Err(e) => {
                    if let Some(b) = &bar {
                        b.abandon();
                    }
                    return Err(e.context(format!(
                        "replay stopped after {} of {total} dead letter(s)",
                        summary.replayed.len()
                    )));
                }
            }
            if let Some(b) = &bar {
                b.inc(1);
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
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

fn progress_bar(len: usize) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "replaying {bar:40} {pos}/{len} ({per_sec}, eta {eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The delivery row as it was before a replay reset it (to put back if publishing fails).
struct Before {
    error: Option<String>,
    errcode: Option<i64>,
    first_attempt_at: Option<DateTime<Utc>>,
}

/// Replay one dead letter: `Ok(None)` when re-published, `Ok(Some(skip))` when it must not be.
async fn replay_one(
    pool: &PgPool,
    publisher: &Publisher,
    dl: &DeadLetterRow,
) -> anyhow::Result<Option<Skip>> {
    let Some(job_id) = dl.job_id.as_deref() else {
        return Ok(Some(Skip::NoJobId));
    };
    let ctx = || format!("replaying dead letter {} (job {job_id})", dl.id);
    let mut tx = pool.begin().await.with_context(ctx)?;
    let row = sqlx::query("SELECT body, replayed_at FROM dead_letters WHERE id = $1 FOR UPDATE")
        .bind(dl.id)
        .fetch_optional(&mut *tx)
        .await
        .with_context(ctx)?;
    let Some(row) = row else {
        return Ok(Some(Skip::Gone));
    };
    if row
        .try_get::<Option<DateTime<Utc>>, _>("replayed_at")?
        .is_some()
    {
        return Ok(Some(Skip::Gone));
    }
    let body: Vec<u8> = row.try_get("body")?;
    let delivery = sqlx::query(
        "SELECT status, attempts, error, errcode, first_attempt_at FROM deliveries
         WHERE job_id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut *tx)
    .await
    .with_context(ctx)?;
    let mut before = None;
    if let Some(d) = delivery {
        let status: String = d.try_get("status")?;
        if let Some(skip) = skip_for_status(&status) {
            return Ok(Some(skip));
        }
        if status == Status::Dead.as_str() {
            let attempts: i32 = d.try_get("attempts")?;
            before = Some(Before {
                error: d.try_get("error")?,
                errcode: d.try_get("errcode")?,
                first_attempt_at: d.try_get("first_attempt_at")?,
            });
            // The claim treats `dead` as done; `retrying` makes the worker send it again,
            // with a fresh retry budget.
            sqlx::query(
                "UPDATE deliveries SET status = 'retrying', error = $2, errcode = NULL,
                        first_attempt_at = now(), updated_at = now()
                 WHERE job_id = $1 AND status = 'dead'",
            )
            .bind(job_id)
            .bind(REPLAYED_ERROR)
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
            sqlx::query(
                "INSERT INTO delivery_events (job_id, status, attempts, error)
                 VALUES ($1, 'retrying', $2, $3)",
            )
            .bind(job_id)
            .bind(attempts)
            .bind(format!("replayed from dead letter {}", dl.id))
            .execute(&mut *tx)
            .await
            .with_context(ctx)?;
        }
        // accepted/retrying: a replay interrupted after its reset; publish again.
    }
    tx.commit().await.with_context(ctx)?;

    if let Err(e) = publisher.publish_job(&dl.account, job_id, &body).await {
        if let Some(b) = before {
            put_back(pool, job_id, dl.id, b).await;
        }
        return Err(e).with_context(ctx);
    }
    sqlx::query("UPDATE dead_letters SET replayed_at = now() WHERE id = $1")
        .bind(dl.id)
        .execute(pool)
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

/// Publishing failed after the reset: make the row `dead` again. If the message reached the
/// broker after all, the worker finds `dead` and sends nothing; the dead letter stays
/// unreplayed for the next attempt.
async fn put_back(pool: &PgPool, job_id: &str, dead_letter: i64, b: Before) {
    let res = async {
        let mut tx = pool.begin().await?;
        let updated = sqlx::query(
            "UPDATE deliveries SET status = 'dead', error = $2, errcode = $3, first_attempt_at = $4,
                    updated_at = now()
             WHERE job_id = $1 AND status = 'retrying' AND error = $5",
        )
        .bind(job_id)
        .bind(&b.error)
        .bind(b.errcode)
        .bind(b.first_attempt_at)
        .bind(REPLAYED_ERROR)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() > 0 {
            sqlx::query(
                "INSERT INTO delivery_events (job_id, status, attempts, errcode, error)
                 SELECT job_id, 'dead', attempts, errcode, $2 FROM deliveries WHERE job_id = $1",
            )
            .bind(job_id)
            .bind(format!(
                "replay of dead letter {dead_letter} failed to publish"
            ))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(job.id = job_id, error = %e, "could not put the delivery back to dead after a failed replay; it stays 'retrying' until replayed again");
    }
}

// ---------------------------------------------------------------------------- stats

/// Deliveries of one account by status.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AccountStats {
    pub account: String,
    pub total: i64,
    /// status → count (only statuses that occur).
    pub statuses: BTreeMap<String, i64>,
}

/// Dead letters of one account and reason.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ReasonStats {
    pub account: String,
    pub reason: String,
    pub count: i64,
    /// Not replayed yet.
    pub unreplayed: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub since: DateTime<Utc>,
    pub accounts: Vec<AccountStats>,
    pub dead_letters: Vec<ReasonStats>,
}

/// Deliveries created since `since` per account and status, and dead letters recorded since
/// `since` per account and reason.
pub async fn stats(
    pool: &PgPool,
    since: DateTime<Utc>,
    account: Option<&str>,
) -> anyhow::Result<Stats> {
    let rows = sqlx::query(
        "SELECT account, status, count(*) AS n FROM deliveries
         WHERE created_at >= $1 AND ($2::text IS NULL OR account = $2)
         GROUP BY account, status ORDER BY account, status",
    )
    .bind(since)
    .bind(account)
    .fetch_all(pool)
    .await
    .context("counting deliveries (has `wxdispatch migrate` run?)")?;
    let mut accounts: Vec<AccountStats> = Vec::new();
    for r in rows {
        let name: String = r.try_get("account")?;
        let status: String = r.try_get("status")?;
        let n: i64 = r.try_get("n")?;
        match accounts.last_mut() {
            Some(a) if a.account == name => {
                a.total += n;
                a.statuses.insert(status, n);
            }
            _ => accounts.push(AccountStats {
                account: name,
                total: n,
                statuses: BTreeMap::from([(status, n)]),
            }),
        }
    }
    let dead_letters = sqlx::query(
        "SELECT account, reason, count(*) AS n, count(*) FILTER (WHERE replayed_at IS NULL) AS open
         FROM dead_letters
         WHERE dead_at >= $1 AND ($2::text IS NULL OR account = $2)
         GROUP BY account, reason ORDER BY account, n DESC, reason",
    )
    .bind(since)
    .bind(account)
    .fetch_all(pool)
    .await
    .context(NOT_MIGRATED_HINT)?
    .iter()
    .map(|r| {
        Ok(ReasonStats {
            account: r.try_get("account")?,
            reason: r.try_get("reason")?,
            count: r.try_get("n")?,
            unreplayed: r.try_get("open")?,
        })
    })
    .collect::<Result<_, sqlx::Error>>()?;
    Ok(Stats {
        since,
        accounts,
        dead_letters,
    })
}

// ---------------------------------------------------------------------------- CLI commands

/// `wxdispatch dlq …`
pub async fn dlq(cfg: Config, args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List(a) => list_cmd(&cfg, a).await,
        DlqCommand::Replay(a) => replay_cmd(&cfg, a).await,
    }
}

async fn list_cmd(cfg: &Config, a: ListArgs) -> anyhow::Result<()> {
    let pool = store::connect_pool(cfg).await?;
    // One more than asked, to tell whether there are more.
    let mut rows =
        list_dead_letters(&pool, &a.filter, a.include_replayed, Some(a.limit + 1)).await?;
    let more = rows.len() as i64 > a.limit;
    rows.truncate(usize::try_from(a.limit).unwrap_or(usize::MAX));
    let hint = if rows.is_empty() {
        filter_hint(&pool, &a.filter).await?
    } else {
        None
    };
    pool.close().await;
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    if a.json {
        for r in &rows {
            let mut v = serde_json::to_value(r)?;
            if let Some(o) = v.as_object_mut() {
                o.insert("age_secs".into(), (now - r.dead_at).num_seconds().into());
            }
            writeln!(out, "{v}")?;
        }
    } else if rows.is_empty() {
        writeln!(out, "no dead letters match")?;
    } else {
        write_table(&mut out, &rows, a.include_replayed, now)?;
    }
    out.flush()?;
    if more {
        eprintln!(
            "showing the newest {}; more match (use --limit or narrow the filters)",
            a.limit
        );
    }
    if let Some(h) = hint {
        eprintln!("note: {h}");
    }
    Ok(())
}

async fn replay_cmd(cfg: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let pool = store::connect_pool(cfg).await?;
    let plan = plan_replay(&pool, cfg, &a.filter, a.limit).await?;
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    if plan.replay.is_empty() && plan.skipped.is_empty() {
        writeln!(out, "no unreplayed dead letters match")?;
        if let Some(h) = filter_hint(&pool, &a.filter).await? {
            eprintln!("note: {h}");
        }
        pool.close().await;
        return Ok(());
    }
    if a.dry_run {
        if plan.replay.is_empty() {
            writeln!(out, "nothing would be replayed")?;
        } else {
            writeln!(out, "would replay {} dead letter(s):", plan.replay.len())?;
            write_table(&mut out, &plan.replay, false, now)?;
        }
        write_skipped(&mut out, &plan.skipped)?;
        writeln!(out, "dry run: nothing changed")?;
        pool.close().await;
        return Ok(());
    }
    if !plan.replay.is_empty() && !a.yes {
        let question = format!(
            "replay {} dead letter(s) ({} skipped)? [y/N] ",
            plan.replay.len(),
            plan.skipped.len()
        );
        if !std::io::stdin().is_terminal() {
            pool.close().await;
            return Err(UsageError(format!(
                "refusing to replay {} dead letter(s) without --yes (stdin is not a terminal); check with --dry-run first",
                plan.replay.len()
            ))
            .into());
        }
        write!(out, "{question}")?;
        out.flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            writeln!(out, "nothing replayed")?;
            pool.close().await;
            return Ok(());
        }
    }
    drop(out);
    let res = execute_replay(cfg, &pool, plan, true).await;
    pool.close().await;
    let summary = res?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "replayed {} dead letter(s)", summary.replayed.len())?;
    write_skipped(&mut out, &summary.skipped)?;
    Ok(())
}

/// `skipped 2:` then one line per reason with the dead-letter ids.
fn write_skipped(out: &mut impl Write, skipped: &[Skipped]) -> std::io::Result<()> {
    if skipped.is_empty() {
        return Ok(());
    }
    let mut by_why: BTreeMap<&Skip, Vec<i64>> = BTreeMap::new();
    for s in skipped {
        by_why.entry(&s.why).or_default().push(s.dead_letter.id);
    }
    writeln!(out, "skipped {}:", skipped.len())?;
    for (why, ids) in by_why {
        let shown: Vec<String> = ids
            .iter()
            .take(MAX_IDS_SHOWN)
            .map(ToString::to_string)
            .collect();
        let more = if ids.len() > MAX_IDS_SHOWN {
            ", …"
        } else {
            ""
        };
        writeln!(
            out,
            "  {} × {why} (dead letter {}{more})",
            ids.len(),
            shown.join(", ")
        )?;
    }
    Ok(())
}

/// `3s`, `3m`, `2h`, `4d`.
pub fn format_age(d: TimeDelta) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3_600 => format!("{}m", s / 60),
        3_600..86_400 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}

fn write_table(
    out: &mut impl Write,
    rows: &[DeadLetterRow],
    show_replayed: bool,
    now: DateTime<Utc>,
) -> std::io::Result<()> {
    let mut header = vec![
        "ID", "JOB ID", "ACCOUNT", "REASON", "ERRCODE", "ATTEMPTS", "AGE",
    ];
    if show_replayed {
        header.push("REPLAYED");
    }
    header.push("ERROR");
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut c = vec![
                r.id.to_string(),
                r.job_id.clone().unwrap_or_else(|| "-".into()),
                r.account.clone(),
                r.reason.clone(),
                r.errcode.map_or_else(|| "-".into(), |c| c.to_string()),
                r.attempts.to_string(),
                format_age(now - r.dead_at),
            ];
            if show_replayed {
                c.push(
                    r.replayed_at
                        .map_or_else(|| "-".into(), |t| format!("{} ago", format_age(now - t))),
                );
            }
            c.push(one_line(r.errmsg.as_deref().unwrap_or(""), ERRMSG_WIDTH));
            c
        })
        .collect();
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    write_aligned(out, &header, &cells)
}

/// Columns separated by two spaces, each padded to its widest cell (the last not padded).
fn write_aligned(
    out: &mut impl Write,
    header: &[String],
    rows: &[Vec<String>],
) -> std::io::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    for line in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        let mut s = String::new();
        for (i, (c, w)) in line.iter().zip(&widths).enumerate() {
            if i + 1 == line.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.extend(std::iter::repeat_n(' ', w - c.chars().count() + 2));
            }
        }
        writeln!(out, "{}", s.trim_end())?;
    }
    Ok(())
}

/// Newlines and tabs from the platform's errmsg flattened, cut to `max` bytes.
fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    broker::truncate(&flat, max)
}

/// `wxdispatch stats`
pub async fn stats_cmd(cfg: Config, a: StatsArgs) -> anyhow::Result<()> {
    let pool = store::connect_pool(&cfg).await?;
    let res = stats(&pool, a.since, a.account.as_deref()).await;
    pool.close().await;
    let s = res?;
    let mut out = std::io::stdout().lock();
    if a.json {
        writeln!(out, "{}", serde_json::to_string(&s)?)?;
        return Ok(());
    }
    let ago = format_age(Utc::now() - s.since);
    let since_text = s.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    writeln!(out, "deliveries created since {} ({ago} ago)", since_text)?;
    if s.accounts.is_empty() {
        writeln!(out, "  none")?;
    } else {
        // Columns for the statuses that occur, in the lifecycle's order.
        let order = [
            Status::Accepted,
            Status::Retrying,
            Status::Sent,
            Status::Failed,
            Status::Dead,
            Status::Suppressed,
            Status::Expired,
            Status::Cancelled,
        ];
        let present: HashSet<&str> = s
            .accounts
            .iter()
            .flat_map(|a| a.statuses.keys().map(String::as_str))
            .collect();
        let mut cols: Vec<String> = order
            .iter()
            .map(|st| st.as_str())
            .filter(|st| present.contains(st))
            .map(str::to_owned)
            .collect();
        // Statuses this build does not know (a newer schema) still show.
        let mut unknown: Vec<String> = present
            .iter()
            .filter(|p| Status::parse(p).is_none())
            .map(|p| (*p).to_owned())
            .collect();
        unknown.sort();
        cols.extend(unknown);
        let mut header = vec!["ACCOUNT".to_owned(), "TOTAL".to_owned()];
        header.extend(cols.iter().map(|c| c.to_uppercase()));
        let rows: Vec<Vec<String>> = s
            .accounts
            .iter()
            .map(|a| {
                let mut r = vec![a.account.clone(), a.total.to_string()];
                r.extend(
                    cols.iter()
                        .map(|c| a.statuses.get(c).copied().unwrap_or(0).to_string()),
                );
                r
            })
            .collect();
        write_aligned(&mut out, &header, &rows)?;
    }
    writeln!(out)?;
    writeln!(out, "dead letters since {}", since_text)?;
    if s.dead_letters.is_empty() {
        writeln!(out, "  none")?;
    } else {
        let header: Vec<String> = ["ACCOUNT", "REASON", "COUNT", "UNREPLAYED"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let rows: Vec<Vec<String>> = s
            .dead_letters
            .iter()
            .map(|d| {
                vec![
                    d.account.clone(),
                    d.reason.clone(),
                    d.count.to_string(),
                    d.unreplayed.to_string(),
                ]
            })
            .collect();
        write_aligned(&mut out, &header, &rows)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn since_accepts_durations_times_and_dates() {
        let now = at("2026-11-21T12:00:00Z");
        let cases = [
            ("90s", "2026-11-21T11:58:30Z"),
            ("30m", "2026-11-21T11:30:00Z"),
            ("2h", "2026-11-21T10:00:00Z"),
            ("1h30m", "2026-11-21T10:30:00Z"),
            ("7d", "2026-11-14T12:00:00Z"),
            ("1w", "2026-11-14T12:00:00Z"),
            ("0s", "2026-11-21T12:00:00Z"),
            ("2026-11-20T08:00:00+08:00", "2026-11-20T00:00:00Z"),
            ("2026-11-01", "2026-11-01T00:00:00Z"),
        ];
        for (input, want) in cases {
            assert_eq!(parse_since_at(input, now), Ok(at(want)), "{input}");
        }
    }

    #[test]
    fn since_rejects_garbage_with_a_clear_message() {
        let now = at("2026-11-21T12:00:00Z");
        for bad in [
            "",
            "yesterday",
            "10",
            "h",
            "5x",
            "-3h",
            "2026-13-01",
            "99999999999999999999d",
        ] {
            let e = parse_since_at(bad, now).unwrap_err();
            assert!(
                e.contains("expected a duration") || e.contains("too far"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn reasons_are_snake_case_words() {
        assert!(parse_reason("config_error").is_ok());
        assert!(parse_reason("http_500").is_ok());
        for bad in ["", "Config", "config-error", "_x", "a b", &"x".repeat(65)] {
            assert!(parse_reason(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ages_are_short() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (60, "1m"),
            (3 * 60 + 5, "3m"),
            (2 * 3600, "2h"),
            (86_399, "23h"),
            (4 * 86_400 + 7, "4d"),
            (-5, "0s"),
        ];
        for (secs, want) in cases {
            assert_eq!(format_age(TimeDelta::seconds(secs)), want, "{secs}");
        }
    }

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

    #[test]
    fn tables_align_and_flatten_errmsgs() {
        let now = at("2026-11-21T12:00:00Z");
        let row = |id, job: Option<&str>, msg: &str| DeadLetterRow {
            id,
            job_id: job.map(str::to_owned),
            account: "kf".into(),
            reason: "config_error".into(),
            errcode: Some(95017),
            errmsg: Some(msg.into()),
            attempts: 1,
            dead_at: at("2026-11-21T11:57:00Z"),
            replayed_at: None,
        };
        let mut out = Vec::new();
        write_table(
            &mut out,
            &[
                row(12, Some("job-long-id-1"), "api\nswitch off"),
                row(3, None, ""),
            ],
            false,
            now,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("ID  JOB ID         ACCOUNT"), "{text}");
        assert!(lines[1].starts_with("12  job-long-id-1  kf "), "{text}");
        assert!(lines[1].contains(" 3m "), "{text}");
        assert!(lines[1].ends_with("api switch off"), "{text}");
        assert!(lines[2].starts_with("3   -              kf "), "{text}");
    }

    #[test]
    fn skip_summaries_group_by_reason() {
        let dl = |id| DeadLetterRow {
            id,
            job_id: None,
            account: "ghost".into(),
            reason: "unknown_account".into(),
            errcode: None,
            errmsg: None,
            attempts: 0,
            dead_at: Utc::now(),
            replayed_at: None,
        };
        let skipped = vec![
            Skipped {
                dead_letter: dl(1),
                why: Skip::NoJobId,
            },
            Skipped {
                dead_letter: dl(2),
                why: Skip::AccountNotConfigured("ghost".into()),
            },
            Skipped {
                dead_letter: dl(3),
                why: Skip::NoJobId,
            },
        ];
        let mut out = Vec::new();
        write_skipped(&mut out, &skipped).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("skipped 3:\n"), "{text}");
        assert!(text.contains("2 × no job id"), "{text}");
        assert!(text.contains("(dead letter 1, 3)"), "{text}");
        assert!(
            text.contains("1 × account 'ghost' is not configured (dead letter 2)"),
            "{text}"
        );
    }
}
