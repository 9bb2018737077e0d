//! Every queue and exchange name, and their declaration.
//!
//! Topology (declared idempotently at start and by `wxdispatch setup`;
//! `deploy/rabbitmq/definitions.json` ships the same; `[policy]` marks what the policies of
//! [`super::policies`] add, so that a publisher's plain declaration of `wxdispatch` is
//! equivalent to ours):
//!
//! ```text
//! wxdispatch (direct, no arguments; [policy] alternate-exchange=wxdispatch.unroutable)
//!   ├─ <account> ─▶ wxdispatch.<account>   quorum, single active consumer; [policy]
//!   │                                      delivery-limit, DLX wxdispatch.dead (the broker's
//!   │                                      own backstop)
//!   └─ (no match) ─▶ wxdispatch.unroutable (fanout) ─▶ wxdispatch.unroutable (quorum)
//! wxdispatch.dead (fanout) ─▶ wxdispatch.dead (quorum)
//!                          └▶ wxdispatch.dead.recorder (quorum): the worker records what the
//!                             broker dead-lettered itself (delivery limit) in `dead_letters`
//! wxdispatch.inbound (topic)               <account>.<msgtype>
//! wxdispatch.retry.<N>s (fanout) ─▶ wxdispatch.retry.<N>s  quorum, TTL N s, DLX wxdispatch:
//!                                    a parked job returns to its lane after N seconds
//! ```

use anyhow::Context;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection, ExchangeKind};
use serde::Serialize;

use crate::config::{AccountConfig, Config};

/// The main exchange (direct): upstream publishes jobs here with the account as routing key.
pub const EXCHANGE: &str = "wxdispatch";
/// Alternate exchange of [`EXCHANGE`] and its queue: jobs for an account no lane serves.
pub const UNROUTABLE: &str = "wxdispatch.unroutable";
/// Dead letters (fanout exchange and queue), with the [`super::headers`] of contract §3.
pub const DEAD: &str = "wxdispatch.dead";
/// A second queue on the [`DEAD`] fanout, consumed by the workers: the dead letters the broker
/// makes itself (a lane's delivery limit, no wxdispatch reason header) are recorded from
/// it. Beside `wxdispatch.dead` rather than instead of it: lanes declared by older versions
/// keep their `x-dead-letter-exchange` argument, which no policy overrides.
pub const DEAD_RECORDER: &str = "wxdispatch.dead.recorder";
/// Inbound customer messages (topic), routing key `<account>.<msgtype>`.
pub const INBOUND: &str = "wxdispatch.inbound";

/// Only what a policy cannot set: the queue type and single active consumer (one consumer at
/// a time keeps a conversation in order). Dead-lettering and the delivery limit come from
/// the `wxdispatch-lanes` policy ([`super::policies`]), so changing them changes no
/// declaration.
fn lane_args() -> FieldTable {
    let mut args = quorum_args();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args
}

/// The lane queue of an account (bound to [`EXCHANGE`] with the account as routing key).
pub fn lane_queue(account: &str) -> String {
    format!("{EXCHANGE}.{account}")
}

/// The bulk queue of an account: a broadcast's fan-out, beside the lane.
pub fn bulk_queue(account: &str) -> String {
    format!("{EXCHANGE}.{account}.bulk")
}

/// The durable delay tier of `secs` seconds: exchange and queue of the same name.
pub fn retry_tier(secs: u64) -> String {
    format!("wxdispatch.retry.{secs}s")
}

/// A delay tier: messages wait `secs` (queue TTL), then dead-letter back to `wxdispatch`
/// with their original routing key (the account), i.e. into their lane. Quorum with
/// at-least-once dead-lettering, so a broker restart cannot lose a parked job.
fn tier_args(secs: u64) -> FieldTable {
    let mut args = quorum_args();
    args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt((secs * 1000) as i64),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(EXCHANGE.into()),
    );
    args.insert(
        "x-dead-letter-strategy".into(),
        AMQPValue::LongString("at-least-once".into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args
}

fn quorum_args() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// What [`declare_all`] did.
#[derive(Debug, Default, Serialize)]
pub struct Declared {
    /// The vhost everything was declared in.
    pub vhost: String,
    pub exchanges: Vec<String>,
    pub queues: Vec<String>,
    /// `queue <- exchange (key)`.
    pub bindings: Vec<String>,
    /// Objects that exist with other arguments than this version declares: used as they are
    /// (see [`Mismatch`]).
    pub mismatches: Vec<Mismatch>,
}

/// An exchange or queue that exists with other arguments (an older wxdispatch declared them,
/// or an operator did): the broker refused our declaration with PRECONDITION_FAILED, the
/// object is used as it is, and `fix` says how to bring it in line.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// `exchange` or `queue`.
    pub kind: &'static str,
    pub name: String,
    /// The broker's words (which argument, what it holds).
    pub broker_says: String,
    /// What to run, exactly.
    pub fix: String,
}

/// Whether `e` is the broker's 406 PRECONDITION_FAILED (an inequivalent redeclaration).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a)
        if matches!(a.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)))
}

fn mismatch_fix(kind: &'static str, name: &str, vhost: &str) -> String {
    let v = super::policies::sh_quote(vhost);
    if kind == "exchange" {
        format!(
            "exchange {name} is used as it is. A policy cannot remove an argument: to declare \
             it as this version does, run `wxdispatch setup` (it sets the policies), then \
             `rabbitmqctl delete_exchange -p {v} {name}` and at once `wxdispatch setup` again \
             (it declares the exchange anew and binds the lanes); publishes in between fail \
             with 404 NOT_FOUND and must be retried"
        )
    } else {
        format!(
            "queue {name} is used as it is. Its arguments win over the {} policy for \
             dead-letter-exchange, and the lower of argument and policy is its delivery \
             limit, so broker.delivery_limit cannot raise it; a policy cannot remove queue \
             arguments. To migrate: stop publishing to it, let the workers drain it, stop \
             them, run `rabbitmqctl delete_queue -p {v} {name} --if-empty`, then \
             `wxdispatch setup` (or start a worker) to declare it anew",
            super::policies::LANES_POLICY
        )
    }
}

/// Declares on one channel; a declaration the broker refuses as inequivalent closes the
/// channel, so a new one is opened and the object is declared passively instead.
struct Declarer<'a> {
    conn: &'a Connection,
    ch: Channel,
    out: Declared,
}

impl Declarer<'_> {
    async fn refused(
        &mut self,
        kind: &'static str,
        name: &str,
        e: &lapin::Error,
    ) -> anyhow::Result<()> {
        self.ch = self
            .conn
            .create_channel()
            .await
            .context("re-opening a channel after PRECONDITION_FAILED")?;
        let says = match e.kind() {
            lapin::ErrorKind::ProtocolError(a) => a.get_message().to_string(),
            _ => e.to_string(),
        };
        self.out.mismatches.push(Mismatch {
            kind,
            name: name.to_owned(),
            broker_says: says,
            fix: mismatch_fix(kind, name, &self.out.vhost),
        });
        Ok(())
    }

    async fn exchange(
        &mut self,
        name: &str,
        kind: ExchangeKind,
        args: FieldTable,
    ) -> anyhow::Result<()> {
        let opts = |passive| ExchangeDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        match self
            .ch
            .exchange_declare(name.into(), kind.clone(), opts(false), args)
            .await
        {
            Ok(()) => {}
            Err(e) if is_precondition_failed(&e) => {
                self.refused("exchange", name, &e).await?;
                self.ch
                    .exchange_declare(name.into(), kind, opts(true), FieldTable::default())
                    .await
                    .with_context(|| format!("declaring exchange {name} passively"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("declaring exchange {name}")),
        }
        self.out.exchanges.push(name.to_owned());
        Ok(())
    }

    async fn queue(&mut self, name: &str, args: FieldTable) -> anyhow::Result<()> {
        let opts = |passive| QueueDeclareOptions {
            durable: true,
            passive,
            ..Default::default()
        };
        match self.ch.queue_declare(name.into(), opts(false), args).await {
            Ok(_) => {}
            Err(e) if is_precondition_failed(&e) => {
                self.refused("queue", name, &e).await?;
                self.ch
                    .queue_declare(name.into(), opts(true), FieldTable::default())
                    .await
                    .with_context(|| format!("declaring queue {name} passively"))?;
            }
            Err(e) => return Err(e).with_context(|| format!("declaring queue {name}")),
        }
        self.out.queues.push(name.to_owned());
        Ok(())
    }

    async fn bind(&mut self, q: &str, ex: &str, key: &str) -> anyhow::Result<()> {
        self.ch
            .queue_bind(
                q.into(),
                ex.into(),
                key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("binding {q} to {ex} ({key})"))?;
        self.out.bindings.push(format!("{q} <- {ex} ({key})"));
        Ok(())
    }

    async fn lane(&mut self, a: &AccountConfig) -> anyhow::Result<()> {
        let q = lane_queue(&a.name);
        self.queue(&q, lane_args()).await?;
        // The broadcast fan-out queue: same guarantees as the lane, consumed by the same process.
        self.queue(&bulk_queue(&a.name), lane_args()).await?;
        self.bind(&q, EXCHANGE, &a.name).await
    }
}

/// Declare every exchange, queue and binding the contract names, over AMQP (the policies are
/// [`super::policies`]'). Idempotent. An object that exists with other arguments is used as
/// it is and reported in [`Declared::mismatches`]; nothing else is skipped.
pub async fn declare_all(conn: &Connection, cfg: &Config) -> anyhow::Result<Declared> {
    let ch = conn.create_channel().await.context("opening a channel")?;
    let mut d = Declarer {
        conn,
        ch,
        out: Declared {
            vhost: super::policies::vhost_of(cfg.broker.url.expose()),
            ..Declared::default()
        },
    };
    let plain = FieldTable::default;
    d.exchange(UNROUTABLE, ExchangeKind::Fanout, plain())
        .await?;
    d.exchange(DEAD, ExchangeKind::Fanout, plain()).await?;
    d.exchange(INBOUND, ExchangeKind::Topic, plain()).await?;
    // No arguments: a publisher's plain declaration is equivalent (the alternate exchange
    // comes from the `wxdispatch-exchange` policy).
    d.exchange(EXCHANGE, ExchangeKind::Direct, plain()).await?;
    d.queue(UNROUTABLE, quorum_args()).await?;
    d.bind(UNROUTABLE, UNROUTABLE, "").await?;
    d.queue(DEAD, quorum_args()).await?;
    d.bind(DEAD, DEAD, "").await?;
    d.queue(DEAD_RECORDER, quorum_args()).await?;
    d.bind(DEAD_RECORDER, DEAD, "").await?;
    for &secs in &cfg.retry.tiers_secs {
        let name = retry_tier(secs);
        d.exchange(&name, ExchangeKind::Fanout, plain()).await?;
        d.queue(&name, tier_args(secs)).await?;
        d.bind(&name, &name, "").await?;
    }
    for a in &cfg.accounts {
        d.lane(a).await?;
    }
    crate::broker::outcomes::declare_outcomes(&d.ch).await?;
    let _ = d.ch.close(200, "topology declared".into()).await;
    Ok(d.out)
}

/// The broker policies `cfg` asks for (see [`super::policies`]).
pub fn wanted_policies(cfg: &Config) -> Vec<super::policies::Policy> {
    vec![
        super::policies::Policy {
            name: super::policies::EXCHANGE_POLICY,
            pattern: super::policies::EXCHANGE_PATTERN,
            apply_to: "exchanges",
            priority: super::policies::PRIORITY,
            definition: serde_json::json!({ "alternate-exchange": UNROUTABLE }),
        },
        super::policies::Policy {
            name: super::policies::LANES_POLICY,
            pattern: super::policies::LANES_PATTERN,
            apply_to: "queues",
            priority: super::policies::PRIORITY,
            definition: serde_json::json!({
                "dead-letter-exchange": DEAD,
                "delivery-limit": cfg.broker.delivery_limit,
            }),
        },
    ]
}

/// What [`apply_policies`] did.
#[derive(Debug, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum PoliciesOutcome {
    /// Set through the management API (each: unchanged, created or updated).
    Applied {
        vhost: String,
        policies: Vec<(&'static str, super::policies::PolicyChange)>,
    },
    /// The management API could not set them: `why`, and the commands that do.
    NotApplied {
        vhost: String,
        why: String,
        commands: Vec<String>,
    },
}

/// Set the policies of [`wanted_policies`] in `broker.url`'s vhost through the
/// management API; where it cannot, say why and which commands do it.
pub async fn apply_policies(cfg: &Config) -> PoliciesOutcome {
    let vhost = super::policies::vhost_of(cfg.broker.url.expose());
    let wanted = wanted_policies(cfg);
    let applied = match super::policies::Management::from_config(cfg) {
        Ok(m) => m.apply(&vhost, &wanted).await,
        Err(e) => Err(e),
    };
    match applied {
        Ok(policies) => PoliciesOutcome::Applied { vhost, policies },
        Err(e) => PoliciesOutcome::NotApplied {
            commands: super::policies::rabbitmqctl_commands(&vhost, &wanted),
            why: e.to_string(),
            vhost,
        },
    }
}

/// Log `key`'s warning only the first time in this process (a worker re-declares on every
/// reconnect; one line is enough).
fn first_time(key: String) -> bool {
    static SEEN: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
        std::sync::Mutex::new(None);
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    seen.get_or_insert_with(Default::default).insert(key)
}

/// What a worker runs at start and on every reconnect: [`declare_all`], then
/// [`apply_policies`] (the worker keeps the policies in line with its config when the
/// management API lets it). Objects with other arguments and policies it cannot set are
/// logged once each, with the command that fixes them; neither stops the worker.
pub async fn declare_topology(conn: &Connection, cfg: &Config) -> anyhow::Result<()> {
    let declared = declare_all(conn, cfg).await?;
    for m in &declared.mismatches {
        if first_time(format!("{}/{}/{}", declared.vhost, m.kind, m.name)) {
            tracing::warn!(
                vhost = %declared.vhost,
                name = %m.name,
                broker = %m.broker_says,
                fix = %m.fix,
                "{} {} exists with other arguments; going on with it",
                m.kind,
                m.name
            );
        }
    }
    match apply_policies(cfg).await {
        PoliciesOutcome::Applied { vhost, policies } => {
            for (name, change) in policies {
                if change != super::policies::PolicyChange::Unchanged {
                    tracing::info!(%vhost, policy = name, ?change, "broker policy set");
                }
            }
        }
        PoliciesOutcome::NotApplied {
            vhost,
            why,
            commands,
        } => {
            if first_time(format!("{vhost}/policies")) {
                tracing::warn!(
                    %vhost,
                    reason = %why,
                    fix = %commands.join(" && "),
                    "cannot check or set the broker policies wxdispatch-exchange and \
                     wxdispatch-lanes; unless `wxdispatch setup` or the definitions set them, \
                     unroutable jobs are dropped and lanes have no delivery limit. Run \
                     `wxdispatch setup`, or the commands in `fix`"
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_follow_the_config() {
        let mut cfg = Config::default();
        cfg.broker.delivery_limit = 7;
        let p = wanted_policies(&cfg);
        assert_eq!(
            p[0].definition["alternate-exchange"],
            "wxdispatch.unroutable"
        );
        assert_eq!(p[1].definition["delivery-limit"], 7);
        assert_eq!(p[1].definition["dead-letter-exchange"], "wxdispatch.dead");
    }

    #[test]
    fn commands_are_ready_to_paste() {
        let cmds = crate::broker::policies::rabbitmqctl_commands(
            "/",
            &wanted_policies(&Config::default()),
        );
        assert_eq!(
            cmds[0],
            r#"rabbitmqctl set_policy -p '/' --apply-to exchanges --priority 10 wxdispatch-exchange '^wxdispatch$' '{"alternate-exchange":"wxdispatch.unroutable"}'"#
        );
        assert!(
            cmds[1].contains(r#"'{"dead-letter-exchange":"wxdispatch.dead","delivery-limit":20}'"#)
        );
    }

    #[test]
    fn names_follow_the_contract() {
        assert_eq!(lane_queue("kf"), "wxdispatch.kf");
        assert_eq!(bulk_queue("kf"), "wxdispatch.kf.bulk");
        assert_eq!(retry_tier(30), "wxdispatch.retry.30s");
    }
}
