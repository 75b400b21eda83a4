//! Sending one request to one endpoint over a pooled connection: an
//! HTTP/1.1 connection of its own, or a stream of an HTTP/2 one.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{self, Authority, PathAndQuery, Scheme};
use http::{header, Request, Response, Uri, Version};
use hyper::body::Incoming;

use super::flags::ResponseFlags;
use crate::routing::PoolSettings;
use crate::upstream::tls::UpstreamTls;
use crate::upstream::{ClusterResources, ConnectError, ConnectionPool, Lease, PoolError, RequestBody};

/// Why an upstream exchange failed before response headers.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A circuit breaker is open (`max_pending_requests`).
    #[error("upstream overflow")]
    Overflow,
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] hyper::Error),
    /// `perTryTimeout` expired before the response headers.
    #[error("per-try timeout")]
    PerTryTimeout,
}

// === impl ForwardError ===

impl From<PoolError> for ForwardError {
    fn from(error: PoolError) -> Self {
        match error {
            PoolError::Overflow => ForwardError::Overflow,
            PoolError::Connect(e) => ForwardError::Connect(e),
        }
    }
}

impl ForwardError {
    /// Envoy's flag and reset reason for this failure (spec §4.1).
    pub fn classify(&self) -> (ResponseFlags, &'static str) {
        match self {
            ForwardError::Overflow => (ResponseFlags::UO, "overflow"),
            ForwardError::Connect(e) => (ResponseFlags::UF, e.reason()),
            ForwardError::Exchange(e) if e.is_parse() || e.is_user() => (ResponseFlags::UPE, "protocol error"),
            ForwardError::Exchange(_) => (ResponseFlags::UC, "connection termination"),
            ForwardError::PerTryTimeout => (ResponseFlags::UT, "timeout"),
        }
    }
}

/// A failed attempt, with the request when it was never sent (so a retry
/// can send it, whatever its body).
pub struct Failed {
    pub error: ForwardError,
    pub unsent: Option<Request<RequestBody>>,
}

/// Where and how one attempt is sent.
pub struct Target<'a> {
    pub pool: &'a ConnectionPool,
    pub resources: &'a Arc<ClusterResources>,
    pub settings: &'a PoolSettings,
    pub connect_timeout: Duration,
    pub tls: Option<&'a UpstreamTls>,
    /// Over HTTP/2 (a stream of a multiplexed connection) rather than
    /// HTTP/1.1.
    pub http2: bool,
}

/// Sends `req` on a pooled connection to the pool's endpoint. If a reused
/// connection turns out dead before the request was written, hyper hands
/// the request back and it goes out once more on a fresh connection.
pub async fn send(target: Target<'_>, mut req: Request<RequestBody>) -> Result<(Response<Incoming>, Lease), Failed> {
    if target.http2 {
        // Boxed: HTTP/2 upstreams are the rarer case, and this keeps their
        // state out of every HTTP/1.1 attempt's future.
        let sending = Box::pin(send_http2(target, req));
        return sending.await;
    }
    let Target { pool, resources, settings, connect_timeout, tls, .. } = target;
    loop {
        let mut checkout = match pool.checkout_with(resources, settings, connect_timeout, tls).await {
            Ok(checkout) => checkout,
            Err(error) => return Err(Failed { error: error.into(), unsent: Some(req) }),
        };
        match checkout.conn.sender().try_send_request(req).await {
            Ok(response) => return Ok((response, Lease::Http1(checkout.conn))),
            Err(mut error) => match error.take_message() {
                Some(unsent) if checkout.reused => req = unsent,
                unsent => return Err(Failed { error: ForwardError::Exchange(error.into_error()), unsent }),
            },
        }
    }
}

/// [`send`] on a stream of an HTTP/2 connection.
async fn send_http2(target: Target<'_>, mut req: Request<RequestBody>) -> Result<(Response<Incoming>, Lease), Failed> {
    let Target { pool, resources, settings, connect_timeout, tls, .. } = target;
    let scheme = if tls.is_some() { Scheme::HTTPS } else { Scheme::HTTP };
    to_http2(&mut req, scheme);
    loop {
        let mut stream = match pool.http2().checkout(pool.addr(), resources, settings, connect_timeout, tls).await {
            Ok(stream) => stream,
            Err(error) => return Err(Failed { error: error.into(), unsent: Some(req) }),
        };
        match stream.sender().try_send_request(req).await {
            Ok(response) => return Ok((response, Lease::Http2(stream))),
            Err(mut error) => match error.take_message() {
                Some(unsent) if stream.reused => req = unsent,
                unsent => return Err(Failed { error: ForwardError::Exchange(error.into_error()), unsent }),
            },
        }
    }
}

/// The HTTP/2 form of an upstream request (made in HTTP/1.1 form): the
/// `Host` header becomes the `:authority` of an absolute URI with
/// `scheme`. A `Host` that is no valid authority stays a header.
fn to_http2<B>(req: &mut Request<B>, scheme: Scheme) {
    *req.version_mut() = Version::HTTP_2;
    let Some(authority) = req.headers().get(header::HOST).and_then(|h| Authority::try_from(h.as_bytes()).ok()) else {
        return;
    };
    let mut parts = uri::Parts::default();
    parts.scheme = Some(scheme);
    parts.authority = Some(authority);
    parts.path_and_query = Some(req.uri().path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/")));
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
        req.headers_mut().remove(header::HOST);
    }
}
