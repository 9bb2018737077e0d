//! `wxdispatch status <job id>`: a delivery and its history.

use std::io::Write;

use chrono::{DateTime, TimeDelta, Utc};

use super::account_flag::ambiguous_is_usage;
use crate::config::Config;
use crate::domain::allowance::WECOM_WINDOW_QUOTA;
use crate::domain::service_state::ServiceState;
use crate::ops::status::{self, ConversationReport, Report};
use crate::store::{self, Store};
use crate::text::escape_controls as esc;

/// `account`: `--account`, required when several accounts have the job id.
/// `json`: print the [`Report`] as one JSON object instead of text.
pub async fn run(
    cfg: Config,
    job_id: &str,
    account: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let pool = store::connect_pool(&cfg).await?;
    let st = Store::with_pool(pool, 1);
    let found = status::report_with_chatbot_state(&st, &cfg, job_id, account)
        .await
        .map_err(ambiguous_is_usage)?;
    let Some(report) = found else {
        match account {
            Some(a) => anyhow::bail!("no delivery with job id '{job_id}' on account '{a}'"),
            None => anyhow::bail!("no delivery with job id '{job_id}'"),
        }
    };
    if json {
        return super::output::print_json(&report);
    }
    let mut out = std::io::stdout().lock();
    print(&mut out, job_id, &report, Utc::now())?;
    Ok(())
}

fn print(
    out: &mut impl Write,
    job_id: &str,
    r: &Report,
    now: DateTime<Utc>,
) -> std::io::Result<()> {
    let d = &r.delivery;
    let ts = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_else(|| "-".into());
    writeln!(out, "job {job_id}")?;
    writeln!(out, "  status     {}", d.status)?;
    writeln!(
        out,
        "  account    {} ({}), kind {}",
        esc(&d.account),
        d.channel,
        d.kind
    )?;
    writeln!(out, "  recipient  {}", esc(&d.recipient))?;
    writeln!(out, "  attempts   {}", d.attempts)?;
    if let Some(c) = d.errcode {
        writeln!(out, "  errcode    {c}")?;
    }
    for (label, v) in [
        ("error     ", &d.error),
        ("msgid     ", &d.platform_msgid),
        ("req msgid ", &d.platform_request_msgid),
        ("broadcast ", &d.broadcast_id),
    ] {
        if let Some(v) = v.as_deref().filter(|v| *v != "-") {
            writeln!(out, "  {label} {}", esc(v))?;
        }
    }
    writeln!(out, "  created    {}", ts(Some(d.created_at)))?;
    writeln!(out, "  updated    {}", ts(Some(d.updated_at)))?;
    writeln!(out, "  sent       {}", ts(d.sent_at))?;
    if let Some(m) = &r.recall {
        writeln!(
            out,
            "  recalled   {} by job {}",
            m.recalled_at.to_rfc3339(),
            esc(&m.recalled_by_job)
        )?;
    }
    if let Some(dl) = &r.dead_letter {
        writeln!(
            out,
            "  rejected before it had a job id: dead letter #{} (`dlq list` shows it)",
            dl.id
        )?;
    }
    if let Some(c) = &r.conversation {
        print_conversation(out, c, now)?;
    }
    if let Some(c) = &r.chatbot {
        writeln!(
            out,
            "  chatbot    {}",
            c.state.map_or_else(
                || format!("unknown ({})", esc(c.error.as_deref().unwrap_or("-"))),
                |s| s.to_string()
            )
        )?;
    }
    if !r.history.is_empty() {
        writeln!(out, "history")?;
        for e in &r.history {
            writeln!(
                out,
                "  {}  {:<10} after {} attempt(s){}",
                e.at.to_rfc3339(),
                e.status,
                e.attempts,
                e.error
                    .as_ref()
                    .map(|e| format!(" — {}", esc(e)))
                    .unwrap_or_default()
            )?;
        }
    }
    Ok(())
}

/// The conversation's WeCom allowance and session.
fn print_conversation(
    out: &mut impl Write,
    c: &ConversationReport,
    now: DateTime<Utc>,
) -> std::io::Result<()> {
    writeln!(
        out,
        "conversation ({} / {})",
        esc(&c.open_kfid),
        esc(&c.recipient)
    )?;
    let Some(f) = &c.facts else {
        return writeln!(out, "  no customer message or session state recorded yet");
    };
    match f.last_customer_msg_at {
        Some(t) => {
            let left = status::window_left(t, now);
            writeln!(out, "  customer's last message  {}", t.to_rfc3339())?;
            if left > TimeDelta::zero() {
                writeln!(
                    out,
                    "  reply window             open, {} h {} min left",
                    left.num_hours(),
                    left.num_minutes() % 60
                )?;
            } else {
                writeln!(out, "  reply window             closed")?;
            }
            writeln!(
                out,
                "  allowance                {} of {WECOM_WINDOW_QUOTA} used",
                f.sent_since_customer
            )?;
        }
        None => writeln!(
            out,
            "  customer's last message  unknown (window not enforced)"
        )?,
    }
    if let Some(state) = f.service_state {
        writeln!(
            out,
            "  session                  {state} ({}){}",
            session_words(state),
            f.servicer_userid
                .as_ref()
                .map(|w| format!(", servicer {w}"))
                .unwrap_or_default()
        )?;
    }
    Ok(())
}

/// How `status` words a session state (longer than [`ServiceState::name`], for people).
fn session_words(code: i32) -> &'static str {
    match ServiceState::from_code(i64::from(code)) {
        Some(ServiceState::New) => "new",
        Some(ServiceState::Bot) => "bot",
        Some(ServiceState::Queued) => "queued for a human",
        Some(ServiceState::Human) => "human serving",
        Some(ServiceState::Ended) => "ended",
        None => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::deliveries::{Conversation, Delivery, DeliveryEvent};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap_or_default()
    }

    #[test]
    fn prints_the_row_the_allowance_the_session_and_the_history() {
        let report = Report {
            delivery: Delivery {
                job_id: "q5".into(),
                account: "kf".into(),
                channel: "wecom".into(),
                kind: "send".into(),
                recipient: "wmQ".into(),
                open_kfid: Some("wkKF1".into()),
                status: "dead".into(),
                attempts: 1,
                errcode: None,
                error: Some("quota_exhausted".into()),
                platform_msgid: None,
                platform_request_msgid: None,
                broadcast_id: None,
                created_at: at(1_000),
                updated_at: at(1_060),
                sent_at: None,
            },
            conversation: Some(ConversationReport {
                open_kfid: "wkKF1".into(),
                recipient: "wmQ".into(),
                facts: Some(Conversation {
                    last_customer_msg_at: Some(at(0)),
                    sent_since_customer: 5,
                    service_state: Some(2),
                    servicer_userid: None,
                }),
            }),
            history: vec![DeliveryEvent {
                at: at(1_060),
                status: "dead".into(),
                attempts: 1,
                errcode: None,
                error: Some("quota_exhausted".into()),
            }],
            chatbot: None,
            recall: None,
            dead_letter: None,
        };
        let mut out = Vec::new();
        print(&mut out, "q5", &report, at(3_600)).unwrap();
        let text = String::from_utf8(out).unwrap();
        for line in [
            "job q5\n",
            "  status     dead\n",
            "  account    kf (wecom), kind send\n",
            "  error      quota_exhausted\n",
            "  sent       -\n",
            "conversation (wkKF1 / wmQ)\n",
            "  reply window             open, 47 h 0 min left\n",
            "  allowance                5 of 5 used\n",
            "  session                  2 (queued for a human)\n",
            "history\n",
        ] {
            assert!(text.contains(line), "{line:?} in\n{text}");
        }
        assert!(!text.contains("msgid"), "{text}");
    }
}
