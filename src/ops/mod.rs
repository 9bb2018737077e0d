//! Operating it: use cases that return data, for the command line to print. Dead letters
//! (list, plan and execute a replay) in [`dlq`](mod@dlq), delivery statistics in
//! [`stats`](mod@stats), broadcasts in [`broadcast`](mod@broadcast), a job's record in
//! [`status`](mod@status).

pub mod account_id;
pub mod broadcast;
pub mod dlq;
pub mod stats;
pub mod status;

pub use dlq::{
    DeadLetterRow, Filter, FilterHint, ReplayError, ReplayOptions, ReplayPlan, ReplayProgress,
    ReplaySummary, Skip, Skipped, execute_replay, filter_hint, list_dead_letters, plan_replay,
    replay,
};
pub use stats::{AccountStats, ReasonStats, Stats, stats};
