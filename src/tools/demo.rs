//! `wxdispatch demo`: the whole path on one machine, no WeChat credentials needed.
//!
//! Starts the built-in simulator, a worker with two demo accounts (`demo-bot`: Dialogue
//! Open Platform, `demo-kf`: WeCom) against the configured RabbitMQ and Postgres, publishes
//! one job of every message type plus one malformed job, waits until each has an outcome
//! and prints them. With `--serve` it keeps running afterwards (Ctrl-C stops it).

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};
use sqlx::Row;

use crate::app::Worker;
use crate::broker::{self, Publisher};
use crate::config::{AccountConfig, Channel, Config, Rate, Secret};
use crate::tools::simulate;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Keep the worker and simulator running after the demo (until Ctrl-C).
    #[arg(long)]
    pub serve: bool,
    /// HTTP endpoints of the demo worker (metrics, health).
    #[arg(long, default_value = "127.0.0.1:9464")]
    pub listen: String,
}

use crate::tools::fixtures::DEMO_AES_KEY;

/// The demo accounts, pointed at `base_url`.
pub fn demo_accounts(base_url: &str) -> Vec<AccountConfig> {
    let bot = AccountConfig {
        name: "demo-bot".into(),
        channel: Channel::Chatbot,
        base_url: Some(base_url.to_owned()),
        rate: Rate {
            per_second: Some(200),
            per_minute: None,
            burst: Some(20),
            unlimited: false,
        },
        appid: Some("P5Zb1RfMtW7rS3k".into()),
        default_channel: 0,
        corpid: None,
        secret: Secret::default(),
        secret_file: None,
        open_kfids: Vec::new(),
        token: Secret::new("demoTOKENchatbot000000000000001"),
        token_file: None,
        encoding_aes_key: Secret::new(DEMO_AES_KEY),
        encoding_aes_key_file: None,
    };
    let kf = AccountConfig {
        name: "demo-kf".into(),
        channel: Channel::Wecom,
        base_url: Some(base_url.to_owned()),
        rate: Rate {
            per_second: Some(200),
            per_minute: None,
            burst: Some(20),
            unlimited: false,
        },
        appid: None,
        default_channel: 0,
        corpid: Some("wwdemo0000000001".into()),
        secret: Secret::new("demo-corp-secret"),
        secret_file: None,
        open_kfids: vec!["wkDEMO000000000001".into()],
        token: Secret::default(),
        token_file: None,
        encoding_aes_key: Secret::default(),
        encoding_aes_key_file: None,
    };
    vec![bot, kf]
}

/// One message of every type, per channel: `(account, message type, message object)`.
pub fn sample_messages() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "demo-bot",
            "text",
            json!({"text": "Hello! Reply <a href=\"weixin://bizmsgmenu?msgmenucontent=yes&msgmenuid=1\">yes</a> to continue."}),
        ),
        (
            "demo-bot",
            "news",
            json!({"news": {"articles": [{"title": "Order shipped", "description": "Track your parcel", "url": "https://example.com/t/1", "picurl": "https://example.com/p.png"}]}}),
        ),
        (
            "demo-bot",
            "image",
            json!({"image": {"media_id": "MEDIA_ID_1", "url": "https://example.com/i.png"}}),
        ),
        (
            "demo-bot",
            "miniprogrampage",
            json!({"miniprogrampage": {"title": "Your order", "appid": "wx1234567890abcdef", "pagepath": "pages/order?id=1", "thumb_media_id": "THUMB_1"}}),
        ),
        (
            "demo-bot",
            "multimsg",
            json!({"multimsg": [{"text": "Two things:"}, {"image": {"media_id": "MEDIA_ID_2"}}]}),
        ),
        (
            "demo-kf",
            "text",
            json!({"text": {"content": "Hello from WeCom customer service"}}),
        ),
        (
            "demo-kf",
            "image",
            json!({"image": {"media_id": "MEDIA_IMG"}}),
        ),
        (
            "demo-kf",
            "voice",
            json!({"voice": {"media_id": "MEDIA_VOICE"}}),
        ),
        (
            "demo-kf",
            "video",
            json!({"video": {"media_id": "MEDIA_VIDEO"}}),
        ),
        (
            "demo-kf",
            "file",
            json!({"file": {"media_id": "MEDIA_FILE"}}),
        ),
        (
            "demo-kf",
            "link",
            json!({"link": {"title": "Manual", "desc": "How to set it up", "url": "https://example.com/manual", "thumb_media_id": "THUMB_2"}}),
        ),
        (
            "demo-kf",
            "miniprogram",
            json!({"miniprogram": {"appid": "wx1234567890abcdef", "title": "Track order", "thumb_media_id": "THUMB_3", "pagepath": "pages/track"}}),
        ),
        (
            "demo-kf",
            "msgmenu",
            json!({"msgmenu": {"head_content": "Was this helpful?", "list": [{"type": "click", "click": {"id": "101", "content": "Yes"}}, {"type": "click", "click": {"id": "102", "content": "No"}}], "tail_content": "Thanks!"}}),
        ),
        (
            "demo-kf",
            "location",
            json!({"location": {"name": "Store", "address": "1 Main St", "latitude": 31.2304, "longitude": 121.4737}}),
        ),
        (
            "demo-kf",
            "business_card",
            json!({"business_card": {"userid": "zhangsan"}}),
        ),
        (
            "demo-kf",
            "ca_link",
            json!({"ca_link": {"link_url": "https://work.weixin.qq.com/ca/cawcde1"}}),
        ),
    ]
}

pub async fn run(config_path: Option<&std::path::Path>, args: DemoArgs) -> anyhow::Result<()> {
    // Broker and database from the config (defaults: the local services); accounts are the demo's.
    let mut cfg = Config::load(config_path)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("binding the simulator")?;
    let base_url = format!("http://{}", listener.local_addr()?);
    cfg.accounts = demo_accounts(&base_url);
    cfg.http.listen = args.listen.clone();
    cfg.validate()?;
    let sim = simulate::start(
        cfg.accounts.clone(),
        simulate::SimOptions::default(),
        listener,
    )
    .await?;
    println!("simulator      {}", sim.base_url());
    let worker = match Worker::start(cfg.clone()).await {
        Ok(w) => w,
        Err(e) if cfg.http.listen == args.listen && format!("{e:#}").contains("http.listen") => {
            cfg.http.listen = "127.0.0.1:0".into();
            Worker::start(cfg.clone()).await?
        }
        Err(e) => return Err(e),
    };
    if let Some(a) = worker.http_addr {
        println!("worker         metrics http://{a}/metrics, health http://{a}/readyz");
    }
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-demo").await?;
    let publisher = Publisher::new(&conn).await?;
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
    println!(
        "published      {} jobs (one of every message type, one invalid)",
        ids.len()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    let rows = loop {
        let rows = sqlx::query("SELECT job_id, account, status, attempts, coalesce(error, '') AS error FROM deliveries WHERE job_id = ANY($1) ORDER BY job_id")
            .bind(&ids)
            .fetch_all(worker.store.pool())
            .await?;
        let done = rows
            .iter()
            .filter(|r| {
                !matches!(
                    r.get::<String, _>("status").as_str(),
                    "accepted" | "retrying"
                )
            })
            .count();
        if done == ids.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
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
        let row = rows.iter().find(|r| r.get::<String, _>("job_id") == *id);
        let (account, status, error) = match row {
            Some(r) => (
                r.get::<String, _>("account"),
                r.get::<String, _>("status"),
                r.get::<String, _>("error"),
            ),
            None => ("?".into(), "missing".into(), String::new()),
        };
        println!(
            "{:<22} {:<9} {:<16} {:<7} {}",
            id,
            account,
            kinds.get(i).copied().unwrap_or(""),
            status,
            broker::truncate(&error, 60)
        );
    }
    println!();
    println!(
        "simulator accepted {} messages; try: wxdispatch status {}",
        sim.state().accepted_count(),
        ids[0]
    );
    let missing = ids.len() - rows.len();
    if args.serve {
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
