//! RabbitMQ: connection, topology (every queue, exchange and header name), confirmed publishing,
//! coalesced acks.

pub mod acks;
pub mod connection;

pub use connection::*;
