//! `deliveries` (one row per job), `delivery_events` (its history) and the conversation facts
//! read with the claim: the hot path's claim, outcome and service-state batches, the dead
//! letter record, and the operators' reads.

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::{PgPool, Row};

use super::Store;
use super::batcher::last_per_key;
use super::pool::while_unavailable;

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
            _ => return None,
        })
    }
    /// A terminal status is an outcome: a redelivered job in this state is not processed again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, Status::Accepted | Status::Retrying)
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
    account: String,
    open_kfid: String,
    external_userid: String,
    state: i32,
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
}

/// A dead letter to remember for `dlq list` / `dlq replay`.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub job_id: Option<String>,
    pub account: String,
    pub reason: String,
    pub errcode: Option<i64>,
    pub errmsg: Option<String>,
    pub attempts: i32,
    pub body: Vec<u8>,
}

impl Store {
    /// Claim a job before asking the platform.
    pub async fn claim(&self, key: DeliveryKey) -> anyhow::Result<(Claim, Option<ConvState>)> {
        self.claims.call(key).await
    }

    /// Remember a conversation's service state (from `service_state/get` or a 95018).
    /// Batched like the claims and outcomes: the first job of every conversation asks the
    /// platform and stores the answer, so a backlog over many conversations starts with as
    /// many of these (1,000 single-row commits in the bench's WeCom drain, a third of its
    /// commits).
    pub async fn set_service_state(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
        state: i32,
    ) -> anyhow::Result<()> {
        self.states
            .call(ServiceStateRow {
                account: account.to_owned(),
                open_kfid: open_kfid.to_owned(),
                external_userid: external_userid.to_owned(),
                state,
            })
            .await
    }

    /// Record an outcome; returns once it is committed.
    pub async fn record(&self, outcome: Outcome) -> anyhow::Result<()> {
        self.outcomes.call(outcome).await
    }

    /// Remember a dead letter (waits out a database outage like the batched writes).
    pub async fn record_dead_letter(&self, d: &DeadLetter) -> anyhow::Result<()> {
        while_unavailable(&self.health, || self.insert_dead_letter(d)).await
    }

    async fn insert_dead_letter(&self, d: &DeadLetter) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO dead_letters (job_id, account, reason, errcode, errmsg, attempts, body)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&d.job_id)
        .bind(&d.account)
        .bind(&d.reason)
        .bind(d.errcode)
        .bind(&d.errmsg)
        .bind(d.attempts)
        .bind(&d.body)
        .execute(&self.pool)
        .await
        .context("recording a dead letter")?;
        Ok(())
    }

    // ---- operator queries ----

    pub async fn delivery(&self, job_id: &str) -> anyhow::Result<Option<sqlx::postgres::PgRow>> {
        Ok(sqlx::query(
            "SELECT job_id, account, channel, kind, recipient, open_kfid, status, attempts, errcode, error,
                    platform_msgid, broadcast_id, created_at, updated_at, sent_at
             FROM deliveries WHERE job_id = $1",
        )
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn delivery_events(
        &self,
        job_id: &str,
    ) -> anyhow::Result<Vec<sqlx::postgres::PgRow>> {
        Ok(sqlx::query(
            "SELECT at, status, attempts, errcode, error FROM delivery_events WHERE job_id = $1 ORDER BY id",
        )
        .bind(job_id)
        .fetch_all(&self.pool)
        .await?)
    }
}

pub(super) async fn claim_batch(
    pool: &PgPool,
    batch: &[DeliveryKey],
) -> anyhow::Result<Vec<(Claim, Option<ConvState>)>> {
    // The same job id twice in one statement cannot be told apart: the later ones wait.
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let first: Vec<bool> = batch
        .iter()
        .map(|k| seen.insert(k.job_id.clone()))
        .collect();
    let mut ids = Vec::with_capacity(batch.len());
    let mut accounts = Vec::with_capacity(batch.len());
    let mut channels = Vec::with_capacity(batch.len());
    let mut kinds = Vec::with_capacity(batch.len());
    let mut recipients = Vec::with_capacity(batch.len());
    let mut kfids = Vec::with_capacity(batch.len());
    let mut bids = Vec::with_capacity(batch.len());
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
    }
    // `ins` sees only what it inserted; the outer SELECT runs on the statement's snapshot and
    // so sees only rows that existed before: together, every input id once.
    let rows = sqlx::query(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[])
                 AS t(job_id, account, channel, kind, recipient, open_kfid, broadcast_id)
         ), ins AS (
             INSERT INTO deliveries (job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                                     status, attempts, first_attempt_at)
             SELECT job_id, account, channel, kind, recipient, open_kfid, broadcast_id, 'accepted', 0, now()
             FROM input
             ON CONFLICT (job_id) DO NOTHING
             RETURNING job_id
         )
         , res AS (
             SELECT job_id, 'new' AS status, 0 AS attempts, NULL::timestamptz AS first_attempt_at FROM ins
             UNION ALL
             SELECT d.job_id, d.status, d.attempts, d.first_attempt_at
             FROM deliveries d JOIN input i ON i.job_id = d.job_id
         )
         SELECT r.job_id, r.status, r.attempts, r.first_attempt_at,
                c.account IS NOT NULL AS has_conv, c.last_customer_msg_at, c.sent_since_customer,
                c.service_state, c.state_updated_at
         FROM res r
         JOIN input i ON i.job_id = r.job_id
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
    .fetch_all(pool)
    .await
    .context("claiming deliveries")?;
    let mut found = std::collections::HashMap::with_capacity(rows.len());
    for r in rows {
        let id: String = r.get("job_id");
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
        found.insert(id, (claim, conv));
    }
    Ok(batch
        .iter()
        .zip(first)
        .map(|(k, f)| {
            if !f {
                return (Claim::Busy, None);
            }
            // Missing: a concurrent transaction inserted it after our snapshot; ask again.
            found.get(&k.job_id).cloned().unwrap_or((Claim::Busy, None))
        })
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

pub(super) async fn outcome_batch(pool: &PgPool, batch: &[Outcome]) -> anyhow::Result<Vec<()>> {
    // One row per job id per statement: the last outcome in the batch wins.
    let n = batch.len();
    let keep = last_per_key(batch, |o| o.key.job_id.as_str());
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
    for o in keep.iter().map(|&i| &batch[i]) {
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
                                  $8::text[], $9::int[], $10::bigint[], $11::text[], $12::text[])
                 AS t(job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                      status, attempts, errcode, error, platform_msgid)
         ), up AS (
             INSERT INTO deliveries AS d (job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                                          status, attempts, errcode, error, platform_msgid, sent_at)
             SELECT job_id, account, channel, kind, recipient, open_kfid, broadcast_id,
                    status, attempts, errcode, error, platform_msgid,
                    CASE WHEN status = 'sent' THEN now() END
             FROM input
             ON CONFLICT (job_id) DO UPDATE SET
                 status = excluded.status,
                 attempts = GREATEST(d.attempts, excluded.attempts),
                 errcode = excluded.errcode,
                 error = excluded.error,
                 platform_msgid = COALESCE(excluded.platform_msgid, d.platform_msgid),
                 sent_at = COALESCE(excluded.sent_at, d.sent_at),
                 updated_at = now()
             WHERE d.status NOT IN ('sent', 'failed')
             RETURNING d.job_id
         ), ledger AS (
             -- the WeCom allowance: messages sent since the customer's last message
             UPDATE conversations c SET sent_since_customer = c.sent_since_customer + x.n
             FROM (SELECT i.account, i.open_kfid, i.recipient, count(*) AS n
                   FROM input i JOIN up USING (job_id)
                   WHERE i.status = 'sent' AND i.channel = 'wecom' AND i.kind = 'send'
                   GROUP BY 1, 2, 3) x
             WHERE c.account = x.account AND c.open_kfid = x.open_kfid AND c.external_userid = x.recipient
             RETURNING 1
         )
         -- history: every change but the common one, a send that succeeded at the first
         -- attempt (the row's created_at and sent_at tell that story; `status` prints it)
         INSERT INTO delivery_events (job_id, status, attempts, errcode, error)
         SELECT i.job_id, i.status, i.attempts, i.errcode, i.error FROM input i JOIN up USING (job_id)
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
        for s in ["accepted", "retrying"] {
            assert!(Status::parse(s).is_some_and(|x| !x.is_terminal()), "{s}");
        }
        assert_eq!(Status::parse("bogus"), None);
    }
}
