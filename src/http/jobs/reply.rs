//! The job API's answers. Every error is `{"errors": [{"index"?, "reason", "detail"}]}`: a
//! job's error carries its `index` in the batch and the same reason word a dead letter of that
//! job would have; a request's error (auth, rate, size, broker) has no index and one of the
//! request words below.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;

use crate::telemetry as t;

/// Request-level error words (the job-level ones are [`crate::domain::reason::Reason`]'s).
pub const UNAUTHORIZED: &str = "unauthorized";
pub const FORBIDDEN_ACCOUNT: &str = "forbidden_account";
pub const RATE_LIMITED: &str = "rate_limited";
pub const TOO_MANY_JOBS: &str = "too_many_jobs";
pub const REQUEST_TOO_LARGE: &str = "request_too_large";
pub const BROKER_UNAVAILABLE: &str = "broker_unavailable";
pub const NOT_FOUND: &str = "not_found";
pub const AMBIGUOUS_ID: &str = "ambiguous_id";
pub const INTERNAL: &str = "internal_error";

/// Count one request under the token's name (`-` unauthenticated) and `outcome`.
pub fn count(token: &str, outcome: &'static str) {
    metrics::counter!(t::HTTP_JOB_REQUESTS, "token" => token.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// One error of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    /// The job's position in the batch (0 for a single job); absent for request errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub reason: String,
    pub detail: String,
}

impl ApiError {
    pub fn request(reason: &str, detail: impl Into<String>) -> Self {
        Self {
            index: None,
            reason: reason.to_owned(),
            detail: detail.into(),
        }
    }

    pub fn job(index: usize, reason: &str, detail: impl Into<String>) -> Self {
        Self {
            index: Some(index),
            reason: reason.to_owned(),
            detail: detail.into(),
        }
    }
}

/// `status` with `{"errors": errors}`.
pub fn errors(status: StatusCode, errors: Vec<ApiError>) -> Response {
    (status, axum::Json(json!({ "errors": errors }))).into_response()
}

/// One request error.
pub fn error(status: StatusCode, reason: &str, detail: impl Into<String>) -> Response {
    errors(status, vec![ApiError::request(reason, detail)])
}

/// 401, the same answer for every authentication failure (no header, wrong scheme, unknown
/// token), so a caller learns nothing about which part was wrong.
pub fn unauthorized() -> Response {
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        UNAUTHORIZED,
        "a valid bearer token is required",
    );
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"wxdispatch\""),
    );
    r
}

/// 429 with `Retry-After: secs`.
pub fn rate_limited(secs: u64) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        RATE_LIMITED,
        format!("over this token's rate; retry after {secs} s"),
    );
    if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    r
}
