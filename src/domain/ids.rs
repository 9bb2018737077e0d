//! Identifiers wxdispatch makes itself.

/// A job id for jobs published without one: time-ordered and unique enough per publisher.
pub fn generate_job_id() -> String {
    let now = chrono::Utc::now();
    let r: u32 = rand::random();
    format!("j-{}-{:08x}", now.format("%Y%m%d%H%M%S%3f"), r)
}

/// A broadcast id for broadcasts published without one: `b-` and the time-ordered part of a
/// generated job id.
pub fn generate_broadcast_id() -> String {
    let id = generate_job_id();
    format!("b-{}", id.strip_prefix("j-").unwrap_or(&id))
}
