//! The platforms' HTTP APIs: the send paths, WeCom access tokens, kf administration.

pub mod chatbot;
pub mod client;
pub mod http;
pub mod kf;
pub mod token;
pub mod wecom;

pub use client::Platform;
pub use http::http_client;
pub use token::{StoredToken, TokenManager, TokenStore};
