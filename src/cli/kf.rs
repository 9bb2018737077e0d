//! `wxdispatch kf …`: the command line of WeCom customer-service administration. The calls,
//! their checks and their answers are [`crate::platform::kf`]; here are the clap arguments
//! ([`args`]), and the runners that print tables or `--json` ([`mod@run`]).
//!
//! Exit codes (through [`crate::cli`]): 0 success, 2 input refused before any call
//! ([`KfError::Invalid`](crate::platform::kf::KfError::Invalid)), 1 anything else — a platform
//! errcode (printed as `api: errcode N (class): errmsg` on one line), per-user failures in a
//! batch, an unreachable platform.

pub mod args;
pub mod run;

pub use args::*;
pub use run::run;
