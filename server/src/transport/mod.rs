//! The Flight port's transport: what a client can make the server hold, and
//! for how long.
//!
//! - [`Incoming`] accepts TCP connections up to LONGBOW_MAX_CONNECTIONS; one
//!   more is closed at once (logged, `longbow_connections_refused_total`), so
//!   its client fails fast with UNAVAILABLE and can retry or go elsewhere,
//!   rather than wait in the listen backlog. When accept(2) fails for want of
//!   descriptors (EMFILE, ENFILE) or memory, it says so (rate-limited) and
//!   waits [`ACCEPT_BACKOFF`] instead of spinning on the pending connection.
//! - [`Conn`] is one accepted connection. It closes itself once no stream
//!   has been open on it for LONGBOW_IDLE_TIMEOUT (HTTP/2 keepalive pings
//!   keep the socket busy, so idleness is counted in streams, not bytes).
//! - [`Layer`] wraps every request: its body goes through
//!   [`framing::WholeMessages`] (no buffer for bytes that have not arrived),
//!   tonic's two client-error statuses are corrected ([`status`]), and the
//!   stream is counted on its connection while it lives.
//!
//! HTTP/2 limits (streams per connection, header list size, keepalive
//! pings) are hyper's, set in `lib.rs` from [`TransportConfig`].

pub mod framing;
pub mod status;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// After accept(2) fails for want of descriptors or memory, wait this long
/// before the next try. The pending connection stays in the backlog, so an
/// immediate retry fails the same way and spins a core.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// At most one log line per this period for refused connections and for
/// accept failures each; the lines count what they stand for.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// The transport settings, from `Config::transport`.
#[derive(Debug, Clone, Copy)]
pub struct TransportConfig {
    pub max_connections: u32,
    pub max_concurrent_streams: u32,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Duration,
    pub idle_timeout: Option<Duration>,
    pub max_header_list_bytes: u32,
    pub max_message_bytes: usize,
}

#[derive(Clone, Default)]
pub struct TransportMetrics {
    pub connections_open: Gauge,
    pub connections_max: Gauge,
    pub connections_accepted: Counter,
    pub connections_refused: Counter,
    pub connections_idle_closed: Counter,
    pub accept_errors: Counter,
}

impl TransportMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("longbow");
        r.register("connections_open", "Flight connections open", self.connections_open.clone());
        r.register("connections_max", "LONGBOW_MAX_CONNECTIONS", self.connections_max.clone());
        r.register("connections_accepted", "Flight connections accepted", self.connections_accepted.clone());
        r.register(
            "connections_refused",
            "Flight connections closed on arrival because LONGBOW_MAX_CONNECTIONS were open",
            self.connections_refused.clone(),
        );
        r.register(
            "connections_idle_closed",
            "Flight connections closed after LONGBOW_IDLE_TIMEOUT without a stream",
            self.connections_idle_closed.clone(),
        );
        r.register(
            "accept_errors",
            "Failed accept(2) calls on the Flight port (EMFILE/ENFILE: out of descriptors)",
            self.accept_errors.clone(),
        );
    }
}

/// Allows one log line per period; counts the ones it held back.
struct Every {
    period: Duration,
    last: Option<Instant>,
    held_back: u64,
}

impl Every {
    fn new(period: Duration) -> Self {
        Self { period, last: None, held_back: 0 }
    }

    /// `Some(lines held back since the last one)` when a line may be logged.
    fn check(&mut self) -> Option<u64> {
        if self.last.is_some_and(|t| t.elapsed() < self.period) {
            self.held_back += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.held_back))
    }
}

/// Streams open on one connection, and since when it has had none.
#[derive(Debug)]
struct Activity {
    streams: usize,
    idle_since: Instant,
}

#[derive(Debug)]
pub struct ConnState(Mutex<Activity>);

impl ConnState {
    fn new() -> Self {
        Self(Mutex::new(Activity { streams: 0, idle_since: Instant::now() }))
    }

    fn activity(&self) -> std::sync::MutexGuard<'_, Activity> {
        // Only counters are updated under the lock; a panic cannot leave them torn.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `None` while a stream is open.
    fn idle_since(&self) -> Option<Instant> {
        let a = self.activity();
        (a.streams == 0).then_some(a.idle_since)
    }

    fn stream_opened(self: &Arc<Self>) -> StreamGuard {
        self.activity().streams += 1;
        StreamGuard(self.clone())
    }
}

/// Counts a stream on its connection until dropped (with the response body).
pub struct StreamGuard(Arc<ConnState>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut a = self.0.activity();
        a.streams -= 1;
        if a.streams == 0 {
            a.idle_since = Instant::now();
        }
    }
}

/// What a request learns of its connection (a request extension, put there
/// by tonic from [`Conn`]'s `Connected` impl; with TLS too).
#[derive(Clone, Debug)]
pub struct ConnInfo {
    pub remote: Option<SocketAddr>,
    state: Arc<ConnState>,
}

/// The Flight listener, limited to `max_connections` open at once.
pub struct Incoming {
    listener: TcpListener,
    slots: Arc<Semaphore>,
    max_connections: u32,
    idle_timeout: Option<Duration>,
    metrics: TransportMetrics,
    backoff: Option<Pin<Box<Sleep>>>,
    refused_log: Every,
    error_log: Every,
}

impl Incoming {
    pub fn new(listener: TcpListener, config: &TransportConfig, metrics: TransportMetrics) -> Self {
        metrics.connections_max.set(config.max_connections as i64);
        Self {
            listener,
            slots: Arc::new(Semaphore::new(config.max_connections as usize)),
            max_connections: config.max_connections,
            idle_timeout: config.idle_timeout,
            metrics,
            backoff: None,
            refused_log: Every::new(LOG_EVERY),
            error_log: Every::new(LOG_EVERY),
        }
    }

    fn accepted(&mut self, io: TcpStream, remote: SocketAddr) -> Option<Conn> {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.metrics.connections_refused.inc();
            if let Some(held_back) = self.refused_log.check() {
                tracing::warn!(
                    %remote,
                    max_connections = self.max_connections,
                    refused_since_last_line = held_back,
                    "connection limit reached: closing new connections (LONGBOW_MAX_CONNECTIONS)"
                );
            }
            return None; // dropped: closed
        };
        // IMPORTANT: acknowledgements are small writes that follow the
        // HTTP/2 window updates for the data they acknowledge; with Nagle on,
        // they wait for the client's delayed ACK (40 ms).
        if let Err(e) = io.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "TCP_NODELAY");
        }
        self.metrics.connections_accepted.inc();
        self.metrics.connections_open.inc();
        Some(Conn {
            io,
            remote,
            state: Arc::new(ConnState::new()),
            idle: self.idle_timeout.map(|timeout| Idle {
                timeout,
                sleep: Box::pin(tokio::time::sleep(timeout)),
                expired: false,
            }),
            metrics: self.metrics.clone(),
            _slot: slot,
        })
    }

    fn accept_failed(&mut self, e: std::io::Error) {
        use nix::libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
        self.metrics.accept_errors.inc();
        let exhausted = matches!(e.raw_os_error(), Some(EMFILE | ENFILE | ENOBUFS | ENOMEM));
        if !exhausted {
            // ECONNABORTED and the like: that client gave up; take the next.
            tracing::debug!(error = %e, "accept failed");
            return;
        }
        if let Some(held_back) = self.error_log.check() {
            tracing::error!(
                error = %e,
                failures_since_last_line = held_back,
                "cannot accept Flight connections: out of descriptors or memory; retrying every {ACCEPT_BACKOFF:?} \
                 (raise RLIMIT_NOFILE, or lower LONGBOW_MAX_CONNECTIONS below it)"
            );
        }
        self.backoff = Some(Box::pin(tokio::time::sleep(ACCEPT_BACKOFF)));
    }
}

impl futures::Stream for Incoming {
    /// Never an error: failures are handled here (tonic would only log
    /// them at trace level and retry at once).
    type Item = Result<Conn, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(backoff) = &mut self.backoff {
                std::task::ready!(backoff.as_mut().poll(cx));
                self.backoff = None;
            }
            match std::task::ready!(self.listener.poll_accept(cx)) {
                Ok((io, remote)) => {
                    if let Some(conn) = self.accepted(io, remote) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
                Err(e) => self.accept_failed(e),
            }
        }
    }
}

struct Idle {
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
    expired: bool,
}

/// One accepted connection; holds its slot until dropped.
pub struct Conn {
    io: TcpStream,
    remote: SocketAddr,
    state: Arc<ConnState>,
    idle: Option<Idle>,
    metrics: TransportMetrics,
    _slot: OwnedSemaphorePermit,
}

impl Conn {
    /// Whether the connection has been without a stream for the idle
    /// timeout. hyper always has a read pending on a connection, so the
    /// timer is polled (and re-armed) from `poll_read`.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(idle) = &mut self.idle else { return false };
        while !idle.expired {
            if idle.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let now = Instant::now();
            match self.state.idle_since() {
                None => idle.sleep.as_mut().reset((now + idle.timeout).into()),
                Some(since) if now.duration_since(since) >= idle.timeout => {
                    idle.expired = true;
                    self.metrics.connections_idle_closed.inc();
                    tracing::debug!(remote = %self.remote, timeout = ?idle.timeout, "closing an idle connection");
                }
                Some(since) => idle.sleep.as_mut().reset((since + idle.timeout).into()),
            }
        }
        true
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connections_open.dec();
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        if self.idle_expired(cx) {
            // End of stream: h2 ends a connection without streams cleanly.
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        ConnInfo { remote: Some(self.remote), state: self.state.clone() }
    }
}

/// The tower layer every Flight and health request passes through.
#[derive(Clone, Copy)]
pub struct Layer {
    max_message_bytes: usize,
}

impl Layer {
    pub fn new(max_message_bytes: usize) -> Self {
        Self { max_message_bytes }
    }
}

impl<S> tower_layer::Layer<S> for Layer {
    type Service = Service<S>;

    fn layer(&self, inner: S) -> Service<S> {
        Service { inner, max_message_bytes: self.max_message_bytes }
    }
}

#[derive(Clone)]
pub struct Service<S> {
    inner: S,
    max_message_bytes: usize,
}

type Request = http::Request<tonic::body::Body>;
type Response = http::Response<tonic::body::Body>;

impl<S> tower_service::Service<Request> for Service<S>
where
    S: tower_service::Service<Request, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        // The stream counts from here until its response body is dropped.
        let guard = request.extensions().get::<ConnInfo>().map(|c| c.state.stream_opened());
        let max = self.max_message_bytes;
        let request = request.map(|body| tonic::body::Body::new(framing::WholeMessages::new(body, max)));
        // The clone that was made ready serves this call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let response = inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            status::correct(response.headers_mut());
            Ok(response.map(|body| tonic::body::Body::new(status::Corrected::new(body, guard))))
        })
    }
}
