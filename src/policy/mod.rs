//! Pure decisions: what an answer of the platform means for a job.

pub mod errcode;

pub use errcode::*;
