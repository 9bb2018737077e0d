//! The command line: clap, printing and exit codes, one file per command. Every
//! command exits 0 on success and otherwise prints one clear line on stderr and exits non-zero
//! (1 runtime failure, 2 usage or configuration; [`exit`] decides which). Global flags:
//! `-q`, `-v`, `--config`; `--json` on every command that prints data ([`output`]); `--yes`
//! or a prompt on every destructive one ([`confirm`]).

pub mod account_flag;
pub mod bench;
pub mod broadcast;
pub mod check_config;
pub mod command;
pub mod confirm;
pub mod demo;
pub mod dlq;
pub mod docs;
pub mod exit;
pub mod kf;
pub mod migrate;
pub mod output;
pub mod run;
pub mod send;
pub mod setup;
pub mod simulate;
pub mod stats;
pub mod status;
pub mod table;
pub mod token;
pub mod usage;

pub use command::{Cli, Command, dispatch, main};
pub use send::SendArgs;
