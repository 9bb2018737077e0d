//! One run: its vhost, database, config, simulator process and connections, and what a run
//! does with them (publish, the broker ceiling, wait for the drain, count commits).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use lapin::Connection;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use serde_json::json;
use sqlx::{Connection as _, PgPool, Row};

use super::env::{
    Base, account_for, check_confirm, drain_timeout, free_port, now_ms, rabbitmqctl,
    remove_resources, url_with_path, write_private,
};
use super::jobs::JobGen;
use super::procs::Proc;
use super::report::thousands;
use super::sim_client::{POLL_SIM, SimClient};
use crate::broker;
use crate::config::{AccountConfig, Channel, Config};
use crate::store;

/// Publisher confirms outstanding at once while publishing a backlog: enough to keep the
/// broker's pipeline full, bounded so a refusal is noticed within a window.
pub(super) const CONFIRM_WINDOW: usize = 4096;
/// While draining, the simulator's counter is polled (cheap) every [`POLL_SIM`]; once it has
/// seen every job, the database (a `count(*)` that costs Postgres CPU, so not while the drain
/// is running) every this.
pub(super) const POLL_DB: Duration = Duration::from_millis(25);
/// The database is also checked this often before that: jobs that never reach the
/// simulator (dead letters) would otherwise never end the drain.
pub(super) const DB_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long the ceiling consumer stays open after its last ack, so the queue has applied
/// every settlement before the consumer goes away.
pub(super) const CEILING_SETTLE: Duration = Duration::from_millis(500);
/// The worker's shutdown grace in the generated config: nothing is in flight at the end
/// of a drain, and a limiter run is cut off mid-backlog on purpose.
pub(super) const WORKER_GRACE_SECS: u64 = 3;

/// One run: its vhost, database, config, simulator process and connections.
pub(super) struct Scenario {
    pub(super) label: String,
    pub(super) name: String,
    pub(super) dir: PathBuf,
    pub(super) cfg_path: PathBuf,
    pub(super) cfg: Config,
    pub(super) account: AccountConfig,
    pub(super) sim: Proc,
    pub(super) sim_client: SimClient,
    pub(super) pool: PgPool,
    pub(super) conn: Connection,
    pub(super) admin_db_url: String,
    pub(super) exe: PathBuf,
    pub(super) worker_wrapper: Option<String>,
    pub(super) keep: bool,
}

impl Scenario {
    /// Create the vhost, the database and the config; start the simulator; declare the
    /// topology and apply the migrations. `rate` = (per second, burst), `None` = unlimited.
    pub(super) async fn create(
        base: &Base,
        label: &str,
        channel: Channel,
        rate: Option<(u32, u32)>,
        keep: bool,
    ) -> anyhow::Result<Self> {
        let r: u32 = rand::random();
        let name = format!("wxbench_{}_{r:08x}", std::process::id());
        let dir = std::env::temp_dir().join(&name);
        match Self::create_in(base, label, channel, rate, keep, &name, &dir).await {
            Ok(s) => Ok(s),
            Err(e) => {
                if !keep {
                    remove_resources(&name, &base.admin_db_url(), &dir, label).await;
                }
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn create_in(
        base: &Base,
        label: &str,
        channel: Channel,
        rate: Option<(u32, u32)>,
        keep: bool,
        name: &str,
        dir: &Path,
    ) -> anyhow::Result<Self> {
        let (name, dir) = (name.to_owned(), dir.to_owned());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        rabbitmqctl(&["add_vhost", &name]).await?;
        let user = base.amqp_user.clone();
        rabbitmqctl(&["set_permissions", "-p", &name, &user, ".*", ".*", ".*"]).await?;
        let sim_port = free_port()?;
        let sim_base = format!("http://127.0.0.1:{sim_port}");
        let toml_text = render_config(base, &name, &sim_base, channel, rate)?;
        let cfg = Config::from_toml_with_env(&toml_text, &[])
            .context("the generated bench config does not load")?;
        cfg.validate()
            .context("the generated bench config is invalid")?;
        let cfg_path = dir.join("wxdispatch.toml");
        write_private(&cfg_path, &toml_text)?;
        let account = cfg
            .accounts
            .first()
            .cloned()
            .context("the generated config has no account")?;
        let mut sim_args = vec![
            "simulate".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{sim_port}"),
        ];
        if rate.is_none() {
            sim_args.push("--no-rate-limit".into());
        }
        let sim = Proc::spawn("simulator", &base.exe, &cfg_path, &sim_args, &dir)?;
        let sim_client = SimClient::new(&sim_base)?;
        let mut sim = sim;
        sim_client.wait_ready(&mut sim).await?;
        let pool = store::connect_pool(&cfg).await?;
        store::migrate(&pool).await?;
        let conn = broker::connect(&cfg.broker.url, "wxdispatch-bench").await?;
        broker::declare_topology(&conn, &cfg).await?;
        Ok(Self {
            label: label.to_owned(),
            name,
            dir,
            cfg_path,
            cfg,
            account,
            sim,
            sim_client,
            pool,
            conn,
            admin_db_url: base.admin_db_url(),
            exe: base.exe.clone(),
            worker_wrapper: base.worker_wrapper.clone(),
            keep,
        })
    }

    pub(super) fn spawn_worker(&self) -> anyhow::Result<Proc> {
        Proc::spawn_wrapped(
            "worker",
            self.worker_wrapper.as_deref(),
            &self.exe,
            &self.cfg_path,
            &["run".to_owned()],
            &self.dir,
        )
    }

    pub(super) fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[{}] {what}", self.label);
    }

    /// Publish `n` jobs (ids `<prefix><i>`) with pipelined confirms.
    pub(super) async fn publish(
        &self,
        jobs: &JobGen,
        prefix: &str,
        n: usize,
    ) -> anyhow::Result<Duration> {
        let ch = self.conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        let t0 = Instant::now();
        let mut pending = VecDeque::with_capacity(CONFIRM_WINDOW);
        for i in 0..n {
            let (props, body) = jobs.job(&format!("{prefix}{i}"), i, now_ms());
            let confirm = ch
                .basic_publish(
                    broker::EXCHANGE.into(),
                    self.account.name.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                )
                .await
                .context("publishing the backlog")?;
            pending.push_back(confirm);
            if pending.len() >= CONFIRM_WINDOW
                && let Some(c) = pending.pop_front()
            {
                check_confirm(c.await?)?;
            }
        }
        while let Some(c) = pending.pop_front() {
            check_confirm(c.await?)?;
        }
        let took = t0.elapsed();
        let _ = ch.close(200, "published".into()).await;
        Ok(took)
    }

    /// Messages ready in the lane queue.
    pub(super) async fn queue_ready(&self) -> anyhow::Result<u32> {
        let ch = self.conn.create_channel().await?;
        let q = ch
            .queue_declare(
                crate::broker::lane_queue(&self.account.name)
                    .as_str()
                    .into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = ch.close(200, "bye".into()).await;
        Ok(q.message_count())
    }

    /// The broker ceiling: `n` jobs consumed and acked by a consumer that does nothing else,
    /// same queue, same prefetch. Returns messages per second.
    pub(super) async fn broker_ceiling(&self, jobs: &JobGen, n: usize) -> anyhow::Result<f64> {
        self.say(format!(
            "broker ceiling: publishing {} jobs …",
            thousands(n as u64)
        ));
        let took = self.publish(jobs, "c", n).await?;
        self.say(format!(
            "  published in {:.2} s ({} msg/s); consuming and acking …",
            took.as_secs_f64(),
            thousands((n as f64 / took.as_secs_f64()).round() as u64)
        ));
        let conn = broker::connect(&self.cfg.broker.url, "wxdispatch-bench-ceiling").await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(self.cfg.broker.prefetch, BasicQosOptions::default())
            .await?;
        let mut consumer = ch
            .basic_consume(
                crate::broker::lane_queue(&self.account.name)
                    .as_str()
                    .into(),
                "wxdispatch-bench-ceiling".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let t0 = Instant::now();
        let deadline = t0 + drain_timeout(n);
        let mut got = 0usize;
        let mut redelivered = 0usize;
        while got < n {
            let next = tokio::time::timeout_at(deadline.into(), consumer.next()).await;
            match next {
                Err(_) => bail!("broker ceiling: only {got} of {n} messages arrived in time"),
                Ok(None) => bail!("broker ceiling: the consumer ended after {got} messages"),
                Ok(Some(Err(e))) => bail!("broker ceiling: consumer error: {e}"),
                Ok(Some(Ok(d))) => {
                    d.acker
                        .ack(BasicAckOptions::default())
                        .await
                        .context("broker ceiling: ack")?;
                    got += 1;
                    redelivered += usize::from(d.redelivered);
                }
            }
        }
        let secs = t0.elapsed().as_secs_f64();
        // A quorum queue applies settlements asynchronously; a consumer that goes away
        // before they are applied gets those messages returned. Give them a moment, then
        // purge whatever came back, so the worker's backlog is exactly its own.
        tokio::time::sleep(CEILING_SETTLE).await;
        let _ = ch.close(200, "done".into()).await;
        let _ = conn.close(200, "done".into()).await;
        let purge = self.conn.create_channel().await?;
        let purged = purge
            .queue_purge(
                crate::broker::lane_queue(&self.account.name)
                    .as_str()
                    .into(),
                QueuePurgeOptions::default(),
            )
            .await?;
        let _ = purge.close(200, "bye".into()).await;
        if purged > 0 {
            self.say(format!(
                "  note: {purged} acked messages were returned when the ceiling consumer closed ({redelivered} redeliveries); purged"
            ));
        }
        let left = self.queue_ready().await?;
        if left != 0 {
            bail!("broker ceiling: {left} messages still queued after the ceiling run");
        }
        let rate = n as f64 / secs;
        self.say(format!(
            "  ceiling {} msg/s ({secs:.2} s)",
            thousands(rate.round() as u64)
        ));
        Ok(rate)
    }

    /// Rows of `deliveries` with an outcome (a full scan: run it rarely).
    pub(super) async fn terminal(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE status NOT IN ('accepted', 'retrying')",
        )
        .persistent(false)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Rows of the run's account still without an outcome: through the `(account, status)`
    /// index, cheap while few are in flight, so it can be polled without loading Postgres.
    /// Planned afresh every time (`persistent(false)`): a cached plan made while the table
    /// was empty would scan it.
    pub(super) async fn in_progress(&self) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM deliveries WHERE account = $1 AND status IN ('accepted', 'retrying')",
        )
        .bind(&self.account.name)
        .persistent(false)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// Wait until `n` rows are terminal; returns how many queries this ran on the run's
    /// database (they count among its commits).
    pub(super) async fn wait_drained(&self, worker: &mut Proc, n: u64) -> anyhow::Result<u64> {
        let deadline = Instant::now() + drain_timeout(n as usize);
        let mut queries = 0u64;
        let mut last_db = Instant::now();
        loop {
            worker.check_alive()?;
            let accepted = self.sim_client.accepted_total().await?;
            let sim_done = accepted >= n;
            if sim_done || last_db.elapsed() >= DB_CHECK_EVERY {
                last_db = Instant::now();
                queries += 1;
                if self.in_progress().await? == 0 {
                    queries += 1;
                    if self.terminal().await? >= n {
                        return Ok(queries);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "[{}] drain timed out: the simulator accepted {accepted} of {n}; rows: {:?}",
                    self.label,
                    self.status_counts().await.unwrap_or_default()
                );
            }
            tokio::time::sleep(if sim_done { POLL_DB } else { POLL_SIM }).await;
        }
    }

    pub(super) async fn status_counts(&self) -> anyhow::Result<Vec<(String, i64)>> {
        Ok(sqlx::query(
            "SELECT status, count(*) AS n FROM deliveries GROUP BY status ORDER BY status",
        )
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| (r.get("status"), r.get("n")))
        .collect())
    }

    /// Transactions committed in this run's database so far (read from the `postgres`
    /// database, so the reading itself is not counted).
    pub(super) async fn commits(&self) -> anyhow::Result<i64> {
        let mut c = sqlx::PgConnection::connect(&self.admin_db_url).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.name)
                .fetch_one(&mut c)
                .await?;
        let _ = c.close().await;
        Ok(n)
    }

    /// Close the run's pool (its backends flush their statistics when they exit) and open
    /// a new one.
    pub(super) async fn reopen_pool(&mut self) -> anyhow::Result<()> {
        self.pool.close().await;
        self.pool = store::connect_pool(&self.cfg).await?;
        Ok(())
    }

    pub(super) async fn cleanup(self) {
        let Scenario {
            sim,
            pool,
            conn,
            name,
            dir,
            admin_db_url,
            keep,
            label,
            ..
        } = self;
        if let Err(e) = sim.stop().await {
            eprintln!("[{label}] simulator: {e:#}");
        }
        let _ = conn.close(200, "bye".into()).await;
        pool.close().await;
        if keep {
            eprintln!(
                "[{label}] kept vhost and database {name}, config and logs in {}",
                dir.display()
            );
            return;
        }
        remove_resources(&name, &admin_db_url, &dir, &label).await;
    }
}

/// The generated config of run `name`: its vhost and database, the tunables under test, and
/// the run's one account at the simulator `sim_base`.
fn render_config(
    base: &Base,
    name: &str,
    sim_base: &str,
    channel: Channel,
    rate: Option<(u32, u32)>,
) -> anyhow::Result<String> {
    let mut account = account_for(channel, sim_base, rate);
    account["outcomes"] = json!(base.outcomes);
    let doc = json!({
        "broker": {
            "url": format!("{}/{name}", base.amqp_root),
            "prefetch": base.prefetch,
            "delivery_limit": base.delivery_limit,
        },
        "database": {
            "url": url_with_path(&base.db_url, Some(name)),
            "max_connections": base.max_connections,
            "batch_max": base.batch_max,
        },
        "http": {
            "listen": format!("127.0.0.1:{}", free_port()?),
            "admin_listen": format!("127.0.0.1:{}", free_port()?),
        },
        "worker": {
            "concurrency": base.concurrency,
            "shutdown_grace_secs": WORKER_GRACE_SECS,
        },
        "account": [account],
    });
    toml::to_string(&doc).context("rendering the bench config")
}
