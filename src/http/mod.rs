//! The HTTP server: metrics, health, and the platforms' callbacks.

pub mod callback;
pub mod server;
pub mod state;

pub use server::*;
pub use state::AppState;
