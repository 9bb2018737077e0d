//! `wxdispatch demo`: the whole path on one machine, no WeChat credentials needed.
//!
//! Starts the built-in simulator, a worker with two demo accounts (`demo-bot`: Dialogue
//! Open Platform, `demo-kf`: WeCom) against the configured RabbitMQ and Postgres, publishes
//! one job of every message type plus one malformed job, waits until each has an outcome
//! and prints them. With `--serve` it keeps running afterwards (Ctrl-C stops it).

use std::time::{Duration, Instant};

use crate::store::deliveries::OutcomeRow;
use anyhow::Context;
use serde_json::json;

use crate::app::Worker;
use crate::broker::{self, Publisher};
use crate::config::{Config, HttpConfig};
use crate::tools::fixtures::demo_accounts;
use crate::tools::simulate;

pub use crate::tools::fixtures::sample_messages;

/// Where the demo's simulator listens unless told otherwise: a fixed, documented port, so the
/// config file `--serve` writes stays valid for the README's follow-up commands (the same port
/// as `wxdispatch simulate`).
pub const DEMO_SIM_LISTEN: &str = simulate::DEFAULT_LISTEN;

/// The config file `demo --serve` writes unless told otherwise (in the current directory).
pub const DEMO_CONFIG_FILE: &str = "wxdispatch-demo.toml";

/// What `wxdispatch demo` does beyond the fixed demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Keep the worker and simulator running after the demo (until Ctrl-C).
    pub serve: bool,
    /// The demo worker's public listener (callbacks); `None`: the config's `http.listen`. Its
    /// admin listener (metrics, health) is the config's `http.admin_listen`.
    pub listen: Option<String>,
    /// The simulator's listener ([`DEMO_SIM_LISTEN`] by default).
    pub sim_listen: String,
    /// With `serve`: where to write the config with the demo accounts (broker and database of
    /// the loaded config), so that `send`, `broadcast`, `status` and `dlq` work from another
    /// shell while the demo serves.
    pub write_config: std::path::PathBuf,
}

/// Run the demo: the simulator and a worker on the demo accounts, one job of every message
/// type and one invalid job, their outcomes printed as a table.
pub async fn run_demo(
    config_path: Option<&std::path::Path>,
    opts: DemoOptions,
) -> anyhow::Result<()> {
    // Broker and database from the config (defaults: the local services); accounts are the demo's.
    let mut cfg = Config::load(config_path)?;
    let listener = tokio::net::TcpListener::bind(&opts.sim_listen)
        .await
        .with_context(|| {
            format!(
                "--sim-listen: cannot bind the simulator to {} (another demo or simulator running? choose another with --sim-listen)",
                opts.sim_listen
            )
        })?;
    let base_url = format!("http://{}", listener.local_addr()?);
    cfg.accounts = demo_accounts(&base_url);
    if let Some(l) = &opts.listen {
        cfg.http.listen = l.clone();
    }
    if cfg.http.listen.ends_with(":0")
        && cfg.http.admin_listen == HttpConfig::default().admin_listen
    {
        // An ephemeral public port asks for a throw-away worker (tests): no fixed admin port.
        cfg.http.admin_listen = "127.0.0.1:0".into();
    }
    cfg.validate()?;
    let sim = simulate::start(
        cfg.accounts.clone(),
        simulate::SimOptions::default(),
        listener,
    )
    .await?;
    println!("simulator      {}", sim.base_url());
    let worker = Worker::start(cfg.clone()).await.context(
        "starting the demo worker (listeners: --listen or http.listen, http.admin_listen)",
    )?;
    if let Some(a) = worker.public_addr {
        println!("worker         callbacks http://{a}/callback/...");
    }
    if let Some(a) = worker.admin_addr {
        println!("               metrics http://{a}/metrics, health http://{a}/readyz");
    }
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-demo").await?;
    let publisher = Publisher::new(&conn).await?;
    let ids = publish_samples(&publisher).await?;
    println!(
        "published      {} jobs (one of every message type, one invalid)",
        ids.len()
    );
    let rows = wait_for_outcomes(&worker, &ids).await?;
    print_outcomes(&ids, &rows);
    println!();
    println!(
        "simulator accepted {} messages; try: wxdispatch status {}",
        sim.state().accepted_count(),
        ids[0]
    );
    let missing = ids.len() - rows.len();
    if opts.serve {
        let path = write_demo_config(&cfg, &opts.write_config)?;
        println!();
        println!(
            "config         {} (the demo accounts, for another shell):",
            path.display()
        );
        println!("  export WXDISPATCH_CONFIG={}", path.display());
        println!("  wxdispatch send --account demo-kf --to wmDemoExternalUser1 --text 'Hello'");
        println!(
            "  wxdispatch broadcast --account demo-kf --to-file recipients.txt --message '{{\"text\":{{\"content\":\"Hi\"}}}}'"
        );
        println!("  wxdispatch status {}", ids[0]);
        println!("  wxdispatch dlq list");
        println!("serving; Ctrl-C to stop");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        crate::app::signal().await;
    }
    let _ = conn.close(200, "bye".into()).await;
    worker.stop().await?;
    sim.shutdown().await;
    if missing > 0 {
        anyhow::bail!("{missing} demo job(s) did not finish in time");
    }
    Ok(())
}

/// The config `demo --serve` leaves for the follow-up commands: the loaded config's broker and
/// database, the demo accounts (pointing at the running simulator). Written readable by its
/// owner only, as it holds the database and broker URLs. Returns the absolute path.
pub fn write_demo_config(
    cfg: &Config,
    path: &std::path::Path,
) -> anyhow::Result<std::path::PathBuf> {
    let text = demo_config_toml(cfg)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts
        .open(path)
        .with_context(|| format!("--write-config: cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut f, text.as_bytes())
        .with_context(|| format!("--write-config: cannot write {}", path.display()))?;
    Ok(std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// The TOML text of [`write_demo_config`].
pub fn demo_config_toml(cfg: &Config) -> anyhow::Result<String> {
    use toml::{Table, Value};
    let mut root = Table::new();
    let section = |k: &str, v: &str| {
        let mut t = Table::new();
        t.insert(k.into(), Value::String(v.into()));
        Value::Table(t)
    };
    root.insert("broker".into(), section("url", cfg.broker.url.expose()));
    root.insert("database".into(), section("url", cfg.database.url.expose()));
    let mut accounts = Vec::new();
    for a in &cfg.accounts {
        let mut t = Table::new();
        let mut put = |k: &str, v: &str| {
            t.insert(k.into(), Value::String(v.into()));
        };
        put("name", &a.name);
        put("channel", a.channel.as_str());
        put("base_url", a.base_url());
        for (k, v) in [
            ("appid", &a.appid),
            ("oa_appid", &a.oa_appid),
            ("corpid", &a.corpid),
        ] {
            if let Some(v) = v {
                put(k, v);
            }
        }
        for (k, v) in [
            ("secret", &a.secret),
            ("token", &a.token),
            ("encoding_aes_key", &a.encoding_aes_key),
        ] {
            if !v.is_empty() {
                put(k, v.expose());
            }
        }
        let mut rate = Table::new();
        match a.rate.per_second {
            Some(n) if !a.rate.unlimited => {
                rate.insert("per_second".into(), Value::Integer(i64::from(n)));
                rate.insert("burst".into(), Value::Integer(i64::from(a.rate.burst())));
            }
            _ => {
                rate.insert("unlimited".into(), Value::Boolean(true));
            }
        }
        t.insert("rate".into(), Value::Table(rate));
        if !a.open_kfids.is_empty() {
            t.insert(
                "open_kfids".into(),
                Value::Array(
                    a.open_kfids
                        .iter()
                        .map(|k| Value::String(k.clone()))
                        .collect(),
                ),
            );
        }
        accounts.push(Value::Table(t));
    }
    root.insert("account".into(), Value::Array(accounts));
    let body = toml::to_string(&root).context("writing the demo config")?;
    Ok(format!(
        "# Written by `wxdispatch demo --serve`: the demo accounts on its simulator, with the\n# broker and database it used. Valid while the demo serves.\n{body}"
    ))
}

/// Publish one job of every sample message and one malformed job; returns their ids in order.
async fn publish_samples(publisher: &Publisher) -> anyhow::Result<Vec<String>> {
    let run_id = chrono::Utc::now().format("%H%M%S").to_string();
    let mut ids = Vec::new();
    for (i, (account, _kind, message)) in sample_messages().into_iter().enumerate() {
        let job_id = format!("demo-{run_id}-{i:02}");
        let to = if account == "demo-bot" {
            "oDemoUser-openid-1"
        } else {
            "wmDemoExternalUser1"
        };
        let body = json!({"job_id": job_id, "to": to, "message": message});
        publisher
            .publish_job(account, &job_id, &serde_json::to_vec(&body)?)
            .await?;
        ids.push(job_id);
    }
    // And one malformed job: a WeCom text over the 2048-byte limit.
    let bad_id = format!("demo-{run_id}-bad");
    let bad = json!({"job_id": bad_id, "to": "wmDemoExternalUser1", "message": {"text": "x".repeat(2100)}});
    publisher
        .publish_job("demo-kf", &bad_id, &serde_json::to_vec(&bad)?)
        .await?;
    ids.push(bad_id);
    Ok(ids)
}

/// Wait (up to 30 s) until every job has an outcome; returns the rows found by then.
async fn wait_for_outcomes(worker: &Worker, ids: &[String]) -> anyhow::Result<Vec<OutcomeRow>> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = worker.store.outcome_rows(ids).await?;
        let done = rows
            .iter()
            .filter(|r| !matches!(r.status.as_str(), "accepted" | "retrying"))
            .count();
        if done == ids.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    Ok(rows)
}

/// The outcome of every job, one line each, in publish order.
fn print_outcomes(ids: &[String], rows: &[OutcomeRow]) {
    println!();
    println!(
        "{:<22} {:<9} {:<16} {:<7} error",
        "job", "account", "type", "status"
    );
    let kinds: Vec<&str> = sample_messages()
        .iter()
        .map(|(_, k, _)| *k)
        .chain(["text (too long)"])
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let row = rows.iter().find(|r| r.job_id == *id);
        let (account, status, error) = match row {
            Some(r) => (r.account.clone(), r.status.clone(), r.error.clone()),
            None => ("?".into(), "missing".into(), String::new()),
        };
        println!(
            "{:<22} {:<9} {:<16} {:<7} {}",
            id,
            account,
            kinds.get(i).copied().unwrap_or(""),
            status,
            crate::text::truncate(&error, 60)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_written_config_loads_back_with_the_demo_accounts() {
        let mut cfg = Config::default();
        cfg.broker.url = "amqp://guest:guest@127.0.0.1:5672/v".into();
        cfg.database.url = "postgres://postgres@127.0.0.1:5432/d".into();
        cfg.accounts = demo_accounts("http://127.0.0.1:9900");
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("demo.toml");
        let written = write_demo_config(&cfg, &path).unwrap_or_else(|e| panic!("{e:#}"));
        let back = Config::load(Some(&written)).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(back.broker.url.expose(), cfg.broker.url.expose());
        assert_eq!(back.database.url.expose(), cfg.database.url.expose());
        let names: Vec<_> = back.accounts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["demo-bot", "demo-kf"]);
        for (a, b) in back.accounts.iter().zip(&cfg.accounts) {
            assert_eq!(a.base_url(), b.base_url());
            assert_eq!(a.secret.expose(), b.secret.expose());
            assert_eq!(a.token.expose(), b.token.expose());
            assert_eq!(a.encoding_aes_key.expose(), b.encoding_aes_key.expose());
            assert_eq!(a.open_kfids, b.open_kfids);
            assert_eq!(a.rate.per_second, b.rate.per_second);
        }
    }
}
