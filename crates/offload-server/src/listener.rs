//! The TLS listener and its limits. A client that speaks plain HTTP to the TLS port gets
//! a 400 with a JSON error telling it to use https, instead of a dropped connection. Every
//! connection takes a slot (per client address and in total) before its handshake, must
//! send its request headers in time, and is closed when it stays idle.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::{Response, StatusCode};
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

/// First byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// How long a new connection may stay silent before its first byte, and how long its TLS
/// handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const PLAIN_HTTP_BODY: &str =
    r#"{"error":"this port speaks HTTPS only; use an https:// URL","code":"https_required"}"#;

fn plain_http_response() -> String {
    format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{PLAIN_HTTP_BODY}",
        PLAIN_HTTP_BODY.len()
    )
}

/// The listener's limits (the server config's `header_read_timeout_secs` and friends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// A request's headers must arrive within this time of the connection waiting for
    /// them; on HTTP/1.1 this also closes a keep-alive connection that sends nothing.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight that sends nothing for this long is closed.
    /// Upgraded connections (WebSockets) are exempt: they keep their own liveness.
    pub idle_timeout: Duration,
    /// A request body that delivers no data for this long fails.
    pub body_read_timeout: Duration,
    /// Open connections, in total.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_address: usize,
}

/// Open connections, counted per client address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// A connection's place in the counts, given back when the connection ends.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Slot {
    fn take(
        counts: &Arc<Mutex<Counts>>,
        address: IpAddr,
        limits: &ConnectionLimits,
    ) -> io::Result<Slot> {
        let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let from_address = c.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= limits.max_connections_per_address {
            return Err(io::Error::other(format!(
                "refused a connection from {address}: it already has {from_address} open (max_connections_per_address)"
            )));
        }
        if c.total >= limits.max_connections {
            return Err(io::Error::other(format!(
                "refused a connection from {address}: {} connections are open (max_connections)",
                c.total
            )));
        }
        c.total += 1;
        *c.per_address.entry(address).or_default() += 1;
        Ok(Slot {
            counts: counts.clone(),
            address,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_address.get_mut(&self.address) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_address.remove(&self.address);
            }
        }
    }
}

/// What the stream of a connection and its service share: whether a request is being
/// served (the connection is not idle then, however long the handler takes).
#[derive(Debug)]
struct Activity {
    in_flight: AtomicUsize,
    upgraded: AtomicBool,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn busy(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) > 0 || self.upgraded.load(Ordering::SeqCst)
    }

    fn idle_since(&self) -> Instant {
        *self
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Held while a request is served, up to the end of its answer's body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn new(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        *self
            .0
            .idle_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection's socket: holds its slot and ends reads with a timeout once the
/// connection has been idle for `idle_timeout`.
pub struct LimitedStream {
    io: TcpStream,
    _slot: Slot,
    activity: Arc<Activity>,
    idle_timeout: Duration,
    last_read: Instant,
    timer: Pin<Box<Sleep>>,
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.last_read = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => loop {
                if this.timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let now = Instant::now();
                let deadline = if this.activity.busy() {
                    now + this.idle_timeout
                } else {
                    this.last_read.max(this.activity.idle_since()) + this.idle_timeout
                };
                if deadline <= now {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "idle connection closed",
                    )));
                }
                // Polled again at once so the timer registers its wakeup.
                this.timer.as_mut().reset(deadline);
            },
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connection's service: marks requests in flight until their answer is sent.
#[derive(Clone)]
pub struct TrackedService<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R, B> tower_service::Service<R> for TrackedService<S>
where
    S: tower_service::Service<R, Response = Response<B>>,
    S::Future: Send + 'static,
{
    type Response = Response<TrackedBody<B>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        let guard = InFlight::new(&self.activity);
        let future = self.inner.call(request);
        Box::pin(async move {
            let response = future.await?;
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                guard.0.upgraded.store(true, Ordering::SeqCst);
            }
            Ok(response.map(|body| TrackedBody {
                body,
                _guard: guard,
            }))
        })
    }
}

/// An answer's body, keeping its request in flight until it is sent or dropped.
pub struct TrackedBody<B> {
    body: B,
    _guard: InFlight,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Takes a slot, lets TLS handshakes through and answers anything else.
#[derive(Clone, Debug)]
pub struct Gate {
    limits: ConnectionLimits,
    counts: Arc<Mutex<Counts>>,
}

impl Gate {
    pub fn new(limits: ConnectionLimits) -> Gate {
        Gate {
            limits,
            counts: Arc::default(),
        }
    }
}

impl<S: Send + 'static> Accept<TcpStream, S> for Gate {
    type Stream = LimitedStream;
    type Service = TrackedService<S>;
    type Future =
        Pin<Box<dyn Future<Output = io::Result<(LimitedStream, TrackedService<S>)>> + Send>>;

    fn accept(&self, mut stream: TcpStream, service: S) -> Self::Future {
        let gate = self.clone();
        Box::pin(async move {
            let address = stream.peer_addr()?.ip();
            // Over the cap the connection is closed before its handshake costs anything.
            let slot = match Slot::take(&gate.counts, address, &gate.limits) {
                Ok(slot) => slot,
                Err(e) => {
                    tracing::warn!("{e}");
                    return Err(e);
                }
            };
            let _ = stream.set_nodelay(true);
            let mut first = [0u8; 1];
            let peeked = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no data from client"))??;
            if peeked == 1 && first[0] != TLS_HANDSHAKE {
                let _ = stream.write_all(plain_http_response().as_bytes()).await;
                let _ = stream.shutdown().await;
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "plain HTTP on the TLS port",
                ));
            }
            let now = Instant::now();
            let activity = Arc::new(Activity {
                in_flight: AtomicUsize::new(0),
                upgraded: AtomicBool::new(false),
                idle_since: Mutex::new(now),
            });
            let idle_timeout = gate.limits.idle_timeout;
            let stream = LimitedStream {
                io: stream,
                _slot: slot,
                activity: activity.clone(),
                idle_timeout,
                last_read: now,
                timer: Box::pin(tokio::time::sleep_until(now + idle_timeout)),
            };
            Ok((
                stream,
                TrackedService {
                    inner: service,
                    activity,
                },
            ))
        })
    }
}

/// The HTTP/2 receive windows of each client connection, per stream and in all (bytes).
const HTTP2_STREAM_WINDOW: u32 = 2 << 20;
const HTTP2_CONNECTION_WINDOW: u32 = 4 << 20;

/// Serves `app` over TLS on `tcp` until `handle` shuts it down.
pub async fn serve(
    tcp: std::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    handle: axum_server::Handle<std::net::SocketAddr>,
    limits: ConnectionLimits,
) -> io::Result<()> {
    let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(config))
        .handshake_timeout(HANDSHAKE_TIMEOUT)
        .acceptor(Gate::new(limits));
    let app = app.layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
        limits.body_read_timeout,
    ));
    let mut server = axum_server::from_tcp(tcp)?
        .acceptor(acceptor)
        .handle(handle)
        // Covers the wait for the first request, protocol detection included.
        .first_request_timeout(limits.header_read_timeout);
    server
        .http_builder()
        .http1()
        .header_read_timeout(limits.header_read_timeout);
    // What an agent pushes crosses in these windows: at hyper's 64 KiB a push is capped at
    // window / round trip. They cover 100 Mbit/s up to 160 ms, and bound what one
    // connection can make the server hold unread.
    server
        .http_builder()
        .http2()
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    server.serve(app.into_make_service()).await
}
