//! The connection: the pools, the migrations, and what the store does while Postgres is away.
//!
//! **Database outages.** A batch that fails because the database cannot be reached (connection
//! refused or reset, server shutting down or starting up, pool timeout) is not failed back to
//! its callers: the writer keeps retrying the same batch with capped backoff for up to
//! [`OUTAGE_WAIT`], so a Postgres restart shows up as a pause, not as errors — nothing is
//! acked that was not recorded, nothing is nacked and redelivered out of order, and a job the
//! platform accepted is recorded once the database is back instead of being sent again.
//! Both statements are idempotent, so retrying one whose commit was lost is harmless. While
//! a write is failing this way the store reports itself unhealthy ([`Store::health`]); the
//! lanes stop taking new jobs until [`Store::probe_until_up`] sees the database again.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use tokio::sync::watch;
use tracing::{info, warn};

use super::batcher::{BatchStats, Batcher};
use super::deliveries::{
    self, Claim, ConvState, Conversation, DeadLetter, Delivery, DeliveryEvent, DeliveryKey,
    Outcome, ServiceStateRow, claim_batch, outcome_batch, state_batch,
};
use super::held::WriteHold;
use crate::config::Config;

/// How long a write waits for an unreachable database before failing to its caller. The
/// message behind it stays unacked meanwhile, so this must stay well below the broker's
/// consumer timeout (30 min); 5 minutes covers restarts, failovers and short network splits.
const OUTAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);
/// First and largest pause between two attempts of a write during an outage.
const OUTAGE_BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
const OUTAGE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(2);
/// `/readyz` and the outage probe must answer quickly even when the pool cannot connect (its
/// acquire timeout is 10 s; a readiness probe times out after 1 s by default).
const PING_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// How often an unhealthy store pings the database to find out it is back.
const PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Whether the database answered the last write or probe. Shared by all clones of a
/// [`Store`]; transitions are logged once.
#[derive(Debug)]
pub(super) struct Health {
    up: watch::Sender<bool>,
}

impl Health {
    pub(super) fn set(&self, up: bool, why: &str) {
        let changed = self.up.send_if_modified(|cur| {
            let changed = *cur != up;
            *cur = up;
            changed
        });
        if changed && up {
            info!("database reachable again; lanes take new jobs");
        } else if changed {
            warn!(
                error = why,
                "database unreachable; lanes stop taking new jobs, writes wait for it"
            );
        }
    }
}

/// The store: a handle on Postgres, cheap to clone. Its statements live next to their tables
/// (`deliveries`, `tokens`, `broadcasts`, …); the hot path's methods are here because the
/// store holds their batchers, the others are `impl Store` blocks in the tables' files.
#[derive(Clone)]
pub struct Store {
    pub(super) pool: PgPool,
    pub(super) claims: Batcher<DeliveryKey, (Claim, Option<ConvState>)>,
    pub(super) outcomes: Batcher<Outcome, ()>,
    pub(super) states: Batcher<ServiceStateRow, ()>,
    pub(super) health: Arc<Health>,
    /// Writes the database refused, held by the engine until it accepts them.
    pub(super) held: Arc<WriteHold>,
    pub stats: Arc<BatchStats>,
    /// `worker.dead_letter_body_bytes`: the longest body a dead letter's row keeps whole.
    pub(super) dead_letter_body_bytes: usize,
    /// The outcome events' outbox: the relay's wake-up and the accounts without events.
    pub(super) outbox: Arc<super::outbox_types::OutboxState>,
}

/// True when `e` means "the database cannot be reached right now" (as opposed to a statement
/// the database refused): worth waiting for.
fn is_unavailable(e: &anyhow::Error) -> bool {
    let Some(e) = e.chain().find_map(|c| c.downcast_ref::<sqlx::Error>()) else {
        return false;
    };
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            // 08: connection exception; 57P01-03: admin/crash shutdown, starting up;
            // 53300: too many connections.
            c.starts_with("08") || matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Run `op` until it succeeds, fails for a reason other than an unreachable database, or the
/// database has been unreachable for [`OUTAGE_WAIT`]. Updates `health` either way.
pub(super) async fn while_unavailable<T, F, Fut>(health: &Health, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut pause = OUTAGE_BACKOFF_MIN;
    loop {
        match op().await {
            Ok(v) => {
                health.set(true, "");
                return Ok(v);
            }
            Err(e) if is_unavailable(&e) && started.elapsed() < OUTAGE_WAIT => {
                health.set(false, &format!("{e:#}"));
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(OUTAGE_BACKOFF_MAX);
            }
            Err(e) => return Err(e),
        }
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// Make sure the configured database exists (create it through the `postgres` database).
async fn ensure_database(opts: &PgConnectOptions) -> anyhow::Result<()> {
    let Some(db) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = match admin.connect().await {
        Ok(c) => c,
        // No access to `postgres`: assume the database is managed elsewhere.
        Err(_) => return Ok(()),
    };
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&db)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let stmt = format!("CREATE DATABASE \"{}\"", db.replace('"', "\"\""));
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&mut conn)
            .await
        {
            // 42P04 duplicate_database: another worker created it meanwhile.
            let dup = e
                .as_database_error()
                .and_then(|d| d.code())
                .is_some_and(|c| c == "42P04");
            if !dup {
                return Err(e).context("cannot create the database");
            }
        }
    }
    Ok(())
}

/// Open a pool on the configured database, creating the database when missing.
pub async fn connect_pool(config: &Config) -> anyhow::Result<PgPool> {
    let opts = PgConnectOptions::from_str(&config.database_url())
        .map_err(|e| anyhow::anyhow!("database.url: {}", redact_db_error(&e.to_string())))?
        .application_name("wxdispatch")
        // The hot batched statements run on their own pool ([`writer_pool`]). The other
        // statements (inbound sync, parked jobs, operators' queries) may take arrays too,
        // whose length a generic plan cannot see: after five executions Postgres may switch
        // to one planned for an empty, unanalysed table (sequential scans, measured to halve
        // a 200,000-job drain when the batches ran here). Plan each execution for its own
        // arguments instead. The working set is in memory: an index probe costs about as
        // much as a sequential page read (with the default 4, a join with `deliveries`
        // scanned it while it held fewer than ~20,000 rows).
        .options([
            ("plan_cache_mode", "force_custom_plan"),
            ("random_page_cost", "1.1"),
        ]);
    ensure_database(&opts).await?;
    // One direct connection first: a database that cannot be reached fails at once with its
    // cause (the pool retries until its acquire timeout and then says only "pool timed out"),
    // which `run`'s start-up wait logs and `/readyz` shows.
    let probe = opts.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot connect to the database: {}",
            redact_db_error(&e.to_string())
        )
    })?;
    let _ = sqlx::Connection::close(probe).await;
    PgPoolOptions::new()
        .max_connections(config.database.max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_with(opts)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot connect to the database: {}",
                redact_db_error(&e.to_string())
            )
        })
}

/// Connections the batch writers may hold (claims, outcomes, service states: one writer
/// each, plus one spare for a writer whose connection is being replaced).
const WRITER_CONNECTIONS: u32 = 4;

/// The batch writers' own pool, on the same database as `pool`, whose sessions plan the
/// batched statements once and never scan a table sequentially.
///
/// With custom plans (the main pool's setting) Postgres planned every batch afresh: at
/// 500 jobs/s, where batches hold one row, that planning was most of Postgres's CPU (0.72
/// cores; 0.37 with this pool, and p99 latency 11 → 5 ms, measured by `wxdispatch bench
/// --only latency`). A generic plan for a statement over arrays cannot know their length
/// or, on a fresh database, the table's size, and might pick a sequential scan of
/// `deliveries`; every table these statements touch is reached by its primary key, so
/// `enable_seqscan = off` leaves the planner only index probes (checked with EXPLAIN on an
/// empty and on a 200,000-row table: nested loops over `deliveries_pkey` and
/// `conversations_pkey`).
fn writer_pool(pool: &PgPool) -> PgPool {
    let opts = (*pool.connect_options()).clone().options([
        ("plan_cache_mode", "force_generic_plan"),
        ("enable_seqscan", "off"),
    ]);
    PgPoolOptions::new()
        .max_connections(WRITER_CONNECTIONS)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy_with(opts)
}

/// sqlx errors can echo the connection string; keep any password out of them.
fn redact_db_error(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split(' ') {
        if !out.is_empty() {
            out.push(' ');
        }
        if let (Some(scheme), Some(at)) = (word.find("://"), word.find('@')) {
            out.push_str(&word[..scheme + 3]);
            out.push_str("***");
            out.push_str(&word[at..]);
        } else {
            out.push_str(word);
        }
    }
    out
}

/// Apply the migrations. sqlx takes a Postgres advisory lock around them, so any number of
/// workers may start at once.
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::migrate!("./migrations")
        .run(pool)
        .await
        .context("database migration failed")
}

impl Store {
    pub async fn connect(config: &Config) -> anyhow::Result<Self> {
        let pool = connect_pool(config).await?;
        migrate(&pool).await?;
        let mut store = Self::with_pool(pool, config.database.batch_max);
        store.dead_letter_body_bytes = config.worker.dead_letter_body_bytes;
        store.outbox = super::outbox_types::OutboxState::new(
            config
                .accounts
                .iter()
                .filter(|a| !a.outcomes)
                .map(|a| a.name.clone()),
        );
        Ok(store)
    }

    pub fn with_pool(pool: PgPool, batch_max: usize) -> Self {
        let stats = Arc::new(BatchStats::default());
        let health = Arc::new(Health {
            up: watch::Sender::new(true),
        });
        let writers = writer_pool(&pool);
        // One batcher per statement, all alike: count the batch, retry it through an outage.
        macro_rules! batcher {
            ($write:ident) => {{
                let (p, s, h) = (writers.clone(), stats.clone(), health.clone());
                Batcher::spawn(batch_max, move |batch| {
                    let (p, s, h) = (p.clone(), s.clone(), h.clone());
                    async move {
                        s.batches.fetch_add(1, Ordering::Relaxed);
                        s.rows.fetch_add(batch.len() as u64, Ordering::Relaxed);
                        while_unavailable(&h, || $write(&p, &batch)).await
                    }
                })
            }};
        }
        let claims = batcher!(claim_batch);
        let outcomes = batcher!(outcome_batch);
        let states = batcher!(state_batch);
        Self {
            pool,
            claims,
            outcomes,
            states,
            health,
            held: Arc::default(),
            stats,
            dead_letter_body_bytes: crate::config::WorkerConfig::default().dead_letter_body_bytes,
            outbox: super::outbox_types::OutboxState::new([]),
        }
    }

    /// `true` while the database answers; changes when a write or probe finds otherwise.
    pub fn health(&self) -> watch::Receiver<bool> {
        self.health.up.subscribe()
    }

    pub fn is_healthy(&self) -> bool {
        *self.health.up.borrow()
    }

    /// The writes held because the database refused them (see [`super::held`]).
    pub fn write_hold(&self) -> &WriteHold {
        &self.held
    }

    /// `true` while a write the database refused is held and retried: the lanes take no new
    /// jobs and `/readyz` answers 503.
    pub fn writes_failing(&self) -> bool {
        self.held.count() > 0
    }

    /// Ping every [`PROBE_INTERVAL`] until the database answers (returns at once when it is
    /// believed up).
    pub async fn probe_until_up(&self) {
        while !self.is_healthy() {
            if self.ping().await {
                return;
            }
            tokio::time::sleep(PROBE_INTERVAL).await;
        }
    }

    /// The pool itself: for the store's own statements only (every SQL statement lives in
    /// `store/`).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

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
        let event = outcome.event.is_some();
        self.outcomes.call(outcome).await?;
        if event {
            self.outbox_wake();
        }
        Ok(())
    }

    /// Remember a dead letter (waits out a database outage like the batched writes).
    pub async fn record_dead_letter(&self, d: &DeadLetter) -> anyhow::Result<()> {
        while_unavailable(&self.health, || {
            super::dead_letter_body::insert(&self.pool, d, self.dead_letter_body_bytes)
        })
        .await
    }

    // ---- what `wxdispatch status` reads ----

    /// The delivery rows of a job id: the one of `account`, or (`None`) those of every
    /// account that has the id, by account.
    pub async fn deliveries(
        &self,
        job_id: &str,
        account: Option<&str>,
    ) -> anyhow::Result<Vec<Delivery>> {
        deliveries::deliveries(&self.pool, job_id, account).await
    }

    /// The outcomes of these jobs, by job id (what the demo prints).
    pub async fn outcome_rows(
        &self,
        ids: &[String],
    ) -> anyhow::Result<Vec<deliveries::OutcomeRow>> {
        deliveries::outcome_rows(&self.pool, ids).await
    }

    /// A job's history, oldest first.
    pub async fn delivery_events(
        &self,
        account: &str,
        job_id: &str,
    ) -> anyhow::Result<Vec<DeliveryEvent>> {
        deliveries::delivery_events(&self.pool, account, job_id).await
    }

    /// What is known of a WeCom conversation (`None`: no customer message or session state
    /// recorded yet).
    pub async fn conversation(
        &self,
        account: &str,
        open_kfid: &str,
        external_userid: &str,
    ) -> anyhow::Result<Option<Conversation>> {
        deliveries::conversation(&self.pool, account, open_kfid, external_userid).await
    }

    /// Whether the database answers within [`PING_TIMEOUT`]; updates [`Store::health`].
    pub async fn ping(&self) -> bool {
        let ok = matches!(
            tokio::time::timeout(PING_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await,
            Ok(Ok(_))
        );
        self.health.set(ok, "ping failed");
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_errors_do_not_echo_passwords() {
        let s = redact_db_error("error connecting to postgres://u:hunter2@db:5432/x refused");
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("@db:5432/x"));
    }
}
