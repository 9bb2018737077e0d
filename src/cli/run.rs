//! `wxdispatch run`: the workers and the HTTP endpoints until SIGINT/SIGTERM.

use crate::app::{self, Worker};
use crate::config::Config;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    if cfg.accounts.is_empty() {
        tracing::warn!("no [[account]] configured: only unroutable messages will be handled");
    }
    let w = Worker::start(cfg).await?;
    let sd = w.shutdown_token();
    tokio::spawn(async move {
        app::signal().await;
        tracing::info!("signal received; shutting down gracefully");
        sd.cancel();
    });
    w.wait().await
}
