//! The callback routes.

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Extension, Router};

use crate::http::callback::chatbot::chatbot_push;
use crate::http::callback::shield::Shield;
use crate::http::callback::wecom::{wecom_event, wecom_verify};
use crate::http::state::AppState;

/// The callback routes, merged into [`crate::http::server::router`], with their own
/// [`Shield`] (refusal throttle and replay cache).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/callback/wecom/{account}",
            get(wecom_verify).post(wecom_event),
        )
        .route("/callback/chatbot/{account}", post(chatbot_push))
        .layer(Extension(Arc::new(Shield::default())))
}
