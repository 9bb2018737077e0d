//! Log and metric names in one place, and the setup of both.
//!
//! Labels are limited to `account`, `channel`, `outcome`, `reason`, `errcode` and `kind`
//! (and `open_kfid` on the sync gauges: a configured id, as bounded as `account`):
//! never a recipient, a job id or a secret (their cardinality is unbounded and they are
//! personal data).

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS_CONSUMED: &str = "wxdispatch_jobs_consumed_total";
pub const DELIVERIES: &str = "wxdispatch_deliveries_total";
pub const ERRCODES: &str = "wxdispatch_platform_errcodes_total";
pub const SEND_LATENCY: &str = "wxdispatch_send_latency_seconds";
pub const E2E_LATENCY: &str = "wxdispatch_end_to_end_latency_seconds";
pub const RETRIES: &str = "wxdispatch_retries_total";
pub const DEAD_LETTERS: &str = "wxdispatch_dead_letters_total";
pub const LANE_PAUSED: &str = "wxdispatch_lane_paused";
pub const LANE_PAUSES: &str = "wxdispatch_lane_pauses_total";
pub const RATE_WAIT: &str = "wxdispatch_rate_limiter_wait_seconds";
pub const TOKEN_REFRESHES: &str = "wxdispatch_token_refreshes_total";
pub const TOKEN_REFRESH_FAILURES: &str = "wxdispatch_token_refresh_failures_total";
pub const DUPLICATES: &str = "wxdispatch_duplicate_jobs_total";
pub const INFLIGHT: &str = "wxdispatch_jobs_in_flight";
pub const DB_BATCH_ROWS: &str = "wxdispatch_db_batch_rows";
pub const BROKER_RECONNECTS: &str = "wxdispatch_broker_reconnects_total";
pub const LANE_CONSUMERS: &str = "wxdispatch_lane_consumer_active";
pub const BROADCAST_PENDING: &str = "wxdispatch_broadcast_pending";
pub const BROADCAST_RECIPIENTS: &str = "wxdispatch_broadcast_recipients_total";
pub const INBOUND_MESSAGES: &str = "wxdispatch_inbound_messages_total";
pub const SYNC_LAG: &str = "wxdispatch_sync_lag_seconds";
pub const SEND_FAILURES: &str = "wxdispatch_send_failures_total";
pub const SYNC_PAGES: &str = "wxdispatch_sync_pages_total";
pub const INBOUND_QUARANTINED: &str = "wxdispatch_inbound_quarantined_total";
pub const HTTP_CONNECTIONS: &str = "wxdispatch_http_connections";
pub const HTTP_CONNECTIONS_REFUSED: &str = "wxdispatch_http_connections_refused_total";
pub const HELD_BYTES: &str = "wxdispatch_held_bytes";
pub const WRITES_HELD: &str = "wxdispatch_outcome_writes_held";
pub const SYNC_STALE: &str = "wxdispatch_sync_stale_seconds";
pub const SYNC_RETENTION_RISK: &str = "wxdispatch_sync_retention_risk";
/// Outcome events published to `wxdispatch.outcomes` (confirmed), by account and status.
pub const OUTCOME_EVENTS: &str = "wxdispatch_outcome_events_published_total";
/// Outcome events recorded but not yet published (rows in `outcome_events`).
pub const OUTCOME_BACKLOG: &str = "wxdispatch_outcome_events_backlog";
/// Copies of outcome events to a job's `reply_to` that the broker refused (not retried).
pub const OUTCOME_REPLY_FAILURES: &str = "wxdispatch_outcome_reply_failures_total";
/// Requests to the HTTP job API, by `token` (its configured name, never its value; `-` when
/// unauthenticated) and `outcome` (`accepted`, `invalid`, `unauthorized`, `forbidden`,
/// `rate_limited`, `too_large`, `unavailable`, `found`, `not_found`).
pub const HTTP_JOB_REQUESTS: &str = "wxdispatch_http_job_requests_total";

/// Latency buckets (seconds): from sub-millisecond local sends to multi-second retries.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Install the Prometheus recorder (once per process) and describe the metrics.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(DB_BATCH_ROWS.into()), BATCH_BUCKETS)?
        .install_recorder()?;
    describe();
    Ok(handle)
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        HTTP_JOB_REQUESTS,
        "Requests to the HTTP job API (POST/GET /v1/jobs) by token name and outcome"
    );
    describe_counter!(JOBS_CONSUMED, "Jobs taken from the lanes");
    describe_counter!(
        OUTCOME_EVENTS,
        "Outcome events published to wxdispatch.outcomes (confirmed)"
    );
    describe_gauge!(
        OUTCOME_BACKLOG,
        "Outcome events recorded and not yet published"
    );
    describe_counter!(
        OUTCOME_REPLY_FAILURES,
        "Outcome event copies to a job's reply_to that failed (dropped, not retried)"
    );
    describe_gauge!(
        WRITES_HELD,
        "Writes the database refused, held and retried (lanes take no new jobs meanwhile)"
    );
    describe_counter!(
        DELIVERIES,
        "Jobs finished, by outcome (sent, dead, suppressed, expired, duplicate)"
    );
    describe_counter!(ERRCODES, "Non-zero platform errcodes and HTTP failures");
    describe_histogram!(SEND_LATENCY, "Duration of one platform request");
    describe_histogram!(
        E2E_LATENCY,
        "From publish (AMQP timestamp) to the platform's answer"
    );
    describe_counter!(RETRIES, "Retries of a job after a transient failure");
    describe_counter!(DEAD_LETTERS, "Messages dead-lettered, by reason");
    describe_gauge!(
        LANE_PAUSED,
        "1 while an account lane is paused (throttle, outage or refused credentials)"
    );
    describe_counter!(
        LANE_PAUSES,
        "Times an account lane was paused, by reason (throttled, outage, credentials_refused)"
    );
    describe_gauge!(
        SYNC_STALE,
        "Seconds since an open_kfid last synced successfully (sync_msg keeps 3 days)"
    );
    describe_gauge!(
        SYNC_RETENTION_RISK,
        "1 while an open_kfid's sync is stale past sync.retention_alert_secs"
    );
    describe_histogram!(
        RATE_WAIT,
        "Time a job waited for the account's rate limiter"
    );
    describe_counter!(TOKEN_REFRESHES, "WeCom gettoken calls");
    describe_counter!(
        TOKEN_REFRESH_FAILURES,
        "WeCom gettoken calls refused for configuration reasons"
    );
    describe_counter!(
        DUPLICATES,
        "Redelivered or duplicate jobs that already had an outcome"
    );
    describe_gauge!(INFLIGHT, "Jobs being processed");
    describe_gauge!(HTTP_CONNECTIONS, "Open HTTP connections, by listener");
    describe_counter!(
        HTTP_CONNECTIONS_REFUSED,
        "HTTP connections closed at once because the listener's cap was reached"
    );
    describe_histogram!(DB_BATCH_ROWS, "Rows per batched database write");
    describe_counter!(
        BROKER_RECONNECTS,
        "Times the worker lost its RabbitMQ connection and reconnected"
    );
    describe_gauge!(
        LANE_CONSUMERS,
        "1 while this process consumes the account lane"
    );
    describe_gauge!(
        BROADCAST_PENDING,
        "Recipients of running broadcasts not yet finished"
    );
    describe_counter!(BROADCAST_RECIPIENTS, "Broadcast recipients fanned out");
    describe_counter!(
        INBOUND_MESSAGES,
        "Inbound messages and events stored (once each), by msgtype (kind)"
    );
    describe_gauge!(
        SYNC_LAG,
        "now - send_time of the newest message of the last sync_msg page (0 when caught up); the largest over the account's open_kfids"
    );
    describe_counter!(
        SEND_FAILURES,
        "Sent deliveries turned failed by a WeCom msg_send_fail event"
    );
    describe_counter!(
        SYNC_PAGES,
        "sync_msg pages requested, by outcome (ok, empty, failed)"
    );
    describe_counter!(
        INBOUND_QUARANTINED,
        "Inbound messages the database refused for their data, kept in inbound_quarantine"
    );
    describe_gauge!(
        HELD_BYTES,
        "Bytes of job bodies the lanes hold now (at most worker.held_bytes_budget)"
    );
}

/// Logging: `RUST_LOG` filter (default info), plain text or JSON (`WXDISPATCH_LOG=json`).
///
/// Every field of the text format, the message included, is written through
/// [`EscapedFields`], so a value from outside (a callback path's account segment, a routing
/// key, an errmsg) cannot start a new line or drive the terminal. The JSON format escapes
/// control characters as JSON does (`\n`, `\u001b`).
pub fn init_tracing() {
    init_tracing_at(WORKER_LOG_FILTER);
}

/// The worker's default filter (`run`, `demo`): INFO, the broker and database clients at WARN.
pub const WORKER_LOG_FILTER: &str = "info,lapin=warn,sqlx=warn";

/// Logging as [`init_tracing`], with `default_filter` when `RUST_LOG` is not set: the command
/// line's commands pass `warn` (INFO only with `-v`), so log lines do not mix into their
/// output. Colours only on a terminal and never when `NO_COLOR` is set (no-color.org).
pub fn init_tracing_at(default_filter: &str) {
    use tracing_subscriber::util::SubscriberInitExt;
    let json = std::env::var("WXDISPATCH_LOG").is_ok_and(|v| v == "json");
    // Colours only on a terminal: in a log file they are noise (and formatting them into
    // every job's span fields was ~1 % of a loaded worker's CPU).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr()) && !no_color();
    if json {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(env_filter(default_filter))
            .with_ansi(ansi)
            .with_writer(std::io::stderr)
            .json()
            .try_init();
    } else {
        let _ = text_subscriber(env_filter(default_filter), ansi, std::io::stderr).try_init();
    }
}

/// True when `NO_COLOR` is set to anything but the empty string (no-color.org).
pub fn no_color() -> bool {
    std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty())
}

fn env_filter(default_filter: &str) -> tracing_subscriber::EnvFilter {
    use tracing_subscriber::EnvFilter;
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter))
}

/// The text-format subscriber `init_tracing` installs, writing to `writer` (a test gives it
/// a buffer).
pub fn text_subscriber<W>(
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
    writer: W,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer)
        .fmt_fields(EscapedFields)
        .finish()
}

/// The text format's fields as tracing-subscriber's default writes them (`message name=value
/// …`, names in italics on a terminal), with every invisible character of a value escaped
/// through [`crate::text::write_escaped`] (`\n`, `\u{1b}`): whether a value was recorded
/// with `?`, `%` or as a plain string, one event stays one line.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapedFields;

impl<'a> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'a>>
    for EscapedFields
{
    type Visitor = EscapedVisitor<'a>;

    fn make_visitor(&self, target: tracing_subscriber::fmt::format::Writer<'a>) -> Self::Visitor {
        EscapedVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`EscapedFields`].
pub struct EscapedVisitor<'a> {
    writer: tracing_subscriber::fmt::format::Writer<'a>,
    is_empty: bool,
    result: std::fmt::Result,
}

/// A `fmt::Write` that escapes what passes through it.
struct Escaping<'w, W: std::fmt::Write>(&'w mut W);

impl<W: std::fmt::Write> std::fmt::Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        crate::text::write_escaped(self.0, s)
    }
}

impl EscapedVisitor<'_> {
    fn field(&mut self, name: &str, value: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        if self.result.is_err() || name.starts_with("log.") {
            return;
        }
        let pad = if std::mem::take(&mut self.is_empty) {
            ""
        } else {
            " "
        };
        self.result = (|| {
            self.writer.write_str(pad)?;
            if name != "message" {
                let name = name.strip_prefix("r#").unwrap_or(name);
                if self.writer.has_ansi_escapes() {
                    // Italic name, dimmed `=`, as tracing-subscriber's default fields.
                    write!(self.writer, "\x1b[3m{name}\x1b[0m\x1b[2m=\x1b[0m")?;
                } else {
                    write!(self.writer, "{name}=")?;
                }
            }
            Escaping(&mut self.writer).write_fmt(value)
        })();
    }
}

impl tracing::field::Visit for EscapedVisitor<'_> {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        if field.name() == "message" {
            self.field(field.name(), format_args!("{value}"));
        } else {
            self.field(field.name(), format_args!("{value:?}"));
        }
    }

    fn record_error(
        &mut self,
        field: &tracing::field::Field,
        value: &(dyn std::error::Error + 'static),
    ) {
        let chain = ErrorChain(value);
        self.field(field.name(), format_args!("{chain}"));
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.field(field.name(), format_args!("{value:?}"));
    }
}

/// An error and its sources, `outer: inner: root`.
struct ErrorChain<'e>(&'e (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl tracing_subscriber::field::VisitOutput<std::fmt::Result> for EscapedVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl tracing_subscriber::field::VisitFmt for EscapedVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    /// A writer into a shared buffer.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn logged(ansi: bool, f: impl FnOnce()) -> String {
        let buf = Buf::default();
        let sink = buf.clone();
        let sub = crate::telemetry::text_subscriber(
            tracing_subscriber::EnvFilter::new("info"),
            ansi,
            move || sink.clone(),
        );
        tracing::subscriber::with_default(sub, f);
        let bytes = buf.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[test]
    fn every_field_and_the_message_stay_on_one_line_without_control_bytes() {
        let evil = "a\nINFO forged line\r\x1b[2J\u{202e}z";
        let err = std::io::Error::other("bad\nerror");
        let out = logged(false, || {
            let span = tracing::info_span!("lane", account = %evil);
            let _g = span.enter();
            tracing::info!(
                display = %evil,
                debug = ?evil,
                plain = evil,
                error = &err as &(dyn std::error::Error + 'static),
                "callback for {evil}"
            );
        });
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.ends_with('\n'), "{out:?}");
        let body = &out[..out.len() - 1];
        assert!(
            !body.chars().any(crate::text::is_invisible),
            "raw control bytes in {body:?}"
        );
        assert!(
            body.contains("callback for a\\nINFO forged line\\r\\u{1b}[2J\\u{202e}z"),
            "{body}"
        );
        assert!(body.contains("display=a\\nINFO"), "{body}");
        assert!(body.contains("account=a\\nINFO"), "{body}");
        assert!(body.contains("error=bad\\nerror"), "{body}");
    }

    #[test]
    fn on_a_terminal_only_the_formatter_s_own_colours_remain() {
        let out = logged(true, || tracing::info!(key = %"\x1b[31mred", "m\x1b[2J"));
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(
            out.contains("m\\u{1b}[2J") && out.contains("\\u{1b}[31mred"),
            "{out}"
        );
    }
}
