//! Postgres: every SQL statement of wxdispatch, one file per table group. The pool itself stays
//! private to this module.

pub mod dead_letters;
pub mod inbound;
pub mod pool;
pub mod stats;

pub use pool::*;
pub mod parked;
