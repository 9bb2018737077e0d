//! What every run shares: where RabbitMQ and Postgres are, the tunables under test, the
//! generated account, and the helpers that create and remove a run's resources.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use serde_json::{Value, json};
use sqlx::Connection as _;

use super::options::BenchOptions;
use crate::config::{Channel, Config};
use crate::tools::fixtures;

/// A drain may take this long at least, plus [`DRAIN_PER_JOB`] per job, before the bench
/// gives up (a healthy run is many times faster).
pub(super) const DRAIN_TIMEOUT_MIN: Duration = Duration::from_secs(120);
pub(super) const DRAIN_PER_JOB: Duration = Duration::from_millis(2);

/// What the runs share: where RabbitMQ and Postgres are, and the tunables under test.
pub(super) struct Base {
    /// `amqp://user:pw@host:port` (no vhost).
    pub(super) amqp_root: String,
    pub(super) amqp_user: String,
    /// Postgres URL with the password applied; its path is replaced per run.
    pub(super) db_url: String,
    pub(super) prefetch: u16,
    pub(super) delivery_limit: u32,
    pub(super) concurrency: usize,
    pub(super) max_connections: u32,
    pub(super) batch_max: usize,
    pub(super) exe: PathBuf,
    pub(super) worker_wrapper: Option<String>,
    /// `outcomes` of the bench accounts ([`BenchOptions::outcomes`]).
    pub(super) outcomes: bool,
}

impl Base {
    pub(super) fn load(config: Option<&Path>, opts: &BenchOptions) -> anyhow::Result<Self> {
        let cfg = Config::load(config).context("loading the configuration")?;
        let amqp_root = url_with_path(&cfg.broker.url, None);
        let amqp_user = url_user(&cfg.broker.url).unwrap_or_else(|| "guest".into());
        Ok(Self {
            amqp_root,
            amqp_user,
            db_url: cfg.database_url(),
            prefetch: opts.prefetch.unwrap_or(cfg.broker.prefetch),
            delivery_limit: cfg.broker.delivery_limit,
            concurrency: opts.concurrency.unwrap_or(cfg.worker.concurrency),
            max_connections: cfg.database.max_connections,
            batch_max: cfg.database.batch_max,
            exe: std::env::current_exe().context("locating the wxdispatch binary")?,
            worker_wrapper: opts.worker_wrapper.clone().filter(|w| !w.trim().is_empty()),
            outcomes: opts.outcomes,
        })
    }

    pub(super) fn admin_db_url(&self) -> String {
        url_with_path(&self.db_url, Some("postgres"))
    }
}

/// `scheme://authority[/path][?query]` with the path replaced (or removed).
pub(super) fn url_with_path(url: &str, path: Option<&str>) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let (scheme, rest) = url.split_at(start);
    let auth_end = rest.find('/').unwrap_or(rest.len());
    let query = rest[auth_end..]
        .find('?')
        .map_or("", |q| &rest[auth_end + q..]);
    match path {
        Some(p) => format!("{scheme}{}/{p}{query}", &rest[..auth_end]),
        None => format!("{scheme}{}", &rest[..auth_end]),
    }
}

/// The user name of `scheme://user[:pw]@host…`.
pub(super) fn url_user(url: &str) -> Option<String> {
    let rest = &url[url.find("://")? + 3..];
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    Some(userinfo.split(':').next().unwrap_or("").to_owned()).filter(|u| !u.is_empty())
}

/// The account of a run (the fixtures' bench account), as the generated config's TOML table.
pub(super) fn account_for(channel: Channel, base_url: &str, rate: Option<(u32, u32)>) -> Value {
    let rate = match rate {
        Some((per_second, burst)) => json!({ "per_second": per_second, "burst": burst }),
        None => json!({ "unlimited": true }),
    };
    let a = fixtures::bench_account(channel, base_url);
    match channel {
        Channel::Chatbot => json!({
            "name": a.name, "channel": "chatbot", "base_url": base_url, "rate": rate,
            "appid": a.appid, "oa_appid": a.oa_appid, "token": a.token.expose(), "encoding_aes_key": a.encoding_aes_key.expose(),
        }),
        Channel::Wecom => json!({
            "name": a.name, "channel": "wecom", "base_url": base_url, "rate": rate,
            "corpid": a.corpid, "secret": a.secret.expose(), "open_kfids": a.open_kfids,
        }),
    }
}

/// A port that was free a moment ago (the child binds it; a race here is harmless and rare).
pub(super) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Delete a run's vhost, database and directory (whatever of them exists).
pub(super) async fn remove_resources(name: &str, admin_db_url: &str, dir: &Path, label: &str) {
    if let Err(e) = rabbitmqctl(&["delete_vhost", name]).await
        && !format!("{e:#}").contains("does not exist")
    {
        eprintln!("[{label}] {e:#}");
    }
    match sqlx::PgConnection::connect(admin_db_url).await {
        Ok(mut c) => {
            let stmt = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(stmt)).execute(&mut c).await {
                eprintln!("[{label}] dropping database {name}: {e}");
            }
            let _ = c.close().await;
        }
        Err(e) => eprintln!("[{label}] dropping database {name}: {e}"),
    }
    let _ = std::fs::remove_dir_all(dir);
}

pub(super) fn drain_timeout(n: usize) -> Duration {
    DRAIN_TIMEOUT_MIN + DRAIN_PER_JOB * u32::try_from(n).unwrap_or(u32::MAX)
}

pub(super) fn check_confirm(c: lapin::Confirmation) -> anyhow::Result<()> {
    if c.is_ack() {
        Ok(())
    } else {
        bail!("the broker refused a published job (nack)")
    }
}

/// Write a file only the owner can read (the config may hold a database password).
pub(super) fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

pub(super) async fn rabbitmqctl(args: &[&str]) -> anyhow::Result<()> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .await
        .context("running rabbitmqctl (RabbitMQ must run on this machine)")?;
    if !out.status.success() {
        bail!(
            "rabbitmqctl {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub(super) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}
