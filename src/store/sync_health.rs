//! When each `(account, open_kfid)` last synced: `sync_cursors.updated_at`, written with
//! every committed page by whichever process pulled it. The sync retention alert
//! (`engine::inbound::retention`) starts from it and follows it while another process pulls.

use anyhow::Context;
use chrono::{DateTime, Utc};

use super::pool::Store;

impl Store {
    /// When a page of `(account, open_kfid)` was last committed, by any process; `None`
    /// before the first.
    pub async fn sync_last_committed(
        &self,
        account: &str,
        open_kfid: &str,
    ) -> anyhow::Result<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "SELECT updated_at FROM sync_cursors WHERE account = $1 AND open_kfid = $2",
        )
        .bind(account)
        .bind(open_kfid)
        .fetch_optional(self.pool())
        .await
        .context("reading when the sync last committed")
    }
}
