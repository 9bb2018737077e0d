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

/// What `wxdispatch demo` does beyond the fixed demo.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Keep the worker and simulator running after the demo (until Ctrl-C).
    pub serve: bool,
    /// The demo worker's public listener (callbacks); when taken, any free port. Its admin
    /// listener (metrics, health) is the config's `http.admin_listen`, also any free port when
    /// taken.
    pub listen: String,
}

/// Run the demo: the simulator and a worker on the demo accounts, one job of every message
/// type and one invalid job, their outcomes printed as a table.
pub async fn run_demo(
    config_path: Option<&std::path::Path>,
    opts: DemoOptions,
) -> anyhow::Result<()> {
    // Broker and database from the config (defaults: the local services); accounts are the demo's.
    let mut cfg = Config::load(config_path)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let base_url = format!("http://{}", listener.local_addr()?);
    cfg.accounts = demo_accounts(&base_url);
    cfg.http.listen = opts.listen.clone();
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
    let worker = start_worker(&mut cfg).await?;
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
        println!("serving; Ctrl-C to stop");
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

/// Start the demo worker; a listener whose port is taken (another worker or demo running)
/// moves to any free port.
async fn start_worker(cfg: &mut Config) -> anyhow::Result<Worker> {
    for _ in 0..2 {
        match Worker::start(cfg.clone()).await {
            Ok(w) => return Ok(w),
            Err(e) => {
                let msg = format!("{e:#}");
                if msg.contains("http.listen: cannot bind") && !cfg.http.listen.ends_with(":0") {
                    cfg.http.listen = "127.0.0.1:0".into();
                } else if msg.contains("http.admin_listen: cannot bind")
                    && !cfg.http.admin_listen.ends_with(":0")
                {
                    cfg.http.admin_listen = "127.0.0.1:0".into();
                } else {
                    return Err(e);
                }
            }
        }
    }
    Worker::start(cfg.clone()).await
}
