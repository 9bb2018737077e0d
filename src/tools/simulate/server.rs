//! The server: [`start`] binds the routes of both platforms and the admin API to a listener
//! and returns a [`SimHandle`]; [`serve`] is `wxdispatch simulate` (until Ctrl-C or SIGTERM).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::{get, post};

use super::options::SimOptions;
use super::state::SimState;
use super::{admin, chatbot, kf_admin, recall, wecom};

/// The CLI's default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9900";
/// How long [`SimHandle::shutdown`] waits for open connections before abandoning them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

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
        .route("/cgi-bin/kf/recall_msg", post(recall::recall_msg))
        .route("/_sim/recalls", get(recall::recalls_route))
        .merge(admin::routes())
        .merge(kf_admin::routes(Arc::clone(&state)))
        .with_state(state)
}

/// Serve `config`'s accounts on `listen` until Ctrl-C or SIGTERM. Logs one line per simulated
/// account (identifiers only, never secrets).
pub async fn serve(
    config: &crate::config::Config,
    opts: SimOptions,
    listen: SocketAddr,
) -> anyhow::Result<()> {
    if config.accounts.is_empty() {
        anyhow::bail!("simulate: the config declares no [[account]] to simulate");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("simulate: cannot listen on {listen}"))?;
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
    crate::app::signal().await;
    tracing::info!("simulator stopping");
    handle.shutdown().await;
    Ok(())
}
