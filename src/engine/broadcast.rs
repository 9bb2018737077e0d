//! Bulk broadcasts: one job, up to 100,000 recipients, one delivery each.
//!
//! A `broadcast` job arrives in the account's lane like any other. Fanning it out is
//! idempotent and crash-safe:
//!
//! 1. the `broadcasts` row is created (a broadcast whose fan-out already completed is not fanned
//!    out again: a second publish of the same broadcast sends nothing);
//! 2. one `deliveries` row per unique, valid recipient is created up front (status `accepted`,
//!    `broadcast_id` set, deterministic job id from [`job::derive_job_id`]), so progress and
//!    cancellation work from the first second;
//! 3. one ordinary send job per recipient is published (confirmed) to the account's *bulk* queue
//!    `wxdispatch.<account>.bulk`;
//! 4. the broadcast is marked `running` and its message acked.
//!
//! A crash anywhere repeats the steps; the claim dedupes recipients already sent. The lane
//! consumes the bulk queue next to the lane queue, and bulk jobs draw from a second limiter
//! holding `worker.broadcast_share` of the account's rate, so ordinary replies always find
//! capacity and keep their latency while a broadcast runs.

use std::collections::HashSet;

use anyhow::Context;
use serde_json::{Map, Value};
use sqlx::{PgPool, Row};

use crate::broker::Publisher;
use crate::config::AccountConfig;
use crate::domain::job::{self, Job, JobKind};
use crate::store::Store;

/// Rows inserted (and messages published) per round trip while fanning out.
const FANOUT_CHUNK: usize = 2_000;

/// Unique, valid recipients in order, and how many were dropped.
pub fn clean_recipients<'a>(raw: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Skipped) {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut skipped = Skipped::default();
    for r in raw {
        let r = r.trim();
        if r.is_empty() {
            skipped.blank += 1;
        } else if !job::valid_recipient(r) {
            skipped.invalid += 1;
            if skipped.examples.len() < 5 {
                skipped.examples.push(crate::broker::truncate(r, 40));
            }
        } else if !seen.insert(r.to_owned()) {
            skipped.duplicate += 1;
        } else {
            out.push(r.to_owned());
        }
    }
    (out, skipped)
}

/// What [`clean_recipients`] dropped.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub blank: usize,
    pub duplicate: usize,
    pub invalid: usize,
    /// A few of the invalid ids, for the summary.
    pub examples: Vec<String>,
}

impl Skipped {
    pub fn total(&self) -> usize {
        self.duplicate + self.invalid
    }
}

/// Fan a broadcast job out (see the module docs). Returns the number of recipients.
pub async fn fan_out(
    store: &Store,
    publisher: &Publisher,
    account: &AccountConfig,
    job: &Job,
    body: &[u8],
) -> anyhow::Result<usize> {
    let JobKind::Broadcast { recipients } = &job.kind else {
        anyhow::bail!("not a broadcast");
    };
    let pool = store.pool();
    let (recipients, skipped) = clean_recipients(recipients.iter().map(String::as_str));
    let message = job
        .message
        .as_ref()
        .map(|m| serde_json::json!({ m.msgtype.clone(): m.payload.clone() }))
        .unwrap_or(Value::Null);
    let status: Option<String> = sqlx::query_scalar(
        "INSERT INTO broadcasts (id, account, message, total, skipped, pending)
         VALUES ($1, $2, $3, $4, $5, $4)
         ON CONFLICT (id) DO UPDATE SET updated_at = now()
         RETURNING status",
    )
    .bind(&job.job_id)
    .bind(&account.name)
    .bind(&message)
    .bind(recipients.len() as i32)
    .bind(skipped.total() as i32)
    .fetch_optional(pool)
    .await
    .context("creating the broadcast")?;
    match status.as_deref() {
        Some("fanning_out") => {}
        // Fanned out before (a duplicate publish or a redelivery after the ack was lost).
        _ => return Ok(recipients.len()),
    }
    // The per-recipient job: the broadcast's own fields minus the recipient list.
    let template: Map<String, Value> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(mut o)) => {
            o.remove("to");
            o.remove("kind");
            o.remove("job_id");
            o.insert("broadcast_id".into(), Value::String(job.job_id.clone()));
            o
        }
        _ => anyhow::bail!("broadcast body is not a JSON object"),
    };
    let queue = crate::broker::bulk_queue(&account.name);
    for chunk in recipients.chunks(FANOUT_CHUNK) {
        let ids: Vec<String> = chunk
            .iter()
            .map(|r| job::derive_job_id(&job.job_id, r))
            .collect();
        insert_rows(pool, account, job, chunk, &ids).await?;
        let mut confirms = Vec::with_capacity(chunk.len());
        for (r, id) in chunk.iter().zip(&ids) {
            let mut o = template.clone();
            o.insert("job_id".into(), Value::String(id.clone()));
            o.insert("to".into(), Value::String(r.clone()));
            let bytes = serde_json::to_vec(&Value::Object(o))?;
            confirms.push(publisher.publish_to_queue(&queue, id, bytes));
        }
        for c in futures::future::join_all(confirms).await {
            c?;
        }
    }
    sqlx::query(
        "UPDATE broadcasts SET status = 'running', updated_at = now()
         WHERE id = $1 AND status = 'fanning_out'",
    )
    .bind(&job.job_id)
    .execute(pool)
    .await?;
    tracing::info!(account = %account.name, broadcast = %job.job_id, recipients = recipients.len(), skipped = skipped.total(), "broadcast fanned out");
    Ok(recipients.len())
}

async fn insert_rows(
    pool: &PgPool,
    account: &AccountConfig,
    job: &Job,
    recipients: &[String],
    ids: &[String],
) -> anyhow::Result<()> {
    // A broadcast cancelled while fanning out creates its remaining rows cancelled.
    sqlx::query(
        "INSERT INTO deliveries (job_id, account, channel, kind, recipient, open_kfid, broadcast_id, status)
         SELECT j, $3, $4, 'send', r, $5, $6,
                CASE WHEN (SELECT status FROM broadcasts WHERE id = $6) = 'cancelled'
                     THEN 'cancelled' ELSE 'accepted' END
         FROM UNNEST($1::text[], $2::text[]) AS t(j, r)
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(ids)
    .bind(recipients)
    .bind(&account.name)
    .bind(account.channel.as_str())
    .bind(&job.open_kfid)
    .bind(&job.job_id)
    .execute(pool)
    .await
    .context("creating broadcast deliveries")?;
    Ok(())
}

/// Progress of one broadcast, counted from its deliveries.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    pub id: String,
    pub account: String,
    pub status: String,
    pub total: i64,
    pub skipped: i64,
    pub sent: i64,
    pub failed: i64,
    pub dead: i64,
    pub suppressed: i64,
    pub expired: i64,
    pub cancelled: i64,
    pub pending: i64,
}

impl Progress {
    pub fn done(&self) -> i64 {
        self.total - self.pending
    }
    pub fn finished(&self) -> bool {
        matches!(self.status.as_str(), "done" | "cancelled") && self.pending == 0
    }
}

/// Count a broadcast's deliveries now (what `broadcast status` shows).
pub async fn progress(pool: &PgPool, id: &str) -> anyhow::Result<Option<Progress>> {
    let Some(b) =
        sqlx::query("SELECT account, status, total, skipped FROM broadcasts WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?
    else {
        return Ok(None);
    };
    let mut p = Progress {
        id: id.to_owned(),
        account: b.get("account"),
        status: b.get("status"),
        total: i64::from(b.get::<i32, _>("total")),
        skipped: i64::from(b.get::<i32, _>("skipped")),
        ..Default::default()
    };
    let rows = sqlx::query(
        "SELECT status, count(*) AS n FROM deliveries WHERE broadcast_id = $1 GROUP BY status",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut terminal = 0;
    for r in rows {
        let n: i64 = r.get("n");
        match r.get::<String, _>("status").as_str() {
            "sent" => p.sent = n,
            "failed" => p.failed = n,
            "dead" => p.dead = n,
            "suppressed" => p.suppressed = n,
            "expired" => p.expired = n,
            "cancelled" => p.cancelled = n,
            _ => continue,
        }
        terminal += n;
    }
    p.pending = (p.total - terminal).max(0);
    if p.status == "running" && p.pending == 0 {
        p.status = "done".into();
    }
    Ok(Some(p))
}

/// Write the current counts into `broadcasts` for the account's unfinished broadcasts (the
/// lane's owner does this every few seconds), and close finished ones.
pub async fn refresh(pool: &PgPool, account: &str) -> anyhow::Result<()> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM broadcasts WHERE account = $1 AND finished_at IS NULL AND status <> 'fanning_out'",
    )
    .bind(account)
    .fetch_all(pool)
    .await?;
    let mut pending = 0i64;
    for id in ids {
        let Some(p) = progress(pool, &id).await? else {
            continue;
        };
        pending += p.pending;
        sqlx::query(
            "UPDATE broadcasts SET sent = $2, failed = $3, dead = $4, suppressed = $5, expired = $6,
                    cancelled = $7, pending = $8, updated_at = now(),
                    status = CASE WHEN status = 'running' AND $8 = 0 THEN 'done' ELSE status END,
                    finished_at = CASE WHEN $8 = 0 THEN now() END
             WHERE id = $1",
        )
        .bind(&id)
        .bind(p.sent as i32)
        .bind(p.failed as i32)
        .bind(p.dead as i32)
        .bind(p.suppressed as i32)
        .bind(p.expired as i32)
        .bind(p.cancelled as i32)
        .bind(p.pending as i32)
        .execute(pool)
        .await?;
    }
    metrics::gauge!(crate::telemetry::BROADCAST_PENDING, "account" => account.to_owned())
        .set(pending as f64);
    Ok(())
}

/// Cancel a broadcast: recipients not yet sent end `cancelled`. Returns how many.
pub async fn cancel(pool: &PgPool, id: &str) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    let found = sqlx::query(
        "UPDATE broadcasts SET status = 'cancelled', updated_at = now() WHERE id = $1 AND status <> 'done'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if found == 0 {
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM broadcasts WHERE id = $1)")
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
        anyhow::ensure!(exists, "no broadcast with id '{id}'");
        anyhow::bail!("broadcast '{id}' has already finished");
    }
    // Jobs in flight at this moment may still be sent: their outcome overwrites `cancelled`.
    let n = sqlx::query(
        "UPDATE deliveries SET status = 'cancelled', error = 'broadcast cancelled', updated_at = now()
         WHERE broadcast_id = $1 AND status IN ('accepted', 'retrying')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(n)
}

// ---------------------------------------------------------------------------------------------
// Command line: `wxdispatch broadcast …`
// ---------------------------------------------------------------------------------------------

/// `wxdispatch broadcast --account A --to-file recipients.txt --message msg.json`, or
/// `broadcast status <id>` / `broadcast cancel <id>`.
#[derive(Debug, clap::Args)]
pub struct BroadcastArgs {
    #[command(subcommand)]
    pub action: Option<BroadcastAction>,
    /// Account to broadcast through.
    #[arg(long)]
    pub account: Option<String>,
    /// Recipients, one per line (blank lines, duplicates and invalid ids are skipped).
    #[arg(long)]
    pub to_file: Option<std::path::PathBuf>,
    /// The message: a JSON file, or inline JSON such as '{"text":"Hi"}'.
    #[arg(long)]
    pub message: Option<String>,
    /// Broadcast id (default: generated). Publishing the same id again sends nothing twice.
    #[arg(long)]
    pub id: Option<String>,
    #[arg(long)]
    pub open_kfid: Option<String>,
    /// RFC 3339 time after which remaining recipients are not sent (`expired`).
    #[arg(long)]
    pub not_after: Option<String>,
    /// Print the id and return at once instead of showing progress.
    #[arg(long)]
    pub no_wait: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum BroadcastAction {
    /// Progress of a broadcast (from any machine with database access).
    Status {
        id: String,
        /// Follow it with a progress bar until it finishes.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a broadcast: recipients not yet sent end `cancelled`.
    Cancel { id: String },
}

pub async fn cli(cfg: crate::config::Config, args: BroadcastArgs) -> anyhow::Result<()> {
    let pool = crate::store::connect_pool(&cfg).await?;
    crate::store::migrate(&pool).await?;
    if args.action.is_some()
        && (args.account.is_some() || args.to_file.is_some() || args.message.is_some())
    {
        anyhow::bail!("`broadcast status|cancel <id>` takes no --account/--to-file/--message");
    }
    match args.action {
        Some(BroadcastAction::Status { id, watch, json }) => {
            if watch {
                return watch_progress(&pool, &id).await;
            }
            let p = progress(&pool, &id)
                .await?
                .with_context(|| format!("no broadcast with id '{id}'"))?;
            if json {
                println!("{}", serde_json::to_string(&p)?);
            } else {
                print_progress(&p);
            }
            Ok(())
        }
        Some(BroadcastAction::Cancel { id }) => {
            let n = cancel(&pool, &id).await?;
            println!("broadcast {id} cancelled: {n} pending recipient(s) will not be sent");
            Ok(())
        }
        None => publish(cfg, &pool, args).await,
    }
}

async fn publish(
    cfg: crate::config::Config,
    pool: &PgPool,
    a: BroadcastArgs,
) -> anyhow::Result<()> {
    let account = a.account.context("--account is required")?;
    let acc = cfg
        .account(&account)
        .with_context(|| format!("--account: no account named '{account}' in the config"))?
        .clone();
    let file = a.to_file.context("--to-file is required")?;
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("--to-file: cannot read {}", file.display()))?;
    let (recipients, skipped) = clean_recipients(text.lines());
    let msg_src = a
        .message
        .context("--message is required (a JSON file or inline JSON)")?;
    let msg_text = if msg_src.trim_start().starts_with('{') {
        msg_src.clone()
    } else {
        std::fs::read_to_string(&msg_src)
            .with_context(|| format!("--message: cannot read {msg_src}"))?
    };
    let message: Value = serde_json::from_str(&msg_text).context("--message is not valid JSON")?;
    anyhow::ensure!(
        !recipients.is_empty(),
        "{}: no valid recipient",
        file.display()
    );
    anyhow::ensure!(
        recipients.len() <= job::MAX_BROADCAST_RECIPIENTS,
        "{} recipients: a broadcast takes at most {}",
        recipients.len(),
        job::MAX_BROADCAST_RECIPIENTS
    );
    let id =
        a.id.unwrap_or_else(crate::domain::ids::generate_broadcast_id);
    let mut body = serde_json::json!({"kind": "broadcast", "job_id": id, "to": recipients, "message": message});
    if let Some(k) = a.open_kfid {
        body["open_kfid"] = Value::String(k);
    }
    if let Some(t) = a.not_after {
        body["not_after"] = Value::String(t);
    }
    let bytes = serde_json::to_vec(&body)?;
    // Validate here, so a mistake is reported now rather than as a dead letter.
    job::parse(&bytes, None, &acc, cfg.worker.max_body_bytes)
        .map_err(|e| anyhow::anyhow!("invalid broadcast: {e}"))?;
    eprintln!(
        "{}: {} recipient(s); skipped {} blank line(s), {} duplicate(s), {} invalid id(s){}",
        file.display(),
        recipients.len(),
        skipped.blank,
        skipped.duplicate,
        skipped.invalid,
        if skipped.examples.is_empty() {
            String::new()
        } else {
            format!(" (e.g. {})", skipped.examples.join(", "))
        }
    );
    let conn = crate::broker::connect(&cfg.broker.url, "wxdispatch-broadcast").await?;
    crate::broker::declare_topology(&conn, &cfg).await?;
    let publisher = Publisher::new(&conn).await?;
    publisher.publish_job(&account, &id, &bytes).await?;
    let _ = conn.close(200, "bye".into()).await;
    println!("{id}");
    if a.no_wait {
        return Ok(());
    }
    watch_progress(pool, &id).await
}

fn print_progress(p: &Progress) {
    println!("broadcast {} ({}) on {}", p.id, p.status, p.account);
    println!(
        "  total {}  sent {}  failed {}  dead {}  suppressed {}  expired {}  cancelled {}  pending {}  (skipped at fan-out: {})",
        p.total,
        p.sent,
        p.failed,
        p.dead,
        p.suppressed,
        p.expired,
        p.cancelled,
        p.pending,
        p.skipped
    );
}

/// How often the CLI polls progress.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// A progress bar (sent/failed/rate/ETA) until the broadcast finishes; plain lines when stderr
/// is not a terminal.
pub async fn watch_progress(pool: &PgPool, id: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {elapsed_precise} [{bar:40.cyan/blue}] {pos}/{len} {msg} {per_sec} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    if !tty {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let mut last_line = std::time::Instant::now() - std::time::Duration::from_secs(10);
    let mut waited_for_fanout = std::time::Duration::ZERO;
    loop {
        let p = match progress(pool, id).await? {
            Some(p) => p,
            None if waited_for_fanout < std::time::Duration::from_secs(60) => {
                // The worker has not picked the broadcast up yet.
                bar.set_message("waiting for a worker to fan it out");
                tokio::time::sleep(WATCH_INTERVAL).await;
                waited_for_fanout += WATCH_INTERVAL;
                continue;
            }
            None => anyhow::bail!(
                "broadcast '{id}' was not picked up by any worker within 60 s (is `wxdispatch run` running?)"
            ),
        };
        // message first: the position update is what redraws the bar
        bar.set_message(format!(
            "sent {} failed {} dead {} suppressed {}",
            p.sent, p.failed, p.dead, p.suppressed
        ));
        bar.set_length(p.total.max(0) as u64);
        bar.set_position(p.done().max(0) as u64);
        if !tty && last_line.elapsed() >= std::time::Duration::from_secs(2) {
            let rate = p.done() as f64 / started.elapsed().as_secs_f64().max(0.001);
            eprintln!(
                "{:>6.1}s  {}/{} done  sent {} failed {} dead {} suppressed {}  {:.0}/s",
                started.elapsed().as_secs_f64(),
                p.done(),
                p.total,
                p.sent,
                p.failed,
                p.dead,
                p.suppressed,
                rate
            );
            last_line = std::time::Instant::now();
        }
        if p.finished() || (p.status == "running" && p.pending == 0) {
            bar.finish_and_clear();
            print_progress(&p);
            return Ok(());
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}
