//! One HTTP listener with limits: our own accept loop around hyper, because `axum::serve`
//! exposes none of them (issue 14: 200 half-sent 380 KB headers took the worker from 30 to
//! 106 MB and, with the fds gone, `/healthz` stopped answering).
//!
//! | limit | how |
//! |---|---|
//! | connections | a semaphore per listener, permit taken *before* the connection is served; over the cap a new connection is closed at once (counted in `wxdispatch_http_connections_refused_total`) |
//! | header read timeout | hyper's `header_read_timeout`: the request head must be complete this long after its first byte, or after the previous response on a kept-alive connection |
//! | header size | hyper's `max_buf_size`: a larger head is answered 431 and the connection closed, so a connection buffers at most this much of a head |
//! | idle timeout | every read and write stamps the connection; one with no bytes either way for this long is dropped |
//! | shutdown | the shutdown token stops accepting; in-flight requests finish (hyper-util `GracefulShutdown`), idle keep-alive connections close; after `drain` whatever is left is aborted |

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::telemetry as t;

/// hyper refuses a read buffer below 8 KiB (config validation says so; this keeps a config
/// built in code from panicking).
const MIN_BUF: usize = 8192;

/// After a failed `accept` (EMFILE, ENFILE, ECONNABORTED): wait this long instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits of one listener (see the module doc).
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// How long shutdown waits for in-flight requests before closing what is left.
    pub drain: Duration,
}

impl Limits {
    /// `[http]` limits with `max_connections` as the cap.
    pub fn public(cfg: &Config) -> Self {
        Self::with_cap(cfg, cfg.http.max_connections)
    }

    /// `[http]` limits with `admin_max_connections` as the cap.
    pub fn admin(cfg: &Config) -> Self {
        Self::with_cap(cfg, cfg.http.admin_max_connections)
    }

    fn with_cap(cfg: &Config, max_connections: usize) -> Self {
        Self {
            header_read_timeout: Duration::from_secs(cfg.http.header_read_timeout_secs.max(1)),
            idle_timeout: Duration::from_secs(cfg.http.idle_timeout_secs.max(1)),
            max_header_bytes: cfg.http.max_header_bytes.max(MIN_BUF),
            max_connections: max_connections.max(1),
            drain: Duration::from_secs(cfg.worker.shutdown_grace_secs),
        }
    }
}

/// Bind `listen` (the config key `key` names it in errors and metrics) and return the bound
/// address plus the serving future, which ends on `shutdown` once the connections drained.
pub async fn bind(
    key: &'static str,
    listen: &str,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    SocketAddr,
    impl Future<Output = anyhow::Result<()>> + Send + 'static,
)> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("{key}: cannot bind {listen}: {e}"))?;
    let addr = listener
        .local_addr()
        .map_err(|e| anyhow::anyhow!("{key}: no local address for {listen}: {e}"))?;
    info!(listener = key, %addr, max_connections = limits.max_connections, "http listening");
    Ok((addr, accept_loop(key, listener, app, limits, shutdown)))
}

async fn accept_loop(
    key: &'static str,
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .keep_alive(true);
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                warn!(listener = key, error = %e, "http accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                }
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            // Over the cap: close at once, before reading a byte, so the connection costs
            // nothing but the fd for the instant it takes to drop it.
            metrics::counter!(t::HTTP_CONNECTIONS_REFUSED, "listener" => key).increment(1);
            debug!(listener = key, %peer, "connection cap reached; closing new connection");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        // The peer address, as `ConnectInfo`, for the callbacks' per-source throttle.
        let service = TowerToHyperService::new(
            app.clone()
                .layer(axum::Extension(axum::extract::ConnectInfo(peer))),
        );
        let conn = graceful.watch(builder.serve_connection(io, service).into_owned());
        let idle_timeout = limits.idle_timeout;
        let gauge = metrics::gauge!(t::HTTP_CONNECTIONS, "listener" => key);
        gauge.increment(1.0);
        conns.spawn(async move {
            tokio::select! {
                r = conn => if let Err(e) = r {
                    debug!(listener = key, %peer, error = %e, "http connection ended with an error");
                },
                _ = idle(&activity, idle_timeout) => {
                    debug!(listener = key, %peer, "closing idle http connection");
                }
            }
            gauge.decrement(1.0);
            drop(permit);
        });
    }
    // Stop accepting before draining: new connections get "refused" rather than a hang.
    drop(listener);
    if tokio::time::timeout(limits.drain, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            listener = key,
            left = conns.len(),
            "http connections still open after the drain period; closing them"
        );
    }
    conns.shutdown().await;
    Ok(())
}

/// Resolves once the connection saw no bytes either way for `timeout`.
async fn idle(activity: &Activity, timeout: Duration) {
    loop {
        let deadline = activity.last() + timeout;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline.into()).await;
    }
}

/// When a connection last moved a byte.
struct Activity {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// A TCP stream that stamps [`Activity`] on every read and write that moved bytes.
struct Tracked {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listener serving `/ok` with these limits (no broker or database needed).
    async fn serve(limits: Limits) -> (SocketAddr, CancellationToken) {
        let app = Router::new().route("/ok", get(|| async { "ok" }));
        let token = CancellationToken::new();
        let (addr, fut) = bind("test", "127.0.0.1:0", app, limits, token.clone())
            .await
            .unwrap();
        tokio::spawn(fut);
        (addr, token)
    }

    fn limits(header_read_timeout: u64, idle_timeout: u64) -> Limits {
        Limits {
            header_read_timeout: Duration::from_secs(header_read_timeout),
            idle_timeout: Duration::from_secs(idle_timeout),
            max_header_bytes: MIN_BUF,
            max_connections: 8,
            drain: Duration::from_secs(5),
        }
    }

    /// Everything the server sends until it closes; None if still open after 20 s.
    async fn until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
        })
        .await
        .ok()?;
        Some(got)
    }

    #[tokio::test]
    async fn an_idle_kept_alive_connection_is_closed_by_the_idle_timeout() {
        // The header timeout is far beyond the 20 s bound: only the idle timeout closes it.
        let (addr, token) = serve(limits(600, 1)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let got = until_closed(&mut s).await.expect("closed when idle");
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 200") && text.ends_with("ok"),
            "{text}"
        );
        token.cancel();
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_by_the_header_timeout() {
        let (addr, token) = serve(limits(1, 600)).await;
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ok HTTP/1.1\r\nHost: t\r\nX-Slow: aaaa")
            .await
            .unwrap();
        let got = until_closed(&mut s)
            .await
            .expect("closed by the header timeout");
        let text = String::from_utf8_lossy(&got);
        assert!(got.is_empty() || text.starts_with("HTTP/1.1 408"), "{text}");
        token.cancel();
    }
}
