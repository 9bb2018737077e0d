//! One account's lane: consume, order per conversation, rate-limit, send, retry, record, ack.
//!
//! A lane consumes `wxdispatch.<account>` (single active consumer, so one process at a time
//! sends for an account: its rate limit and every conversation's order hold across any
//! number of workers). Deliveries are grouped by *conversation* (recipient, and open_kfid for
//! WeCom): one conversation's jobs run one after the other in delivery order, different
//! conversations run concurrently up to `worker.concurrency`. Prefetch bounds how many
//! deliveries are held, so memory does not grow with the backlog; the worker's byte budget
//! ([`crate::engine::budget`]) bounds how many bytes of them the lanes take in hand.
//!
//! One job = [`process`] → an [`Outcome`]; `finish` records the outcome in Postgres and only
//! then acks (or dead-letters, then records, then acks). A panic inside [`process`] is caught
//! and becomes an `internal_error` dead letter; the lane goes on.
//!
//! Files, in the order a delivery meets them:
//! - `ctx`: [`LaneCtx`], what every task of the lane shares;
//! - `run`: the consumer loop, conversation queues, panic containment; `consumers`: the
//!   lane's AMQP channels;
//! - `order`: conversation keys and handing jobs back to the broker in order;
//! - `process`: claim, allowance, gate, send with retries; `gates` (asking who serves) over
//!   `gate_cache`; `pause`: the account pause ([`PauseGate`], over [`crate::policy::pause`]);
//! - `recall`: a recall job's target check, platform call and mark, over `process`'s send loop;
//!   `credentials`: the prober that ends a pause for credentials gettoken refused;
//! - `finish`: record, dead-letter or park, then ack; `parked`: the conversations waiting
//!   behind a parked job; `schedule`: holding a job until its `not_before`.
//!
//! "Channel" is kept for the account's platform (`config::Channel`, the `channel` metric
//! label); the broker's channels are "AMQP channels", the in-process queue of finished jobs
//! is `finished_tx`/`finished_rx`.

mod consumers;
mod credentials;
mod ctx;
mod finish;
mod gate_cache;
mod gates;
mod order;
mod parked;
mod pause;
mod process;
mod recall;
mod run;
mod schedule;

pub use crate::policy::outcome::Outcome;
pub use ctx::LaneCtx;
pub use gate_cache::Gates;
pub use parked::{H_PARKS, Parked};
pub use pause::{PauseGate, Probe};
pub use process::process;
pub use run::run;
