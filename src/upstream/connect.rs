//! Opening an HTTP/1.1 or HTTP/2 connection to an endpoint.
//!
//! The socket gets `TCP_NODELAY` (a proxy writes whole messages) and, when
//! the DestinationRule has a `tcp.tcpKeepalive` block, `SO_KEEPALIVE` with
//! the configured idle time, probe interval and probe count; fields left
//! unset keep the OS defaults (Envoy's `upstream_connection_options`,
//! spec §2.4).

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tracing::debug;

use super::body::RequestBody;
use super::tls::{TlsError, UpstreamTls};
use crate::routing::{Keepalive, PoolSettings};

/// Why a connection could not be made. Both are Envoy's `UF`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection failure: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection timeout after {0:?}")]
    Timeout(Duration),
    #[error("connection failure: handshake: {0}")]
    Handshake(#[source] hyper::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Connects to `addr` within `timeout`, sets the socket options, and
/// spawns the HTTP/1.1 connection's driver task. The task ends when the
/// connection closes; the returned handle sees that as `is_closed()`.
///
/// `guard` lives exactly as long as the connection: it moves into the
/// driver task and is dropped when that task ends, or here if connecting
/// fails. The pool uses it to count open connections.
pub async fn connect<G>(
    addr: SocketAddr,
    timeout: Duration,
    keepalive: Option<&Keepalive>,
    tls: Option<&UpstreamTls>,
    guard: G,
) -> Result<http1::SendRequest<RequestBody>, ConnectError>
where
    G: Send + 'static,
{
    let stream = tcp(addr, timeout, keepalive).await?;
    match tls {
        None => handshake(stream, addr, guard).await,
        Some(tls) => handshake(secure(stream, tls, timeout, false).await?, addr, guard).await,
    }
}

/// As [`connect`], for an HTTP/2 connection (h2c, or ALPN `h2` over TLS)
/// with `settings`' keep-alive PINGs.
pub async fn connect_http2<G>(
    addr: SocketAddr,
    timeout: Duration,
    settings: &PoolSettings,
    tls: Option<&UpstreamTls>,
    guard: G,
) -> Result<http2::SendRequest<RequestBody>, ConnectError>
where
    G: Send + 'static,
{
    let stream = tcp(addr, timeout, settings.tcp_keepalive.as_ref()).await?;
    match tls {
        None => handshake_http2(stream, addr, settings, guard).await,
        Some(tls) => handshake_http2(secure(stream, tls, timeout, true).await?, addr, settings, guard).await,
    }
}

/// A TCP connection to `addr` within `timeout`, with meshd's options.
async fn tcp(addr: SocketAddr, timeout: Duration, keepalive: Option<&Keepalive>) -> Result<TcpStream, ConnectError> {
    let stream =
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    if let Some(keepalive) = keepalive {
        SockRef::from(&stream).set_tcp_keepalive(&tcp_keepalive(keepalive))?;
    }
    Ok(stream)
}

/// The TLS handshake, which gets the connect timeout as well.
async fn secure(
    stream: TcpStream,
    tls: &UpstreamTls,
    timeout: Duration,
    http2: bool,
) -> Result<TlsStream<TcpStream>, ConnectError> {
    let secured = tokio::time::timeout(timeout, tls.connect(stream, http2));
    Ok(secured.await.map_err(|_| ConnectError::Timeout(timeout))??)
}

/// HTTP/1.1 over `io`, its driver task spawned.
async fn handshake<I, G>(io: I, addr: SocketAddr, guard: G) -> Result<http1::SendRequest<RequestBody>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let (send, conn) = http1::Builder::new().handshake(TokioIo::new(io)).await.map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let _guard = guard;
        // With upgrades: a 101 hands the socket to the request path's tunnel.
        if let Err(error) = conn.with_upgrades().await {
            debug!(%addr, %error, "upstream connection ended");
        }
    });
    Ok(send)
}

/// HTTP/2 over `io`, its driver task spawned.
async fn handshake_http2<I, G>(
    io: I,
    addr: SocketAddr,
    settings: &PoolSettings,
    guard: G,
) -> Result<http2::SendRequest<RequestBody>, ConnectError>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    G: Send + 'static,
{
    let mut builder = http2::Builder::new(TokioExecutor::new());
    builder.timer(TokioTimer::new());
    if let Some((interval, timeout)) = settings.http2_keepalive {
        builder.keep_alive_interval(interval).keep_alive_timeout(timeout).keep_alive_while_idle(true);
    }
    let (send, conn) = builder.handshake(TokioIo::new(io)).await.map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        let _guard = guard;
        if let Err(error) = conn.await {
            debug!(%addr, %error, "upstream HTTP/2 connection ended");
        }
    });
    Ok(send)
}

/// socket2's parameters for an Istio `tcpKeepalive` block: only the fields
/// that are set (`set_tcp_keepalive` enables `SO_KEEPALIVE` itself).
fn tcp_keepalive(keepalive: &Keepalive) -> TcpKeepalive {
    let mut params = TcpKeepalive::new();
    if let Some(time) = keepalive.time {
        params = params.with_time(time);
    }
    if let Some(interval) = keepalive.interval {
        params = params.with_interval(interval);
    }
    if let Some(probes) = keepalive.probes {
        params = params.with_retries(probes);
    }
    params
}

// === impl ConnectError ===

impl ConnectError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, ConnectError::Timeout(_))
    }

    /// The reset reason Envoy prints in its 503 body.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "connection timeout",
            ConnectError::Tls(_) => "TLS error",
            _ => "connection failure",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::net::TcpListener;

    #[tokio::test]
    async fn keepalive_options_are_applied() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let keepalive =
            Keepalive { probes: Some(4), time: Some(Duration::from_secs(30)), interval: Some(Duration::from_secs(5)) };
        let stream = TcpStream::connect(addr).await.expect("connect");
        let sock = SockRef::from(&stream);
        assert!(!sock.keepalive().expect("SO_KEEPALIVE"));
        sock.set_tcp_keepalive(&tcp_keepalive(&keepalive)).expect("set keepalive");
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.keepalive_time().expect("TCP_KEEPIDLE"), Duration::from_secs(30));
        assert_eq!(sock.keepalive_interval().expect("TCP_KEEPINTVL"), Duration::from_secs(5));
        assert_eq!(sock.keepalive_retries().expect("TCP_KEEPCNT"), 4);
    }

    #[tokio::test]
    async fn keepalive_block_without_fields_keeps_os_defaults() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let stream = TcpStream::connect(listener.local_addr().expect("addr")).await.expect("connect");
        let sock = SockRef::from(&stream);
        let idle = sock.keepalive_time().expect("TCP_KEEPIDLE");
        sock.set_tcp_keepalive(&tcp_keepalive(&Keepalive { probes: None, time: None, interval: None }))
            .expect("set keepalive");
        assert!(sock.keepalive().expect("SO_KEEPALIVE"));
        assert_eq!(sock.keepalive_time().expect("TCP_KEEPIDLE"), idle);
    }

    #[tokio::test]
    async fn guard_lives_as_long_as_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let guard = std::sync::Arc::new(());
        let send = connect(addr, Duration::from_secs(1), None, None, guard.clone()).await.expect("connect");
        let (server_side, _) = listener.accept().await.expect("accept");
        assert_eq!(std::sync::Arc::strong_count(&guard), 2);
        drop(server_side);
        drop(send);
        for _ in 0..200 {
            if std::sync::Arc::strong_count(&guard) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the driver task kept the guard after the connection closed");
    }
}
