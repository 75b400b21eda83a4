//! Hostile and slow downstream clients: what hyper refuses on its own,
//! what meshd refuses on top, and the connection limits and timeouts.
//!
//! # Malformed requests
//!
//! hyper's HTTP/1 parser (httparse) already answers 400 and closes for:
//! two different `Content-Length`s, a `Transfer-Encoding` whose last coding
//! is not `chunked` (`chunked, identity`, `xchunked`), bad chunk sizes,
//! header names with spaces, NUL or bare CR in values, bare LF line ends
//! in the request line. It answers 431 when the head outgrows
//! `max_header_size` or has more than `max_headers` headers, and 414 only
//! past 64 KiB of URI. `Content-Length` together with `Transfer-Encoding:
//! chunked` is read as chunked, the length dropped and the connection
//! closed after the response (RFC 9112 §6.3); nothing of the request can
//! be smuggled, so meshd lets hyper handle it.
//!
//! [`check`] adds, per request, the checks hyper leaves to the
//! application, before routing: a target longer than [`MAX_URI_BYTES`]
//! (414), the asterisk form on anything but `OPTIONS` (400), a `Host`
//! that disagrees with the authority of an absolute-form target (HTTP/1.1)
//! or `:authority` (HTTP/2) (400; Envoy refuses the HTTP/2 case too), and a
//! declared body longer than `--max-request-body` (413). Each is a few
//! comparisons on what hyper parsed; nothing is allocated unless the
//! request is refused. Each refusal is counted in
//! `meshd_downstream_requests_refused_total{reason}`.
//!
//! # Request bodies
//!
//! A body of unannounced length (HTTP/1.1 chunked, HTTP/2 without
//! `content-length`) is held to `--max-request-body` as it streams, and
//! every body to `--request-body-timeout` (5 min, Envoy's
//! `stream_idle_timeout`; 0: off) while meshd waits for its next frame;
//! see [`super::request_body`]. Past the limit the client gets 413 (`DPE`),
//! on the timeout 408 `stream timeout` (`SI`), if no response has started;
//! the upstream request is aborted either way, so the upstream never
//! receives a complete request, and an HTTP/1 connection is closed.
//!
//! # Connections
//!
//! `--max-connections` stops nothing at the socket: a connection over the
//! limit is accepted and closed at once (counted in
//! `meshd_downstream_connections_refused_total`), so the backlog never
//! fills with connections nobody will read.
//!
//! # Timeouts
//!
//! - Request headers (`--request-headers-timeout`, 60 s): hyper's HTTP/1
//!   `header_read_timeout`. hyper starts it whenever it waits for a request
//!   head, so on a keep-alive connection it also bounds the idle time
//!   between requests (like nginx's `keepalive_timeout`, 75 s). Envoy
//!   leaves `request_headers_timeout` unset; a sidecar facing slowloris
//!   should not. It costs one boxed timer per request head.
//! - Idle connection (`--idle-timeout`, 1 h, Envoy's HTTP `idle_timeout`):
//!   a connection on which no byte moved either way for this long is
//!   closed. [`Activity`] counts reads and writes (a relaxed add on an
//!   atomic the connection owns); a watchdog wakes once per period and
//!   closes the connection when the count has not moved. It covers HTTP/2,
//!   where hyper has no idle timeout, and a stalled request body when it is
//!   shorter than the request body timeout (`kind="idle"`).
//! - Request body (`--request-body-timeout`, 5 min): above; it ends the
//!   request (and an HTTP/1 connection) with 408 `SI`.
//!
//! Each timeout counts
//! `meshd_downstream_timeouts_total{kind="request_headers"|"idle"|"request_body"}`.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{header, Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::flags::ResponseFlags;
use super::local::LocalReply;

/// Longest request target accepted (414 past it); hyper's own limit is
/// 64 KiB. 8 KiB is what most servers take (nginx's default buffer).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// Largest request head (request line and headers) of HTTP/1.1, and the
/// header list of HTTP/2 (431 past it): Envoy's `max_request_headers_kb`
/// default, 60 KiB.
pub const MAX_HEADER_BYTES: usize = 60 * 1024;

/// Most headers in a request (431 past it): Envoy's
/// `max_headers_count` default, 100.
pub const MAX_HEADERS: usize = 100;

/// HTTP/2 streams a client may have open at once (Envoy: 2^31 - 1; 100
/// is what most servers advertise).
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2 streams a client may reset before meshd has accepted them
/// (rapid reset, CVE-2023-44487); past it hyper sends GOAWAY. hyper's
/// default, set explicitly.
pub const H2_MAX_PENDING_ACCEPT_RESET_STREAMS: usize = 20;

/// HTTP/2 streams meshd may reset for the client's protocol errors before
/// it closes the connection (CVE-2023-44487's variant, CVE-2024-27316's
/// kin); hyper's default, set explicitly.
pub const H2_MAX_LOCAL_ERROR_RESET_STREAMS: usize = 1024;

/// How per-connection limits and timeouts are configured.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest request body, declared or streamed (413 past it); `None`:
    /// unlimited (`--max-request-body`).
    pub max_request_body: Option<u64>,
    /// Downstream connections open at once, per listener set; more are
    /// accepted and closed (`--max-connections`).
    pub max_connections: Option<usize>,
    /// How long a client has to send a request head, counted from when
    /// meshd starts waiting for it (`--request-headers-timeout`); zero
    /// turns it off.
    pub request_headers_timeout: Duration,
    /// How long a connection may carry no bytes at all (`--idle-timeout`);
    /// zero turns it off.
    pub idle_timeout: Duration,
    /// How long meshd waits for the next frame of a request body; zero:
    /// forever (`--request-body-timeout`).
    pub request_body_timeout: Duration,
}

/// Why [`check`] refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub enum Refusal {
    UriTooLong,
    Asterisk,
    HostMismatch,
    BodyTooLarge,
}

/// Counts the bytes a connection moves, for the idle watchdog.
pub struct Activity<I> {
    io: I,
    /// Bumped on every read or write that made progress.
    moved: Arc<AtomicU64>,
}

/// Connections open now, against `--max-connections`.
#[derive(Default)]
pub struct ConnectionCount {
    open: AtomicUsize,
}

/// A connection's place in the [`ConnectionCount`], given back on drop.
pub struct ConnectionSlot(Arc<ConnectionCount>);

// === impl Limits ===

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_body: None,
            max_connections: None,
            request_headers_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3600),
            request_body_timeout: Duration::from_secs(300),
        }
    }
}

// === impl Refusal ===

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::UriTooLong => StatusCode::URI_TOO_LONG,
            Refusal::Asterisk | Refusal::HostMismatch => StatusCode::BAD_REQUEST,
            Refusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        }
    }

    /// The `reason` label of `meshd_downstream_requests_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::UriTooLong => "uri_too_long",
            Refusal::Asterisk => "asterisk_form",
            Refusal::HostMismatch => "host_mismatch",
            Refusal::BodyTooLarge => "body_too_large",
        }
    }

    /// The local reply: the status, `DPE`, the message, and the end of an
    /// HTTP/1 connection (`http1`).
    pub fn reply(self, http1: bool) -> LocalReply {
        LocalReply::new(self.status(), ResponseFlags::DPE, self.message()).closing_http1(http1)
    }

    /// The reply's body.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::UriTooLong => "request target too long",
            Refusal::Asterisk => "asterisk-form target on a method other than OPTIONS",
            Refusal::HostMismatch => "Host disagrees with the request's authority",
            Refusal::BodyTooLarge => "request body too large",
        }
    }
}

/// The refusal `req` earns, if any (see the module docs); no allocation.
pub fn check<B>(req: &Request<B>, limits: &Limits) -> Option<Refusal> {
    let uri = req.uri();
    let target_len = uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target_len > MAX_URI_BYTES {
        return Some(Refusal::UriTooLong);
    }
    if uri.path() == "*" && req.method() != Method::OPTIONS {
        return Some(Refusal::Asterisk);
    }
    if let (Some(authority), Some(host)) = (uri.authority(), req.headers().get(header::HOST)) {
        if !same_authority(host.as_bytes(), authority.as_str().as_bytes()) {
            return Some(Refusal::HostMismatch);
        }
    }
    // More than one `Host` is refused too (RFC 9112 §3.2); hyper keeps
    // them all and the upstream would pick one.
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Some(Refusal::HostMismatch);
    }
    if let Some(max) = limits.max_request_body {
        let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|len| len > max) {
            return Some(Refusal::BodyTooLarge);
        }
    }
    None
}

/// Whether two authorities name the same host and port, ignoring case
/// and a default port (`:80`, `:443`) on either side (clients differ on
/// whether `Host` carries it).
fn same_authority(a: &[u8], b: &[u8]) -> bool {
    fn without_default_port(x: &[u8]) -> &[u8] {
        x.strip_suffix(b":80").or_else(|| x.strip_suffix(b":443")).unwrap_or(x)
    }
    without_default_port(a).eq_ignore_ascii_case(without_default_port(b))
}

// === impl Activity ===

impl<I> Activity<I> {
    /// `io`, and the counter its watchdog reads.
    pub fn new(io: I) -> (Self, Arc<AtomicU64>) {
        let moved = Arc::new(AtomicU64::new(0));
        (Activity { io, moved: moved.clone() }, moved)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Activity<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() != before {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Activity<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A timeout of zero means none (Envoy's convention for its timeouts).
pub fn nonzero(timeout: Duration) -> Option<Duration> {
    (!timeout.is_zero()).then_some(timeout)
}

/// Resolves once `moved` has not changed for a whole `period`: the
/// connection is idle.
pub async fn idle(moved: &AtomicU64, period: Duration) {
    if period.is_zero() {
        return std::future::pending().await;
    }
    let mut last = moved.load(Ordering::Relaxed);
    loop {
        tokio::time::sleep(period).await;
        let now = moved.load(Ordering::Relaxed);
        if now == last {
            return;
        }
        last = now;
    }
}

// === impl ConnectionCount ===

impl ConnectionCount {
    /// A slot for one more connection, or `None` when `max` are open.
    pub fn acquire(self: &Arc<Self>, max: Option<usize>) -> Option<ConnectionSlot> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        if max.is_some_and(|max| open >= max) {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ConnectionSlot(self.clone()))
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str, host: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        builder.body(()).unwrap_or_default()
    }

    #[test]
    fn refusals() {
        let limits = Limits { max_request_body: Some(10), ..Limits::default() };
        assert_eq!(check(&req(Method::GET, "/", Some("a")), &limits), None);
        assert_eq!(check(&req(Method::GET, "*", Some("a")), &limits), Some(Refusal::Asterisk));
        assert_eq!(check(&req(Method::OPTIONS, "*", Some("a")), &limits), None);
        assert_eq!(check(&req(Method::GET, "http://a/x", Some("A")), &limits), None);
        assert_eq!(check(&req(Method::GET, "http://a/x", Some("b")), &limits), Some(Refusal::HostMismatch));
        assert_eq!(check(&req(Method::GET, "http://a:80/x", Some("a")), &limits), None);
        assert_eq!(check(&req(Method::GET, "http://a:8080/x", Some("a")), &limits), Some(Refusal::HostMismatch));
        let long = format!("/{}", "x".repeat(MAX_URI_BYTES));
        assert_eq!(check(&req(Method::GET, &long, Some("a")), &limits), Some(Refusal::UriTooLong));
        let mut big = req(Method::POST, "/", Some("a"));
        big.headers_mut().insert(header::CONTENT_LENGTH, 11.into());
        assert_eq!(check(&big, &limits), Some(Refusal::BodyTooLarge));
    }

    #[test]
    fn connection_count() {
        let count = Arc::new(ConnectionCount::default());
        let first = count.acquire(Some(1));
        assert!(first.is_some());
        assert!(count.acquire(Some(1)).is_none());
        drop(first);
        assert!(count.acquire(Some(1)).is_some());
    }
}
