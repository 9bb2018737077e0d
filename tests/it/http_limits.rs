//! The HTTP listeners (issue 14): callbacks on the public listener only, metrics and health on
//! the admin listener only; slow-loris connections closed by the header timeout, oversized
//! heads refused, connections over the cap refused, health answering throughout, and shutdown
//! letting an in-flight request finish.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wxdispatch::tools::simulate::SimOptions;

use crate::harness::{Env, chatbot_account};

/// Far above every timeout configured here: a read still pending after it means the server
/// kept the connection open.
const CLOSE_WITHIN: Duration = Duration::from_secs(20);

/// Slow-loris connections opened at once.
const LORIS: usize = 200;

fn accounts(base: &str) -> Vec<wxdispatch::config::AccountConfig> {
    vec![chatbot_account("bot", base)]
}

/// GET `path` on its own connection; the status code.
async fn status(addr: SocketAddr, path: &str) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
        .status()
        .as_u16()
}

/// POST `body` to `path` on its own connection; the status code.
async fn post_status(addr: SocketAddr, path: &str, body: &str) -> u16 {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    client
        .post(format!("http://{addr}{path}"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST http://{addr}{path}: {e}"))
        .status()
        .as_u16()
}

/// Read until the server closes the connection (EOF or reset); what it sent. Panics when the
/// connection is still open after [`CLOSE_WITHIN`].
async fn read_until_closed(mut s: TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(CLOSE_WITHIN, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the server kept the connection open for {CLOSE_WITHIN:?} (got {} bytes)",
        got.len()
    );
    got
}

/// Send one complete request on `s` and read its response head (keeps the connection open).
async fn request_head(s: &mut TcpStream, path: &str) -> String {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .unwrap();
    read_head(s).await
}

/// Read one response head (up to the blank line) from `s`.
async fn read_head(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1];
    tokio::time::timeout(CLOSE_WITHIN, async {
        while !got.ends_with(b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before a response");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response head");
    String::from_utf8_lossy(&got).into_owned()
}

/// RSS of this process in KiB (Linux), for the log only: never asserted on.
fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_are_public_only_and_metrics_and_health_admin_only() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let public = worker.public_addr.expect("public listener");
    let admin = worker.admin_addr.expect("admin listener");
    assert_ne!(public, admin);

    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(status(admin, path).await, 200, "admin {path}");
        assert_eq!(status(public, path).await, 404, "public {path}");
    }
    // The callback route exists on the public listener (a bad push is 400, not 404) and not
    // on the admin one.
    assert_eq!(
        post_status(public, "/callback/chatbot/bot", "{}").await,
        400
    );
    assert_eq!(post_status(admin, "/callback/chatbot/bot", "{}").await, 404);
    assert_eq!(status(admin, "/callback/wecom/bot").await, 404);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_loris_connections_are_closed_by_the_header_timeout_while_health_answers() {
    let mut env = Env::new(accounts, SimOptions::default()).await;
    env.cfg.http.header_read_timeout_secs = 1;
    let worker = env.start_worker().await;
    let public = worker.public_addr.unwrap();
    let admin = worker.admin_addr.unwrap();
    let rss_before = rss_kib();

    // Half-sent heads: a request line and part of a header, never the blank line.
    let mut loris = Vec::new();
    for _ in 0..LORIS {
        let mut s = TcpStream::connect(public).await.unwrap();
        let head = format!(
            "POST /callback/chatbot/bot HTTP/1.1\r\nHost: t\r\nX-Pad: {}",
            "a".repeat(4000)
        );
        s.write_all(head.as_bytes()).await.unwrap();
        loris.push(s);
    }
    let rss_held = rss_kib();
    // Health keeps answering while they are held.
    for path in ["/healthz", "/readyz"] {
        assert_eq!(status(admin, path).await, 200, "{path} under slow loris");
    }
    let closed = futures::future::join_all(loris.into_iter().map(read_until_closed)).await;
    for got in &closed {
        let text = String::from_utf8_lossy(got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 408"),
            "a slow-loris connection got a response other than a timeout: {text}"
        );
    }
    assert_eq!(status(admin, "/healthz").await, 200, "health after");
    // A normal request on the public listener still works.
    assert_eq!(
        post_status(public, "/callback/chatbot/bot", "{}").await,
        400
    );
    eprintln!(
        "RSS (KiB, whole test process): before {rss_before:?}, {LORIS} slow-loris held {rss_held:?}, after {:?}",
        rss_kib()
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_over_max_header_bytes_is_refused() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let public = worker.public_addr.unwrap();
    let cap = env.cfg.http.max_header_bytes;

    // Just under the cap: served as usual (no route on GET: 405).
    let mut s = TcpStream::connect(public).await.unwrap();
    let pad = "b".repeat(cap - 1024);
    let head = request_head(&mut s, &format!("/callback/chatbot/bot?x={pad}")).await;
    assert!(head.starts_with("HTTP/1.1 405"), "under the cap: {head}");

    // Over the cap (380 KB, as in the issue): 431 (or a plain close), never served.
    let mut s = TcpStream::connect(public).await.unwrap();
    let big = format!(
        "POST /callback/chatbot/bot HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
        "c".repeat(380 * 1024)
    );
    // The server may close before everything is written: a write error is a refusal too.
    let _ = s.write_all(big.as_bytes()).await;
    let got = read_until_closed(s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        got.is_empty() || text.starts_with("HTTP/1.1 431"),
        "an oversized head must be refused: {text}"
    );
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_are_refused_and_the_admin_listener_still_answers() {
    const CAP: usize = 20;
    let mut env = Env::new(accounts, SimOptions::default()).await;
    env.cfg.http.max_connections = CAP;
    // Held connections must stay open for the whole test.
    env.cfg.http.header_read_timeout_secs = 60;
    let worker = env.start_worker().await;
    let public = worker.public_addr.unwrap();
    let admin = worker.admin_addr.unwrap();

    // CAP kept-alive connections, each proven served (so each holds its permit).
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut s = TcpStream::connect(public).await.unwrap();
        let head = request_head(&mut s, "/nothing-here").await;
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        held.push(s);
    }
    // One more: closed without an answer.
    let mut extra = TcpStream::connect(public).await.unwrap();
    let _ = extra
        .write_all(b"GET /nothing-here HTTP/1.1\r\nHost: t\r\n\r\n")
        .await;
    let got = read_until_closed(extra).await;
    assert!(
        got.is_empty(),
        "a connection over the cap was served: {}",
        String::from_utf8_lossy(&got)
    );
    // The admin listener has its own cap.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(
            status(admin, path).await,
            200,
            "{path} while public is full"
        );
    }
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("wxdispatch_http_connections_refused_total{listener=\"http.listen\"}")),
        "refusals are counted"
    );

    // A slot freed: a new connection is served again (the server notices the close at once;
    // bounded retries cover the moment it takes).
    drop(held.pop());
    let mut served = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(public).await.unwrap();
        let _ = s
            .write_all(b"GET /nothing-here HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await;
        if String::from_utf8_lossy(&read_until_closed(s).await).starts_with("HTTP/1.1 404") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served, "a freed slot is used again");
    drop(held);
    worker.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_the_listeners_and_lets_an_in_flight_request_finish() {
    let env = Env::new(accounts, SimOptions::default()).await;
    let worker = env.start_worker().await;
    let public = worker.public_addr.unwrap();
    let admin = worker.admin_addr.unwrap();
    // An idle kept-alive connection and a request whose body is half sent.
    let mut idle = TcpStream::connect(admin).await.unwrap();
    assert!(
        request_head(&mut idle, "/healthz")
            .await
            .starts_with("HTTP/1.1 200")
    );
    // `Expect: 100-continue`: the server answers 100 once the handler reads the body, so
    // seeing it proves the request is in flight.
    let mut in_flight = TcpStream::connect(public).await.unwrap();
    let head = b"POST /callback/chatbot/bot HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\
                 Expect: 100-continue\r\n\r\n";
    in_flight.write_all(head).await.unwrap();
    let cont = read_head(&mut in_flight).await;
    assert!(cont.starts_with("HTTP/1.1 100"), "{cont}");

    let token = worker.shutdown_token();
    let stopped = tokio::spawn(worker.wait());
    token.cancel();
    // New connections are no longer accepted once the listener is dropped.
    let mut refused = false;
    for _ in 0..50 {
        if TcpStream::connect(admin).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the admin listener stops accepting on shutdown");
    // The in-flight request still gets its answer.
    in_flight.write_all(b"{}").await.unwrap();
    let got = read_until_closed(in_flight).await;
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 400"),
        "the in-flight request is answered: {text}"
    );
    // The idle connection is closed, and the worker stops.
    read_until_closed(idle).await;
    tokio::time::timeout(CLOSE_WITHIN, stopped)
        .await
        .expect("the worker stops")
        .unwrap()
        .unwrap();
}
