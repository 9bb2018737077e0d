//! `wxdispatch dlq list|replay`: the arguments, the confirmation, the tables and the progress
//! bar. What is listed and replayed is decided in `ops::dlq`.

use std::collections::BTreeMap;
use std::io::Write;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};

use super::table::{Table, format_age, one_line};
use crate::config::Config;
use crate::ops::dlq::{self as ops, DeadLetterRow, Filter, ReplayProgress, Skip, Skipped};
use crate::store;

/// `dlq list` shows this many rows unless `--limit` says otherwise: enough to see a pattern,
/// short enough for a terminal.
const DEFAULT_LIST_LIMIT: i64 = 50;
/// Replays of more dead letters than this show a progress bar (fewer finish at once).
const PROGRESS_MIN_ITEMS: usize = 10;
/// Skip summaries name at most this many dead-letter ids per reason.
const MAX_IDS_SHOWN: usize = 10;
/// `dlq list` cuts the platform's errmsg to this many bytes to keep one line per row.
const ERRMSG_WIDTH: usize = 48;
/// Reason words are snake_case and short (see `domain::job::reason` and `policy::errcode`).
const MAX_REASON_LEN: usize = 64;

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
pub struct FilterArgs {
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

impl From<FilterArgs> for Filter {
    fn from(a: FilterArgs) -> Self {
        Filter {
            account: a.account,
            reason: a.reason,
            errcode: a.errcode,
            since: a.since,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
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
    pub filter: FilterArgs,
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

/// `--since`: a duration back from now, an RFC 3339 time or a date.
pub fn parse_since(s: &str) -> Result<DateTime<Utc>, String> {
    parse_since_at(s, Utc::now())
}

/// [`parse_since`] relative to `now` (pure, for tests).
fn parse_since_at(s: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
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
///
/// humantime reads these; it also reads spaces, words and units below a second (`5 minutes`,
/// `2hours`, `300ms`), which are not documented forms and are refused first: only digits and
/// one-letter units `s m h d w`.
fn parse_duration(s: &str) -> Option<TimeDelta> {
    let documented = s
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, 's' | 'm' | 'h' | 'd' | 'w'))
        && !s
            .as_bytes()
            .windows(2)
            .any(|w| w[0].is_ascii_alphabetic() && w[1].is_ascii_alphabetic());
    if !documented {
        return None;
    }
    let d = humantime::parse_duration(s).ok()?;
    TimeDelta::from_std(d).ok()
}

/// `--reason`: a snake_case word.
///
/// Any such word is taken (an unknown one gets a hint listing the reasons seen); this becomes
/// `crate::domain::reason::Reason`'s parser once that enum exists.
fn parse_reason(s: &str) -> Result<String, String> {
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

/// `wxdispatch dlq …`
pub async fn run(cfg: Config, args: DlqArgs) -> anyhow::Result<()> {
    match args.command {
        DlqCommand::List(a) => list(&cfg, a).await,
        DlqCommand::Replay(a) => replay(&cfg, a).await,
    }
}

async fn list(cfg: &Config, a: ListArgs) -> anyhow::Result<()> {
    let filter = Filter::from(a.filter);
    let pool = store::connect_pool(cfg).await?;
    // One more than asked, to tell whether there are more.
    let res = async {
        let rows =
            ops::list_dead_letters(&pool, &filter, a.include_replayed, Some(a.limit + 1)).await?;
        let hint = if rows.is_empty() {
            ops::filter_hint(&pool, &filter).await?
        } else {
            None
        };
        anyhow::Ok((rows, hint))
    }
    .await;
    pool.close().await;
    let (mut rows, hint) = res?;
    let more = rows.len() as i64 > a.limit;
    rows.truncate(usize::try_from(a.limit).unwrap_or(usize::MAX));
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
        dead_letter_table(&rows, a.include_replayed, now).write_to(&mut out)?;
    }
    out.flush()?;
    if more {
        super::output::note(&format!(
            "showing the newest {}; more match (use --limit or narrow the filters)",
            a.limit
        ));
    }
    if let Some(h) = hint {
        super::output::note(&format!("note: {h}"));
    }
    Ok(())
}

/// Plan, show, confirm, execute: one function so that the pool is closed on every way out.
async fn replay(cfg: &Config, a: ReplayArgs) -> anyhow::Result<()> {
    let pool = store::connect_pool(cfg).await?;
    let res = replay_on(cfg, &pool, a).await;
    pool.close().await;
    res
}

async fn replay_on(
    cfg: &Config,
    db: &impl store::dead_letters::Db,
    a: ReplayArgs,
) -> anyhow::Result<()> {
    let filter = Filter::from(a.filter);
    let plan = ops::plan_replay(db, cfg, &filter, a.limit).await?;
    let now = Utc::now();
    let mut out = std::io::stdout().lock();
    if plan.replay.is_empty() && plan.skipped.is_empty() {
        writeln!(out, "no unreplayed dead letters match")?;
        if let Some(h) = ops::filter_hint(db, &filter).await? {
            super::output::note(&format!("note: {h}"));
        }
        return Ok(());
    }
    if a.dry_run {
        if plan.replay.is_empty() {
            writeln!(out, "nothing would be replayed")?;
        } else {
            writeln!(out, "would replay {} dead letter(s):", plan.replay.len())?;
            dead_letter_table(&plan.replay, false, now).write_to(&mut out)?;
        }
        write_skipped(&mut out, &plan.skipped)?;
        writeln!(out, "dry run: nothing changed")?;
        return Ok(());
    }
    if !plan.replay.is_empty() {
        // The one confirmation of every destructive command (prompt on stderr, or --yes).
        out.flush()?;
        let what = format!(
            "replay {} dead letter(s) ({} skipped; check with --dry-run first)",
            plan.replay.len(),
            plan.skipped.len()
        );
        if !super::confirm::confirm(&what, a.yes)? {
            writeln!(out, "nothing replayed")?;
            return Ok(());
        }
    }
    drop(out);
    let summary = ops::execute_replay(cfg, db, plan, &mut Bar(None)).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "replayed {} dead letter(s)", summary.replayed.len())?;
    write_skipped(&mut out, &summary.skipped)?;
    Ok(())
}

/// The replay's progress bar on stderr, for replays of more than [`PROGRESS_MIN_ITEMS`]
/// (indicatif draws nothing when stderr is not a terminal).
struct Bar(Option<indicatif::ProgressBar>);

impl ReplayProgress for Bar {
    fn start(&mut self, total: usize) {
        // No bar for a few items, with -q or NO_COLOR, or off a terminal.
        if total <= PROGRESS_MIN_ITEMS || !super::output::fancy_stderr() {
            return;
        }
        let bar = indicatif::ProgressBar::new(total as u64);
        if let Ok(style) =
            indicatif::ProgressStyle::with_template("replaying {bar:40} {pos}/{len} (eta {eta})")
        {
            bar.set_style(style);
        }
        self.0 = Some(bar);
    }

    fn advance(&mut self) {
        if let Some(b) = &self.0 {
            b.inc(1);
        }
    }

    fn finish(&mut self, completed: bool) {
        match self.0.take() {
            Some(b) if completed => b.finish_and_clear(),
            Some(b) => b.abandon(),
            None => {}
        }
    }
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

/// `2097152 B sha256:3a7bd3e2360a… truncated`: the whole body's size, the start of its
/// sha256 (all of it in `--json`), and whether the row keeps only its first bytes.
fn body_cell(b: &ops::BodyDigest) -> String {
    let mut s = format!("{} B", b.bytes);
    if let Some(h) = &b.sha256 {
        s.push_str(&format!(" sha256:{}…", h.get(..12).unwrap_or(h)));
    }
    if b.truncated {
        s.push_str(" truncated");
    }
    s
}

fn dead_letter_table(rows: &[DeadLetterRow], show_replayed: bool, now: DateTime<Utc>) -> Table {
    let mut header = vec![
        "ID", "JOB ID", "ACCOUNT", "REASON", "ERRCODE", "ATTEMPTS", "AGE",
    ];
    if show_replayed {
        header.push("REPLAYED");
    }
    header.push("BODY");
    header.push("ERROR");
    let mut table = Table::new(header);
    for r in rows {
        let mut c = vec![
            r.id.to_string(),
            // A job rejected before it had a valid id: its AMQP message_id, in parentheses.
            r.job_id
                .clone()
                .or_else(|| r.message_id.as_ref().map(|m| format!("({m})")))
                .unwrap_or_else(|| "-".into()),
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
        c.push(r.body.as_ref().map_or_else(|| "-".into(), body_cell));
        c.push(one_line(r.errmsg.as_deref().unwrap_or(""), ERRMSG_WIDTH));
        table.row(c);
    }
    table
}

#[cfg(test)]
#[path = "dlq_tests.rs"]
mod tests;
