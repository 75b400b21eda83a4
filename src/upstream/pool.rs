//! Per-endpoint pool of idle HTTP/1.1 connections.
//!
//! HTTP/1.1 carries one request at a time per connection, so the pool is a
//! LIFO stack of idle [`SendRequest`] handles: the most recently used
//! connection is the warmest (in caches and in the peer's keep-alive
//! timer). A request pops one (skipping any the peer has closed meanwhile)
//! or connects; when its response body has been read to the end, the
//! handle is pushed back. The stack's mutex is per endpoint and held only
//! for a push or pop, never across an await.
//!
//! Connections that the peer closes while idle are found dead on the next
//! checkout (`is_closed`). A request that finds its reused connection dead
//! before anything was written gets its request back from hyper and is
//! sent on a new connection (see [`crate::proxy`]), so a race with an
//! upstream keep-alive timeout never fails a request.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;

use super::body::RequestBody;
use super::connect::{connect, ConnectError};

/// Idle connections kept per endpoint beyond which returned connections
/// are closed: enough for bursts at high concurrency, bounded so a spike of
/// thousands of concurrent requests does not pin as many sockets forever.
const MAX_IDLE: usize = 512;

pub struct ConnectionPool {
    addr: SocketAddr,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<SendRequest<RequestBody>>>,
}

/// A connection ready to carry one request.
pub struct Checkout {
    pub conn: SendRequest<RequestBody>,
    /// Whether it was reused from the pool (a failure on a reused
    /// connection before the request was written is safe to retry).
    pub reused: bool,
}

// === impl ConnectionPool ===

impl ConnectionPool {
    pub fn new(addr: SocketAddr) -> Self {
        ConnectionPool { addr, idle: Mutex::new(Vec::new()) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A ready connection: the newest live idle one, else a new one.
    pub async fn checkout(&self, connect_timeout: Duration) -> Result<Checkout, ConnectError> {
        while let Some(mut conn) = self.pop() {
            if conn.is_closed() {
                continue;
            }
            // Usually ready at once; if the previous response's last bytes
            // are still being processed, this waits for the dispatcher.
            if conn.ready().await.is_ok() {
                return Ok(Checkout { conn, reused: true });
            }
        }
        let conn = connect(self.addr, connect_timeout).await?;
        Ok(Checkout { conn, reused: false })
    }

    /// Returns a connection whose exchange completed.
    pub fn checkin(&self, conn: SendRequest<RequestBody>) {
        if conn.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
        }
    }

    /// Number of idle connections (admin and tests).
    pub fn idle_count(&self) -> usize {
        self.idle.lock().map(|idle| idle.len()).unwrap_or(0)
    }

    fn pop(&self) -> Option<SendRequest<RequestBody>> {
        self.idle.lock().ok()?.pop()
    }
}
