//! `deliveries` (one row per job), `delivery_events` (its history) and the conversation facts
//! read with the claim: the hot path's claim, outcome and service-state batches, the dead
//! letter record, and the reads of `wxdispatch status`.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::batcher::last_per_key;

/// `deliveries.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Accepted,
    Retrying,
    Sent,
    Failed,
    Dead,
    Suppressed,
    Expired,
    Cancelled,
    /// Waiting for its `not_before` (a scheduled send, held in a delay tier): not an outcome.
    Scheduled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Accepted => "accepted",
            Status::Retrying => "retrying",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Dead => "dead",
            Status::Suppressed => "suppressed",
            Status::Expired => "expired",
            Status::Cancelled => "cancelled",
            Status::Scheduled => "scheduled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "accepted" => Status::Accepted,
            "retrying" => Status::Retrying,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "dead" => Status::Dead,
            "suppressed" => Status::Suppressed,
            "expired" => Status::Expired,
            "cancelled" => Status::Cancelled,
            "scheduled" => Status::Scheduled,
            _ => return None,
        })
    }
    /// A terminal status is an outcome: a redelivered job in this state is not processed again.
    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            Status::Accepted | Status::Retrying | Status::Scheduled
        )
    }
}

/// Identity of one delivery row.
#[derive(Debug, Clone)]
pub struct DeliveryKey {
    pub job_id: String,
    pub account: String,
    pub channel: &'static str,
    pub kind: &'static str,
    pub recipient: String,
    pub open_kfid: Option<String>,
    pub broadcast_id: Option<String>,
}

/// What the claim found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time this job id is seen: go ahead.
    New,
    /// A row exists but has no outcome (a crash or a broker redelivery): go ahead, counting
    /// the attempts already made.
    Resume {
        attempts: i32,
        first_attempt_at: Option<DateTime<Utc>>,
    },
    /// The job already has an outcome: do not send again.
    Done(Status),
    /// The same job id is being claimed concurrently in this batch: ask again shortly.
    Busy,
}

/// A conversation's WeCom service state to remember ([`Store::set_service_state`]).
pub(super) struct ServiceStateRow {
    pub(super) account: String,
    pub(super) open_kfid: String,
    pub(super) external_userid: String,
    pub(super) state: i32,
}

/// What Postgres knows of a WeCom conversation (rows written by the sync loop), read with
/// the claim so the lane can gate and apply the 48-hour / 5-message window without another
/// round trip.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConvState {
    pub last_customer_msg_at: Option<DateTime<Utc>>,
    pub sent_since_customer: i32,
    pub service_state: Option<i32>,
    pub state_updated_at: Option<DateTime<Utc>>,
}

/// The outcome row written before the ack.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub key: DeliveryKey,
    pub status: Status,
    pub attempts: i32,
    pub errcode: Option<i64>,
    pub error: Option<String>,
    pub platform_msgid: Option<String>,
    /// The outcome event to write with the row, in the same statement (`None`: the account
    /// has `outcomes = false`). Only a row the statement changes gets its event: a duplicate
    /// outcome of a row already `sent` writes none.
    pub event: Option<super::outbox_types::EventMeta>,
}

/// A dead letter to remember for `dlq list` / `dlq replay`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    /// The AMQP `message_id` it was published with, whatever it is: a job rejected before it
    /// had a valid id is still found by it (`status <message_id>`).
    pub message_id: Option<String>,
    pub account: String,
    pub reason: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: i32,
    pub body: Vec<u8>,
}

/// One `deliveries` row, as `wxdispatch status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Delivery {
    pub job_id: String,
    pub account: String,
    pub channel: String,
    pub kind: String,
    pub recipient: String,
    pub open_kfid: Option<String>,
    pub status: String,
    pub attempts: i32,
    pub errcode: Option<i64>,
    pub error: Option<String>,
    pub platform_msgid: Option<String>,
    /// WeCom: the `msgid` the request carried (the job id, or its 32-char digest for a longer
    /// id; [`crate::domain::ids::wecom_msgid`]). `None` for chatbot jobs and unsent rows.
    pub platform_request_msgid: Option<String>,
    pub broadcast_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// One `delivery_events` row: a change of a delivery's status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeliveryEvent {
    pub at: DateTime<Utc>,
    pub status: String,
    pub attempts: i32,
    pub errcode: Option<i64>,
    pub error: Option<String>,
}

/// What `conversations` holds of one WeCom conversation, for `wxdispatch status` (kept by the
/// sync loop and the lanes).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conversation {
    pub last_customer_msg_at: Option<DateTime<Utc>>,
    pub sent_since_customer: i32,
    /// The platform's integer (`domain::service_state::ServiceState::from_code` names it).
    pub service_state: Option<i32>,
    pub servicer_userid: Option<String>,
}

// ---- what `wxdispatch status` reads ----

/// The delivery rows of a job id: the one of `account`, or (`None`) those of every account
/// that has the id, by account.
pub(super) async fn deliveries(
    pool: &PgPool,
    job_id: &str,
    account: Option<&str>,
) -> anyhow::Result<Vec<Delivery>> {
    let rows = sqlx::query(
        "SELECT job_id, account, channel, kind, recipient, open_kfid, status, attempts, errcode, error,
                platform_msgid, platform_request_msgid, broadcast_id, created_at, updated_at, sent_at
         FROM deliveries WHERE job_id = $1 AND ($2::text IS NULL OR account = $2)
         ORDER BY account",
    )
    .bind(job_id)
    .bind(account)
    .fetch_all(pool)
    .await
    .context("reading the delivery")?;
    Ok(rows
        .iter()
        .map(|r| Delivery {
            job_id: r.get("job_id"),
            account: r.get("account"),
            channel: r.get("channel"),
            kind: r.get("kind"),
            recipient: r.get("recipient"),
            open_kfid: r.get("open_kfid"),
            status: r.get("status"),
            attempts: r.get("attempts"),
            errcode: r.get("errcode"),
            error: r.get("error"),
            platform_msgid: r.get("platform_msgid"),
            platform_request_msgid: r.get("platform_request_msgid"),
            broadcast_id: r.get("broadcast_id"),
            created_at: r.get("created_at"),
            updated_at: r.get("updated_at"),
            sent_at: r.get("sent_at"),
        })
        .collect())
}

/// A job's history, oldest first.
pub(super) async fn delivery_events(
    pool: &PgPool,
    account: &str,
    job_id: &str,
) -> anyhow::Result<Vec<DeliveryEvent>> {
    let rows = sqlx::query(
        "SELECT at, status, attempts, errcode, error FROM delivery_events
         WHERE job_id = $1 AND account = $2 ORDER BY id",
    )
    .bind(job_id)
    .bind(account)
    .fetch_all(pool)
    .await
    .context("reading the delivery's history")?;
    Ok(rows
        .iter()
        .map(|r| DeliveryEvent {
            at: r.get("at"),
            status: r.get("status"),
            attempts: r.get("attempts"),
            errcode: r.get("errcode"),
            error: r.get("error"),
        })
        .collect())
}

/// What is known of a WeCom conversation (`None`: no customer message or session state
/// recorded yet).
pub(super) async fn conversation(
    pool: &PgPool,
    account: &str,
    open_kfid: &str,
    external_userid: &str,
) -> anyhow::Result<Option<Conversation>> {
    let row = sqlx::query(
        "SELECT last_customer_msg_at, sent_since_customer, service_state, servicer_userid
         FROM conversations WHERE account = $1 AND open_kfid = $2 AND external_userid = $3",
    )
    .bind(account)
    .bind(open_kfid)
    .bind(external_userid)
    .fetch_optional(pool)
    .await
    .context("reading the conversation")?;
    Ok(row.map(|c| Conversation {
        last_customer_msg_at: c.get("last_customer_msg_at"),
        sent_since_customer: c.get("sent_since_customer"),
        service_state: c.get("service_state"),
        servicer_userid: c.get("servicer_userid"),
    }))
}

/// Claim a batch of jobs in one statement. Long because it is one unit: the statement, the
/// column arrays it takes and the reading of its rows belong together.
pub(super) async fn claim_batch(
    pool: &PgPool,
    batch: &[DeliveryKey],
) -> anyhow::Result<Vec<(Claim, Option<ConvState>)>> {
    // The same job (account and job id) twice in one statement cannot be told apart: the
    // later ones wait.
    let mut seen = std::collections::HashMap::with_capacity(batch.len());
    let first: Vec<bool> = batch
        .iter()
        .enumerate()
        .map(|(i, k)| {
            *seen
                .entry((k.account.as_str(), k.job_id.as_str()))
                .or_insert(i)
                == i
        })
        .collect();
    let mut ids = Vec::with_capacity(batch.len());
    let mut accounts = Vec::with_capacity(batch.len());
    let mut channels = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut recipients = Vec::with_capacity(batch.len());
    let mut kfids = Vec::with_capacity(batch.len());
    let mut bids = Vec::with_capacity(batch.len());
    // The msgid each WeCom job is sent with (the job id, or its digest when longer than
    // WeCom's 32 chars), kept in the row so `status` shows what the platform was given.
    let mut request_msgids = Vec::with_capacity(batch.len());
    for (k, f) in batch.iter().zip(&first) {
        if !f {
            continue;
        }
        ids.push(k.job_id.as_str());
        accounts.push(k.account.as_str());
        channels.push(k.channel);
        kinds.push(k.kind);
        recipients.push(k.recipient.as_str());
        kfids.push(k.open_kfid.as_deref());
        bids.push(k.broadcast_id.as_deref());
        request_msgids.push(
            (k.channel == "wecom").then(|| crate::domain::ids::wecom_msgid(&k.job_id).into_owned()),
        );
    }
    // `ins` sees only what it inserted; the outer SELECT runs on the statement's snapshot and
    // so sees only rows that existed before: together, every input job once.
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::text[])
                 AS t(job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                      platform_request_msgid)
         ), ins AS (
             INSERT INTO deliveries (job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                                     status, attempts, first_attempt_at, platform_request_msgid)
             SELECT job_id, account, channel, kind, recipient, open_kfid, broadcast_id, 'accepted', 0, now(),
                    platform_request_msgid
             FROM input
             ON CONFLICT (account, job_id) DO NOTHING
             RETURNING job_id, account
         ), request_msgid AS (
             -- a row from before migration 0017, or one written when the job was rejected
             -- (then replayed): it learns its msgid now
             UPDATE deliveries d SET platform_request_msgid = i.platform_request_msgid
             FROM input i
             WHERE d.job_id = i.job_id AND d.account = i.account
               AND d.platform_request_msgid IS NULL AND i.platform_request_msgid IS NOT NULL
         )
         , res AS (
             SELECT job_id, account, 'new' AS status, 0 AS attempts, NULL::timestamptz AS first_attempt_at
             FROM ins
             UNION ALL
             SELECT d.job_id, d.account, d.status, d.attempts, d.first_attempt_at
             FROM deliveries d JOIN input i ON i.job_id = d.job_id AND i.account = d.account
         )
         SELECT r.job_id, r.account, r.status, r.attempts, r.first_attempt_at,
                c.account IS NOT NULL AS has_conv, c.last_customer_msg_at, c.sent_since_customer,
                c.service_state, c.state_updated_at
         FROM res r
         JOIN input i ON i.job_id = r.job_id AND i.account = r.account
         LEFT JOIN conversations c
             ON c.account = i.account AND c.open_kfid = i.open_kfid AND c.external_userid = i.recipient",
    )
    .bind(&ids)
    .bind(&accounts)
    .bind(&channels)
    .bind(&kinds)
    .bind(&recipients)
    .bind(&kfids)
    .bind(&bids)
    .bind(&request_msgids)
    .fetch_all(pool)
    .await
    .context("claiming deliveries")?;
    // By position in `batch`.
    let mut found = vec![None; batch.len()];
    for r in rows {
        let id: String = r.get("job_id");
        let account: String = r.get("account");
        let status: String = r.get("status");
        let claim = if status == "new" {
            Claim::New
        } else {
            match Status::parse(&status) {
                Some(s) if s.is_terminal() => Claim::Done(s),
                _ => Claim::Resume {
                    attempts: r.get("attempts"),
                    first_attempt_at: r.get("first_attempt_at"),
                },
            }
        };
        let conv = r.get::<bool, _>("has_conv").then(|| ConvState {
            last_customer_msg_at: r.get("last_customer_msg_at"),
            sent_since_customer: r.get("sent_since_customer"),
            service_state: r.get("service_state"),
            state_updated_at: r.get("state_updated_at"),
        });
        if let Some(&i) = seen.get(&(account.as_str(), id.as_str())) {
            found[i] = Some((claim, conv));
        }
    }
    // A repeat in the batch, or missing (a concurrent transaction inserted it after our snapshot): ask
    // again.
    Ok(found
        .into_iter()
        .map(|c| c.unwrap_or((Claim::Busy, None)))
        .collect())
}

pub(super) async fn state_batch(
    pool: &PgPool,
    batch: &[ServiceStateRow],
) -> anyhow::Result<Vec<()>> {
    // The last answer for a conversation in the batch wins.
    let keep = last_per_key(batch, |s| {
        (
            s.account.as_str(),
            s.open_kfid.as_str(),
            s.external_userid.as_str(),
        )
    });
    let accounts: Vec<&str> = keep.iter().map(|&i| batch[i].account.as_str()).collect();
    let kfids: Vec<&str> = keep.iter().map(|&i| batch[i].open_kfid.as_str()).collect();
    let users: Vec<&str> = keep
        .iter()
        .map(|&i| batch[i].external_userid.as_str())
        .collect();
    let states: Vec<i32> = keep.iter().map(|&i| batch[i].state).collect();
    sqlx::query(
        "INSERT INTO conversations (account, open_kfid, external_userid, service_state, state_updated_at)
         SELECT account, open_kfid, external_userid, service_state, now()
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::int[])
             AS t(account, open_kfid, external_userid, service_state)
         ON CONFLICT (account, open_kfid, external_userid)
         DO UPDATE SET service_state = excluded.service_state, state_updated_at = now()",
    )
    .bind(&accounts)
    .bind(&kfids)
    .bind(&users)
    .bind(&states)
    .execute(pool)
    .await
    .context("storing service states")?;
    Ok(vec![(); batch.len()])
}

/// Record a batch of outcomes in one statement. Long for the same reason as [`claim_batch`]:
/// seventeen column arrays and the statement that takes them.
pub(super) async fn outcome_batch(pool: &PgPool, batch: &[Outcome]) -> anyhow::Result<Vec<()>> {
    // One row per job (account and job id) per statement: the last outcome in the batch wins.
    let n = batch.len();
    let keep = last_per_key(batch, |o| (o.key.account.as_str(), o.key.job_id.as_str()));
    #[allow(clippy::type_complexity)]
    let mut cols: (
        Vec<&str>,
        Vec<&str>,
        Vec<&str>,
        Vec<&str>,
        Vec<&str>,
        Vec<Option<&str>>,
        Vec<Option<&str>>,
    ) = Default::default();
    let mut statuses = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut errcodes = Vec::with_capacity(n);
    let mut errors = Vec::with_capacity(n);
    let mut msgids = Vec::with_capacity(n);
    // The outcome events (README "Outcome events"): whether the row has one, and its fields
    // that the row does not hold.
    let mut evs = Vec::with_capacity(n);
    // reason, errmsg, correlation_id, reply_to
    let mut ev_cols: [Vec<Option<&str>>; 4] = Default::default();
    for o in keep.iter().map(|&i| &batch[i]) {
        evs.push(o.event.is_some());
        let e = o.event.as_ref();
        ev_cols[0].push(e.and_then(|e| e.reason.as_deref()));
        ev_cols[1].push(e.and_then(|e| e.errmsg.as_deref()));
        ev_cols[2].push(e.and_then(|e| e.correlation_id.as_deref()));
        ev_cols[3].push(e.and_then(|e| e.reply_to.as_deref()));
        cols.0.push(&o.key.job_id);
        cols.1.push(&o.key.account);
        cols.2.push(o.key.channel);
        cols.3.push(o.key.kind);
        cols.4.push(&o.key.recipient);
        cols.5.push(o.key.open_kfid.as_deref());
        cols.6.push(o.key.broadcast_id.as_deref());
        statuses.push(o.status.as_str());
        attempts.push(o.attempts);
        errcodes.push(o.errcode);
        errors.push(o.error.as_deref());
        msgids.push(o.platform_msgid.as_deref());
    }
    // A row recorded `sent` (or later `failed`) is never overwritten by the worker: whatever
    // a redelivered or duplicate message concluded, the send already happened.
    sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                                  $8::text[], $9::int[], $10::bigint[], $11::text[], $12::text[],
                                  $13::bool[], $14::text[], $15::text[], $16::text[], $17::text[])
                 AS t(job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                      status, attempts, errcode, error, platform_msgid,
                      ev, ev_reason, ev_errmsg, ev_correlation_id, ev_reply_to)
         ), up AS (
             INSERT INTO deliveries AS d (job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                                          status, attempts, errcode, error, platform_msgid, sent_at)
             SELECT job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                    status, attempts, errcode, error, platform_msgid,
                    CASE WHEN status = 'sent' THEN now() END
             FROM input
             ON CONFLICT (account, job_id) DO UPDATE SET
                 status = excluded.status,
                 attempts = GREATEST(d.attempts, excluded.attempts),
                 errcode = excluded.errcode,
                 error = excluded.error,
                 platform_msgid = COALESCE(excluded.platform_msgid, d.platform_msgid),
                 sent_at = COALESCE(excluded.sent_at, d.sent_at),
                 updated_at = now()
             WHERE d.status NOT IN ('sent', 'failed')
             RETURNING d.job_id, d.account, d.channel, d.kind, d.recipient, d.attempts,
                       d.platform_msgid, d.broadcast_id
         ), events AS (
             -- the outbox (README, Outcome events): committed with the row or not at all.
             -- A broadcast recipient carries its broadcast's correlation_id and reply_to.
             INSERT INTO outcome_events (account, job_id, status, channel, kind, recipient, reason,
                                         errcode, errmsg, attempts, platform_msgid, broadcast_id,
                                         correlation_id, reply_to)
             SELECT i.account, i.job_id, i.status, up.channel, up.kind, up.recipient, i.ev_reason,
                    i.errcode, i.ev_errmsg, up.attempts, up.platform_msgid, up.broadcast_id,
                    COALESCE(i.ev_correlation_id, r.correlation_id), COALESCE(i.ev_reply_to, r.reply_to)
             FROM input i JOIN up USING (job_id, account)
             LEFT JOIN outcome_routes r ON r.account = up.account AND r.job_id = up.broadcast_id
             WHERE i.ev AND i.status <> 'retrying'
             RETURNING 1
         ), routes AS (
             -- a sent WeCom job may still fail (msg_send_fail): its `failed` event needs these
             INSERT INTO outcome_routes (account, job_id, correlation_id, reply_to)
             SELECT i.account, i.job_id, i.ev_correlation_id, i.ev_reply_to
             FROM input i JOIN up USING (job_id, account)
             WHERE i.ev AND i.status = 'sent' AND i.channel = 'wecom'
               AND (i.ev_correlation_id IS NOT NULL OR i.ev_reply_to IS NOT NULL)
             ON CONFLICT (job_id, account) DO NOTHING
             RETURNING 1
         ), ledger AS (
             -- the WeCom allowance: messages sent since the customer's last message
             UPDATE conversations c SET sent_since_customer = c.sent_since_customer + x.n
             FROM (SELECT i.account, i.open_kfid, i.recipient, count(*) AS n
                   FROM input i JOIN up USING (job_id, account)
                   WHERE i.status = 'sent' AND i.channel = 'wecom' AND i.kind = 'send'
                   GROUP BY 1, 2, 3) x
             WHERE c.account = x.account AND c.open_kfid = x.open_kfid AND c.external_userid = x.recipient
             RETURNING 1
         )
         -- history: every change but the common one, a send that succeeded at the first
         -- attempt (the row's created_at and sent_at tell that story; `status` prints it)
         INSERT INTO delivery_events (job_id, account, status, attempts, errcode, error)
         SELECT i.job_id, i.account, i.status, i.attempts, i.errcode, i.error
         FROM input i JOIN up USING (job_id, account)
         WHERE NOT (i.status = 'sent' AND i.attempts <= 1)",
    )
    .bind(&cols.0)
    .bind(&cols.1)
    .bind(&cols.2)
    .bind(&cols.3)
    .bind(&cols.4)
    .bind(&cols.5)
    .bind(&cols.6)
    .bind(&statuses)
    .bind(&attempts)
    .bind(&errcodes)
    .bind(&errors)
    .bind(&msgids)
    .bind(&evs)
    .bind(&ev_cols[0])
    .bind(&ev_cols[1])
    .bind(&ev_cols[2])
    .bind(&ev_cols[3])
    .execute(pool)
    .await
    .context("recording outcomes")?;
    Ok(vec![(); n])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses() {
        for s in [
            "sent",
            "failed",
            "dead",
            "suppressed",
            "expired",
            "cancelled",
        ] {
            assert!(Status::parse(s).is_some_and(Status::is_terminal), "{s}");
        }
        for s in ["accepted", "retrying", "scheduled"] {
            assert!(Status::parse(s).is_some_and(|x| !x.is_terminal()), "{s}");
        }
        assert_eq!(Status::parse("bogus"), None);
    }
}

/// A job's outcome as the demo prints it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutcomeRow {
    pub job_id: String,
    pub account: String,
    pub status: String,
    pub attempts: i32,
    /// The error text, empty when there is none.
    pub error: String,
}

/// The outcomes of these jobs, by job id.
pub(super) async fn outcome_rows(pool: &PgPool, ids: &[String]) -> anyhow::Result<Vec<OutcomeRow>> {
    Ok(sqlx::query_as::<_, OutcomeRow>(
        "SELECT job_id, account, status, attempts, coalesce(error, '') AS error \
             FROM deliveries WHERE job_id = ANY($1) ORDER BY job_id, account",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}
