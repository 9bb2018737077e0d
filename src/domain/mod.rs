//! The pure vocabulary of wxdispatch: jobs, channels, ids, service states, dead-letter reasons,
//! the recall window.
//! No I/O, no runtime.

pub mod account;
pub mod allowance;
pub mod channel;
pub mod chatbot_state;
pub mod ids;
pub mod inbound;
pub mod job;
pub mod reason;
pub mod recall;
pub mod service_state;
