//! `wxdispatch run`: the workers and the HTTP endpoints until SIGINT/SIGTERM.

use tokio_util::sync::CancellationToken;

use crate::app::{self, WaitError, Worker};
use crate::config::Config;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.accounts.is_empty() {
        tracing::warn!("no [[account]] configured: only unroutable messages will be handled");
    }
    // The signal handler first: a SIGTERM while start-up still waits for Postgres or
    // RabbitMQ ends the wait at once (a pod being deleted must not linger for
    // `startup.wait_secs`).
    let sd = CancellationToken::new();
    let on_signal = sd.clone();
    tokio::spawn(async move {
        app::signal().await;
        tracing::info!("signal received; shutting down gracefully");
        on_signal.cancel();
    });
    let w = match Worker::start_until(cfg, sd).await {
        Ok(w) => w,
        Err(e) if matches!(e.downcast_ref(), Some(WaitError::Interrupted { .. })) => {
            tracing::info!(reason = %e, "stopped before start-up completed");
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    w.wait().await
}
