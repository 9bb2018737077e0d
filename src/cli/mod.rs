//! The command line (contract §7): clap, printing and exit codes, one file per command. Every
//! command exits 0 on success and otherwise prints one clear line on stderr and exits non-zero
//! (1 runtime failure, 2 usage or configuration; [`exit`] decides which).

pub mod broadcast;
pub mod check_config;
pub mod command;
pub mod exit;
pub mod migrate;
pub mod run;
pub mod send;
pub mod status;

// The use cases behind `broadcast` and `status` live in `src/ops/`; until `src/ops/mod.rs`
// declares them (`pub mod broadcast;` and `pub mod status;`) they are compiled from here.
#[path = "../ops/broadcast.rs"]
pub mod ops_broadcast;
#[path = "../ops/status.rs"]
pub mod ops_status;

pub use command::{Cli, Command, dispatch, main};
pub use exit::ConfigError;
pub use send::SendArgs;
