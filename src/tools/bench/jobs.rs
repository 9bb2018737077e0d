//! The jobs of a run, each stamped with its publish time.

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use super::options::BenchOptions;
use crate::config::Channel;

/// The header the worker and the bench read the publish time from (milliseconds).
pub(super) const H_PUBLISHED_MS: &str = "x-wxdispatch-published-ms";
/// Marker in every job's text in front of its publish time, so the simulator's record of the
/// request carries it (`Accepted.body`) and latency needs no lookup table.
pub(super) const PUB_MARKER: &str = "[pub=";

/// The jobs of a run: `recipients` conversations round robin, texts of `text_bytes` that
/// start with the publish time.
pub(super) struct JobGen {
    pub(super) channel: Channel,
    pub(super) recipients: usize,
    pub(super) text_bytes: usize,
}

/// Filler for the texts (ASCII, so any cut is a char boundary).
pub(super) const FILLER: &str = " Thank you for your message; an agent will follow up shortly.";

impl JobGen {
    pub(super) fn new(channel: Channel, opts: &BenchOptions) -> Self {
        Self {
            channel,
            recipients: opts.recipients.max(1),
            text_bytes: opts.text_bytes,
        }
    }

    pub(super) fn job(
        &self,
        job_id: &str,
        i: usize,
        published_ms: i64,
    ) -> (BasicProperties, Vec<u8>) {
        let mut text = format!("{PUB_MARKER}{published_ms}] {job_id}");
        while text.len() < self.text_bytes {
            text.push_str(FILLER);
        }
        text.truncate(self.text_bytes.max(text.find(']').map_or(0, |e| e + 1)));
        let r = i % self.recipients;
        let (to, message) = match self.channel {
            Channel::Chatbot => (format!("oBench{r:06}"), json!({ "text": text })),
            Channel::Wecom => (
                format!("wmBench{r:06}"),
                json!({ "text": { "content": text } }),
            ),
        };
        let body = json!({ "job_id": job_id, "to": to, "message": message }).to_string();
        let mut headers = FieldTable::default();
        headers.insert(
            H_PUBLISHED_MS.into(),
            AMQPValue::LongString(published_ms.to_string().into()),
        );
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_message_id(job_id.into())
            .with_delivery_mode(2)
            .with_timestamp(u64::try_from(published_ms / 1000).unwrap_or(0))
            .with_headers(headers);
        (props, body.into_bytes())
    }
}

/// The publish time a job's text carries (see [`JobGen::job`]).
pub(super) fn published_ms_in(v: &Value) -> Option<i64> {
    let s = v.to_string();
    let at = s.find(PUB_MARKER)? + PUB_MARKER.len();
    let digits: String = s[at..].chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}
