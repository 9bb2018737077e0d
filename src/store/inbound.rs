//! Inbound messages in Postgres: `inbound_messages` (one row per platform msgid, the dedupe
//! key), `sync_cursors` (where each `(account, open_kfid)` sync loop stands), the messages'
//! side effects on `conversations` and `deliveries`, and the advisory lock that lets one
//! process at a time pull an `(account, open_kfid)`.
//!
//! The sync loop's statements run on the connection that holds the lock ([`SyncLock`]); the
//! chatbot callback's on any pooled connection ([`Store::inbound_stored`],
//! [`Store::insert_inbound`]).

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, Postgres};

use crate::domain::inbound::{Effect, Inbound};
use crate::domain::service_state::ServiceState;
use crate::store::Store;

/// Namespace (first key) of the sync advisory locks: "WXSY". The second key is
/// `hashtext(account || '/' || open_kfid)`; a hash collision only serialises two pullers.
const SYNC_LOCK_CLASS: i32 = 0x5758_5359;

/// What one stored page did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PageCommit {
    /// The msgids newly inserted (the others were stored before).
    pub inserted: HashSet<String>,
    /// The `msg_send_fail` events among them, in page order.
    pub send_failures: Vec<SendFailure>,
}

impl PageCommit {
    /// Deliveries turned `failed` by the page.
    pub fn failed_deliveries(&self) -> u64 {
        self.send_failures.iter().map(|f| f.jobs.len() as u64).sum()
    }
}

/// A `msg_send_fail` event applied: the `sent` deliveries it turned `failed` (none when no
/// row had that platform msgid).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    pub fail_type: i64,
    pub jobs: Vec<String>,
}

impl Store {
    /// Take the sync lock of `(account, open_kfid)` if no other session holds it (try-lock:
    /// `None` when busy). The lock lives on the returned connection.
    pub async fn try_sync_lock(
        &self,
        account: &str,
        open_kfid: &str,
    ) -> anyhow::Result<Option<SyncLock>> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .context("acquiring a database connection")?;
        let key = format!("{account}/{open_kfid}");
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(SYNC_LOCK_CLASS)
            .bind(&key)
            .fetch_one(&mut *conn)
            .await
            .context("taking the sync lock")?;
        Ok(got.then(|| SyncLock {
            conn,
            held: true,
            key,
            account: account.to_owned(),
            open_kfid: open_kfid.to_owned(),
        }))
    }

    /// Which of `msgids` are already in `inbound_messages`.
    pub async fn inbound_stored(
        &self,
        account: &str,
        msgids: &[&str],
    ) -> anyhow::Result<HashSet<String>> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .context("acquiring a database connection")?;
        already_stored(&mut conn, account, msgids).await
    }

    /// Insert messages (duplicates ignored), without side effects; returns the msgids
    /// actually inserted.
    pub async fn insert_inbound(
        &self,
        account: &str,
        msgs: &[Inbound],
    ) -> anyhow::Result<HashSet<String>> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .context("acquiring a database connection")?;
        insert_messages(&mut conn, account, msgs).await
    }
}

/// A pooled connection holding the session advisory lock of one `(account, open_kfid)`. If it
/// is dropped while the lock may still be held (an error, a cancelled future), the connection
/// is closed instead of going back to the pool, which releases the lock.
pub struct SyncLock {
    conn: PoolConnection<Postgres>,
    held: bool,
    key: String,
    account: String,
    open_kfid: String,
}

impl std::fmt::Debug for SyncLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncLock")
            .field("key", &self.key)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl SyncLock {
    /// The stored cursor (another process may have advanced it: read it under the lock).
    pub async fn cursor(&mut self) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar("SELECT cursor FROM sync_cursors WHERE account = $1 AND open_kfid = $2")
            .bind(&self.account)
            .bind(&self.open_kfid)
            .fetch_optional(&mut *self.conn)
            .await
            .context("reading the sync cursor")
    }

    /// Which of `msgids` are already in `inbound_messages`.
    pub async fn stored_among(&mut self, msgids: &[&str]) -> anyhow::Result<HashSet<String>> {
        already_stored(&mut self.conn, &self.account, msgids).await
    }

    /// The page's transaction: insert the messages, apply the effects of the newly inserted
    /// ones in page order, and advance the cursor to `next_cursor`. Without a cursor (first
    /// page, `has_more` = 0, no `next_cursor`) the messages are stored and the cursor row is
    /// left alone: the next pull starts from the beginning again and dedupes.
    pub async fn commit_page(
        &mut self,
        msgs: &[Inbound],
        next_cursor: Option<&str>,
        now: i64,
    ) -> anyhow::Result<PageCommit> {
        if next_cursor.is_none() && msgs.is_empty() {
            return Ok(PageCommit::default());
        }
        let account = self.account.as_str();
        let mut tx = self
            .conn
            .begin()
            .await
            .context("beginning the page transaction")?;
        let inserted = insert_messages(&mut tx, account, msgs).await?;
        let send_failures = apply_effects(&mut tx, account, msgs, &inserted, now).await?;
        if let Some(cursor) = next_cursor {
            sqlx::query(
                "INSERT INTO sync_cursors (account, open_kfid, cursor, pages, updated_at)
                 VALUES ($1, $2, $3, 1, now())
                 ON CONFLICT (account, open_kfid) DO UPDATE SET
                     cursor = excluded.cursor, pages = sync_cursors.pages + 1, updated_at = now()",
            )
            .bind(account)
            .bind(&self.open_kfid)
            .bind(cursor)
            .execute(&mut *tx)
            .await
            .context("storing the sync cursor")?;
        }
        tx.commit().await.context("committing the page")?;
        Ok(PageCommit {
            inserted,
            send_failures,
        })
    }

    /// Release the lock and give the connection back (closed instead if the unlock failed).
    pub async fn release(mut self) {
        let res: Result<bool, _> =
            sqlx::query_scalar("SELECT pg_advisory_unlock($1, hashtext($2))")
                .bind(SYNC_LOCK_CLASS)
                .bind(&self.key)
                .fetch_one(&mut *self.conn)
                .await;
        if matches!(res, Ok(true)) {
            self.held = false;
        }
    }
}

impl Drop for SyncLock {
    fn drop(&mut self) {
        if self.held {
            self.conn.close_on_drop();
        }
    }
}

/// A state as `conversations.service_state` holds it (an `int`; the platform's codes are 0–4).
fn state_code(state: ServiceState) -> i32 {
    state.code() as i32
}

async fn already_stored(
    conn: &mut PgConnection,
    account: &str,
    msgids: &[&str],
) -> anyhow::Result<HashSet<String>> {
    if msgids.is_empty() {
        return Ok(HashSet::new());
    }
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT msgid FROM inbound_messages WHERE account = $1 AND msgid = ANY($2::text[])",
    )
    .bind(account)
    .bind(msgids)
    .fetch_all(conn)
    .await
    .context("reading stored inbound msgids")?;
    Ok(rows.into_iter().collect())
}

async fn insert_messages(
    conn: &mut PgConnection,
    account: &str,
    msgs: &[Inbound],
) -> anyhow::Result<HashSet<String>> {
    if msgs.is_empty() {
        return Ok(HashSet::new());
    }
    let ids: Vec<&str> = msgs.iter().map(|m| m.msgid.as_str()).collect();
    let kfids: Vec<Option<&str>> = msgs.iter().map(|m| m.open_kfid.as_deref()).collect();
    let users: Vec<Option<&str>> = msgs.iter().map(|m| m.external_userid.as_deref()).collect();
    let origins: Vec<Option<i32>> = msgs.iter().map(|m| m.origin).collect();
    let types: Vec<&str> = msgs.iter().map(|m| m.msgtype.as_str()).collect();
    let times: Vec<Option<i64>> = msgs.iter().map(|m| m.send_time).collect();
    let bodies: Vec<Value> = msgs.iter().map(|m| m.body.clone()).collect();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO inbound_messages
             (account, msgid, open_kfid, external_userid, origin, msgtype, send_time, body)
         SELECT $1, m, k, u, o, t, to_timestamp(s), b
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::bigint[], $8::jsonb[])
             AS x(m, k, u, o, t, s, b)
         ON CONFLICT (account, msgid) DO NOTHING
         RETURNING msgid",
    )
    .bind(account)
    .bind(&ids)
    .bind(&kfids)
    .bind(&users)
    .bind(&origins)
    .bind(&types)
    .bind(&times)
    .bind(&bodies)
    .fetch_all(conn)
    .await
    .context("storing inbound messages")?;
    Ok(inserted.into_iter().collect())
}

/// Customer messages: newest send_time per conversation (one statement cannot update a row
/// twice), `last_customer_msg_at` only moves forward; an ended session starts anew (0).
async fn apply_customers(
    conn: &mut PgConnection,
    account: &str,
    batch: &mut HashMap<(String, String), i64>,
) -> anyhow::Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let (mut kfids, mut users, mut ats) = (Vec::new(), Vec::new(), Vec::new());
    for ((k, u), at) in batch.drain() {
        kfids.push(k);
        users.push(u);
        ats.push(at);
    }
    // `<=`: a second customer message in the same second is still a new message (side
    // effects are applied only to newly stored messages, so a replay never gets here).
    // $5 / $6: an ended session ($5) becomes new ($6) with the customer's message.
    sqlx::query(
        "INSERT INTO conversations AS c (account, open_kfid, external_userid, last_customer_msg_at, sent_since_customer)
         SELECT $1, k, u, to_timestamp(t), 0 FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS x(k, u, t)
         ON CONFLICT (account, open_kfid, external_userid) DO UPDATE SET
             last_customer_msg_at = excluded.last_customer_msg_at,
             sent_since_customer = 0,
             service_state = CASE
                 WHEN c.service_state = $5 AND (c.state_updated_at IS NULL OR c.state_updated_at <= excluded.last_customer_msg_at)
                 THEN $6 ELSE c.service_state END,
             state_updated_at = CASE
                 WHEN c.service_state = $5 AND (c.state_updated_at IS NULL OR c.state_updated_at <= excluded.last_customer_msg_at)
                 THEN excluded.last_customer_msg_at ELSE c.state_updated_at END
         WHERE c.last_customer_msg_at IS NULL OR c.last_customer_msg_at <= excluded.last_customer_msg_at",
    )
    .bind(account)
    .bind(&kfids)
    .bind(&users)
    .bind(&ats)
    .bind(state_code(ServiceState::Ended))
    .bind(state_code(ServiceState::New))
    .execute(conn)
    .await
    .context("updating conversations (customer messages)")?;
    Ok(())
}

/// Apply the effects of newly inserted messages, in order (`now`, unix seconds, for a
/// message without a send_time). Returns the `msg_send_fail`s applied.
async fn apply_effects(
    conn: &mut PgConnection,
    account: &str,
    msgs: &[Inbound],
    inserted: &HashSet<String>,
    now: i64,
) -> anyhow::Result<Vec<SendFailure>> {
    let mut failures = Vec::new();
    // Consecutive customer messages go in one statement; anything else flushes them first,
    // so effects keep the page's (chronological) order.
    let mut customers: HashMap<(String, String), i64> = HashMap::new();
    for m in msgs.iter().filter(|m| inserted.contains(&m.msgid)) {
        match m.effect(now) {
            Effect::None => {}
            Effect::Customer {
                open_kfid,
                external_userid,
                at,
            } => {
                let e = customers.entry((open_kfid, external_userid)).or_insert(at);
                *e = (*e).max(at);
            }
            Effect::ServiceState {
                open_kfid,
                external_userid,
                state,
                servicer,
                at,
            } => {
                apply_customers(conn, account, &mut customers).await?;
                sqlx::query(
                    "INSERT INTO conversations AS c (account, open_kfid, external_userid, service_state, servicer_userid, state_updated_at)
                     VALUES ($1, $2, $3, $4, $5, to_timestamp($6))
                     ON CONFLICT (account, open_kfid, external_userid) DO UPDATE SET
                         service_state = excluded.service_state,
                         servicer_userid = excluded.servicer_userid,
                         state_updated_at = excluded.state_updated_at
                     WHERE c.state_updated_at IS NULL OR c.state_updated_at <= excluded.state_updated_at",
                )
                .bind(account)
                .bind(&open_kfid)
                .bind(&external_userid)
                .bind(state_code(state))
                .bind(servicer.as_deref())
                .bind(at)
                .execute(&mut *conn)
                .await
                .context("updating conversations (session_status_change)")?;
            }
            Effect::SendFailed {
                fail_msgid,
                fail_type,
            } => {
                apply_customers(conn, account, &mut customers).await?;
                let error = format!("msg_send_fail: fail_type {fail_type}");
                let jobs: Vec<String> = sqlx::query_scalar(
                    "WITH up AS (
                         UPDATE deliveries SET status = 'failed', error = $3, updated_at = now()
                         WHERE job_id = $2 AND account = $1 AND platform_msgid = $2 AND status = 'sent'
                         RETURNING job_id, account, attempts
                     )
                     INSERT INTO delivery_events (job_id, account, status, attempts, error)
                     SELECT job_id, account, 'failed', attempts, $3 FROM up
                     RETURNING job_id",
                )
                .bind(account)
                .bind(&fail_msgid)
                .bind(&error)
                .fetch_all(&mut *conn)
                .await
                .context("recording msg_send_fail")?;
                failures.push(SendFailure { fail_type, jobs });
            }
        }
    }
    apply_customers(conn, account, &mut customers).await?;
    Ok(failures)
}
