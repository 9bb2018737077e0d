//! `wxdispatch send`: publish one job (from flags or a JSON file) with publisher confirms and
//! print its id.

use std::path::PathBuf;

use super::usage::UsageError;
use crate::broker::{self, Publisher};
use crate::config::Config;
use crate::domain::job;

#[derive(Debug, clap::Args)]
pub struct SendArgs {
    /// Account (routing key) to send through.
    #[arg(long)]
    pub account: String,
    /// A job JSON file (the README's "Job format"); flags below override its fields.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Recipient: openid (chatbot) or external_userid (WeCom).
    #[arg(long)]
    pub to: Option<String>,
    /// A text message.
    #[arg(long)]
    pub text: Option<String>,
    /// The message object as JSON, e.g. '{"image":{"media_id":"M"}}'.
    #[arg(long, value_name = "JSON")]
    pub message: Option<String>,
    /// Job id (default: generated).
    #[arg(long)]
    pub job_id: Option<String>,
    /// WeCom: the kf account (open_kfid) to send from (default: the account's only one).
    #[arg(long)]
    pub open_kfid: Option<String>,
    /// bot (default) or none.
    #[arg(long)]
    pub gate: Option<String>,
    /// Do not send before this RFC 3339 time, e.g. 2026-12-01T09:00:00+08:00 (the job's
    /// `not_before`).
    #[arg(long, value_name = "RFC3339", value_parser = parse_rfc3339)]
    pub at: Option<String>,
    /// Print `{"job_id", "account"}` as JSON instead of the bare job id.
    #[arg(long)]
    pub json: bool,
}

/// The `--json` document of `send`.
#[derive(Debug, serde::Serialize)]
struct Sent<'a> {
    job_id: &'a str,
    account: &'a str,
}

/// An RFC 3339 time given on the command line (`--at`, `--not-after`), kept as typed after
/// the check; a clap value parser, so a bad one is a usage error (exit 2) naming the flag.
pub fn parse_rfc3339(s: &str) -> Result<String, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|_| s.to_owned())
        .map_err(|e| format!("'{s}' is not an RFC 3339 time such as 2026-12-01T09:00:00Z ({e})"))
}

pub async fn run(cfg: Config, a: SendArgs) -> anyhow::Result<()> {
    let mut job: serde_json::Value = match &a.file {
        Some(f) => {
            let text = crate::config::read_capped(f, crate::config::INPUT_FILE_MAX, "--file")?;
            serde_json::from_str(&text)
                .map_err(|e| usage(format!("--file: {} is not JSON: {e}", f.display())))?
        }
        None => serde_json::json!({}),
    };
    let obj = job
        .as_object_mut()
        .ok_or_else(|| usage("--file: the job must be a JSON object".into()))?;
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
    if let Some(v) = a.at {
        obj.insert("not_before".into(), v.into());
    }
    if let Some(t) = a.text {
        obj.insert("message".into(), serde_json::json!({ "text": t }));
    }
    if let Some(m) = a.message {
        obj.insert(
            "message".into(),
            serde_json::from_str(&m).map_err(|e| usage(format!("--message is not JSON: {e}")))?,
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
            .map_err(|e| usage(format!("invalid job: {e}")))?;
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
    if a.json {
        return super::output::print_json(&Sent {
            job_id: &job_id,
            account: &a.account,
        });
    }
    println!("{job_id}");
    Ok(())
}

/// A problem with the command's input, found before anything is published (exit 2).
fn usage(msg: String) -> anyhow::Error {
    UsageError(msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_takes_rfc3339_times_only() {
        assert!(parse_rfc3339("2026-12-01T09:00:00+08:00").is_ok());
        assert!(parse_rfc3339("2026-12-01T01:00:00Z").is_ok());
        for bad in ["tomorrow", "2026-12-01", "2026-12-01 09:00", ""] {
            let e = parse_rfc3339(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{e}");
        }
    }
}
