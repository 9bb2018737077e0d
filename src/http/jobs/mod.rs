//! The HTTP job API on the admin listener, for producers that do not speak AMQP (issue 15.6):
//! `POST /v1/jobs` validates jobs with the lane's own parser and publishes them (confirmed) to
//! exchange `wxdispatch`; `GET /v1/jobs/{id}` returns the delivery record. Bearer tokens from
//! `[[http.api_tokens]]` (by SHA-256, compared in constant time), rate-limited per token.

pub mod api;
pub mod auth;
pub mod batch;
pub mod get;
pub mod lookup;
pub mod post;
pub mod reply;
pub mod routes;

pub use api::JobApi;
pub use lookup::{Found, JobLookup, LookupError};
pub use routes::routes;
