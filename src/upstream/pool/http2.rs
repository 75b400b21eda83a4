//! Per-endpoint pool of HTTP/2 connections: streams multiplexed over as
//! few connections as the limits allow.
//!
//! A checkout follows Envoy's HTTP/2 pool
//! (`source/common/http/http2/conn_pool.cc` over
//! `source/common/conn_pool/conn_pool_base.cc`):
//!
//! 1. A live connection with a free stream (fewer than
//!    `maxConcurrentStreams` in flight, fewer than
//!    `maxRequestsPerConnection` served, not past its maximum duration)
//!    takes the stream at once. Connections the peer closed, or that are
//!    spent, leave the pool on the way; their streams in flight finish.
//! 2. Otherwise the request is *pending*: it takes a slot in the cluster's
//!    `max_pending_requests` or fails with [`PoolError::Overflow`] (`UO`).
//! 3. While connections are being opened, pending requests wait for their
//!    streams, up to what those connections will carry; beyond that a
//!    pending request opens a connection within the cluster's
//!    `max_connections` (one per endpoint always allowed), or waits for a
//!    stream to end or a connection to close.
//!
//! A stream is an RAII [`Http2Stream`]: dropping it (the response body
//! ended, or the request went away) frees its place on the connection and
//! wakes the oldest waiter. A connection leaves the pool's list when it is
//! spent, and closes once its last stream ends and hyper's last handle
//! drops. It counts as open from the attempt until its driver task ends,
//! as in the HTTP/1.1 pool. The state mutex is held only for pushes and
//! pops, never across an await.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use hyper::client::conn::http2::SendRequest;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::super::body::RequestBody;
use super::super::connect::{connect_http2, ConnectError};
use super::super::resources::{ClusterResources, PendingSlot};
use super::super::tls::UpstreamTls;
use super::{lock, ConnectionClosed, OpenConnection, PoolError};
use crate::routing::PoolSettings;

/// The HTTP/2 connections of one endpoint (on one worker).
#[derive(Default)]
pub struct Http2Pool {
    /// Connections, waiters and counts; made at the first checkout, and
    /// shared weakly with streams and driver tasks so that they can wake a
    /// waiter without keeping a removed endpoint's pool alive.
    state: OnceLock<Arc<Mutex<State>>>,
}

#[derive(Default)]
struct State {
    /// Connections that may take new streams, oldest first.
    conns: Vec<Conn>,
    /// Pending checkouts, oldest first. Woken (with nothing) when a stream
    /// ends, a connection opens or closes: they then look again.
    waiters: VecDeque<oneshot::Sender<()>>,
    /// Connections open or being opened: Envoy's "this host has no
    /// connection" test, and `/clusters`.
    open: usize,
    /// Streams the connections being opened will carry: pending requests
    /// up to this many wait for them instead of opening more.
    coming: u64,
    /// Identifies connections, so that a stream finds its own.
    next_id: u64,
}

/// One HTTP/2 connection in the pool.
struct Conn {
    id: u64,
    /// hyper's handle; cloned into each stream.
    sender: SendRequest<RequestBody>,
    /// Streams in flight.
    streams: u32,
    /// Streams it has carried, this one included.
    served: u32,
    /// When it was opened: `max_connection_duration` counts from here.
    created: Instant,
    /// When its last stream ended: the idle timeout counts from here.
    idle_since: Instant,
    /// The settings it was opened with.
    settings: PoolSettings,
}

/// One stream checked out of a connection; its place is freed on drop.
pub struct Http2Stream {
    /// hyper's handle to send the request on.
    sender: SendRequest<RequestBody>,
    /// The connection, to find it again on drop.
    id: u64,
    /// The pool's state; weak, as the endpoint may be gone first.
    pool: Weak<Mutex<State>>,
    /// Whether the connection carried a stream before this one.
    pub reused: bool,
}

/// A connection being opened: its streams are promised to waiters until
/// it opens or fails (or the checkout opening it goes away).
struct Opening {
    pool: Weak<Mutex<State>>,
    /// The streams it promised, taken back on drop.
    streams: u64,
}

enum Step {
    Stream(Http2Stream),
    Connect(OpenConnection<State>, Opening),
    Wait(oneshot::Receiver<()>),
}

// === impl Http2Pool ===

impl Http2Pool {
    /// A stream to `addr`: on a connection with room, else on a new one
    /// (over TLS when `tls` is set), else the next one to free up, within
    /// the cluster's limits.
    pub async fn checkout(
        &self,
        addr: SocketAddr,
        resources: &Arc<ClusterResources>,
        settings: &PoolSettings,
        connect_timeout: Duration,
        tls: Option<&UpstreamTls>,
    ) -> Result<Http2Stream, PoolError> {
        // Held from the moment no connection has room until the checkout
        // ends, one way or another.
        let mut pending = None;
        let mut retrying = false;
        loop {
            match self.next_step(resources, settings, &mut pending, retrying)? {
                Step::Stream(stream) => return Ok(stream),
                Step::Connect(open, opening) => {
                    let connecting = Box::pin(connect_http2(addr, connect_timeout, settings, tls, open));
                    match connecting.await {
                        Ok(sender) => return Ok(self.add(sender, settings, opening)),
                        Err(error) => {
                            resources.connect_failed(matches!(error, ConnectError::Timeout(_)));
                            return Err(error.into());
                        }
                    }
                }
                Step::Wait(rx) => {
                    // Woken, or the sender was dropped: look again.
                    let _ = rx.await;
                    retrying = true;
                }
            }
        }
    }

    /// Closes idle connections past their idle timeout or maximum duration
    /// at `now`, or that the peer closed.
    pub fn evict_idle(&self, now: Instant) {
        if let Some(state) = self.state.get() {
            lock(state).conns.retain(|conn| conn.streams > 0 || conn.usable(now));
        }
    }

    /// Connections without streams in flight.
    pub fn idle_count(&self) -> usize {
        self.state.get().map_or(0, |state| lock(state).conns.iter().filter(|c| c.streams == 0).count())
    }

    /// Connections open or being opened.
    pub fn open_count(&self) -> usize {
        self.state.get().map_or(0, |state| lock(state).open)
    }

    fn next_step(
        &self,
        resources: &Arc<ClusterResources>,
        settings: &PoolSettings,
        pending: &mut Option<PendingSlot>,
        retrying: bool,
    ) -> Result<Step, PoolError> {
        let now = Instant::now();
        let shared = self.shared();
        let mut state = lock(shared);
        state.conns.retain(|conn| conn.usable(now) && !conn.exhausted());
        if let Some(conn) = state.conns.iter_mut().find(|conn| conn.has_room()) {
            return Ok(Step::Stream(conn.stream(Arc::downgrade(shared))));
        }
        if pending.is_none() {
            *pending = Some(resources.try_pending().ok_or(PoolError::Overflow)?);
        }
        let waiting = state.waiters.iter().filter(|w| !w.is_closed()).count() as u64;
        if waiting >= state.coming {
            if let Some(slot) = resources.try_connection(state.open == 0) {
                state.open += 1;
                let streams = u64::from(settings.max_concurrent_streams.max(1));
                state.coming += streams;
                let pool = Arc::downgrade(shared);
                let open = OpenConnection { slot: Some(slot), pool: pool.clone() };
                return Ok(Step::Connect(open, Opening { pool, streams }));
            }
        }
        let (tx, rx) = oneshot::channel();
        if retrying {
            state.waiters.push_front(tx);
        } else {
            state.waiters.push_back(tx);
        }
        Ok(Step::Wait(rx))
    }

    /// Adds a new connection carrying its first stream, and wakes the
    /// waiters.
    fn add(&self, sender: SendRequest<RequestBody>, settings: &PoolSettings, mut opening: Opening) -> Http2Stream {
        let shared = self.shared();
        let mut state = lock(shared);
        let now = Instant::now();
        let id = state.next_id;
        state.next_id += 1;
        let mut conn = Conn { id, sender, streams: 0, served: 0, created: now, idle_since: now, settings: *settings };
        let stream = conn.stream(Arc::downgrade(shared));
        state.conns.push(conn);
        // Under the same lock, the promise becomes the connection, and
        // every waiter looks again: those it has room for take streams,
        // and the ones beyond all promises open connections of their own.
        state.coming = state.coming.saturating_sub(opening.streams);
        while state.wake() {}
        drop(state);
        opening.disarm();
        stream
    }

    fn shared(&self) -> &Arc<Mutex<State>> {
        self.state.get_or_init(Arc::default)
    }
}

// === impl State ===

impl ConnectionClosed for State {
    fn connection_closed(&mut self) {
        self.open = self.open.saturating_sub(1);
        self.wake();
    }
}

impl State {
    /// Wakes the oldest waiter still waiting; `false` if there is none.
    fn wake(&mut self) -> bool {
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.send(()).is_ok() {
                return true;
            }
        }
        false
    }
}

// === impl Conn ===

impl Conn {
    fn stream(&mut self, pool: Weak<Mutex<State>>) -> Http2Stream {
        let reused = self.served > 0;
        self.streams += 1;
        self.served = self.served.saturating_add(1);
        Http2Stream { sender: self.sender.clone(), id: self.id, pool, reused }
    }

    fn has_room(&self) -> bool {
        self.streams < self.settings.max_concurrent_streams.max(1)
    }

    fn usable(&self, now: Instant) -> bool {
        let idle_expired = self.streams == 0
            && self.settings.idle_timeout.is_some_and(|t| now.saturating_duration_since(self.idle_since) >= t);
        let too_old =
            self.settings.max_connection_duration.is_some_and(|max| now.saturating_duration_since(self.created) >= max);
        !self.sender.is_closed() && !idle_expired && !too_old
    }

    fn exhausted(&self) -> bool {
        self.settings.max_requests_per_connection.is_some_and(|max| self.served >= max)
    }
}

// === impl Http2Stream ===

impl Http2Stream {
    /// hyper's handle, to send this stream's request.
    pub fn sender(&mut self) -> &mut SendRequest<RequestBody> {
        &mut self.sender
    }
}

impl Drop for Http2Stream {
    fn drop(&mut self) {
        let Some(state) = self.pool.upgrade() else { return };
        let mut state = lock(&state);
        if let Some(conn) = state.conns.iter_mut().find(|c| c.id == self.id) {
            conn.streams = conn.streams.saturating_sub(1);
            if conn.streams == 0 {
                conn.idle_since = Instant::now();
            }
        }
        state.wake();
    }
}

// === impl Opening ===

impl Opening {
    /// The connection opened: its streams were handed over already.
    fn disarm(&mut self) {
        self.streams = 0;
    }
}

impl Drop for Opening {
    /// The connection failed (or its checkout went away): its promised
    /// streams will not come, so every waiter looks again.
    fn drop(&mut self) {
        if self.streams == 0 {
            return;
        }
        if let Some(state) = self.pool.upgrade() {
            let mut state = lock(&state);
            state.coming = state.coming.saturating_sub(self.streams);
            while state.wake() {}
        }
    }
}
