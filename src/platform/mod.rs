//! The platforms' HTTP APIs: the send paths, WeCom access tokens, kf administration.

pub mod client;
pub mod kf;

pub use client::*;
