//! Sending one request to one endpoint over a pooled connection.

use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;

use super::flags::ResponseFlags;
use crate::routing::PoolSettings;
use crate::upstream::tls::UpstreamTls;
use crate::upstream::{ClusterResources, ConnectError, ConnectionPool, PoolError, PooledConn, RequestBody};

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

/// Sends `req` on a pooled connection to the pool's endpoint. If a reused
/// connection turns out dead before the request was written, hyper hands
/// the request back and it goes out once more on a fresh connection.
pub async fn send(
    pool: &ConnectionPool,
    resources: &Arc<ClusterResources>,
    settings: &PoolSettings,
    connect_timeout: Duration,
    tls: Option<&UpstreamTls>,
    mut req: Request<RequestBody>,
) -> Result<(Response<Incoming>, PooledConn), Failed> {
    loop {
        let mut checkout = match pool.checkout_with(resources, settings, connect_timeout, tls).await {
            Ok(checkout) => checkout,
            Err(error) => return Err(Failed { error: error.into(), unsent: Some(req) }),
        };
        match checkout.conn.sender().try_send_request(req).await {
            Ok(response) => return Ok((response, checkout.conn)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if checkout.reused => req = unsent,
                unsent => return Err(Failed { error: ForwardError::Exchange(error.into_error()), unsent }),
            },
        }
    }
}
