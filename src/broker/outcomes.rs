//! The outcome events' exchange (README "Outcome events"): `wxdispatch.outcomes`, durable,
//! topic, routing key `<account>.<status>`. wxdispatch declares no queue on it: producers
//! bind their own (`<account>.#`, `*.dead`, `#`).

use anyhow::Context;
use lapin::options::ExchangeDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, ExchangeKind};

/// The outcome events' exchange (topic).
pub const OUTCOMES: &str = "wxdispatch.outcomes";

/// The routing key of an event: `<account>.<status>` (account names hold no dots, so a
/// binding `support.*` or `*.dead` selects exactly one side).
pub fn outcome_routing_key(account: &str, status: &str) -> String {
    format!("{account}.{status}")
}

/// Declare [`OUTCOMES`] (idempotent; durable topic, no arguments).
pub async fn declare_outcomes(ch: &Channel) -> anyhow::Result<()> {
    ch.exchange_declare(
        OUTCOMES.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .with_context(|| format!("declaring exchange {OUTCOMES}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn routing_key_is_account_dot_status() {
        assert_eq!(
            super::outcome_routing_key("support", "dead"),
            "support.dead"
        );
    }
}
