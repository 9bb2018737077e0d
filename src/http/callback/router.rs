//! The callback routes.

use axum::Router;
use axum::routing::{get, post};

use crate::http::callback::chatbot::chatbot_push;
use crate::http::callback::wecom::{wecom_event, wecom_verify};
use crate::http::state::AppState;

/// The callback routes, merged into [`crate::http::server::router`].
pub fn routes() -> Router<AppState> {
    Router::new()
        .route(
            "/callback/wecom/{account}",
            get(wecom_verify).post(wecom_event),
        )
        .route("/callback/chatbot/{account}", post(chatbot_push))
}
