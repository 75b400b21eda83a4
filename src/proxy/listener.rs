//! Accepting downstream connections and serving HTTP/1.1 and HTTP/2 (h2c
//! prior knowledge, detected from the connection preface by
//! [`detect`](super::detect)) on them, with hyper's own HTTP/1 and HTTP/2
//! servers.
//!
//! The limits hyper enforces are set explicitly in [`Servers::new`] (see
//! [`limits`] for what each guards against); a connection
//! over `--max-connections` is accepted and closed at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, warn};

use super::body::ProxyBody;
use super::detect::{detect, Protocol};
use super::limits::{self, Activity};
use super::service::{handle, Downstream};
use super::terminate::Termination;
use super::xfcc::ForwardClientCert;
use super::Proxy;

/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The boxed future of one request (see [`serve`]).
type RequestFuture = Pin<Box<dyn Future<Output = Result<http::Response<ProxyBody>, std::convert::Infallible>> + Send>>;

/// Serves `listener` until `shutdown` turns true, then drains: stops
/// accepting, tells every open connection to finish its current request
/// and close (HTTP/1.1: no more keep-alive; HTTP/2: GOAWAY), and returns
/// once all have closed or `drain_timeout` has passed. Each connection
/// task holds a clone of one sender; the drain is complete when the last
/// is dropped (mini-redis's shutdown pattern).
pub async fn serve(listener: TcpListener, proxy: Arc<Proxy>, shutdown: watch::Receiver<bool>, drain_timeout: Duration) {
    serve_on(listener, None, None, proxy, shutdown, drain_timeout).await
}

/// The next connection of `listener`, or `None` once `shutdown` turns
/// true. Accept errors (out of file descriptors and the like) are logged
/// and retried after a short pause instead of spinning; the listener stays
/// open.
pub async fn next_connection(
    listener: &TcpListener,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, std::net::SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => return Some(accepted),
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The TLS termination of an `HTTPS` listener, replaced when its
/// certificates or settings change (new connections take the new one).
pub type TlsConfig = Arc<ArcSwapOption<Termination>>;

/// [`serve`] for the listener of a Gateway's port (`gateway`), which
/// routes by that port's table, terminating TLS when `tls` is set (a
/// connection accepted while it holds no configuration is closed).
/// Gateway connections set or remove `x-forwarded-client-cert`
/// ([`ForwardClientCert`]); the mesh listeners leave it alone.
pub async fn serve_on(
    listener: TcpListener,
    gateway: Option<u16>,
    tls: Option<TlsConfig>,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    let servers = Arc::new(Servers::new(&proxy));
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let Some(slot) = proxy.connections.acquire(proxy.limits.max_connections) else {
            proxy.metrics.downstream_refused.inc();
            debug!(%peer, "over --max-connections; closed");
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            debug!(%error, "set_nodelay failed");
        }
        let termination = match &tls {
            None => None,
            Some(tls) => match tls.load_full() {
                Some(termination) => Some(termination),
                None => continue,
            },
        };
        let scheme = if termination.is_some() { "https" } else { "http" };
        let client_cert = match gateway {
            None => ForwardClientCert::Untouched,
            // Replaced after the handshake on TLS connections.
            Some(_) => ForwardClientCert::Sanitize,
        };
        let access_log = proxy.access_log.connection(&stream, peer);
        let downstream = Downstream { peer, scheme, gateway, client_cert, access_log, capture: None };
        let proxy_for_conn = proxy.clone();
        let (servers, open, shutdown) = (servers.clone(), open.clone(), shutdown.clone());
        let gauge = proxy.metrics.downstream_connections.clone();
        gauge.inc();
        tokio::spawn(async move {
            let served = match termination {
                None => servers.serve(stream, request_service(proxy_for_conn, downstream), shutdown).await,
                Some(termination) => {
                    let service = |client_cert, server_name: Option<&str>| {
                        let access_log = downstream.access_log.as_ref().map(|log| log.with_server_name(server_name));
                        request_service(proxy_for_conn, Downstream { client_cert, access_log, ..downstream })
                    };
                    servers.serve_tls(stream, &termination, service, shutdown).await
                }
            };
            if let Err(error) = served {
                debug!(%peer, %error, "downstream connection ended with an error");
            }
            gauge.dec();
            drop(slot);
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    if tokio::time::timeout(drain_timeout, all_closed.recv()).await.is_err() {
        warn!(?drain_timeout, "drain timeout passed with connections still open");
    }
}

/// Serves HTTP on a connection whose first bytes said `protocol` (sidecar
/// capture sniffs before it knows the connection is HTTP), until it closes
/// or a drain ends it.
pub async fn serve_sniffed(
    servers: &Servers,
    stream: TcpStream,
    protocol: Protocol,
    proxy: Arc<Proxy>,
    downstream: Downstream,
    shutdown: watch::Receiver<bool>,
) -> Result<(), hyper::Error> {
    servers.serve_http(stream, protocol, request_service(proxy, downstream), shutdown).await
}

/// The request path as one connection's service.
///
/// The request future is boxed: hyper keeps a slot of the service
/// future's size in every connection for its whole life, so an unboxed
/// ~4 KB state machine would cost each idle keep-alive connection ~4 KB;
/// boxed, it is allocated per request instead.
fn request_service(proxy: Arc<Proxy>, downstream: Downstream) -> impl HttpService<Future = RequestFuture> {
    service_fn(move |req| {
        let (proxy, downstream) = (proxy.clone(), downstream.clone());
        let respond: RequestFuture = Box::pin(async move { Ok(handle(proxy, downstream, req).await) });
        respond
    })
}

/// The HTTP/1 and HTTP/2 server settings every connection of a listener
/// shares, and the idle timeout.
pub struct Servers {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    /// A connection moving no bytes for this long is closed.
    idle_timeout: Duration,
    /// How long a new connection has to send its first bytes (then hyper's
    /// header read timeout, the same length, takes over); `None`: no limit.
    first_bytes_timeout: Option<Duration>,
    /// `meshd_downstream_timeouts_total{kind="request_headers"}`.
    header_timeouts: prometheus::IntCounter,
    /// `meshd_downstream_timeouts_total{kind="idle"}`.
    idle_timeouts: prometheus::IntCounter,
}

// === impl Servers ===

impl Servers {
    /// The servers for `proxy`'s limits. Every limit is set explicitly,
    /// even where it is hyper's default, so an upgrade of hyper cannot
    /// loosen one unnoticed:
    ///
    /// - HTTP/1: request head at most [`limits::MAX_HEADER_BYTES`] and
    ///   [`limits::MAX_HEADERS`] headers (431), the head within
    ///   `request_headers_timeout` (hyper starts it when it waits for a
    ///   head, so it bounds keep-alive idleness too; one boxed timer per
    ///   request head, the price of slowloris protection).
    /// - HTTP/2: header list at most [`limits::MAX_HEADER_BYTES`]
    ///   (`SETTINGS_MAX_HEADER_LIST_SIZE`; a CONTINUATION flood hits it
    ///   and h2 refuses the stream), [`limits::H2_MAX_CONCURRENT_STREAMS`],
    ///   rapid reset bounded by `max_pending_accept_reset_streams` and
    ///   `max_local_error_reset_streams` (GOAWAY past them). A SETTINGS
    ///   flood is bounded by h2 itself: it queues at most one pending
    ///   SETTINGS ACK per read and answers each before reading more.
    pub fn new(proxy: &Proxy) -> Self {
        let limits = &proxy.limits;
        let mut http1 = http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(limits::nonzero(limits.request_headers_timeout))
            .keep_alive(true)
            .max_headers(limits::MAX_HEADERS)
            .max_header_size(limits::MAX_HEADER_BYTES)
            .max_buf_size(limits::MAX_HEADER_BYTES + 4096);
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_header_list_size(limits::MAX_HEADER_BYTES as u32)
            .max_concurrent_streams(limits::H2_MAX_CONCURRENT_STREAMS)
            .max_pending_accept_reset_streams(limits::H2_MAX_PENDING_ACCEPT_RESET_STREAMS)
            .max_local_error_reset_streams(limits::H2_MAX_LOCAL_ERROR_RESET_STREAMS);
        let timeouts = &proxy.metrics.downstream_timeouts;
        Servers {
            http1,
            http2,
            idle_timeout: limits.idle_timeout,
            first_bytes_timeout: limits::nonzero(limits.request_headers_timeout),
            header_timeouts: timeouts.with_label_values(&["request_headers"]),
            idle_timeouts: timeouts.with_label_values(&["idle"]),
        }
    }

    /// Serves one connection. Until its first bytes arrive it holds no
    /// HTTP state, a drain closes it at once, and so does the request
    /// headers timeout; after that a drain lets
    /// it finish its requests (HTTP/1.1: no more keep-alive; HTTP/2:
    /// GOAWAY). HTTP/1.1 connections may be upgraded (WebSocket and other
    /// `Upgrade`s); the request path tunnels them.
    async fn serve<S>(
        &self,
        stream: TcpStream,
        service: S,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error>
    where
        S: HttpService,
        S::Future: Send + 'static,
    {
        let first_bytes = async {
            match self.first_bytes_timeout {
                Some(limit) => tokio::time::timeout(limit, detect(&stream)).await,
                None => Ok(detect(&stream).await),
            }
        };
        let detected = tokio::select! {
            detected = first_bytes => detected,
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let Ok(detected) = detected else {
            self.header_timeouts.inc();
            return Ok(());
        };
        match detected {
            Ok(Some(protocol)) => self.serve_http(stream, protocol, service, shutdown).await,
            Ok(None) => Ok(()),
            Err(error) => {
                debug!(%error, "reading the first bytes failed");
                Ok(())
            }
        }
    }

    /// [`Self::serve`] behind a TLS handshake; ALPN chooses the protocol.
    /// The service is made after the handshake, from what the client's
    /// certificate says for `x-forwarded-client-cert` and the SNI it sent.
    async fn serve_tls<S>(
        &self,
        stream: TcpStream,
        termination: &Termination,
        service: impl FnOnce(ForwardClientCert, Option<&str>) -> S,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error>
    where
        S: HttpService,
        S::Future: Send + 'static,
    {
        let acceptor = TlsAcceptor::from(termination.config.clone());
        let accept = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let tls = tokio::select! {
            accepted = accept => match accepted {
                Ok(Ok(tls)) => tls,
                Ok(Err(error)) => {
                    debug!(%error, "TLS handshake failed");
                    return Ok(());
                }
                Err(_) => return Ok(()),
            },
            _ = shutdown.wait_for(|stop| *stop) => return Ok(()),
        };
        let session = tls.get_ref().1;
        let protocol = if session.alpn_protocol() == Some(b"h2") { Protocol::Http2 } else { Protocol::Http1 };
        let leaf = session.peer_certificates().and_then(|chain| chain.first());
        let local_uris = termination.local_uri_sans(session.server_name());
        let client_cert = ForwardClientCert::gateway(leaf.map(|cert| cert.as_ref()), local_uris);
        let service = service(client_cert, session.server_name());
        self.serve_http(tls, protocol, service, shutdown).await
    }

    /// HTTP/1.1 or HTTP/2 on `io` until it closes, a drain ends it, or it
    /// stays idle past the idle timeout.
    async fn serve_http<I, S>(
        &self,
        io: I,
        protocol: Protocol,
        service: S,
        shutdown: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        S: HttpService,
        S::Future: Send + 'static,
    {
        let (io, moved) = Activity::new(io);
        let ended = match protocol {
            Protocol::Http1 => {
                let conn = std::pin::pin!(self.http1.serve_connection(TokioIo::new(io), service).with_upgrades());
                self.run(conn, &moved, shutdown).await
            }
            // Boxed: HTTP/2 connections are few next to HTTP/1 ones, and
            // inline its state would size every connection's task.
            Protocol::Http2 => {
                let mut conn = Box::pin(self.http2.serve_connection(TokioIo::new(io), service));
                self.run(conn.as_mut(), &moved, shutdown).await
            }
        };
        if let Err(error) = &ended {
            if error.is_timeout() {
                self.header_timeouts.inc();
            }
        }
        ended
    }

    /// Runs `conn` until it ends; closes it when nothing moved on it for
    /// the idle timeout (counted); on a drain, lets it finish its requests.
    async fn run<C: GracefulConnection>(
        &self,
        mut conn: Pin<&mut C>,
        moved: &Arc<std::sync::atomic::AtomicU64>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), hyper::Error> {
        tokio::select! {
            ended = conn.as_mut() => ended,
            _ = limits::idle(moved, self.idle_timeout) => {
                self.idle_timeouts.inc();
                Ok(())
            }
            _ = drained(&mut shutdown) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    }
}

/// A hyper server connection of either version: it runs to its end, or
/// finishes its requests and closes when told to.
trait GracefulConnection: Future<Output = Result<(), hyper::Error>> {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: HttpService,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http1::UpgradeableConnection::graceful_shutdown(self)
    }
}

impl<I, S> GracefulConnection for http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: HttpService,
    S::Future: Send + 'static,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        http2::Connection::graceful_shutdown(self)
    }
}

/// Resolves once `shutdown` turns true (holding no `watch::Ref`, which is
/// not `Send`, past its end).
async fn drained(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// The service every connection runs: the request path.
trait HttpService:
    hyper::service::Service<
        http::Request<hyper::body::Incoming>,
        Response = http::Response<ProxyBody>,
        Error = std::convert::Infallible,
    > + Send
    + 'static
{
}

impl<S> HttpService for S where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<ProxyBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static
{
}
