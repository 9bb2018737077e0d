//! Every header name wxdispatch sets or reads on a message, and reading them back.

use lapin::BasicProperties;
use lapin::types::AMQPValue;

/// Headers of a dead letter (contract §3).
pub const H_REASON: &str = "x-wxdispatch-reason";
pub const H_ERRCODE: &str = "x-wxdispatch-errcode";
pub const H_ERRMSG: &str = "x-wxdispatch-errmsg";
pub const H_ACCOUNT: &str = "x-wxdispatch-account";
pub const H_ATTEMPTS: &str = "x-wxdispatch-attempts";

/// How often a job was parked in a delay tier (selects its next tier).
pub const H_PARKS: &str = "x-wxdispatch-parks";
/// Publish time in milliseconds, for end-to-end latency. Set by the benchmark; other
/// publishers (`wxdispatch send` among them) leave it out and the AMQP timestamp (seconds)
/// is used instead.
pub const H_PUBLISHED_MS: &str = "x-wxdispatch-published-ms";
/// The WeCom open_kfid an inbound message arrived on.
pub const H_OPEN_KFID: &str = "x-wxdispatch-open-kfid";

/// The contract's headers of one dead letter (see [`super::Publisher::dead_letter`]).
pub struct DeadHeaders<'a> {
    pub reason: &'a str,
    pub errcode: Option<i64>,
    pub errmsg: Option<&'a str>,
    pub account: &'a str,
    pub attempts: i32,
}

/// Read a header as a string (for `dlq` tools and tests).
pub fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    let h = props.headers().as_ref()?;
    match h.inner().get(key)? {
        AMQPValue::LongString(s) => Some(s.to_string()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::ShortInt(i) => Some(i.to_string()),
        other => Some(format!("{other:?}")),
    }
}
