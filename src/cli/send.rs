//! `wxdispatch send`: publish one job (from flags or a JSON file) with publisher confirms and
//! print its id.

use std::path::PathBuf;

use anyhow::Context;

use crate::broker::{self, Publisher};
use crate::config::Config;
use crate::domain::job;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Account (routing key) to send through.
    #[arg(long)]
    pub account: String,
    /// A job JSON file (contract §4); flags below override its fields.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Recipient: openid (chatbot) or external_userid (WeCom).
    #[arg(long)]
    pub to: Option<String>,
    /// A text message.
    #[arg(long)]
    pub text: Option<String>,
    /// The message object as JSON, e.g. '{"image":{"media_id":"M"}}'.
    #[arg(long)]
    pub message: Option<String>,
    /// Job id (default: generated).
    #[arg(long)]
    pub job_id: Option<String>,
    #[arg(long)]
    pub open_kfid: Option<String>,
    /// bot (default) or none.
    #[arg(long)]
    pub gate: Option<String>,
}

pub async fn run(cfg: Config, a: SendArgs) -> anyhow::Result<()> {
    let mut job: serde_json::Value = match &a.file {
        Some(f) => {
            let text = crate::config::read_capped(f, crate::config::INPUT_FILE_MAX, "--file")?;
            serde_json::from_str(&text)
                .with_context(|| format!("--file: {} is not JSON", f.display()))?
        }
        None => serde_json::json!({}),
    };
    let obj = job
        .as_object_mut()
        .context("--file: the job must be a JSON object")?;
    if let Some(v) = a.job_id {
        obj.insert("job_id".into(), v.into());
    }
    if let Some(v) = a.to {
        obj.insert("to".into(), v.into());
    }
    if let Some(v) = a.open_kfid {
        obj.insert("open_kfid".into(), v.into());
    }
    if let Some(v) = a.gate {
        obj.insert("gate".into(), v.into());
    }
    if let Some(t) = a.text {
        obj.insert("message".into(), serde_json::json!({ "text": t }));
    }
    if let Some(m) = a.message {
        obj.insert(
            "message".into(),
            serde_json::from_str(&m).context("--message is not JSON")?,
        );
    }
    if !obj.contains_key("job_id") {
        obj.insert(
            "job_id".into(),
            crate::domain::ids::generate_job_id().into(),
        );
    }
    let body = serde_json::to_vec(&job)?;
    // Validate locally when the account is known here, so mistakes surface before publishing.
    if let Some(acc) = cfg.account(&a.account) {
        job::parse(&body, None, acc, cfg.worker.max_body_bytes)
            .map_err(|e| anyhow::anyhow!("invalid job: {e}"))?;
    }
    let job_id = job
        .get("job_id")
        .and_then(|v| v.as_str())
        .unwrap_or_default()
        .to_owned();
    // `publish_job` stamps the message with its publish time as the AMQP timestamp (seconds),
    // which the lane reads for the end-to-end latency metric.
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-send").await?;
    broker::declare_topology(&conn, &cfg).await?;
    let publisher = Publisher::new(&conn).await?;
    publisher.publish_job(&a.account, &job_id, &body).await?;
    let _ = conn.close(200, "bye".into()).await;
    println!("{job_id}");
    Ok(())
}
