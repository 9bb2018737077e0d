//! The pure vocabulary of wxdispatch: jobs, channels, ids. No I/O, no runtime.

pub mod account;
pub mod allowance;
pub mod channel;
pub mod ids;
pub mod inbound;
pub mod job;
pub mod service_state;
