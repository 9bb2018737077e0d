//! HTTP endpoints, on two listeners: the public one serves the platforms' callbacks
//! ([`public_router`]), the admin one `/metrics`, `/healthz`, `/readyz` ([`admin_router`]; future
//! admin routes go there too). Neither serves the other's routes, so exposing the callbacks to
//! the internet exposes nothing else.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::http::listener::{self, Limits};
use crate::http::state::{AppState, StartupStatus};

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static H: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    H.get_or_init(|| crate::telemetry::install_metrics().ok())
        .as_ref()
}

/// The public listener's routes: the platforms' callbacks, nothing else.
pub fn public_router(state: AppState) -> Router {
    crate::http::callback::routes()
        .layer(axum::extract::DefaultBodyLimit::max(
            state.cfg.http.max_body_bytes,
        ))
        .with_state(state)
}

/// The admin listener's routes: metrics and health (and, later, the console and job API).
pub fn admin_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::http::jobs::routes())
        .layer(axum::extract::DefaultBodyLimit::max(
            state.cfg.http.max_body_bytes,
        ))
        .with_state(state)
}

async fn metrics() -> impl IntoResponse {
    match metrics_handle() {
        Some(h) => (
            StatusCode::OK,
            [("content-type", "text/plain; version=0.0.4")],
            h.render(),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            [("content-type", "text/plain")],
            "metrics recorder unavailable\n".to_owned(),
        ),
    }
}

async fn readyz(State(s): State<AppState>) -> impl IntoResponse {
    let broker = s.broker.connected();
    // A database that refuses writes (held and retried by the lanes) is not ready either.
    let db = s.store.ping().await && !s.store.writes_failing();
    let mut body = format!(
        "broker: {}\ndatabase: {}\n",
        if broker { "ok" } else { "down" },
        if db { "ok" } else { "down" }
    );
    body.push_str(&sync_retention_details(&s));
    let code = if broker && db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// `/readyz` detail lines for the open_kfids whose sync is stale past
/// `sync.retention_alert_secs` (see [`crate::engine::inbound::retention`]); empty when none.
/// Details only: they do not make the worker unready.
fn sync_retention_details(s: &AppState) -> String {
    let threshold = s.inbound.retention().threshold_secs().unwrap_or(0);
    s.inbound
        .retention()
        .at_risk(chrono::Utc::now())
        .iter()
        .map(|r| {
            format!(
                "sync_retention_risk: account {} open_kfid {} not synced for {} s (alert after {threshold} s; sync_msg keeps 3 days)\n",
                r.account, r.open_kfid, r.stale_secs
            )
        })
        .collect()
}

/// The admin routes while `run` waits for its dependencies: `/healthz` 200 (the process is
/// alive; restarting it would not help), `/readyz` 503 with what it waits for, `/metrics`.
pub fn starting_router(status: StartupStatus) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let status = status.get();
                async move {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("starting: {status}\n"),
                    )
                }
            }),
        )
}

/// The router the early admin listener hands its requests to: [`starting_router`] until
/// [`AdminSlot::ready`] puts the full [`admin_router`] in.
#[derive(Clone)]
pub struct AdminSlot(std::sync::Arc<std::sync::RwLock<Router>>);

impl AdminSlot {
    /// From now on, serve `router` (the worker is up).
    pub fn ready(&self, router: Router) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = router;
    }
    fn current(&self) -> Router {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Bind `http.admin_listen` before anything else is up (so probes get `/healthz` 200 and
/// `/readyz` 503 while `run` waits for Postgres and RabbitMQ), serving [`starting_router`]
/// until the returned slot is given the full router. One listener throughout: no moment
/// where the port is closed.
pub async fn serve_admin_early(
    cfg: &crate::config::Config,
    status: StartupStatus,
    shutdown: CancellationToken,
) -> anyhow::Result<(Bound, AdminSlot)> {
    use tower::ServiceExt;
    let _ = metrics_handle();
    let slot = AdminSlot(std::sync::Arc::new(std::sync::RwLock::new(
        starting_router(status),
    )));
    let s = slot.clone();
    let app = Router::new()
        .fallback_service(tower::service_fn(move |req| s.current().oneshot(req)))
        .layer(axum::extract::DefaultBodyLimit::max(
            cfg.http.max_body_bytes,
        ));
    let bound = bind(
        "http.admin_listen",
        &cfg.http.admin_listen,
        app,
        Limits::admin(cfg),
        shutdown,
    )
    .await?;
    Ok((bound, slot))
}

/// A bound listener: its address and the future serving it (ends on shutdown).
pub type Bound = (
    std::net::SocketAddr,
    std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send + 'static>>,
);

/// Bind `http.listen` (the callbacks) with the public limits.
pub async fn serve_public(state: AppState, shutdown: CancellationToken) -> anyhow::Result<Bound> {
    let (listen, limits) = (state.cfg.http.listen.clone(), Limits::public(&state.cfg));
    bind(
        "http.listen",
        &listen,
        public_router(state),
        limits,
        shutdown,
    )
    .await
}

/// Bind `http.admin_listen` (metrics, health) with the admin limits.
pub async fn serve_admin(state: AppState, shutdown: CancellationToken) -> anyhow::Result<Bound> {
    let _ = metrics_handle();
    let (listen, limits) = (
        state.cfg.http.admin_listen.clone(),
        Limits::admin(&state.cfg),
    );
    bind(
        "http.admin_listen",
        &listen,
        admin_router(state),
        limits,
        shutdown,
    )
    .await
}

async fn bind(
    key: &'static str,
    listen: &str,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<Bound> {
    let (addr, fut) = listener::bind(key, listen, app, limits, shutdown).await?;
    Ok((addr, Box::pin(fut)))
}
