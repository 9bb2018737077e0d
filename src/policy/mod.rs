//! Pure decisions: what an answer of the platform means for a job.

pub mod errcode;

pub use errcode::*;
pub mod outcome;
pub mod pause;
pub mod retry;
