//! `wxdispatch broadcast --account A --to-file recipients.txt --message msg.json`, and
//! `broadcast status <id>` / `broadcast cancel <id>`.

use anyhow::Context;
use serde_json::Value;

use super::account_flag::ambiguous_is_usage;
use super::confirm::confirm;
use super::send::parse_rfc3339;
use super::usage::UsageError;
use crate::config::Config;
use crate::ops::broadcast::{self, Draft, Progress, clean_recipients};
use crate::store::Store;

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
    #[arg(long, value_name = "FILE")]
    pub to_file: Option<std::path::PathBuf>,
    /// The message: a JSON file, or inline JSON such as '{"text":"Hi"}'.
    #[arg(long, value_name = "FILE|JSON")]
    pub message: Option<String>,
    /// Broadcast id (default: generated). Publishing the same id again sends nothing twice.
    #[arg(long)]
    pub id: Option<String>,
    /// WeCom: the kf account (open_kfid) to send from (default: the account's only one).
    #[arg(long)]
    pub open_kfid: Option<String>,
    /// RFC 3339 time after which remaining recipients are not sent (`expired`).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub not_after: Option<String>,
    /// RFC 3339 time before which no recipient is sent (the job's `not_before`).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub at: Option<String>,
    /// Print the id and return at once instead of showing progress.
    #[arg(long)]
    pub no_wait: bool,
    /// Print JSON: `{"id", "account"}` with --no-wait, else the final progress object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Subcommand)]
pub enum BroadcastAction {
    /// Progress of a broadcast (from any machine with database access).
    Status {
        /// The broadcast id (as printed when it was published).
        id: String,
        /// The broadcast's account (needed when several accounts have this broadcast id).
        #[arg(long)]
        account: Option<String>,
        /// Follow it with a progress bar until it finishes.
        #[arg(long)]
        watch: bool,
        /// Print the progress as one JSON object (the README's "JSON output" table).
        #[arg(long)]
        json: bool,
    },
    /// Cancel a broadcast: recipients not yet sent end `cancelled` (asks first; --yes).
    Cancel {
        /// The broadcast id.
        id: String,
        /// The broadcast's account (needed when several accounts have this broadcast id).
        #[arg(long)]
        account: Option<String>,
        /// Cancel without asking (required when stdin is not a terminal).
        #[arg(long, short = 'y')]
        yes: bool,
        /// Print what the cancel did as one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cfg: Config, args: BroadcastArgs) -> anyhow::Result<()> {
    if args.action.is_some() && (args.to_file.is_some() || args.message.is_some()) {
        return Err(
            UsageError::new("`broadcast status|cancel <id>` takes no --to-file/--message").into(),
        );
    }
    if args.action.is_none() {
        // Usage problems first, before any connection.
        check_publish_args(&cfg, &args)?;
    }
    let pool = crate::store::connect_pool(&cfg).await?;
    crate::store::migrate(&pool).await?;
    let store = Store::with_pool(pool, 1);
    // `broadcast --account A status <id>` works like `broadcast status <id> --account A`.
    let parent_account = args.account.clone();
    let res = match args.action {
        Some(BroadcastAction::Status {
            id,
            account,
            watch: true,
            ..
        }) => watch(&store, &id, account.or(parent_account).as_deref()).await,
        Some(BroadcastAction::Status {
            id, account, json, ..
        }) => status(&store, &id, account.or(parent_account).as_deref(), json).await,
        Some(BroadcastAction::Cancel {
            id,
            account,
            yes,
            json,
        }) => {
            cancel(
                &store,
                &id,
                account.or(parent_account).as_deref(),
                yes,
                json,
            )
            .await
        }
        None => publish(cfg, &store, args).await,
    };
    res.map_err(ambiguous_is_usage)
}

/// `broadcast cancel`: resolve the account (an ambiguous id asks for --account before
/// anything else), confirm, cancel, and say what is known now.
async fn cancel(
    store: &Store,
    id: &str,
    account: Option<&str>,
    yes: bool,
    json: bool,
) -> anyhow::Result<()> {
    let a = broadcast::resolve(store, id, account).await?;
    if !confirm(&format!("cancel broadcast {id} of account {a}"), yes)? {
        super::output::note("nothing cancelled");
        return Ok(());
    }
    let c = broadcast::cancel(store, id, Some(&a)).await?;
    if json {
        return super::output::print_json(&c);
    }
    println!("{}", cancelled_line(&c));
    Ok(())
}

/// What `broadcast cancel` prints: the number it marked is an upper bound (recipients a lane
/// had taken are still sent), so it says so and where the final count is.
fn cancelled_line(c: &broadcast::Cancelled) -> String {
    let finished = c
        .progress
        .as_ref()
        .map(|p| p.sent + p.failed + p.dead + p.suppressed + p.expired);
    format!(
        "broadcast {id} cancelled: at most {n} recipient(s) will not be sent{done}; recipients a worker had already taken are still sent, so the final count is in `wxdispatch broadcast status {id} --account {account}`",
        id = c.id,
        n = c.marked_cancelled,
        account = c.account,
        done = finished
            .map(|f| format!(" ({f} had already finished)"))
            .unwrap_or_default(),
    )
}

async fn status(store: &Store, id: &str, account: Option<&str>, json: bool) -> anyhow::Result<()> {
    let p = broadcast::progress(store, id, account)
        .await?
        .with_context(|| match account {
            Some(a) => format!("no broadcast with id '{id}' on account '{a}'"),
            None => format!("no broadcast with id '{id}'"),
        })?;
    if json {
        super::output::print_json(&p)?;
    } else {
        print_progress(&p);
    }
    Ok(())
}

/// The publish flags a broadcast needs, checked before any connection: a missing or
/// unknown one is a usage error (exit 2).
fn check_publish_args(cfg: &Config, a: &BroadcastArgs) -> anyhow::Result<()> {
    let Some(account) = &a.account else {
        return Err(UsageError::new(
            "broadcast: --account is required (or `broadcast status|cancel <id>`)",
        )
        .into());
    };
    if cfg.account(account).is_none() {
        return Err(UsageError(format!(
            "--account: no account named '{account}' in the config"
        ))
        .into());
    }
    if a.to_file.is_none() {
        return Err(UsageError::new("broadcast: --to-file is required").into());
    }
    if a.message.is_none() {
        return Err(UsageError::new(
            "broadcast: --message is required (a JSON file or inline JSON)",
        )
        .into());
    }
    Ok(())
}

async fn publish(cfg: Config, store: &Store, a: BroadcastArgs) -> anyhow::Result<()> {
    let account = a.account.context("--account is required")?;
    let acc = cfg
        .account(&account)
        .with_context(|| format!("--account: no account named '{account}' in the config"))?;
    let file = a.to_file.context("--to-file is required")?;
    let text = crate::config::read_capped(&file, crate::config::INPUT_FILE_MAX, "--to-file")?;
    let (recipients, skipped) = clean_recipients(text.lines());
    let msg_src = a
        .message
        .context("--message is required (a JSON file or inline JSON)")?;
    let msg_text = if msg_src.trim_start().starts_with('{') {
        msg_src.clone()
    } else {
        crate::config::read_capped(msg_src.as_ref(), crate::config::INPUT_FILE_MAX, "--message")?
    };
    let message: Value = serde_json::from_str(&msg_text)
        .map_err(|e| UsageError(format!("--message is not valid JSON: {e}")))?;
    if recipients.is_empty() {
        return Err(UsageError(format!("{}: no valid recipient", file.display())).into());
    }
    let prepared = broadcast::prepare(
        Draft {
            account: acc,
            recipients: &recipients,
            message,
            id: a.id,
            open_kfid: a.open_kfid,
            not_after: a.not_after,
            not_before: a.at,
        },
        cfg.worker.max_body_bytes,
    )
    .map_err(|e| UsageError(format!("{e:#}")))?;
    super::output::note(&format!(
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
    ));
    broadcast::publish(&cfg, &prepared, &account).await?;
    if a.no_wait {
        if a.json {
            return super::output::print_json(
                &serde_json::json!({"id": prepared.id, "account": account}),
            );
        }
        println!("{}", prepared.id);
        return Ok(());
    }
    if !a.json {
        println!("{}", prepared.id);
    }
    let p = follow(store, &prepared.id, Some(&account)).await?;
    if a.json {
        return super::output::print_json(&p);
    }
    print_progress(&p);
    Ok(())
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
/// How long to wait for a worker to pick a published broadcast up before giving up.
const FANOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// `broadcast status --watch`: [`follow`] it, then print where it ended.
pub async fn watch(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<()> {
    let p = follow(store, id, account).await?;
    print_progress(&p);
    Ok(())
}

/// A progress bar (sent/failed/rate/ETA) until the broadcast (of `account`, or of the one
/// account that has the id) finishes; plain lines when stderr is not a terminal, nothing with
/// `-q`. Returns the final progress.
async fn follow(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<Progress> {
    let tty = super::output::fancy_stderr();
    let quiet = super::output::quiet();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            // the rate is in {msg} (`rate`): indicatif's {per_sec} prints four decimals
            "{spinner} {elapsed_precise} [{bar:40}] {pos}/{len} {msg} ETA {eta}",
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
        let p = match broadcast::progress(store, id, account).await? {
            Some(p) => p,
            None if waited_for_fanout < FANOUT_WAIT => {
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
            "sent {} failed {} dead {} suppressed {} {}",
            p.sent,
            p.failed,
            p.dead,
            p.suppressed,
            rate(p.done(), started.elapsed().as_secs_f64())
        ));
        bar.set_length(p.total.max(0) as u64);
        bar.set_position(p.done().max(0) as u64);
        if !tty && !quiet && last_line.elapsed() >= std::time::Duration::from_secs(2) {
            let elapsed = started.elapsed().as_secs_f64();
            eprintln!(
                "{:>6.1}s  {}/{} done  sent {} failed {} dead {} suppressed {}  {}",
                elapsed,
                p.done(),
                p.total,
                p.sent,
                p.failed,
                p.dead,
                p.suppressed,
                rate(p.done(), elapsed)
            );
            last_line = std::time::Instant::now();
        }
        if p.finished() || (p.status == "running" && p.pending == 0) {
            bar.finish_and_clear();
            return Ok(p);
        }
        tokio::time::sleep(WATCH_INTERVAL).await;
    }
}

/// A rate with the precision it deserves: `0.25/s`, `3.4/s`, `1250/s`.
pub fn rate(count: i64, secs: f64) -> String {
    let r = count.max(0) as f64 / secs.max(0.001);
    if r < 1.0 {
        format!("{r:.2}/s")
    } else if r < 100.0 {
        format!("{r:.1}/s")
    } else {
        format!("{r:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_keep_two_significant_figures_or_whole_numbers() {
        assert_eq!(rate(1, 4.0), "0.25/s");
        assert_eq!(rate(17, 5.0), "3.4/s");
        assert_eq!(rate(2500, 2.0), "1250/s");
        assert_eq!(rate(0, 0.0), "0.00/s");
    }

    #[test]
    fn the_cancel_line_gives_an_upper_bound_and_where_the_final_count_is() {
        let c = broadcast::Cancelled {
            id: "b1".into(),
            account: "kf".into(),
            marked_cancelled: 57,
            progress: Some(Progress {
                sent: 40,
                dead: 3,
                ..Default::default()
            }),
        };
        let line = cancelled_line(&c);
        assert!(
            line.contains("at most 57 recipient(s) will not be sent (43 had already finished)"),
            "{line}"
        );
        assert!(
            line.contains("`wxdispatch broadcast status b1 --account kf`"),
            "{line}"
        );
    }
}
