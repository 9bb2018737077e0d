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
        gate_needperson: false,
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

/// A gettoken endpoint on a local port answering `answer()` (a JSON body) to every request,
/// counting requests and remembering the last query string.
struct Gettoken {
    base_url: String,
    calls: Arc<AtomicUsize>,
    answer: Arc<Mutex<String>>,
    last_query: Arc<Mutex<String>>,
}

async fn gettoken_server(answer: &str) -> Gettoken {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let answer = Arc::new(Mutex::new(answer.to_owned()));
    let last_query = Arc::new(Mutex::new(String::new()));
    let (c, a, q) = (calls.clone(), answer.clone(), last_query.clone());
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = vec![0u8; 4096];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).to_string();
            let target = head.split(' ').nth(1).unwrap_or("").to_owned();
            *q.lock().unwrap() = target.split_once('?').map(|x| x.1).unwrap_or("").into();
            c.fetch_add(1, Ordering::SeqCst);
            let body = a.lock().unwrap().clone();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        }
    });
    Gettoken {
        base_url,
        calls,
        answer,
        last_query,
    }
}

fn manager_at(store: &Memory, base_url: &str) -> TokenManager {
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let mut a = account();
    a.base_url = Some(base_url.into());
    TokenManager::new(&a, http, Box::new(store.clone()))
}

const REFUSED: &str = r#"{"errcode":40001,"errmsg":"invalid credential"}"#;
const GRANTED: &str = r#"{"errcode":0,"errmsg":"ok","access_token":"tok-2","expires_in":7200}"#;

#[tokio::test]
async fn a_refusal_is_remembered_until_a_probe_gets_a_token() {
    let srv = gettoken_server(REFUSED).await;
    let m = manager_at(&Memory::default(), &srv.base_url);
    let mut refusal = m.refusal();
    let refused = |r: Result<StoredToken, CallResult>| {
        matches!(r, Err(CallResult::Errcode { code: 40001, .. }))
    };
    assert!(refused(m.get().await));
    assert_eq!(*refusal.borrow_and_update(), Some(40001));
    // Jobs and sync loops asking now are answered without a call, for as long as it lasts
    // (the old 30 s negative cache asked again after 30 s).
    for _ in 0..20 {
        assert!(refused(m.get().await));
    }
    assert_eq!(srv.calls.load(Ordering::SeqCst), 1, "one gettoken call");
    // The prober asks; still refused.
    assert!(refused(m.probe().await));
    assert_eq!(srv.calls.load(Ordering::SeqCst), 2);
    // Fixed: the probe gets a token, the refusal ends, everyone is served from the cache.
    *srv.answer.lock().unwrap() = GRANTED.into();
    assert_eq!(m.probe().await.unwrap().token, "tok-2");
    assert!(refusal.has_changed().unwrap());
    assert_eq!(*refusal.borrow_and_update(), None);
    assert_eq!(m.get().await.unwrap().token, "tok-2");
    assert_eq!(srv.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn new_credentials_are_used_by_the_next_probe_and_wake_the_prober() {
    let srv = gettoken_server(REFUSED).await;
    let m = manager_at(&Memory::default(), &srv.base_url);
    assert!(m.get().await.is_err());
    assert!(srv.last_query.lock().unwrap().contains("corpsecret=s"));
    m.set_credentials("ww2".into(), Secret::new("s-new"));
    // The wake-up is kept for a prober that waits only afterwards.
    tokio::time::timeout(std::time::Duration::from_secs(1), m.credentials_changed())
        .await
        .expect("set_credentials wakes the prober");
    *srv.answer.lock().unwrap() = GRANTED.into();
    m.probe().await.unwrap();
    let q = srv.last_query.lock().unwrap().clone();
    assert!(
        q.contains("corpid=ww2") && q.contains("corpsecret=s-new"),
        "{q}"
    );
}
