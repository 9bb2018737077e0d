//! Inbound messages in Postgres: `inbound_messages` (one row per platform msgid, the dedupe
//! key), `sync_cursors` (where each `(account, open_kfid)` sync loop stands), the messages'
//! side effects on `conversations` and `deliveries`, and the advisory lock that lets one
//! process at a time pull an `(account, open_kfid)`.
//!
//! The sync loop's statements run on the connection that holds the lock ([`SyncLock`]); the
//! chatbot callback's on any pooled connection ([`Store::inbound_stored`],
//! [`Store::insert_inbound`]).
//!
//! No single message can hold a cursor: a body with U+0000 is stored escaped (see
//! [`Inbound::stored_body`]), and a message the database refuses for its data (see
//! [`refusal`]) goes to `inbound_quarantine` with the reason while the rest of its page, and
//! the cursor, move on. Anything else (the database unreachable, read-only, a missing
//! table) fails the page, which is retried from the same cursor.

use std::collections::{HashMap, HashSet};

use anyhow::Context;
use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, Postgres};
use tracing::warn;

use crate::domain::inbound::{Effect, Inbound, replace_nul};
use crate::domain::service_state::ServiceState;
use crate::store::Store;
use crate::telemetry as t;

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
    /// The messages the database refused, now in `inbound_quarantine`.
    pub quarantined: Vec<Quarantined>,
}

/// A message the database refused for its data, kept in `inbound_quarantine` instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub msgid: String,
    /// `SQLSTATE <code>: <the database's message>`.
    pub reason: String,
}

/// Why the database refused a statement for the data in it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Refusal {
    sqlstate: String,
    message: String,
}

impl Refusal {
    fn reason(&self) -> String {
        format!("SQLSTATE {}: {}", self.sqlstate, self.message)
    }
}

/// True for the SQLSTATE classes that mean "this data cannot be stored" rather than "the
/// database cannot store anything now": 22 data exception (22P05 untranslatable character,
/// 22021 bad byte sequence, 22008 timestamp out of range …), 23 integrity constraint, 54
/// program limit (a value too large). Everything else — 08 connection, 57P0x shutdown, 25006
/// read-only, 53 resources, 42 a schema problem — affects every message alike.
pub fn is_data_sqlstate(code: &str) -> bool {
    matches!(code.get(..2), Some("22" | "23" | "54"))
}

/// The refusal in `e`, when the database refused the statement for its data.
fn refusal(e: &anyhow::Error) -> Option<Refusal> {
    let sqlx::Error::Database(d) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>())? else {
        return None;
    };
    let code = d.code()?;
    is_data_sqlstate(&code).then(|| Refusal {
        sqlstate: code.into_owned(),
        message: d.message().to_owned(),
    })
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
    /// actually inserted. A message the database refuses for its data is quarantined (and
    /// not in the answer); only other failures are errors.
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
        let mut tx = conn
            .begin()
            .await
            .context("beginning the inbound transaction")?;
        let stored = store_batch(&mut tx, account, None, msgs, None).await?;
        tx.commit().await.context("committing inbound messages")?;
        count_quarantined(account, None, &stored.quarantined);
        Ok(stored.inserted)
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
        let stored = store_batch(&mut tx, account, Some(&self.open_kfid), msgs, Some(now)).await?;
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
        count_quarantined(account, Some(&self.open_kfid), &stored.quarantined);
        Ok(stored)
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
    // A quarantined message counts as known: it was published before it was refused.
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT msgid FROM inbound_messages WHERE account = $1 AND msgid = ANY($2::text[])
         UNION ALL
         SELECT msgid FROM inbound_quarantine WHERE account = $1 AND msgid = ANY($2::text[])",
    )
    .bind(account)
    .bind(msgids)
    .fetch_all(conn)
    .await
    .context("reading stored inbound msgids")?;
    Ok(rows.into_iter().collect())
}

/// Store `msgs` in the caller's transaction and, with `effects_at` (now, unix seconds),
/// apply the effects of the newly inserted ones. If the database refuses the batch for its
/// data, each message is tried alone (in a savepoint of its own, with its effects) and the
/// ones refused alone are quarantined (`open_kfid`: the sync loop's); the others are stored
/// as usual, in page order.
async fn store_batch(
    conn: &mut PgConnection,
    account: &str,
    open_kfid: Option<&str>,
    msgs: &[Inbound],
    effects_at: Option<i64>,
) -> anyhow::Result<PageCommit> {
    let mut out = PageCommit::default();
    if msgs.is_empty() {
        return Ok(out);
    }
    let refused = match attempt(conn, account, msgs, effects_at).await? {
        Ok((inserted, send_failures)) => {
            out.inserted = inserted;
            out.send_failures = send_failures;
            return Ok(out);
        }
        Err(r) => r,
    };
    if msgs.len() == 1 {
        quarantine(conn, account, open_kfid, &msgs[0], &refused).await?;
        out.quarantined.push(Quarantined {
            msgid: msgs[0].msgid.clone(),
            reason: refused.reason(),
        });
        return Ok(out);
    }
    for m in msgs {
        match attempt(conn, account, std::slice::from_ref(m), effects_at).await? {
            Ok((inserted, send_failures)) => {
                out.inserted.extend(inserted);
                out.send_failures.extend(send_failures);
            }
            Err(r) => {
                quarantine(conn, account, open_kfid, m, &r).await?;
                out.quarantined.push(Quarantined {
                    msgid: m.msgid.clone(),
                    reason: r.reason(),
                });
            }
        }
    }
    Ok(out)
}

/// Insert `msgs` (and apply their effects) in a savepoint: `Ok(Ok(…))` stored, `Ok(Err(…))`
/// refused for its data (rolled back to the savepoint, nothing stored), `Err` any other
/// failure.
async fn attempt(
    conn: &mut PgConnection,
    account: &str,
    msgs: &[Inbound],
    effects_at: Option<i64>,
) -> anyhow::Result<Result<(HashSet<String>, Vec<SendFailure>), Refusal>> {
    let mut sp = conn.begin().await.context("taking a savepoint")?;
    match insert_and_apply(&mut sp, account, msgs, effects_at).await {
        Ok(v) => {
            sp.commit().await.context("releasing the savepoint")?;
            Ok(Ok(v))
        }
        Err(e) => match refusal(&e) {
            Some(r) => {
                sp.rollback()
                    .await
                    .context("rolling back to the savepoint")?;
                Ok(Err(r))
            }
            None => Err(e),
        },
    }
}

async fn insert_and_apply(
    conn: &mut PgConnection,
    account: &str,
    msgs: &[Inbound],
    effects_at: Option<i64>,
) -> anyhow::Result<(HashSet<String>, Vec<SendFailure>)> {
    let inserted = insert_messages(conn, account, msgs).await?;
    let failures = match effects_at {
        Some(now) => apply_effects(conn, account, msgs, &inserted, now).await?,
        None => Vec::new(),
    };
    Ok((inserted, failures))
}

/// Keep a refused message in `inbound_quarantine` (every text NUL-free: the exact message
/// as JSON text, the ids with U+FFFD for U+0000).
async fn quarantine(
    conn: &mut PgConnection,
    account: &str,
    open_kfid: Option<&str>,
    m: &Inbound,
    why: &Refusal,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO inbound_quarantine (account, msgid, open_kfid, msgtype, raw, reason, sqlstate)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (account, msgid) DO UPDATE SET
             raw = excluded.raw, reason = excluded.reason, sqlstate = excluded.sqlstate,
             times = inbound_quarantine.times + 1, last_at = now()",
    )
    .bind(account)
    .bind(replace_nul(&m.msgid).as_ref())
    .bind(
        open_kfid
            .or(m.open_kfid.as_deref())
            .map(replace_nul)
            .as_deref(),
    )
    .bind(replace_nul(&m.msgtype).as_ref())
    .bind(m.body.to_string())
    .bind(replace_nul(&why.reason()).as_ref())
    .bind(&why.sqlstate)
    .execute(conn)
    .await
    .context("quarantining an inbound message")?;
    Ok(())
}

/// Log and count messages quarantined by a committed transaction.
fn count_quarantined(account: &str, open_kfid: Option<&str>, q: &[Quarantined]) {
    for m in q {
        warn!(account, open_kfid, msgid = %m.msgid, reason = %m.reason,
            "inbound message refused by the database; quarantined (inbound_quarantine), moving on");
    }
    if !q.is_empty() {
        metrics::counter!(t::INBOUND_QUARANTINED, "account" => account.to_owned())
            .increment(q.len() as u64);
    }
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
    let (bodies, exacts): (Vec<Value>, Vec<Option<String>>) = msgs
        .iter()
        .map(|m| {
            let b = m.stored_body();
            (b.json, b.exact)
        })
        .unzip();
    let inserted: Vec<String> = sqlx::query_scalar(
        "INSERT INTO inbound_messages
             (account, msgid, open_kfid, external_userid, origin, msgtype, send_time, body, body_exact)
         SELECT $1, m, k, u, o, t, to_timestamp(s), b, e
         FROM UNNEST($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::bigint[], $8::jsonb[], $9::text[])
             AS x(m, k, u, o, t, s, b, e)
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
    .bind(&exacts)
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
                         RETURNING job_id, account, attempts, channel, kind, recipient,
                                   platform_msgid, broadcast_id
                     ), outcome AS (
                         -- its outcome event (README, Outcome events), with the job's
                         -- correlation_id and reply_to if it had them; dropped unpublished by
                         -- the relay for an account with `outcomes = false`
                         INSERT INTO outcome_events (account, job_id, status, channel, kind, recipient,
                                                     reason, errmsg, attempts, platform_msgid,
                                                     broadcast_id, correlation_id, reply_to)
                         SELECT u.account, u.job_id, 'failed', u.channel, u.kind, u.recipient,
                                'msg_send_fail', $3, u.attempts, u.platform_msgid, u.broadcast_id,
                                COALESCE(r.correlation_id, b.correlation_id), COALESCE(r.reply_to, b.reply_to)
                         FROM up u
                         LEFT JOIN outcome_routes r ON r.account = u.account AND r.job_id = u.job_id
                         LEFT JOIN outcome_routes b ON b.account = u.account AND b.job_id = u.broadcast_id
                         RETURNING 1
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_quarantine() {
        for code in ["22P05", "22021", "22008", "23514", "23505", "54000"] {
            assert!(is_data_sqlstate(code), "{code}");
        }
        // Connection, shutdown, read-only, resources, schema, internal: they hold the page.
        for code in [
            "08006", "57P01", "57P03", "25006", "53300", "42P01", "XX000", "2", "",
        ] {
            assert!(!is_data_sqlstate(code), "{code}");
        }
        assert_eq!(refusal(&anyhow::anyhow!("no database error")), None);
        assert_eq!(
            refusal(&anyhow::Error::new(sqlx::Error::PoolTimedOut)),
            None
        );
    }
}
