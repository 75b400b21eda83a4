//! Per-endpoint pool of HTTP/1.1 connections, with Envoy's connection-pool
//! limits.
//!
//! HTTP/1.1 carries one request at a time per connection, so idle
//! connections are a LIFO stack: the most recently used one is the warmest
//! (in caches and in the peer's keep-alive timer). A checkout follows
//! Envoy's HTTP/1.1 pool (`source/common/conn_pool/conn_pool_base.cc`,
//! `newStream` and `tryCreateNewConnection`):
//!
//! 1. An idle live connection is used at once. Ones the peer closed, idle
//!    past their idle timeout or older than their maximum duration are
//!    dropped on the way.
//! 2. Otherwise the request is *pending*: it takes a slot in the cluster's
//!    `max_pending_requests` or fails at once with [`PoolError::Overflow`]
//!    (`UO`).
//! 3. A pending request connects if the cluster is under
//!    `max_connections`, or if this endpoint has no connection at all:
//!    Envoy always allows one per host, so that a host's pending requests
//!    are never stranded behind other hosts' connections. Otherwise it
//!    counts `upstream_cx_overflow` and waits in this endpoint's FIFO queue
//!    until a connection is checked in (handed straight to the oldest
//!    waiter) or one of the endpoint's connections closes (the waiter then
//!    tries again, at the head of the queue).
//!
//! A connection counts in the cluster's `cx_active` and this endpoint's
//! open count from the attempt until its driver task ends, through a guard
//! that the task owns. On check-in, a connection that has served
//! `max_requests_per_connection` requests or outlived
//! `max_connection_duration` is closed rather than pooled; idle ones are
//! closed by [`ConnectionPool::evict_idle`] once past their idle timeout.
//! A connection keeps the settings it was opened with.
//!
//! Every count a checkout takes is an RAII guard, so a checkout dropped
//! midway (the client went away) releases its pending slot, and a
//! connection handed to a waiter that has just gone is passed on. The
//! state mutex is per endpoint and held only for pushes and pops, never
//! across an await.
//!
//! Connections that the peer closes while idle are found dead on the next
//! checkout (`is_closed`). A request that finds its reused connection dead
//! before anything was written gets its request back from hyper and is
//! sent on a new connection (see [`crate::proxy`]), so a race with an
//! upstream keep-alive timeout never fails a request.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, Weak};
use std::time::Duration;

use hyper::client::conn::http1::SendRequest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::body::RequestBody;
use super::connect::{connect, ConnectError};
use super::resources::{ClusterResources, ConnectionSlot, PendingSlot};
use super::tls::UpstreamTls;
use crate::routing::PoolSettings;

pub mod http2;

pub use http2::{Http2Pool, Http2Stream};

/// Idle connections kept per endpoint beyond which returned connections
/// are closed: enough for bursts at high concurrency, bounded so a spike of
/// thousands of concurrent requests does not pin as many sockets forever.
const MAX_IDLE: usize = 512;

/// The connections of one endpoint.
pub struct ConnectionPool {
    /// The endpoint connections are opened to.
    addr: SocketAddr,
    /// Idle connections, waiters and the open count. Shared weakly with
    /// the connections' driver tasks, so that a closing connection can wake
    /// a waiter without keeping a removed endpoint's pool alive. Created
    /// at the first checkout: most endpoints of a large mesh config are
    /// never called from one pod, and each worker has a pool per endpoint.
    state: OnceLock<Arc<Mutex<State>>>,
    /// The endpoint's HTTP/2 connections, for clusters that speak it.
    http2: Http2Pool,
}

struct State {
    /// Idle connections, most recently used last.
    idle: Vec<PooledConn>,
    /// Pending checkouts waiting at the `max_connections` limit, oldest
    /// first. Senders whose checkout went away are skipped when waking and
    /// pruned now and then when queueing.
    waiters: VecDeque<oneshot::Sender<Wake>>,
    /// Connections open or being opened to this endpoint: Envoy's "this
    /// host has no connection" test, and `/clusters`.
    open: usize,
}

/// What a waiting checkout is woken with.
enum Wake {
    /// A connection whose exchange completed, handed over directly.
    Conn(PooledConn),
    /// A connection of this endpoint closed (or failed to open): a
    /// connection slot may be free.
    Closed,
}

/// Why no connection was checked out.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// `max_pending_requests` reached: Envoy's `UO` (counted in
    /// `upstream_rq_pending_overflow`).
    #[error("upstream overflow")]
    Overflow,
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// A connection ready to carry one request.
pub struct Checkout {
    pub conn: PooledConn,
    /// Whether it served a request before (a failure on a reused connection
    /// before the request was written is safe to retry).
    pub reused: bool,
}

/// What one exchange holds upstream until its response ends: an HTTP/1.1
/// connection, or a stream of an HTTP/2 one.
pub enum Lease {
    Http1(PooledConn),
    Http2(Http2Stream),
}

/// One HTTP/1.1 connection, with what the pool needs to retire it.
pub struct PooledConn {
    /// hyper's handle; dropping it closes the connection.
    sender: SendRequest<RequestBody>,
    /// When it was opened: `max_connection_duration` counts from here.
    created: Instant,
    /// When it last went idle: the idle timeout counts from here.
    idle_since: Instant,
    /// Requests it has been checked out for.
    served: u32,
    /// `max_requests_per_connection` when it was opened.
    max_requests: Option<u32>,
    /// `max_connection_duration` when it was opened.
    max_duration: Option<Duration>,
    /// The idle timeout when it was opened.
    idle_timeout: Option<Duration>,
}

/// A connection counted as open, cluster-wide and on its endpoint, until
/// dropped (its driver task ended, or connecting failed).
struct OpenConnection<S: ConnectionClosed = State> {
    /// The cluster-wide count, released before a waiter is woken so that
    /// the waiter can take it.
    slot: Option<ConnectionSlot>,
    /// The endpoint's pool, to decrement its open count and wake a waiter;
    /// weak, as it may be gone (endpoint removed) before the connection.
    pool: Weak<Mutex<S>>,
}

/// A pool's state, told that one of its connections closed.
trait ConnectionClosed {
    /// Decrements the open count and wakes a waiter.
    fn connection_closed(&mut self);
}

/// A checkout in the wait queue. Dropped (the request went away) after
/// being sent something, it passes that on.
struct Waiting<'a> {
    /// Where to pass on what arrives after the checkout went away.
    pool: &'a ConnectionPool,
    /// The checkout's place in the queue.
    rx: oneshot::Receiver<Wake>,
}

/// What a checkout does next, decided under the lock.
enum Step {
    Reuse(PooledConn),
    Connect(OpenConnection),
    Wait(oneshot::Receiver<Wake>),
}

// === impl ConnectionPool ===

impl ConnectionPool {
    pub fn new(addr: SocketAddr) -> Self {
        ConnectionPool { addr, state: OnceLock::new(), http2: Http2Pool::default() }
    }

    /// The endpoint's HTTP/2 connections.
    pub fn http2(&self) -> &Http2Pool {
        &self.http2
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A plain-TCP connection for one request (see [`Self::checkout_with`]).
    pub async fn checkout(
        &self,
        resources: &Arc<ClusterResources>,
        settings: &PoolSettings,
        connect_timeout: Duration,
    ) -> Result<Checkout, PoolError> {
        self.checkout_with(resources, settings, connect_timeout, None).await
    }

    /// A connection for one request: the newest live idle one, else a new
    /// one (over TLS when `tls` is set), else the next one checked in,
    /// within the cluster's limits.
    pub async fn checkout_with(
        &self,
        resources: &Arc<ClusterResources>,
        settings: &PoolSettings,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<Checkout, PoolError> {
        // Held from the moment no idle connection can take the request
        // until the checkout ends, one way or another.
        let mut pending = None;
        let mut retrying = false;
        loop {
            match self.next_step(resources, &mut pending, retrying)? {
                Step::Reuse(conn) => {
                    if let Some(conn) = conn.ready().await {
                        return Ok(Checkout { conn, reused: true });
                    }
                }
                Step::Connect(open) => {
                    // Boxed: connecting is the rare path, and its large
                    // future would otherwise be copied along with every
                    // checkout.
                    // (In its own statement: a temporary of the awaiting
                    // statement would stay in this future's state.)
                    let opening = Box::pin(self.open(resources, settings, connect_timeout, tls, open));
                    let conn = opening.await?;
                    return Ok(Checkout { conn, reused: false });
                }
                Step::Wait(rx) => {
                    let mut waiting = Waiting { pool: self, rx };
                    if let Ok(Wake::Conn(conn)) = (&mut waiting.rx).await {
                        if let Some(conn) = conn.ready().await {
                            return Ok(Checkout { conn, reused: true });
                        }
                    }
                    retrying = true;
                }
            }
        }
    }

    /// Ends an exchange's hold: a completed HTTP/1.1 exchange's connection
    /// is checked in, anything else is dropped (an unfinished HTTP/1.1
    /// connection closes; an HTTP/2 stream frees its place).
    pub fn release(&self, lease: Lease, complete: bool) {
        if let (true, Lease::Http1(conn)) = (complete, lease) {
            self.checkin(conn);
        }
    }

    /// Returns a connection whose exchange completed: to the oldest waiter,
    /// else to the idle stack; closed instead when it is spent.
    pub fn checkin(&self, mut conn: PooledConn) {
        let now = Instant::now();
        if conn.sender.is_closed() || conn.exhausted() || conn.past_max_duration(now) {
            return;
        }
        conn.idle_since = now;
        let mut state = self.lock();
        if let Some(Wake::Conn(conn)) = state.wake(Wake::Conn(conn)) {
            if state.idle.len() < MAX_IDLE {
                state.idle.push(conn);
            }
        }
    }

    /// Closes idle connections that are past their idle timeout or maximum
    /// duration at `now`, or that the peer closed.
    pub fn evict_idle(&self, now: Instant) {
        if let Some(state) = self.state.get() {
            lock(state).idle.retain(|conn| conn.usable(now));
        }
        self.http2.evict_idle(now);
    }

    /// Number of idle connections (HTTP/2 ones without streams included).
    pub fn idle_count(&self) -> usize {
        self.state.get().map_or(0, |state| lock(state).idle.len()) + self.http2.idle_count()
    }

    /// Number of connections open or being opened, of either version.
    pub fn open_count(&self) -> usize {
        self.state.get().map_or(0, |state| lock(state).open) + self.http2.open_count()
    }

    fn next_step(
        &self,
        resources: &Arc<ClusterResources>,
        pending: &mut Option<PendingSlot>,
        retrying: bool,
    ) -> Result<Step, PoolError> {
        let now = Instant::now();
        let mut state = self.lock();
        while let Some(conn) = state.idle.pop() {
            if conn.usable(now) {
                return Ok(Step::Reuse(conn));
            }
        }
        if pending.is_none() {
            *pending = Some(resources.try_pending().ok_or(PoolError::Overflow)?);
        }
        if let Some(slot) = resources.try_connection(state.open == 0) {
            state.open += 1;
            return Ok(Step::Connect(OpenConnection { slot: Some(slot), pool: Arc::downgrade(self.shared()) }));
        }
        let (tx, rx) = oneshot::channel();
        // Drop waiters that went away whenever the queue reaches a power of
        // two: amortised O(1) per push, yet bounded by the live waiters.
        if state.waiters.len().is_power_of_two() {
            state.waiters.retain(|waiter| !waiter.is_closed());
        }
        if retrying {
            state.waiters.push_front(tx);
        } else {
            state.waiters.push_back(tx);
        }
        Ok(Step::Wait(rx))
    }

    async fn open(
        &self,
        resources: &ClusterResources,
        settings: &PoolSettings,
        timeout: Duration,
        tls: Option<&UpstreamTls>,
        open: OpenConnection,
    ) -> Result<PooledConn, PoolError> {
        match connect(self.addr, timeout, settings.tcp_keepalive.as_ref(), tls, open).await {
            Ok(sender) => Ok(PooledConn::new(sender, settings)),
            Err(error) => {
                resources.connect_failed(matches!(error, ConnectError::Timeout(_)));
                Err(error.into())
            }
        }
    }

    fn shared(&self) -> &Arc<Mutex<State>> {
        self.state.get_or_init(|| {
            let state = State { idle: Vec::new(), waiters: VecDeque::new(), open: 0 };
            Arc::new(Mutex::new(state))
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(self.shared())
    }
}

/// A pool's state (of either version). Nothing panics while holding the
/// lock, so a poisoned lock holds consistent state.
fn lock<S>(state: &Mutex<S>) -> MutexGuard<'_, S> {
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

// === impl State ===

impl ConnectionClosed for State {
    fn connection_closed(&mut self) {
        self.open = self.open.saturating_sub(1);
        self.wake(Wake::Closed);
    }
}

impl State {
    /// Sends `wake` to the oldest waiter still waiting; returns it when
    /// there is none.
    fn wake(&mut self, mut wake: Wake) -> Option<Wake> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.send(wake) {
                Ok(()) => return None,
                Err(unsent) => wake = unsent,
            }
        }
        Some(wake)
    }
}

// === impl PooledConn ===

impl PooledConn {
    /// A new connection, checked out for its first request.
    fn new(sender: SendRequest<RequestBody>, settings: &PoolSettings) -> Self {
        let now = Instant::now();
        PooledConn {
            sender,
            created: now,
            idle_since: now,
            served: 1,
            max_requests: settings.max_requests_per_connection,
            max_duration: settings.max_connection_duration,
            idle_timeout: settings.idle_timeout,
        }
    }

    /// hyper's handle, to send this checkout's request.
    pub fn sender(&mut self) -> &mut SendRequest<RequestBody> {
        &mut self.sender
    }

    /// Requests this connection has been checked out for, this one
    /// included.
    pub fn requests_served(&self) -> u32 {
        self.served
    }

    /// Waits until hyper can take a request (usually at once; if the
    /// previous response's last bytes are still being processed, this waits
    /// for the dispatcher) and counts the request; `None` if it died.
    async fn ready(mut self) -> Option<Self> {
        self.sender.ready().await.ok()?;
        self.served = self.served.saturating_add(1);
        Some(self)
    }

    fn usable(&self, now: Instant) -> bool {
        !self.sender.is_closed() && !self.idle_expired(now) && !self.past_max_duration(now)
    }

    fn exhausted(&self) -> bool {
        self.max_requests.is_some_and(|max| self.served >= max)
    }

    fn idle_expired(&self, now: Instant) -> bool {
        self.idle_timeout.is_some_and(|timeout| now.saturating_duration_since(self.idle_since) >= timeout)
    }

    fn past_max_duration(&self, now: Instant) -> bool {
        self.max_duration.is_some_and(|max| now.saturating_duration_since(self.created) >= max)
    }
}

// === impl OpenConnection ===

impl<S: ConnectionClosed> Drop for OpenConnection<S> {
    fn drop(&mut self) {
        drop(self.slot.take());
        if let Some(state) = self.pool.upgrade() {
            lock(&state).connection_closed();
        }
    }
}

// === impl Waiting ===

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.rx.close();
        match self.rx.try_recv() {
            Ok(Wake::Conn(conn)) => self.pool.checkin(conn),
            Ok(Wake::Closed) => {
                self.pool.lock().wake(Wake::Closed);
            }
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
