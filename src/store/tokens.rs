//! `access_tokens`: the WeCom access tokens shared by every worker of an account, refreshed by
//! one of them at a time — the platform layer's [`TokenStore`].

use chrono::Utc;
use sqlx::Row;

use futures::future::BoxFuture;

use super::Store;
use crate::platform::token::{Fetched, StoredToken, TokenStore};
use crate::policy::CallResult;

impl Store {
    /// Single-flight refresh across processes: under a transaction-scoped advisory lock on the
    /// account, re-read the token; if it is still good for `min_valid`, return it (someone
    /// else refreshed); otherwise call `fetch` and store the result with generation + 1.
    pub async fn refresh_token<F, Fut, E>(
        &self,
        account: &str,
        min_valid: chrono::Duration,
        fetch: F,
    ) -> anyhow::Result<Result<StoredToken, E>>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(String, i64), E>>,
    {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('wxdispatch.token.' || $1))")
            .bind(account)
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT token, expires_at, generation FROM access_tokens WHERE account = $1",
        )
        .bind(account)
        .fetch_optional(&mut *tx)
        .await?;
        let current = row.map(|r| StoredToken {
            token: r.get("token"),
            expires_at: r.get("expires_at"),
            generation: r.get("generation"),
        });
        if let Some(t) = &current
            && t.expires_at - Utc::now() > min_valid
        {
            tx.commit().await?;
            return Ok(Ok(t.clone()));
        }
        let (token, expires_in) = match fetch().await {
            Ok(v) => v,
            Err(e) => {
                tx.rollback().await?;
                return Ok(Err(e));
            }
        };
        let generation = current.map_or(1, |t| t.generation + 1);
        let expires_at = Utc::now() + chrono::Duration::seconds(expires_in);
        sqlx::query(
            "INSERT INTO access_tokens (account, token, expires_at, generation, refreshed_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (account) DO UPDATE SET token = $2, expires_at = $3, generation = $4, refreshed_at = now()",
        )
        .bind(account)
        .bind(&token)
        .bind(expires_at)
        .bind(generation)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(StoredToken {
            token,
            expires_at,
            generation,
        }))
    }

    /// Mark the token of `generation` expired (only that one: a newer token stays).
    pub async fn invalidate_token(&self, account: &str, generation: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE access_tokens SET expires_at = LEAST(expires_at, now() - interval '1 second')
             WHERE account = $1 AND generation = $2",
        )
        .bind(account)
        .bind(generation)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// The table as the platform layer's token cache: the statements above, adapted.
impl TokenStore for Store {
    fn refresh<'a>(
        &'a self,
        account: &'a str,
        min_valid: chrono::Duration,
        fetch: BoxFuture<'a, Fetched>,
    ) -> BoxFuture<'a, anyhow::Result<Result<StoredToken, CallResult>>> {
        Box::pin(async move { self.refresh_token(account, min_valid, || fetch).await })
    }

    fn invalidate<'a>(
        &'a self,
        account: &'a str,
        generation: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.invalidate_token(account, generation))
    }
}
