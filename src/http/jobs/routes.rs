//! The job API's routes, for [`crate::http::admin_router`].

use axum::Router;
use axum::routing::{get, post};

use crate::http::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/jobs", post(super::post::post_jobs))
        .route("/v1/jobs/{id}", get(super::get::get_job))
}
