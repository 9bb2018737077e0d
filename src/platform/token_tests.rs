//! The token cache in front of a [`TokenStore`], with an in-memory store: no Postgres, and no
//! platform either except where a refresh must ask one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::Utc;
use futures::future::BoxFuture;

use super::*;
use crate::config::Rate;

/// One account's token in memory; counts what the manager asks of it.
#[derive(Clone, Default)]
struct Memory(Arc<Inner>);

#[derive(Default)]
struct Inner {
    token: Mutex<Option<StoredToken>>,
    refreshes: AtomicUsize,
    invalidated: Mutex<Vec<i64>>,
}

impl Memory {
    fn holding(token: &str, valid_for_secs: i64, generation: i64) -> Self {
        let m = Self::default();
        *m.0.token.lock().unwrap() = Some(StoredToken {
            token: token.into(),
            expires_at: Utc::now() + chrono::Duration::seconds(valid_for_secs),
            generation,
        });
        m
    }
}

impl TokenStore for Memory {
    fn refresh<'a>(
        &'a self,
        _account: &'a str,
        min_valid: chrono::Duration,
        fetch: BoxFuture<'a, Fetched>,
    ) -> BoxFuture<'a, anyhow::Result<Result<StoredToken, CallResult>>> {
        Box::pin(async move {
            self.0.refreshes.fetch_add(1, Ordering::SeqCst);
            let current = self.0.token.lock().unwrap().clone();
            if let Some(t) = &current
                && t.expires_at - Utc::now() > min_valid
            {
                return Ok(Ok(t.clone()));
            }
            let (token, expires_in) = match fetch.await {
                Ok(v) => v,
                Err(e) => return Ok(Err(e)),
            };
            let t = StoredToken {
                token,
                expires_at: Utc::now() + chrono::Duration::seconds(expires_in),
                generation: current.map_or(1, |t| t.generation + 1),
            };
            *self.0.token.lock().unwrap() = Some(t.clone());
            Ok(Ok(t))
        })
    }

    fn invalidate<'a>(
        &'a self,
        _account: &'a str,
        generation: i64,
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.0.invalidated.lock().unwrap().push(generation);
            let mut g = self.0.token.lock().unwrap();
            if let Some(t) = g.as_mut().filter(|t| t.generation == generation) {
                t.expires_at = Utc::now() - chrono::Duration::seconds(1);
            }
            Ok(())
        })
    }
}

/// A WeCom account whose platform refuses connections (port 9, discard): a gettoken fails
/// fast, as a transport failure.
fn account() -> AccountConfig {
    AccountConfig {
        name: "kf".into(),
        channel: Channel::Wecom,
        base_url: Some("http://127.0.0.1:9".into()),
        rate: Rate::default(),
        appid: None,
        default_channel: 0,
        oa_appid: None,
        corpid: Some("ww1".into()),
        secret: Secret::new("s"),
        secret_file: None,
        open_kfids: Vec::new(),
        token: Secret::new(""),
        token_file: None,
        encoding_aes_key: Secret::new(""),
        encoding_aes_key_file: None,
        require_push_signature: false,
        outcomes: true,
    }
}

fn manager(store: &Memory) -> TokenManager {
    // No proxy from the environment: the refused connection must be this test's own.
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    TokenManager::new(&account(), http, Box::new(store.clone()))
}

#[tokio::test]
async fn a_stored_token_is_used_and_then_served_from_the_cache() {
    let store = Memory::holding("t-1", 3600, 7);
    let m = manager(&store);
    for _ in 0..3 {
        let t = m.get().await.unwrap();
        assert_eq!((t.token.as_str(), t.generation), ("t-1", 7));
    }
    assert_eq!(
        store.0.refreshes.load(Ordering::SeqCst),
        1,
        "one store read"
    );
}

#[tokio::test]
async fn invalidation_forgets_only_the_generation_it_names() {
    let store = Memory::holding("t-1", 3600, 7);
    let m = manager(&store);
    m.get().await.unwrap();
    m.invalidate(6).await;
    assert_eq!(
        m.get().await.unwrap().generation,
        7,
        "an older generation keeps the cache"
    );
    assert_eq!(store.0.refreshes.load(Ordering::SeqCst), 1);
    m.invalidate(7).await;
    assert_eq!(
        *store.0.invalidated.lock().unwrap(),
        [6, 7],
        "both reach the store"
    );
    // The cache is empty and the stored token expired: the refresh asks the platform,
    // which is unreachable here.
    assert!(matches!(m.get().await, Err(CallResult::Transport(_))));
    assert_eq!(store.0.refreshes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_token_about_to_expire_is_refreshed_ahead() {
    // Valid for less than REFRESH_AHEAD: not served, neither from the store nor cached.
    let store = Memory::holding("t-1", 60, 1);
    let m = manager(&store);
    assert!(matches!(m.get().await, Err(CallResult::Transport(_))));
    assert!(matches!(m.get().await, Err(CallResult::Transport(_))));
    assert_eq!(
        store.0.refreshes.load(Ordering::SeqCst),
        2,
        "a transport failure is not negatively cached"
    );
}
