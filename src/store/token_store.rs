//! The Postgres `access_tokens` table as the platform layer's [`TokenStore`]: the statements
//! are [`Store::refresh_token`] and [`Store::invalidate_token`]; this only adapts them.

use futures::future::BoxFuture;

use crate::platform::token::{Fetched, StoredToken, TokenStore};
use crate::policy::CallResult;

use super::Store;

impl TokenStore for Store {
    fn refresh<'a>(
        &'a self,
        account: &'a str,
        min_valid: chrono::Duration,
        fetch: BoxFuture<'a, Fetched>,
    ) -> BoxFuture<'a, anyhow::Result<Result<StoredToken, CallResult>>> {
        Box::pin(async move {
            let stored = self.refresh_token(account, min_valid, || fetch).await?;
            Ok(stored.map(|t| StoredToken {
                token: t.token,
                expires_at: t.expires_at,
                generation: t.generation,
            }))
        })
    }

    fn invalidate<'a>(
        &'a self,
        account: &'a str,
        generation: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(self.invalidate_token(account, generation))
    }
}
