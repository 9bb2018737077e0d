//! `wxdispatch broadcast --account A --to-file recipients.txt --message msg.json`, and
//! `broadcast status <id>` / `broadcast cancel <id>`.

use anyhow::Context;
use serde_json::Value;

use super::account_flag::ambiguous_is_usage;
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
        /// The broadcast's account (needed when several accounts have this broadcast id).
        #[arg(long)]
        account: Option<String>,
        /// Follow it with a progress bar until it finishes.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a broadcast: recipients not yet sent end `cancelled`.
    Cancel {
        id: String,
        /// The broadcast's account (needed when several accounts have this broadcast id).
        #[arg(long)]
        account: Option<String>,
    },
}

pub async fn run(cfg: Config, args: BroadcastArgs) -> anyhow::Result<()> {
    let pool = crate::store::connect_pool(&cfg).await?;
    crate::store::migrate(&pool).await?;
    let store = Store::with_pool(pool, 1);
    if args.action.is_some() && (args.to_file.is_some() || args.message.is_some()) {
        anyhow::bail!("`broadcast status|cancel <id>` takes no --to-file/--message");
    }
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
        Some(BroadcastAction::Cancel { id, account }) => {
            broadcast::cancel(&store, &id, account.or(parent_account).as_deref())
                .await
                .map(|n| {
                    println!("broadcast {id} cancelled: {n} pending recipient(s) will not be sent");
                })
        }
        None => publish(cfg, &store, args).await,
    };
    res.map_err(ambiguous_is_usage)
}

async fn status(store: &Store, id: &str, account: Option<&str>, json: bool) -> anyhow::Result<()> {
    let p = broadcast::progress(store, id, account)
        .await?
        .with_context(|| match account {
            Some(a) => format!("no broadcast with id '{id}' on account '{a}'"),
            None => format!("no broadcast with id '{id}'"),
        })?;
    if json {
        println!("{}", serde_json::to_string(&p)?);
    } else {
        print_progress(&p);
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
    let message: Value = serde_json::from_str(&msg_text).context("--message is not valid JSON")?;
    anyhow::ensure!(
        !recipients.is_empty(),
        "{}: no valid recipient",
        file.display()
    );
    let prepared = broadcast::prepare(
        Draft {
            account: acc,
            recipients: &recipients,
            message,
            id: a.id,
            open_kfid: a.open_kfid,
            not_after: a.not_after,
        },
        cfg.worker.max_body_bytes,
    )?;
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
    broadcast::publish(&cfg, &prepared, &account).await?;
    println!("{}", prepared.id);
    if a.no_wait {
        return Ok(());
    }
    watch(store, &prepared.id, Some(&account)).await
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

/// A progress bar (sent/failed/rate/ETA) until the broadcast (of `account`, or of the one
/// account that has the id) finishes; plain lines when stderr is not a terminal.
pub async fn watch(store: &Store, id: &str, account: Option<&str>) -> anyhow::Result<()> {
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
