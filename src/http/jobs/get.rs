//! `GET /v1/jobs/{id}[?account=A]`: the delivery record `wxdispatch status` shows, as JSON
//! (`ops::status`'s report, through [`super::JobLookup`]); 404 when there is none (or it is on an account the token may not read),
//! 409 when several accounts have the id and none was named.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::lookup::LookupError;
use super::reply::{self, count};
use crate::http::state::AppState;

#[derive(Debug, Deserialize)]
pub struct JobQuery {
    /// The job's account, needed when several accounts have the id.
    pub account: Option<String>,
}

pub async fn get_job(
    State(s): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<JobQuery>,
) -> Response {
    let token = match super::auth::admit(&s.jobs, &headers) {
        Ok(t) => t,
        Err(refused) => return *refused,
    };
    // A token limited to one account looks there; one limited to several must name it when
    // the id is ambiguous, like anybody.
    let account = q.account.or_else(|| match token.accounts.as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    });
    let not_found = || {
        count(&token.name, "not_found");
        reply::error(
            StatusCode::NOT_FOUND,
            reply::NOT_FOUND,
            "no delivery with this job id",
        )
    };
    if account.as_deref().is_some_and(|a| !token.allows(a)) {
        return not_found();
    }
    let Some(lookup) = &s.job_lookup else {
        count(&token.name, "unavailable");
        return reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            reply::INTERNAL,
            "job lookup is not available in this process",
        );
    };
    match lookup.lookup(&id, account.as_deref()).await {
        Ok(Some(f)) if token.allows(&f.account) => {
            count(&token.name, "found");
            (StatusCode::OK, axum::Json(f.record)).into_response()
        }
        Ok(_) => not_found(),
        Err(LookupError::Ambiguous(msg)) => {
            count(&token.name, "invalid");
            reply::error(
                StatusCode::CONFLICT,
                reply::AMBIGUOUS_ID,
                format!("{msg}: add ?account=<account>"),
            )
        }
        Err(LookupError::Failed(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "job API: status lookup failed");
            count(&token.name, "unavailable");
            reply::error(
                StatusCode::SERVICE_UNAVAILABLE,
                reply::INTERNAL,
                "the database did not answer; retry",
            )
        }
    }
}
