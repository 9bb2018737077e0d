//! The HTTP servers: the public listener (the platforms' callbacks) and the admin listener
//! (metrics, health), each with its own limits.

pub mod callback;
pub mod jobs;
pub mod listener;
pub mod server;
pub mod state;

pub use server::*;
pub use state::{AppState, StartupStatus};
