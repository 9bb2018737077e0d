//! RabbitMQ: connection, topology (every queue, exchange and header name), confirmed publishing,
//! coalesced acks.

pub mod acks;
pub mod connection;
pub mod headers;
pub mod outcomes;
pub mod policies;
pub mod publisher;
pub mod topology;

pub use connection::{Broker, connect, redact_amqp_url};
pub use headers::{
    DeadHeaders, H_ACCOUNT, H_ATTEMPTS, H_ERRCODE, H_ERRMSG, H_OPEN_KFID, H_PARKS, H_PUBLISHED_MS,
    H_REASON, header_str,
};
pub use outcomes::{OUTCOMES, declare_outcomes, outcome_routing_key};
pub use publisher::Publisher;
pub use topology::{
    DEAD, DEAD_RECORDER, Declared, EXCHANGE, INBOUND, Mismatch, PoliciesOutcome, UNROUTABLE,
    apply_policies, bulk_queue, declare_all, declare_topology, lane_queue, retry_tier,
};
