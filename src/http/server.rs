//! HTTP endpoints: `/metrics`, `/healthz`, `/readyz` (and the platform callbacks).

use std::sync::OnceLock;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio_util::sync::CancellationToken;

use crate::http::state::AppState;

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics_handle() -> Option<&'static PrometheusHandle> {
    static H: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    H.get_or_init(|| crate::telemetry::install_metrics().ok())
        .as_ref()
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(crate::http::callback::routes())
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
    let body = format!(
        "broker: {}\ndatabase: {}\n",
        if broker { "ok" } else { "down" },
        if db { "ok" } else { "down" }
    );
    let code = if broker && db {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

/// Bind and return the address plus the serving future (ends on `shutdown`).
pub async fn serve(
    listen: &str,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    impl std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let _ = metrics_handle();
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("http.listen: cannot bind {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    let app = router(state);
    let fut = async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(|e| anyhow::anyhow!("http server: {e}"))
    };
    Ok((addr, fut))
}
