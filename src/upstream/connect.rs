//! Opening an HTTP/1.1 connection to an endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tracing::debug;

use super::body::RequestBody;

/// Why a connection could not be made. Both are Envoy's `UF`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection failure: {0}")]
    Io(#[from] std::io::Error),
    #[error("connection timeout after {0:?}")]
    Timeout(Duration),
    #[error("connection failure: handshake: {0}")]
    Handshake(#[source] hyper::Error),
}

/// Connects to `addr` within `timeout`, disables Nagle (a proxy writes
/// whole messages), and spawns the connection's driver task. The task ends
/// when the connection closes; the returned handle sees that as
/// `is_closed()`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<SendRequest<RequestBody>, ConnectError> {
    let stream =
        tokio::time::timeout(timeout, TcpStream::connect(addr)).await.map_err(|_| ConnectError::Timeout(timeout))??;
    stream.set_nodelay(true)?;
    let (send, conn) = http1::Builder::new().handshake(TokioIo::new(stream)).await.map_err(ConnectError::Handshake)?;
    tokio::spawn(async move {
        if let Err(error) = conn.await {
            debug!(%addr, %error, "upstream connection ended");
        }
    });
    Ok(send)
}

// === impl ConnectError ===

impl ConnectError {
    /// The reset reason Envoy prints in its 503 body.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Timeout(_) => "connection timeout",
            _ => "connection failure",
        }
    }
}
