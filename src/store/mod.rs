//! Postgres: every SQL statement of wxdispatch, one file per table group. The pool itself stays
//! private to this module.

pub mod pool;
pub mod token_store;

pub use pool::*;
