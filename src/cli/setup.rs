//! `wxdispatch setup`: everything a producer needs before any worker runs — the database
//! (created and migrated, like `migrate`), the broker topology (exchanges, the unroutable,
//! dead-letter and delay queues, the configured accounts' lanes) and the broker policies.
//! Idempotent: run it at every deploy, before the workers or beside them.
//!
//! Exits 0 when all is in place (objects an older version declared with other arguments are
//! used as they are and listed with their fix); exits 1 when the policies could not be set
//! (the management API unreachable or `"off"`), after printing the `rabbitmqctl` commands
//! that set them.

use anyhow::Context;

use crate::broker::{self, Declared, PoliciesOutcome};
use crate::config::Config;
use crate::store;

#[derive(Debug, clap::Args)]
pub struct SetupArgs {
    /// Print what was done as one JSON object instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// What `setup` did (the `--json` output).
#[derive(Debug, serde::Serialize)]
pub struct SetupReport {
    pub migrations_applied: bool,
    pub topology: Declared,
    pub policies: PoliciesOutcome,
}

/// Do it all; the report whatever the policies' outcome.
pub async fn setup(cfg: &Config) -> anyhow::Result<SetupReport> {
    let pool = store::connect_pool(cfg).await?;
    store::migrate(&pool).await.context("applying migrations")?;
    pool.close().await;
    let conn = broker::connect(&cfg.broker.url, "wxdispatch-setup").await?;
    let topology = broker::declare_all(&conn, cfg).await?;
    let _ = conn.close(200, "setup done".into()).await;
    let policies = broker::apply_policies(cfg).await;
    Ok(SetupReport {
        migrations_applied: true,
        topology,
        policies,
    })
}

pub async fn run(cfg: Config, args: SetupArgs) -> anyhow::Result<()> {
    let report = setup(&cfg).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_lines(&report);
    }
    match &report.policies {
        PoliciesOutcome::Applied { .. } => Ok(()),
        PoliciesOutcome::NotApplied { why, .. } => anyhow::bail!(
            "the broker policies are not set ({why}); run the rabbitmqctl commands above, or \
             make the management API reachable (broker.management_url) and run setup again"
        ),
    }
}

fn print_lines(r: &SetupReport) {
    let t = &r.topology;
    println!("database: migrations applied");
    println!(
        "broker (vhost {}): {} exchanges, {} queues, {} bindings declared",
        t.vhost,
        t.exchanges.len(),
        t.queues.len(),
        t.bindings.len()
    );
    for q in &t.queues {
        println!("  queue {q}");
    }
    for m in &t.mismatches {
        println!(
            "WARNING: {} {} exists with other arguments ({}): {}",
            m.kind, m.name, m.broker_says, m.fix
        );
    }
    match &r.policies {
        PoliciesOutcome::Applied { vhost, policies } => {
            for (name, change) in policies {
                println!("policy {name} (vhost {vhost}): {change:?}");
            }
        }
        PoliciesOutcome::NotApplied {
            vhost,
            why,
            commands,
        } => {
            println!("policies (vhost {vhost}) NOT set: {why}. Set them with:");
            for c in commands {
                println!("  {c}");
            }
        }
    }
}
