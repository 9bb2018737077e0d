//! `POST /v1/jobs`: authenticate, take the token's allowance, read the body (capped), validate
//! every job ([`super::batch`]), publish them confirmed, answer 202 with their ids.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::batch::{Refused, parse_batch};
use super::reply::count;
use super::reply::{self, ApiError};
use crate::http::state::AppState;

pub async fn post_jobs(State(s): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    // Authentication and the rate come before the body is read: an unknown caller cannot make
    // the worker buffer anything.
    let token = match super::auth::admit(&s.jobs, &headers) {
        Ok(t) => t,
        Err(refused) => return *refused,
    };
    let cfg = &s.cfg;
    let limit = cfg
        .worker
        .max_body_bytes
        .saturating_mul(cfg.http.jobs_max_batch);
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        count(&token.name, "too_large");
        return reply::error(
            StatusCode::PAYLOAD_TOO_LARGE,
            reply::REQUEST_TOO_LARGE,
            format!(
                "body over {limit} bytes (worker.max_body_bytes × http.jobs_max_batch), or not fully received"
            ),
        );
    };
    let jobs = match parse_batch(cfg, token, &bytes) {
        Ok(jobs) => jobs,
        Err(refused) => {
            let (status, outcome, errors) = match refused {
                Refused::Body(e) => (StatusCode::BAD_REQUEST, "invalid", vec![e]),
                Refused::TooMany(e) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", vec![e]),
                Refused::Forbidden(e) => (StatusCode::FORBIDDEN, "forbidden", e),
                Refused::Invalid(e) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid", e),
            };
            count(&token.name, outcome);
            return reply::errors(status, errors);
        }
    };
    let unavailable = |published: &[String], detail: String| {
        count(&token.name, "unavailable");
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({
                "errors": [ApiError::request(reply::BROKER_UNAVAILABLE, detail)],
                // Already with the broker: republishing them is harmless (the lanes skip a
                // job id they have), so the caller may retry the whole batch.
                "published": published,
            })),
        )
            .into_response();
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static("5"),
        );
        r
    };
    if !s.broker.connected() {
        return unavailable(&[], "the broker is not connected; retry".into());
    }
    let Some(publisher) = s.jobs.publisher(&s.broker).await else {
        return unavailable(&[], "the broker does not answer; retry".into());
    };
    let mut published = Vec::with_capacity(jobs.len());
    for j in &jobs {
        let sent = tokio::time::timeout(
            super::api::BROKER_WAIT,
            publisher.publish_job(&j.account, &j.job_id, &j.body),
        )
        .await;
        match sent {
            Ok(Ok(())) => published.push(j.job_id.clone()),
            Ok(Err(e)) => {
                tracing::warn!(token = %token.name, account = %j.account, job.id = %j.job_id, error = %format!("{e:#}"), "job API: publish failed");
                return unavailable(
                    &published,
                    "the broker refused or lost the publish; retry".into(),
                );
            }
            Err(_) => {
                tracing::warn!(token = %token.name, account = %j.account, job.id = %j.job_id, "job API: no confirm in time");
                return unavailable(
                    &published,
                    "no confirm from the broker in time; retry".into(),
                );
            }
        }
    }
    count(&token.name, "accepted");
    tracing::info!(token = %token.name, jobs = published.len(), "job API: jobs published");
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({ "job_ids": published })),
    )
        .into_response()
}
