//! Sending one request to one endpoint over a pooled connection.

use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;

use super::flags::ResponseFlags;
use crate::upstream::{ConnectError, ConnectionPool, RequestBody};

/// Why an upstream exchange failed before response headers.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("upstream exchange failed: {0}")]
    Exchange(#[source] hyper::Error),
}

// === impl ForwardError ===

impl ForwardError {
    /// Envoy's flag and reset reason for this failure (spec §4.1).
    pub fn classify(&self) -> (ResponseFlags, &'static str) {
        match self {
            ForwardError::Connect(e) => (ResponseFlags::UF, e.reason()),
            ForwardError::Exchange(e) if e.is_parse() || e.is_user() => (ResponseFlags::UPE, "protocol error"),
            ForwardError::Exchange(_) => (ResponseFlags::UC, "connection termination"),
        }
    }
}

/// Sends `req` on a pooled connection to the pool's endpoint. If a reused
/// connection turns out dead before the request was written, hyper hands
/// the request back and it goes out once more on a fresh connection.
pub async fn send(
    pool: &ConnectionPool,
    mut req: Request<RequestBody>,
    connect_timeout: Duration,
) -> Result<(Response<Incoming>, SendRequest<RequestBody>), ForwardError> {
    loop {
        let mut checkout = pool.checkout(connect_timeout).await?;
        match checkout.conn.try_send_request(req).await {
            Ok(response) => return Ok((response, checkout.conn)),
            Err(mut error) => match error.take_message() {
                Some(unsent) if checkout.reused => req = unsent,
                _ => return Err(ForwardError::Exchange(error.into_error())),
            },
        }
    }
}
