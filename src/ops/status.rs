//! `wxdispatch status <job id>`: a delivery, its conversation's WeCom allowance and its
//! history, as data (the command line prints it).

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};

use super::account_id;
use crate::config::{Channel, Config};
use crate::domain::allowance::WECOM_WINDOW;
use crate::domain::chatbot_state::ChatbotState;
use crate::platform::{Platform, http_client};
use crate::store::dead_letters::{self, DeadLetterRow};
use crate::store::deliveries::{Conversation, Delivery, DeliveryEvent};
use crate::store::{RecallMark, Store};

/// Everything `status` shows of one job (its `--json` document: every field, serialized as it
/// is, so fields added here appear there).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    pub delivery: Delivery,
    /// For a job with an `open_kfid` (WeCom): the conversation with its recipient.
    pub conversation: Option<ConversationReport>,
    /// The job's history, oldest first, including a first-attempt send (which has no event of
    /// its own).
    pub history: Vec<DeliveryEvent>,
    /// For a chatbot job: its conversation's state, asked of the platform when the report is
    /// made ([`report_with_chatbot_state`]); `None` for WeCom jobs, or when not asked.
    pub chatbot: Option<ChatbotStateReport>,
    /// Set when a recall job took the message back (WeCom kf/recall_msg): when, and which job.
    pub recall: Option<RecallMark>,
    /// For a job rejected before it had a valid id (no `deliveries` row; found by the AMQP
    /// `message_id` it was published with): its newest dead letter. `delivery` is then made
    /// from it ([`rejected_delivery`]): status `dead`, the reason and detail as the error.
    pub dead_letter: Option<DeadLetterRow>,
}

/// A chatbot conversation's state as `status` shows it: `kefustate/get` (`type=all`) asked when
/// the command runs. wxdispatch keeps no copy of it (the lane's gate cache lives in the worker
/// and trusts an answer for seconds only), and the platform is where it changes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ChatbotStateReport {
    /// The state, when the platform answered one.
    pub state: Option<ChatbotState>,
    /// Why there is no state: the call failed, or the answer named a state wxdispatch does
    /// not know. Names neither the token nor the URL.
    pub error: Option<String>,
}

/// A WeCom conversation as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ConversationReport {
    pub open_kfid: String,
    pub recipient: String,
    /// `None`: no customer message or session state recorded yet.
    pub facts: Option<Conversation>,
}

/// The report of `job_id` on `account`, or on the one account that has it when `account` is
/// `None`; `None` when there is no such delivery. An id that several accounts have, asked
/// without an account, is an [`account_id::AmbiguousId`] error.
pub async fn report(
    store: &Store,
    job_id: &str,
    account: Option<&str>,
) -> anyhow::Result<Option<Report>> {
    let found = store.deliveries(job_id, account).await?;
    let Some(delivery) = account_id::only("job id", job_id, found, |d| &d.account)? else {
        return rejected(store, job_id, account).await;
    };
    // The conversation's WeCom allowance (kept by the sync loop and the lanes).
    let conversation = match &delivery.open_kfid {
        Some(kfid) => Some(ConversationReport {
            open_kfid: kfid.clone(),
            recipient: delivery.recipient.clone(),
            facts: store
                .conversation(&delivery.account, kfid, &delivery.recipient)
                .await?,
        }),
        None => None,
    };
    let events = store.delivery_events(&delivery.account, job_id).await?;
    let history = history(events, delivery.sent_at);
    let recall = store.recall_mark(&delivery.account, job_id).await?;
    Ok(Some(Report {
        delivery,
        conversation,
        history,
        chatbot: None,
        recall,
        dead_letter: None,
    }))
}

/// [`report`], plus (for a job of a chatbot account in `cfg`) the conversation's state asked
/// of the platform with the account's own client ([`chatbot_state`]).
pub async fn report_with_chatbot_state(
    store: &Store,
    cfg: &Config,
    job_id: &str,
    account: Option<&str>,
) -> anyhow::Result<Option<Report>> {
    let Some(mut r) = report(store, job_id, account).await? else {
        return Ok(None);
    };
    if let Some(a) = cfg
        .account(&r.delivery.account)
        .filter(|a| a.channel == Channel::Chatbot)
    {
        let platform = Platform::new(a.clone(), http_client(cfg)?, store.clone());
        r.chatbot = Some(chatbot_state(&platform, &r.delivery.recipient).await);
    }
    Ok(Some(r))
}

/// The state of `openid`'s conversation on a chatbot account, asked with `kefustate/get`
/// (`type=all`; `<appid>` the account's `oa_appid`, as the delivery row keeps no job appid).
pub async fn chatbot_state(platform: &Platform, openid: &str) -> ChatbotStateReport {
    let appid = platform.account.oa_appid.as_deref();
    match platform.chatbot_state_of(appid, openid).await {
        Ok(state) => ChatbotStateReport {
            state: Some(state),
            error: None,
        },
        Err(e) => ChatbotStateReport {
            state: None,
            error: Some(e.to_string()),
        },
    }
}

/// The report of a job that has no delivery row: one rejected before it had a valid id (an
/// unreadable body, an over-long or otherwise invalid job_id), found by the AMQP `message_id`
/// it was published with. Several accounts' dead letters under one id are ambiguous, like
/// deliveries; of one account's several (republished), the newest is shown.
async fn rejected(
    store: &Store,
    id: &str,
    account: Option<&str>,
) -> anyhow::Result<Option<Report>> {
    let mut found = dead_letters::rejected_by_id(store, id, account).await?;
    // Newest first: keep each account's newest.
    let mut seen = std::collections::HashSet::new();
    found.retain(|d| seen.insert(d.account.clone()));
    let Some(dl) = account_id::only("job id", id, found, |d| &d.account)? else {
        return Ok(None);
    };
    Ok(Some(Report {
        delivery: rejected_delivery(id, &dl),
        conversation: None,
        history: Vec::new(),
        chatbot: None,
        recall: None,
        dead_letter: Some(dl),
    }))
}

/// The delivery `status` shows for a job rejected before it had a valid id: `dead`, on the
/// dead letter's account, its reason (and detail) as the error, channel and kind unknown
/// (`-`: the body was never read as a job).
pub fn rejected_delivery(id: &str, dl: &DeadLetterRow) -> Delivery {
    Delivery {
        job_id: id.to_owned(),
        account: dl.account.clone(),
        channel: "-".into(),
        kind: "-".into(),
        recipient: String::new(),
        open_kfid: None,
        status: "dead".into(),
        attempts: dl.attempts,
        errcode: dl.errcode,
        error: Some(match &dl.errmsg {
            Some(m) => format!("{}: {m}", dl.reason),
            None => dl.reason.clone(),
        }),
        platform_msgid: None,
        platform_request_msgid: None,
        broadcast_id: None,
        created_at: dl.dead_at,
        updated_at: dl.dead_at,
        sent_at: None,
    }
}

/// The history to show: the recorded events, plus the send when it has no event of its own.
/// A send that succeeded at the first attempt has none (it is the common case, kept out of the
/// history table): its time is the row's `sent_at`.
pub fn history(
    mut events: Vec<DeliveryEvent>,
    sent_at: Option<DateTime<Utc>>,
) -> Vec<DeliveryEvent> {
    if let Some(at) = sent_at
        && !events.iter().any(|e| e.status == "sent")
    {
        events.push(DeliveryEvent {
            at,
            status: "sent".into(),
            attempts: 1,
            errcode: None,
            error: None,
        });
        events.sort_by_key(|e| e.at);
    }
    events
}

/// How long the 48-hour reply window stays open after the customer's last message at `last`
/// (zero or negative: closed).
pub fn window_left(last: DateTime<Utc>, now: DateTime<Utc>) -> TimeDelta {
    last + WECOM_WINDOW - now
}

/// A report as the JSON of `GET /v1/jobs/{id}`, built field by field (the store's rows are not
/// serializable) with the names of the `deliveries` columns; `conversation` and `dead_letter`
/// only when there is one.
pub fn report_json(r: &Report) -> Value {
    let d = &r.delivery;
    let history: Vec<Value> = r
        .history
        .iter()
        .map(|e| {
            json!({
                "at": e.at.to_rfc3339(),
                "status": e.status,
                "attempts": e.attempts,
                "errcode": e.errcode,
                "error": e.error,
            })
        })
        .collect();
    let mut v = json!({
        "job_id": d.job_id,
        "account": d.account,
        "channel": d.channel,
        "kind": d.kind,
        "recipient": d.recipient,
        "open_kfid": d.open_kfid,
        "status": d.status,
        "attempts": d.attempts,
        "errcode": d.errcode,
        "error": d.error,
        "platform_msgid": d.platform_msgid,
        "platform_request_msgid": d.platform_request_msgid,
        "broadcast_id": d.broadcast_id,
        "created_at": d.created_at.to_rfc3339(),
        "updated_at": d.updated_at.to_rfc3339(),
        "sent_at": d.sent_at.map(|t| t.to_rfc3339()),
        "history": history,
    });
    if let Some(c) = &r.conversation {
        v["conversation"] = json!({
            "open_kfid": c.open_kfid,
            "recipient": c.recipient,
            "last_customer_msg_at": c.facts.as_ref().and_then(|f| f.last_customer_msg_at).map(|t| t.to_rfc3339()),
            "sent_since_customer": c.facts.as_ref().map(|f| f.sent_since_customer),
            "service_state": c.facts.as_ref().and_then(|f| f.service_state),
        });
    }
    if let Some(dl) = &r.dead_letter {
        v["dead_letter"] = json!({
            "id": dl.id,
            "reason": dl.reason,
            "errmsg": dl.errmsg,
            "message_id": dl.message_id,
            "dead_at": dl.dead_at.to_rfc3339(),
        });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(secs: i64, status: &str, attempts: i32) -> DeliveryEvent {
        DeliveryEvent {
            at: DateTime::from_timestamp(secs, 0).unwrap_or_default(),
            status: status.into(),
            attempts,
            errcode: None,
            error: None,
        }
    }

    #[test]
    fn a_first_attempt_send_appears_in_the_history_in_time_order() {
        let sent_at = DateTime::from_timestamp(150, 0);
        let h = history(
            vec![event(100, "retrying", 1), event(200, "retrying", 2)],
            sent_at,
        );
        let statuses: Vec<_> = h.iter().map(|e| (e.status.as_str(), e.attempts)).collect();
        assert_eq!(statuses, [("retrying", 1), ("sent", 1), ("retrying", 2)]);
    }

    #[test]
    fn a_recorded_send_is_not_shown_twice_and_unsent_jobs_get_none() {
        let sent_at = DateTime::from_timestamp(300, 0);
        let recorded = vec![event(100, "retrying", 1), event(300, "sent", 2)];
        assert_eq!(history(recorded.clone(), sent_at), recorded);
        assert_eq!(
            history(recorded[..1].to_vec(), None),
            recorded[..1].to_vec()
        );
        assert!(history(Vec::new(), None).is_empty());
    }

    #[test]
    fn the_window_closes_48_hours_after_the_customer_wrote() {
        let last = DateTime::from_timestamp(1_000_000, 0).unwrap_or_default();
        assert_eq!(window_left(last, last), WECOM_WINDOW);
        assert_eq!(window_left(last, last + WECOM_WINDOW), TimeDelta::zero());
        assert!(window_left(last, last + WECOM_WINDOW + TimeDelta::seconds(1)) < TimeDelta::zero());
    }
}
