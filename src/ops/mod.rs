//! Operating it: use cases that return data, for the command line to print. Dead letters
//! (list, plan and execute a replay) in [`dlq`](mod@dlq), delivery statistics in
//! [`stats`](mod@stats).

pub mod dlq;
pub mod stats;

pub use dlq::{
    DeadLetterRow, Filter, FilterHint, ReplayError, ReplayOptions, ReplayPlan, ReplayProgress,
    ReplaySummary, Skip, Skipped, execute_replay, filter_hint, list_dead_letters, plan_replay,
    replay,
};
pub use stats::{AccountStats, ReasonStats, Stats, stats};

// TEMPORARY, until `src/cli/mod.rs` (another helper's) declares `pub mod dlq; pub mod stats;
// pub mod table; pub mod usage;`: the CLI half of `dlq`/`stats` is compiled from here, and
// the names `cli/mod.rs` uses today stay reachable. Delete all of this then.
#[doc(hidden)]
#[path = "../cli"]
pub mod cli {
    pub mod dlq;
    pub mod stats;
    pub mod table;
    pub mod usage;
}
pub use cli::dlq::{DlqArgs, run as dlq};
pub use cli::stats::{StatsArgs, run as stats_cmd};
pub use cli::usage::UsageError;
