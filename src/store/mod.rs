//! Postgres: every SQL statement of wxdispatch, one file per table group. The pool itself stays
//! private to this module.
//!
//! - [`pool`]: connecting, migrating, the [`Store`] handle and its health through outages;
//! - [`batcher`]: the writer tasks that turn concurrent single-row writes into one statement;
//! - [`deliveries`]: claims, outcomes, service states, dead-letter records, `status` reads;
//! - [`tokens`]: the shared WeCom access tokens;
//! - [`sync_health`]: when each open_kfid last synced (the sync retention alert);
//! - [`broadcasts`]: broadcast rows, their fan-out deliveries, progress and cancellation;
//! - [`recall`]: a recall's target row, marking it recalled;
//! - [`outbox`]: the outcome events waiting for the relay, and the jobs' reply routes.

pub mod batcher;
pub mod broadcasts;
pub mod dead_letter_body;
pub mod dead_letters;
pub mod deliveries;
pub mod held;
pub mod inbound;
pub mod outbox;
pub mod outbox_types;
pub mod parked;
pub mod pool;
pub mod recall;
pub mod stats;
pub mod sync_health;
pub mod tokens;

pub use batcher::BatchStats;
pub use deliveries::{
    Claim, ConvState, DeadLetter, Delivery, DeliveryEvent, DeliveryKey, Outcome, Status,
};
pub use outbox_types::EventMeta;
pub use pool::{Store, connect_pool, migrate};
pub use recall::{RecallMark, RecallTargetRow};
