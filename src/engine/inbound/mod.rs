//! Inbound messages from WeCom: the `sync_msg` cursor loop, one per account and open_kfid.
//!
//! WeCom does not push messages; its callback (`kf_msg_or_event`, see [`crate::http::callback`])
//! only says "something happened on this open_kfid" and carries a short-lived `Token`. The
//! messages themselves are read with `POST /cgi-bin/kf/sync_msg` from a cursor. [`run`] is that
//! reader for one `(account, open_kfid)`:
//!
//! * **When**: at start (catch up after a restart), on every callback ([`SyncHub::wake`]), and
//!   every `sync.poll_interval_secs` in case a callback was lost.
//! * **Who**: one puller at a time across all worker processes, through a Postgres session
//!   advisory lock per `(account, open_kfid)` taken with try-lock. A process that does not get
//!   it leaves the pull to the holder (and, if it was woken by a callback, tries again shortly,
//!   so a message that arrived just as the holder finished is not left for the next poll).
//! * **How**: page until `has_more` is 0 (an empty page with `has_more` = 1 is followed, as the
//!   platform asks). For each page: publish every message not yet stored, with publisher
//!   confirms, to exchange `wxdispatch.inbound` (routing key `<account>.<msgtype>`, `event`
//!   for events; AMQP `message_id` = the platform msgid); *then*, in one transaction, insert
//!   the page into `inbound_messages` (`ON CONFLICT (account, msgid) DO NOTHING`), apply the
//!   side effects of the newly inserted rows, and store `next_cursor` in `sync_cursors`.
//!
//! A crash between publish and commit re-reads the page from the old cursor and publishes it
//! again (consumers deduplicate by `message_id`); nothing is ever skipped. A page that was
//! committed is never published again, even when the cursor is reset, because messages
//! already in `inbound_messages` are not re-published.
//!
//! Side effects (same transaction as the insert, applied once per message in page order):
//!
//! | message | effect |
//! |---|---|
//! | origin 3 (customer) | `conversations`: `last_customer_msg_at = send_time`, `sent_since_customer = 0` (when not older than the stored one); an ended session (4) becomes new (0) |
//! | event `session_status_change` | `conversations.service_state` / `servicer_userid` / `state_updated_at` (see [`state_after_change`]), unless a newer state is stored |
//! | event `msg_send_fail` | the `sent` delivery with that `platform_msgid` becomes `failed` (`error = 'msg_send_fail: fail_type N'`) plus a `delivery_events` row |
//!
//! Errors: 95007 (the callback Token expired) drops the Token and goes on without it; 45009
//! pauses this loop for at least 60 s (`retry.throttle_pause_secs` overrides it for tests);
//! transport failures and other transient errors back off exponentially with jitter
//! (`retry.initial_backoff_ms` … `retry.max_backoff_ms`); configuration errors are logged and
//! retried after [`PERMANENT_ERROR_WAIT`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};
use sha1::{Digest, Sha1};
use sqlx::pool::PoolConnection;
use sqlx::{Acquire, PgConnection, Postgres};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::broker::{self, Publisher};
use crate::config::{Channel, Config};
use crate::engine::lane::LaneCtx;
use crate::policy::{self, Action, Api, CallResult};
use crate::telemetry as t;

/// A callback Token is valid for 10 minutes; stop using it a little earlier so that a page
/// request never races its expiry (an expired one costs a 95007 round trip).
const CALLBACK_TOKEN_TTL: Duration = Duration::from_secs(10 * 60 - 30);
/// When the lock is held by another process and a callback is pending, ask again this often
/// (a cheap try-lock query) until this process pulls once.
const LOCK_BUSY_RETRY: Duration = Duration::from_secs(1);
/// After a configuration error (bad secret, API switched off, unknown open_kfid …) try again
/// this long after, at the earliest: an operator has to fix something first.
pub const PERMANENT_ERROR_WAIT: Duration = Duration::from_secs(60);
/// Empty pages with `has_more` = 1 followed in a row before the run gives up until the next
/// wake or poll: the platform sometimes returns a few, never legitimately thousands.
const MAX_EMPTY_PAGES_IN_A_ROW: u32 = 100;
/// Namespace (first key) of the sync advisory locks: "WXSY". The second key is
/// `hashtext(account || '/' || open_kfid)`; a hash collision only serialises two pullers.
const SYNC_LOCK_CLASS: i32 = 0x5758_5359;
/// Longest msgid kept verbatim. AMQP `message_id` is a short string (≤ 255 bytes); a longer
/// platform id (never seen) is replaced by its SHA-1, stably.
const MAX_MSGID_LEN: usize = 128;
/// Longest msgtype used as a routing-key word; anything longer or not `[a-z0-9_]` is `other`.
const MAX_MSGTYPE_LEN: usize = 32;

/// Shared by the sync loops and the HTTP callback handlers: wakes a loop, holds the callback
/// Token, publishes inbound messages.
pub struct SyncHub {
    slots: HashMap<(String, String), Arc<Slot>>,
    publisher: Publisher,
    /// Per account: lag of each open_kfid; the account's gauge shows the largest.
    lag: Mutex<HashMap<String, HashMap<String, f64>>>,
}

impl std::fmt::Debug for SyncHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncHub")
            .field("loops", &self.slots.len())
            .finish_non_exhaustive()
    }
}

/// The wake-up state of one `(account, open_kfid)` loop.
#[derive(Default)]
struct Slot {
    notify: Notify,
    /// The latest callback Token and when it arrived. Never logged.
    token: Mutex<Option<(String, Instant)>>,
}

impl Slot {
    fn token(&self) -> Option<String> {
        let g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        g.as_ref()
            .filter(|(_, at)| at.elapsed() < CALLBACK_TOKEN_TTL)
            .map(|(t, _)| t.clone())
    }

    /// Forget `used` (a newer Token that arrived meanwhile is kept).
    fn drop_token(&self, used: &str) {
        let mut g = self.token.lock().unwrap_or_else(|p| p.into_inner());
        if g.as_ref().is_some_and(|(t, _)| t == used) {
            *g = None;
        }
    }
}

impl SyncHub {
    /// One slot per WeCom account and configured open_kfid.
    pub fn new(cfg: &Config, publisher: Publisher) -> Self {
        let slots = cfg
            .accounts
            .iter()
            .filter(|a| a.channel == Channel::Wecom)
            .flat_map(|a| {
                a.open_kfids
                    .iter()
                    .map(|k| ((a.name.clone(), k.clone()), Arc::new(Slot::default())))
            })
            .collect();
        Self {
            slots,
            publisher,
            lag: Mutex::new(HashMap::new()),
        }
    }

    /// Wake the loop of `(account, open_kfid)`, handing it the callback `token` (when not
    /// empty). False when no such loop exists (an open_kfid the config does not list).
    pub fn wake(&self, account: &str, open_kfid: &str, token: Option<&str>) -> bool {
        let Some(slot) = self.slots.get(&(account.to_owned(), open_kfid.to_owned())) else {
            return false;
        };
        if let Some(tok) = token.filter(|t| !t.is_empty()) {
            *slot.token.lock().unwrap_or_else(|p| p.into_inner()) =
                Some((tok.to_owned(), Instant::now()));
        }
        // One stored permit: a wake during a pull causes exactly one more pull.
        slot.notify.notify_one();
        true
    }

    /// The confirm-mode channel inbound messages are published on.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    fn slot(&self, account: &str, open_kfid: &str) -> Option<Arc<Slot>> {
        self.slots
            .get(&(account.to_owned(), open_kfid.to_owned()))
            .cloned()
    }

    fn set_lag(&self, account: &str, open_kfid: &str, secs: f64) {
        let mut g = self.lag.lock().unwrap_or_else(|p| p.into_inner());
        let per = g.entry(account.to_owned()).or_default();
        per.insert(open_kfid.to_owned(), secs.max(0.0));
        let max = per.values().copied().fold(0.0, f64::max);
        metrics::gauge!(t::SYNC_LAG, "account" => account.to_owned()).set(max);
    }
}

// ------------------------------------------------------------------ messages

/// One inbound message or event, as stored in `inbound_messages` and published.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    /// The platform's msgid (chatbot pushes without one: `sha1:<hex of the plaintext>`).
    pub msgid: String,
    pub open_kfid: Option<String>,
    pub external_userid: Option<String>,
    /// WeCom: 3 customer, 4 system event, 5 human servicer.
    pub origin: Option<i32>,
    /// A routing-key word: the platform's msgtype (`event` for events) or `other`.
    pub msgtype: String,
    /// Unix seconds.
    pub send_time: Option<i64>,
    /// The message as the platform gave it.
    pub body: Value,
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn int_at(v: &Value, key: &str) -> Option<i64> {
    match v.get(key)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// `sha1:<hex>` of some bytes: a stable identity for content without a usable id.
pub fn content_id(bytes: &[u8]) -> String {
    format!("sha1:{}", hex::encode(Sha1::digest(bytes)))
}

/// A platform msgid as stored and used as AMQP `message_id` (see [`MAX_MSGID_LEN`]).
pub fn normalize_msgid(id: &str) -> String {
    if id.len() <= MAX_MSGID_LEN {
        id.to_owned()
    } else {
        content_id(id.as_bytes())
    }
}

/// The routing-key word for a msgtype: itself when `[a-z0-9_]{1,32}`, else `other`.
pub fn routing_word(msgtype: &str) -> String {
    let ok = !msgtype.is_empty()
        && msgtype.len() <= MAX_MSGTYPE_LEN
        && msgtype
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        msgtype.to_owned()
    } else {
        "other".to_owned()
    }
}

impl Inbound {
    /// A `msg_list` entry of sync_msg. `open_kfid` is the loop's, used when the entry has none.
    pub fn from_wecom(v: Value, open_kfid: &str) -> Self {
        let event = v.get("event").filter(|e| e.is_object());
        let msgid = match str_at(&v, "msgid") {
            Some(id) => normalize_msgid(id),
            None => content_id(v.to_string().as_bytes()),
        };
        let msgtype = routing_word(str_at(&v, "msgtype").unwrap_or(if event.is_some() {
            "event"
        } else {
            ""
        }));
        let from_event = |k: &str| event.and_then(|e| str_at(e, k)).map(str::to_owned);
        Self {
            msgid,
            open_kfid: str_at(&v, "open_kfid")
                .map(str::to_owned)
                .or_else(|| from_event("open_kfid"))
                .or_else(|| Some(open_kfid.to_owned())),
            external_userid: str_at(&v, "external_userid")
                .map(str::to_owned)
                .or_else(|| from_event("external_userid")),
            origin: int_at(&v, "origin").and_then(|o| i32::try_from(o).ok()),
            send_time: int_at(&v, "send_time"),
            body: v,
            msgtype,
        }
    }

    pub fn routing_key(&self, account: &str) -> String {
        format!("{account}.{}", self.msgtype)
    }

    /// What this message changes besides its own row (pure; see the module docs).
    pub fn effect(&self) -> Effect {
        let at = self
            .send_time
            .unwrap_or_else(|| chrono::Utc::now().timestamp());
        let conv = || Some((self.open_kfid.clone()?, self.external_userid.clone()?));
        if self.origin == Some(3) {
            return match conv() {
                Some((open_kfid, external_userid)) => Effect::Customer {
                    open_kfid,
                    external_userid,
                    at,
                },
                None => Effect::None,
            };
        }
        if self.msgtype != "event" {
            return Effect::None;
        }
        let Some(ev) = self.body.get("event") else {
            return Effect::None;
        };
        match str_at(ev, "event_type") {
            Some("session_status_change") => {
                let Some(state) = int_at(ev, "change_type").and_then(state_after_change) else {
                    return Effect::None;
                };
                let Some((open_kfid, external_userid)) = conv() else {
                    return Effect::None;
                };
                let servicer = if state == 4 {
                    None
                } else {
                    str_at(ev, "new_servicer_userid").map(str::to_owned)
                };
                Effect::ServiceState {
                    open_kfid,
                    external_userid,
                    state,
                    servicer,
                    at,
                }
            }
            Some("msg_send_fail") => match str_at(ev, "fail_msgid") {
                Some(id) => Effect::SendFailed {
                    fail_msgid: id.to_owned(),
                    fail_type: int_at(ev, "fail_type").unwrap_or(0),
                },
                None => Effect::None,
            },
            _ => Effect::None,
        }
    }
}

/// A message's side effect on `conversations` / `deliveries`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    None,
    /// A customer message (origin 3) at `at` (unix seconds).
    Customer {
        open_kfid: String,
        external_userid: String,
        at: i64,
    },
    /// `session_status_change`: the session is now in `state`.
    ServiceState {
        open_kfid: String,
        external_userid: String,
        state: i32,
        servicer: Option<String>,
        at: i64,
    },
    /// `msg_send_fail`: the message we sent with this msgid was not delivered.
    SendFailed {
        fail_msgid: String,
        fail_type: i64,
    },
}

/// The service state after a `session_status_change` event: change_type 1 (picked up from
/// the queue by a servicer), 2 (transferred to another servicer) and 4 (an ended session
/// re-joined by a servicer) mean a human serves (3); 3 means the session ended (4).
pub fn state_after_change(change_type: i64) -> Option<i32> {
    match change_type {
        1 | 2 | 4 => Some(3),
        3 => Some(4),
        _ => None,
    }
}

// ------------------------------------------------------------------ storage

/// Which of `msgids` are already in `inbound_messages`.
pub async fn already_stored(
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

/// Insert messages (duplicates ignored); returns the msgids actually inserted.
pub async fn insert_messages(
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
    sqlx::query(
        "INSERT INTO conversations AS c (account, open_kfid, external_userid, last_customer_msg_at, sent_since_customer)
         SELECT $1, k, u, to_timestamp(t), 0 FROM UNNEST($2::text[], $3::text[], $4::bigint[]) AS x(k, u, t)
         ON CONFLICT (account, open_kfid, external_userid) DO UPDATE SET
             last_customer_msg_at = excluded.last_customer_msg_at,
             sent_since_customer = 0,
             service_state = CASE
                 WHEN c.service_state = 4 AND (c.state_updated_at IS NULL OR c.state_updated_at <= excluded.last_customer_msg_at)
                 THEN 0 ELSE c.service_state END,
             state_updated_at = CASE
                 WHEN c.service_state = 4 AND (c.state_updated_at IS NULL OR c.state_updated_at <= excluded.last_customer_msg_at)
                 THEN excluded.last_customer_msg_at ELSE c.state_updated_at END
         WHERE c.last_customer_msg_at IS NULL OR c.last_customer_msg_at <= excluded.last_customer_msg_at",
    )
    .bind(account)
    .bind(&kfids)
    .bind(&users)
    .bind(&ats)
    .execute(conn)
    .await
    .context("updating conversations (customer messages)")?;
    Ok(())
}

/// Apply the effects of newly inserted messages, in order. Returns the number of
/// deliveries turned `failed`.
async fn apply_effects(
    conn: &mut PgConnection,
    account: &str,
    msgs: &[Inbound],
    inserted: &HashSet<String>,
) -> anyhow::Result<u64> {
    let mut failed = 0;
    // Consecutive customer messages go in one statement; anything else flushes them first,
    // so effects keep the page's (chronological) order.
    let mut customers: HashMap<(String, String), i64> = HashMap::new();
    for m in msgs.iter().filter(|m| inserted.contains(&m.msgid)) {
        match m.effect() {
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
                .bind(state)
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
                         RETURNING job_id, attempts
                     )
                     INSERT INTO delivery_events (job_id, status, attempts, error)
                     SELECT job_id, 'failed', attempts, $3 FROM up
                     RETURNING job_id",
                )
                .bind(account)
                .bind(&fail_msgid)
                .bind(&error)
                .fetch_all(&mut *conn)
                .await
                .context("recording msg_send_fail")?;
                if jobs.is_empty() {
                    info!(
                        account,
                        fail_type, "msg_send_fail for a message with no `sent` delivery row"
                    );
                } else {
                    warn!(account, job.id = %jobs.join(","), fail_type, "platform reported a sent message undelivered (msg_send_fail)");
                }
                failed += jobs.len() as u64;
            }
        }
    }
    apply_customers(conn, account, &mut customers).await?;
    Ok(failed)
}

/// What one committed page did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PageCommit {
    pub inserted: usize,
    pub send_failures: u64,
}

/// The page's transaction: insert the messages, apply their effects, advance the cursor.
pub async fn commit_page(
    conn: &mut PgConnection,
    account: &str,
    open_kfid: &str,
    msgs: &[Inbound],
    next_cursor: &str,
) -> anyhow::Result<PageCommit> {
    let mut tx = conn
        .begin()
        .await
        .context("beginning the page transaction")?;
    let inserted = insert_messages(&mut tx, account, msgs).await?;
    let send_failures = apply_effects(&mut tx, account, msgs, &inserted).await?;
    sqlx::query(
        "INSERT INTO sync_cursors (account, open_kfid, cursor, pages, updated_at)
         VALUES ($1, $2, $3, 1, now())
         ON CONFLICT (account, open_kfid) DO UPDATE SET
             cursor = excluded.cursor, pages = sync_cursors.pages + 1, updated_at = now()",
    )
    .bind(account)
    .bind(open_kfid)
    .bind(next_cursor)
    .execute(&mut *tx)
    .await
    .context("storing the sync cursor")?;
    tx.commit().await.context("committing the page")?;
    for m in msgs.iter().filter(|m| inserted.contains(&m.msgid)) {
        metrics::counter!(t::INBOUND_MESSAGES, "account" => account.to_owned(), "kind" => m.msgtype.clone())
            .increment(1);
    }
    if send_failures > 0 {
        metrics::counter!(t::SEND_FAILURES, "account" => account.to_owned())
            .increment(send_failures);
    }
    Ok(PageCommit {
        inserted: inserted.len(),
        send_failures,
    })
}

/// The stored cursor of `(account, open_kfid)`.
pub async fn load_cursor(
    conn: &mut PgConnection,
    account: &str,
    open_kfid: &str,
) -> anyhow::Result<Option<String>> {
    sqlx::query_scalar("SELECT cursor FROM sync_cursors WHERE account = $1 AND open_kfid = $2")
        .bind(account)
        .bind(open_kfid)
        .fetch_optional(conn)
        .await
        .context("reading the sync cursor")
}

// ------------------------------------------------------------------ publishing

/// Publish messages to `wxdispatch.inbound` and wait for every confirm. Publishes are
/// pipelined on the channel (in order) and confirmed together.
pub async fn publish_inbound(
    publisher: &Publisher,
    account: &str,
    msgs: &[&Inbound],
) -> anyhow::Result<()> {
    let ch = publisher.channel();
    let mut confirms = Vec::with_capacity(msgs.len());
    for m in msgs {
        let body = serde_json::to_vec(&m.body).context("serializing an inbound message")?;
        let mut headers = FieldTable::default();
        headers.insert(
            broker::H_ACCOUNT.into(),
            AMQPValue::LongString(account.into()),
        );
        if let Some(k) = &m.open_kfid {
            headers.insert(
                "x-wxdispatch-open-kfid".into(),
                AMQPValue::LongString(k.as_str().into()),
            );
        }
        let mut props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(m.msgid.as_str().into())
            .with_type(m.msgtype.as_str().into())
            .with_app_id("wxdispatch".into())
            .with_delivery_mode(2)
            .with_headers(headers);
        if let Some(ts) = m.send_time.and_then(|s| u64::try_from(s).ok()) {
            props = props.with_timestamp(ts);
        }
        let rk = m.routing_key(account);
        match ch
            .basic_publish(
                broker::INBOUND.into(),
                rk.as_str().into(),
                BasicPublishOptions::default(),
                &body,
                props,
            )
            .await
        {
            Ok(c) => confirms.push(c),
            Err(e) => {
                let msg = e.to_string();
                // Let lapin's auto-recovery finish before the caller retries.
                let _ = ch.wait_for_recovery(e).await;
                anyhow::bail!("publishing to {}: {msg}", broker::INBOUND);
            }
        }
    }
    for c in confirms {
        match c.await {
            Ok(conf) if conf.is_ack() => {}
            Ok(_) => anyhow::bail!("broker refused an inbound message (nack)"),
            Err(e) => anyhow::bail!("waiting for the broker's confirm: {e}"),
        }
    }
    Ok(())
}

// ------------------------------------------------------------------ the loop

/// How one pull (a run of pages under the lock) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum RunOutcome {
    /// `has_more` reached 0.
    CaughtUp { pages: u32, stored: usize },
    /// Another process holds the lock and pulls.
    LockBusy,
    /// Shutdown was requested between pages.
    Stopped,
    /// 45009: wait at least this long.
    Throttled(Duration),
    /// A transient failure (transport, 5xx, busy, database, broker): back off and retry.
    Transient(String),
    /// A configuration or protocol problem: retry after [`PERMANENT_ERROR_WAIT`].
    Permanent(String),
}

/// A page request's failure, classified.
enum PageError {
    InvalidToken,
    Throttled,
    Transient(String),
    Permanent(String),
}

fn classify_page(res: &CallResult) -> PageError {
    if let CallResult::Errcode { code: 95007, .. } = res {
        return PageError::InvalidToken;
    }
    let what = match res {
        CallResult::Errcode { code, msg } => format!("errcode {code}: {msg}"),
        CallResult::Http(s) => format!("HTTP {s}"),
        CallResult::Transport(e) => e.clone(),
        CallResult::Ok { .. } => "ok".into(),
    };
    match policy::classify(Channel::Wecom, Api::Business, res) {
        Action::Throttle { .. } => PageError::Throttled,
        Action::Retry { .. } | Action::RefreshToken => PageError::Transient(what),
        Action::Deliver | Action::HumanServing | Action::DeadLetter { .. } => {
            PageError::Permanent(what)
        }
    }
}

/// A parsed sync_msg answer.
struct Page {
    next_cursor: Option<String>,
    has_more: bool,
    msgs: Vec<Inbound>,
}

fn parse_page(v: Value, open_kfid: &str) -> Result<Page, String> {
    let has_more = match v.get("has_more") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(x) => match x.as_i64() {
            Some(n) => n != 0,
            None => return Err("has_more is not a number".into()),
        },
    };
    let next_cursor = str_at(&v, "next_cursor").map(str::to_owned);
    let msgs = match v.get("msg_list") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(a)) => a
            .iter()
            .map(|m| Inbound::from_wecom(m.clone(), open_kfid))
            .collect(),
        Some(_) => return Err("msg_list is not an array".into()),
    };
    if has_more && next_cursor.is_none() {
        return Err("has_more = 1 without next_cursor".into());
    }
    Ok(Page {
        next_cursor,
        has_more,
        msgs,
    })
}

/// A pooled connection holding a session advisory lock. If it is dropped while the lock may
/// still be held (an error, a cancelled future), the connection is closed instead of going
/// back to the pool, which releases the lock.
struct LockedConn {
    conn: PoolConnection<Postgres>,
    held: bool,
    key: String,
}

impl LockedConn {
    async fn try_acquire(ctx: &LaneCtx, open_kfid: &str) -> anyhow::Result<Option<LockedConn>> {
        let mut conn = ctx
            .store
            .pool()
            .acquire()
            .await
            .context("acquiring a database connection")?;
        let key = format!("{}/{open_kfid}", ctx.account.name);
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, hashtext($2))")
            .bind(SYNC_LOCK_CLASS)
            .bind(&key)
            .fetch_one(&mut *conn)
            .await
            .context("taking the sync lock")?;
        Ok(got.then_some(LockedConn {
            conn,
            held: true,
            key,
        }))
    }

    async fn release(mut self) {
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

impl Drop for LockedConn {
    fn drop(&mut self) {
        if self.held {
            self.conn.close_on_drop();
        }
    }
}

/// One pull: take the lock, page from the stored cursor until caught up, release.
pub async fn pull(
    ctx: &LaneCtx,
    hub: &SyncHub,
    open_kfid: &str,
    shutdown: &CancellationToken,
) -> RunOutcome {
    let account = ctx.account.name.as_str();
    let Some(slot) = hub.slot(account, open_kfid) else {
        return RunOutcome::Permanent(format!("no sync slot for open_kfid {open_kfid}"));
    };
    let Some(tokens) = ctx.platform.tokens() else {
        return RunOutcome::Permanent("not a wecom account".into());
    };
    let mut lock = match LockedConn::try_acquire(ctx, open_kfid).await {
        Ok(Some(l)) => l,
        Ok(None) => return RunOutcome::LockBusy,
        Err(e) => return RunOutcome::Transient(format!("{e:#}")),
    };
    let outcome = pull_locked(ctx, hub, &slot, tokens, open_kfid, &mut lock.conn, shutdown).await;
    lock.release().await;
    outcome
}

async fn pull_locked(
    ctx: &LaneCtx,
    hub: &SyncHub,
    slot: &Slot,
    tokens: &crate::platform::TokenManager,
    open_kfid: &str,
    conn: &mut PgConnection,
    shutdown: &CancellationToken,
) -> RunOutcome {
    let account = ctx.account.name.as_str();
    // Another process may have advanced the cursor: always read it under the lock.
    let mut cursor = match load_cursor(conn, account, open_kfid).await {
        Ok(c) => c,
        Err(e) => return RunOutcome::Transient(format!("{e:#}")),
    };
    let limit = ctx.cfg.sync.page_limit;
    let (mut pages, mut stored, mut empty_in_a_row) = (0u32, 0usize, 0u32);
    let mut token_dropped = false;
    loop {
        if shutdown.is_cancelled() {
            return RunOutcome::Stopped;
        }
        let token = slot.token();
        let mut body = json!({ "limit": limit, "open_kfid": open_kfid });
        if let Some(c) = &cursor {
            body["cursor"] = json!(c);
        }
        if let Some(tk) = &token {
            body["token"] = json!(tk);
        }
        let ((res, _api), v) = ctx.platform.wecom_call(tokens, "kf/sync_msg", &body).await;
        if !matches!(res, CallResult::Ok { .. }) {
            metrics::counter!(t::SYNC_PAGES, "account" => account.to_owned(), "outcome" => "failed")
                .increment(1);
            match classify_page(&res) {
                PageError::InvalidToken => {
                    if let Some(tk) = &token {
                        slot.drop_token(tk);
                    }
                    if token.is_some() && !token_dropped {
                        token_dropped = true;
                        debug!(
                            account,
                            open_kfid, "sync token rejected (95007); continuing without it"
                        );
                        continue;
                    }
                    return RunOutcome::Permanent("errcode 95007 without a sync token".into());
                }
                PageError::Throttled => {
                    let pause = ctx
                        .cfg
                        .retry
                        .throttle_pause_secs
                        .map(Duration::from_secs)
                        .unwrap_or(policy::WECOM_THROTTLE_PAUSE);
                    return RunOutcome::Throttled(pause);
                }
                PageError::Transient(w) => return RunOutcome::Transient(w),
                PageError::Permanent(w) => return RunOutcome::Permanent(w),
            }
        }
        let page = match parse_page(v, open_kfid) {
            Ok(p) => p,
            Err(e) => {
                metrics::counter!(t::SYNC_PAGES, "account" => account.to_owned(), "outcome" => "failed")
                    .increment(1);
                return RunOutcome::Transient(format!("sync_msg answer: {e}"));
            }
        };
        pages += 1;
        metrics::counter!(t::SYNC_PAGES, "account" => account.to_owned(),
            "outcome" => if page.msgs.is_empty() { "empty" } else { "ok" })
        .increment(1);
        // Publish what is not stored yet, confirmed, before the page is committed.
        let ids: Vec<&str> = page.msgs.iter().map(|m| m.msgid.as_str()).collect();
        let known = match already_stored(conn, account, &ids).await {
            Ok(k) => k,
            Err(e) => return RunOutcome::Transient(format!("{e:#}")),
        };
        let fresh: Vec<&Inbound> = page
            .msgs
            .iter()
            .filter(|m| !known.contains(&m.msgid))
            .collect();
        if let Err(e) = publish_inbound(hub.publisher(), account, &fresh).await {
            return RunOutcome::Transient(format!("{e:#}"));
        }
        let next = page.next_cursor.clone().or_else(|| cursor.clone());
        if let Some(next) = &next {
            match commit_page(conn, account, open_kfid, &page.msgs, next).await {
                Ok(c) => stored += c.inserted,
                Err(e) => return RunOutcome::Transient(format!("{e:#}")),
            }
        } else if !page.msgs.is_empty() {
            // No cursor at all (first page, has_more = 0, no next_cursor): store the
            // messages; the next pull starts from the beginning again and dedupes.
            let res = async {
                let mut tx = conn.begin().await?;
                let inserted = insert_messages(&mut tx, account, &page.msgs).await?;
                apply_effects(&mut tx, account, &page.msgs, &inserted).await?;
                tx.commit().await?;
                anyhow::Ok(inserted.len())
            }
            .await;
            match res {
                Ok(n) => stored += n,
                Err(e) => return RunOutcome::Transient(format!("{e:#}")),
            }
        }
        cursor = next;
        let lag = if page.has_more {
            page.msgs
                .iter()
                .filter_map(|m| m.send_time)
                .max()
                .map(|s| (chrono::Utc::now().timestamp() - s) as f64)
        } else {
            Some(0.0)
        };
        if let Some(l) = lag {
            hub.set_lag(account, open_kfid, l);
        }
        if !page.has_more {
            return RunOutcome::CaughtUp { pages, stored };
        }
        if page.msgs.is_empty() {
            empty_in_a_row += 1;
            if empty_in_a_row >= MAX_EMPTY_PAGES_IN_A_ROW {
                return RunOutcome::Transient(format!(
                    "{empty_in_a_row} empty pages with has_more = 1 in a row"
                ));
            }
        } else {
            empty_in_a_row = 0;
        }
    }
}

/// The sync loop of one `(account, open_kfid)`: pull at start, on every wake and every
/// `sync.poll_interval_secs`, until `shutdown`.
pub async fn run(
    ctx: Arc<LaneCtx>,
    hub: Arc<SyncHub>,
    open_kfid: String,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let account = ctx.account.name.clone();
    let Some(slot) = hub.slot(&account, &open_kfid) else {
        anyhow::bail!("sync: no slot for account {account} open_kfid {open_kfid}");
    };
    let poll = match ctx.cfg.sync.poll_interval_secs {
        0 => None,
        s => Some(Duration::from_secs(s)),
    };
    let r = &ctx.cfg.retry;
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(r.initial_backoff_ms.max(1)))
            .with_max_delay(Duration::from_millis(
                r.max_backoff_ms.max(r.initial_backoff_ms),
            ))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    // Pull at once on start: catch up with what arrived while no worker ran.
    let mut next: Option<Instant> = Some(Instant::now());
    // Nothing runs before this instant, whatever wakes the loop (throttle, backoff).
    let mut not_before = Instant::now();
    // A callback arrived and has not been served by a pull of this process yet.
    let mut pending = false;
    info!(account, open_kfid, "sync loop started");
    loop {
        let sleep_until = next.map(tokio::time::Instant::from_std);
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = slot.notify.notified() => pending = true,
            _ = async {
                match sleep_until {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {}
        }
        if Instant::now() < not_before {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(not_before)) => {}
            }
        }
        let outcome = pull(&ctx, &hub, &open_kfid, &shutdown).await;
        let now = Instant::now();
        let wait = match &outcome {
            RunOutcome::CaughtUp { pages, stored } => {
                pending = false;
                backoff = new_backoff();
                debug!(account, open_kfid, pages, stored, "sync caught up");
                poll
            }
            RunOutcome::LockBusy => {
                debug!(account, open_kfid, "another process is pulling");
                if pending { Some(LOCK_BUSY_RETRY) } else { poll }
            }
            RunOutcome::Stopped => break,
            RunOutcome::Throttled(p) => {
                warn!(
                    account,
                    open_kfid,
                    pause_secs = p.as_secs(),
                    "sync_msg throttled (45009); pausing this sync loop"
                );
                not_before = now + *p;
                Some(*p)
            }
            RunOutcome::Transient(e) => {
                let d = backoff.next().unwrap_or(Duration::from_secs(1));
                warn!(account, open_kfid, error = %e, retry_in_ms = d.as_millis() as u64, "sync failed; retrying");
                not_before = now + d;
                Some(d)
            }
            RunOutcome::Permanent(e) => {
                let d = poll
                    .unwrap_or(PERMANENT_ERROR_WAIT)
                    .max(PERMANENT_ERROR_WAIT);
                error!(account, open_kfid, error = %e, retry_in_secs = d.as_secs(), "sync failed (configuration?); retrying later");
                not_before = now + d;
                Some(d)
            }
        };
        next = wait.map(|d| now + d);
    }
    info!(account, open_kfid, "sync loop stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn customer(msgid: &str, t: i64) -> Value {
        json!({"msgid": msgid, "open_kfid": "wkA", "external_userid": "wmU", "send_time": t,
               "origin": 3, "msgtype": "text", "text": {"content": "hi"}})
    }

    fn event(ev: Value) -> Value {
        json!({"msgid": "e1", "send_time": 100, "origin": 4, "msgtype": "event", "event": ev})
    }

    #[test]
    fn customer_messages_update_the_window() {
        let m = Inbound::from_wecom(customer("m1", 1700000000), "wkX");
        assert_eq!(m.msgtype, "text");
        assert_eq!(m.routing_key("kf"), "kf.text");
        assert_eq!(m.open_kfid.as_deref(), Some("wkA"));
        assert_eq!(
            m.effect(),
            Effect::Customer {
                open_kfid: "wkA".into(),
                external_userid: "wmU".into(),
                at: 1700000000
            }
        );
    }

    #[test]
    fn session_status_changes_map_to_states() {
        for (ct, state, servicer) in [
            (1, 3, Some("zhangsan")),
            (2, 3, Some("zhangsan")),
            (3, 4, None),
            (4, 3, Some("zhangsan")),
        ] {
            let m = Inbound::from_wecom(
                event(
                    json!({"event_type": "session_status_change", "open_kfid": "wkA",
                    "external_userid": "wmU", "change_type": ct, "new_servicer_userid": "zhangsan"}),
                ),
                "wkA",
            );
            assert_eq!(m.msgtype, "event");
            assert_eq!(m.routing_key("kf"), "kf.event");
            assert_eq!(m.external_userid.as_deref(), Some("wmU"));
            assert_eq!(
                m.effect(),
                Effect::ServiceState {
                    open_kfid: "wkA".into(),
                    external_userid: "wmU".into(),
                    state,
                    servicer: servicer.map(str::to_owned),
                    at: 100
                },
                "change_type {ct}"
            );
        }
        let unknown = Inbound::from_wecom(
            event(
                json!({"event_type": "session_status_change", "external_userid": "u", "change_type": 9}),
            ),
            "wkA",
        );
        assert_eq!(unknown.effect(), Effect::None);
    }

    #[test]
    fn msg_send_fail_names_the_message() {
        let m = Inbound::from_wecom(
            event(
                json!({"event_type": "msg_send_fail", "external_userid": "u", "fail_msgid": "job-1", "fail_type": 4}),
            ),
            "wkA",
        );
        assert_eq!(m.open_kfid.as_deref(), Some("wkA"));
        assert_eq!(
            m.effect(),
            Effect::SendFailed {
                fail_msgid: "job-1".into(),
                fail_type: 4
            }
        );
    }

    #[test]
    fn odd_entries_never_panic_and_get_stable_ids() {
        for v in [
            json!(null),
            json!([]),
            json!({"msgtype": "Weird.Type", "send_time": "x"}),
            json!({"msgid": "", "event": 5}),
            json!({"msgid": "x".repeat(500)}),
        ] {
            let a = Inbound::from_wecom(v.clone(), "wk");
            let b = Inbound::from_wecom(v, "wk");
            assert_eq!(a.msgid, b.msgid);
            assert!(a.msgid.len() <= MAX_MSGID_LEN.max(45));
            assert!(
                a.msgtype == "other" || a.msgtype == "event",
                "{}",
                a.msgtype
            );
            let _ = a.effect();
        }
    }

    #[test]
    fn routing_words() {
        assert_eq!(routing_word("text"), "text");
        assert_eq!(routing_word("business_card"), "business_card");
        assert_eq!(routing_word("a.b"), "other");
        assert_eq!(routing_word("#"), "other");
        assert_eq!(routing_word(""), "other");
        assert_eq!(routing_word(&"a".repeat(40)), "other");
    }

    #[test]
    fn pages_parse_and_empty_pages_with_more_are_followed() {
        let p = parse_page(
            json!({"errcode": 0, "next_cursor": "c2", "has_more": 1, "msg_list": []}),
            "wk",
        )
        .unwrap();
        assert!(p.has_more && p.msgs.is_empty());
        assert_eq!(p.next_cursor.as_deref(), Some("c2"));
        assert!(parse_page(json!({"has_more": 1, "msg_list": []}), "wk").is_err());
        assert!(parse_page(json!({"has_more": 0, "msg_list": {}}), "wk").is_err());
        let p = parse_page(json!({"has_more": 0}), "wk").unwrap();
        assert!(!p.has_more && p.next_cursor.is_none());
    }

    #[test]
    fn page_errors_are_classified() {
        let e = |code| CallResult::Errcode {
            code,
            msg: String::new(),
        };
        assert!(matches!(classify_page(&e(95007)), PageError::InvalidToken));
        assert!(matches!(classify_page(&e(45009)), PageError::Throttled));
        assert!(matches!(classify_page(&e(-1)), PageError::Transient(_)));
        assert!(matches!(
            classify_page(&CallResult::Transport("timeout".into())),
            PageError::Transient(_)
        ));
        assert!(matches!(classify_page(&e(95000)), PageError::Permanent(_)));
        assert!(matches!(classify_page(&e(40013)), PageError::Permanent(_)));
    }
}
