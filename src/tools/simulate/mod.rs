//! The platform simulator: `wxdispatch simulate`, and [`start`] for in-process tests.
//!
//! It answers the same HTTP APIs, with the same encryption and the same errcodes, as the two
//! platforms wxdispatch delivers to, for the accounts of a config file:
//!
//! * **Dialogue Open Platform** (chatbot accounts): `POST /openapi/sendmsg/{TOKEN}`,
//!   `/openapi/kefustate/get/{TOKEN}`, `/openapi/kefustate/change/{TOKEN}`. The body
//!   `{"encrypt": …}` is decrypted with the account's EncodingAESKey and checked against its
//!   APPID (the WXBizMsgCrypt receive id), the plaintext XML is parsed and validated. See
//!   [`chatbot`] for the errcode of every rejection.
//! * **WeCom customer service** (wecom accounts): `GET /cgi-bin/gettoken`, `POST /cgi-bin/kf/`
//!   `send_msg`, `send_msg_on_event`, `sync_msg`, `service_state/get`, `service_state/trans`.
//!   Access tokens are issued and checked (missing 41001, unknown 40014, expired 42001); message
//!   bodies are validated against the documented limits; sessions have service states, the
//!   48-hour / 5-message window can be enforced, and each open_kfid has an append-only inbound
//!   log read through `sync_msg` with opaque cursors. See [`wecom`].
//! * **An admin API** under `/_sim/…` (see [`admin`]) and the methods of [`SimState`]: what was
//!   accepted (the exact plaintext / JSON), counters, fault rates, scripted errcodes, token
//!   expiry, and the conversation side (customer messages, events, callbacks to the worker).
//!
//! Every business request (everything but `gettoken` and `/_sim`) first passes the *gate*
//! ([`gate`]): scripted errcodes (by default for the account's next *write* requests), then
//! randomly injected faults, then the account's configured rate. A request stopped there is
//! not processed and not accepted. Errors of every kind are counted per `account:errcode`.
//!
//! Performance: handlers are synchronous up to the response (no lock is held across an await),
//! state sits behind short per-purpose `std` locks, and accepted requests are stored compactly
//! (at most [`MAX_RETAINED_ACCEPTED`]), so the simulator is not the bottleneck of a benchmark:
//! `cargo test --release --lib simulate::tests::throughput -- --ignored --nocapture` measures it.
//!
//! # Deliberate simplifications
//!
//! * **Media** are not stored: any non-empty `media_id` / `thumb_media_id` is accepted.
//! * **Users** are not known in advance: any non-empty openid / external_userid is a valid
//!   recipient (unless `enforce_window` asks for a prior customer message).
//! * **Rate limits** are the account's own configured `rate`, checked per account *and per API*
//!   (the platforms limit each API separately) as a sliding window: at most
//!   `ceil(per-second rate) + burst` calls in any 1 s (and, for `per_minute` rates, at most
//!   `per_minute + burst` in any 60 s), with [`gate::RATE_WINDOW_SLACK`] of tolerance for network
//!   jitter. Refused calls do not count, and there is no 60-second lock-out after a 45009.
//!   The platforms' own global limits (10,000/min per corp…) are not simulated.
//! * **Access tokens**: while a corp's token is valid, `gettoken` returns the same token with the
//!   remaining lifetime (as WeCom does). Tokens are never invalidated by a newer one.
//!   `gettoken` itself is never faulted, scripted or throttled (WeCom's block after ~2000 bad
//!   calls an hour is not simulated; the calls are counted so tests can assert on them).
//! * **Chatbot** messages are accepted while a human serves the user (kefustate on): the
//!   platform's behaviour there is unverified, and gating is the caller's job.
//! * **Duplicate msgids** are accepted (whether WeCom deduplicates is unverified) and counted
//!   in the stats, so tests can assert that the worker never sends a job twice.
//! * **Sessions** change only through `service_state/trans` and the [`SimState`] helpers; a
//!   send does not move a session from state 0 to 1, and no `session_status_change` event is
//!   generated for API transfers (WeCom only reports servicer actions that way). A customer
//!   message to an ended session (4) starts a new one (state 0).
//! * **Inbound messages** exist only when a test or user creates them (customer messages,
//!   events); messages sent through the API are never returned by `sync_msg` (as on WeCom).
//!   Entries older than 3 days are not returned.
//! * **Time** is wall-clock only; the 48-hour window cannot be fast-forwarded.
//! * **Errcode messages** (`errmsg`) are the simulator's own words with a `hint`, not WeCom's
//!   exact strings: callers must branch on `errcode` only, as the platforms ask.

pub mod admin;
pub mod chatbot;
pub mod gate;
pub mod kf_admin;
mod reply;
mod state;
pub mod wecom;
pub mod wecom_msg;
mod xml;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

pub use state::{
    EVENT_CODE_TTL, INBOUND_RETENTION, MAX_RETAINED_ACCEPTED, REPLY_QUOTA, REPLY_WINDOW,
    SYNC_TOKEN_TTL, SimState, SimStats, UNKNOWN_ACCOUNT,
};

/// An access token's lifetime on WeCom.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(7200);
/// How long a `timeout` fault holds a request when `Faults::timeout_ms` is 0: longer than any
/// sane client timeout, so the client gives up first, as it would against a hung platform.
pub const DEFAULT_FAULT_TIMEOUT_MS: u64 = 15_000;
/// The CLI's default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9900";
/// How long [`SimHandle::shutdown`] waits for open connections before abandoning them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How the simulator behaves beyond the platforms' fixed rules.
#[derive(Debug, Clone)]
pub struct SimOptions {
    /// Lifetime of issued access tokens (default 7200 s, as WeCom).
    pub token_ttl: Duration,
    /// Apply each account's configured `rate`: calls beyond it are answered 45009 (WeCom) /
    /// 210205 (chatbot) without being processed (default true).
    pub enforce_rate: bool,
    /// Initial fault rates (default: none).
    pub faults: Faults,
    /// WeCom's 48-hour / 5-message rules (default false: sends to unknown users succeed). When
    /// true, a send to a user with no recorded customer message, or more than 48 h after it,
    /// is answered 95002, and a sixth send since the last customer message 95001.
    pub enforce_window: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            token_ttl: DEFAULT_TOKEN_TTL,
            enforce_rate: true,
            faults: Faults::default(),
            enforce_window: false,
        }
    }
}

/// Fault rates: each a probability 0.0..=1.0, drawn independently per business request (not
/// `gettoken`, not `/_sim`), checked in field order; the first that fires answers the request
/// without processing it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Answer HTTP 502 (a gateway in front of the platform failing).
    pub http_5xx: f64,
    /// Hold the request `timeout_ms`, then answer 504 (a hung platform; the client should
    /// have timed out by then).
    pub timeout: f64,
    /// Answer errcode -1 ("system busy").
    pub busy: f64,
    /// Answer the throttling errcode: 45009 (WeCom) / 210205 (chatbot).
    pub throttle: f64,
    /// How long a `timeout` fault holds the request; 0 means [`DEFAULT_FAULT_TIMEOUT_MS`].
    pub timeout_ms: u64,
}

impl Faults {
    /// Out-of-range probabilities, by field name (for the admin API and the CLI).
    pub fn validate(&self) -> Result<(), String> {
        for (name, p) in [
            ("http_5xx", self.http_5xx),
            ("timeout", self.timeout),
            ("busy", self.busy),
            ("throttle", self.throttle),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!("{name}: {p} is not a probability in 0.0..=1.0"));
            }
        }
        Ok(())
    }

    /// True when no fault can fire (the common case: skips the random draws).
    pub fn is_none(&self) -> bool {
        self.http_5xx <= 0.0 && self.timeout <= 0.0 && self.busy <= 0.0 && self.throttle <= 0.0
    }

    pub(crate) fn hold_for(&self) -> Duration {
        Duration::from_millis(if self.timeout_ms == 0 {
            DEFAULT_FAULT_TIMEOUT_MS
        } else {
            self.timeout_ms
        })
    }
}

/// One request the simulated platform accepted (errcode 0), in acceptance order.
#[derive(Debug, Clone, Serialize)]
pub struct Accepted {
    /// Global acceptance order, from 1; never reused, not even after [`SimState::reset`].
    pub seq: u64,
    /// Unix milliseconds when accepted.
    pub at_ms: i64,
    pub account: String,
    /// `"chatbot"` or `"wecom"`.
    pub channel: &'static str,
    /// `sendmsg`, `kefustate_change` (chatbot); `send_msg`, `send_msg_on_event`,
    /// `service_state_trans` (WeCom).
    pub api: &'static str,
    /// openid (chatbot) or external_userid (WeCom).
    pub recipient: String,
    /// WeCom: the msgid sent (the job id) or the one the simulator generated.
    pub msgid: Option<String>,
    /// The message type: chatbot `text` or the rich type (`news`, `image`, …); WeCom the
    /// `msgtype`; `kefustate` / `service_state` for transfers.
    pub msgtype: String,
    /// Chatbot: the exact decrypted XML plaintext.
    pub plaintext: Option<String>,
    /// WeCom: the JSON body received. Chatbot: the XML fields as a JSON object
    /// (`{appid, openid, msg, channel, event?, …}`; `channel` as a number).
    pub body: serde_json::Value,
}

/// A running simulator. Dropping it stops the server too (without waiting).
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    state: Arc<SimState>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl SimHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://IP:PORT`: use it as every account's `base_url`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn state(&self) -> Arc<SimState> {
        Arc::clone(&self.state)
    }

    /// Stop accepting, release held (timeout-fault) requests, and wait up to
    /// [`SHUTDOWN_GRACE`] for open connections to finish.
    pub async fn shutdown(mut self) {
        self.state.shutdown.cancel();
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(SHUTDOWN_GRACE, &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        self.state.shutdown.cancel();
    }
}

/// Start the simulator on `listener` (tests bind `127.0.0.1:0`) for `accounts`, the same
/// [`AccountConfig`](crate::config::AccountConfig) entries the worker uses. Fails when an
/// account's EncodingAESKey cannot be decoded or a chatbot account lacks token/key/appid.
pub async fn start(
    accounts: Vec<crate::config::AccountConfig>,
    opts: SimOptions,
    listener: tokio::net::TcpListener,
) -> anyhow::Result<SimHandle> {
    opts.faults
        .validate()
        .map_err(|e| anyhow::anyhow!("simulator faults: {e}"))?;
    let addr = listener
        .local_addr()
        .context("simulator listener has no local address")?;
    let state = Arc::new(SimState::new(accounts, &opts)?);
    let app = router(Arc::clone(&state));
    let shutdown = state.shutdown.clone();
    // Small JSON requests back to back on keep-alive connections: don't let Nagle delay them.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
    });
    Ok(SimHandle {
        addr,
        state,
        task: Some(task),
    })
}

/// All routes: the two platforms' APIs and the admin API.
pub fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/openapi/sendmsg/{token}", post(chatbot::sendmsg))
        .route(
            "/openapi/kefustate/get/{token}",
            post(chatbot::kefustate_get),
        )
        .route(
            "/openapi/kefustate/change/{token}",
            post(chatbot::kefustate_change),
        )
        .route("/cgi-bin/gettoken", get(wecom::gettoken))
        .route("/cgi-bin/kf/send_msg", post(wecom::send_msg))
        .route(
            "/cgi-bin/kf/send_msg_on_event",
            post(wecom::send_msg_on_event),
        )
        .route("/cgi-bin/kf/sync_msg", post(wecom::sync_msg))
        .route(
            "/cgi-bin/kf/service_state/get",
            post(wecom::service_state_get),
        )
        .route(
            "/cgi-bin/kf/service_state/trans",
            post(wecom::service_state_trans),
        )
        .merge(admin::routes())
        .merge(kf_admin::routes(Arc::clone(&state)))
        .with_state(state)
}

fn parse_probability(s: &str) -> Result<f64, String> {
    let p: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(format!("{p} is not a probability in 0.0..=1.0"))
    }
}

/// `wxdispatch simulate`: serve the configured accounts' platform APIs locally.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Address to listen on; point every account's `base_url` at it.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Lifetime of issued WeCom access tokens, in seconds.
    #[arg(long, default_value_t = DEFAULT_TOKEN_TTL.as_secs())]
    pub token_ttl_secs: u64,
    /// Do not apply the accounts' `rate` limits.
    #[arg(long)]
    pub no_rate_limit: bool,
    /// Probability of answering a business request with HTTP 502.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_5xx: f64,
    /// Probability of holding a business request (see --fault-timeout-ms), then answering 504.
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_timeout: f64,
    /// How long a timeout fault holds the request, in milliseconds.
    #[arg(long, default_value_t = DEFAULT_FAULT_TIMEOUT_MS)]
    pub fault_timeout_ms: u64,
    /// Probability of answering errcode -1 (system busy).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_busy: f64,
    /// Probability of answering the throttling errcode (45009 / 210205).
    #[arg(long, default_value_t = 0.0, value_parser = parse_probability)]
    pub fault_throttle: f64,
    /// Enforce WeCom's 48-hour / 5-message window (sends need a prior customer message).
    #[arg(long)]
    pub enforce_window: bool,
}

impl SimArgs {
    pub fn options(&self) -> SimOptions {
        SimOptions {
            token_ttl: Duration::from_secs(self.token_ttl_secs.max(1)),
            enforce_rate: !self.no_rate_limit,
            faults: Faults {
                http_5xx: self.fault_5xx,
                timeout: self.fault_timeout,
                busy: self.fault_busy,
                throttle: self.fault_throttle,
                timeout_ms: self.fault_timeout_ms,
            },
            enforce_window: self.enforce_window,
        }
    }
}

/// Serve the config's accounts until Ctrl-C or SIGTERM. Logs one line per simulated account
/// (identifiers only, never secrets).
pub async fn run_cli(config: &crate::config::Config, args: SimArgs) -> anyhow::Result<()> {
    if config.accounts.is_empty() {
        anyhow::bail!("simulate: the config declares no [[account]] to simulate");
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("simulate: cannot listen on {}", args.listen))?;
    let opts = args.options();
    let handle = start(config.accounts.clone(), opts.clone(), listener).await?;
    let base = handle.base_url();
    for a in &config.accounts {
        match a.channel {
            crate::config::Channel::Chatbot => tracing::info!(
                account = %a.name,
                appid = a.appid.as_deref().unwrap_or(""),
                "simulating chatbot account at {base}/openapi/sendmsg/<token>"
            ),
            crate::config::Channel::Wecom => tracing::info!(
                account = %a.name,
                corpid = a.corpid.as_deref().unwrap_or(""),
                open_kfids = %a.open_kfids.join(","),
                callbacks = !a.encoding_aes_key.is_empty(),
                "simulating wecom account at {base}/cgi-bin/"
            ),
        }
        if a.base_url.is_none() {
            tracing::warn!(
                account = %a.name,
                "base_url is unset (the real platform): set it to {base} for the worker to use the simulator"
            );
        }
    }
    tracing::info!(
        listen = %handle.addr(),
        token_ttl_secs = opts.token_ttl.as_secs(),
        enforce_rate = opts.enforce_rate,
        enforce_window = opts.enforce_window,
        faults = ?opts.faults,
        "simulator ready; admin API at {base}/_sim/stats"
    );
    wait_for_signal().await;
    tracing::info!("simulator stopping");
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
