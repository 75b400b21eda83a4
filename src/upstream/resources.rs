//! Cluster-wide circuit breakers: Envoy's `circuit_breakers.thresholds[0]`
//! (default priority) and the counters and gauges that go with them.
//!
//! Envoy keeps one resource manager per cluster per proxy, shared by all
//! workers, so every limit is cluster-wide, not per endpoint (spec §2.4;
//! Envoy's "Circuit breaking" architecture overview). [`ClusterResources`]
//! is that manager: one per [`Cluster`](super::Cluster), shared by its
//! endpoints' pools and by the request path.
//!
//! - `max_connections` (`tcp.maxConnections`): connections open or being
//!   opened to all endpoints. Reaching it does not fail a request: the pool
//!   counts `upstream_cx_overflow` and queues the request (see
//!   [`ConnectionPool`](super::ConnectionPool)).
//! - `max_pending_requests` (`http.http1MaxPendingRequests`): requests
//!   waiting for a connection. Overflow fails the request at once with
//!   `UO`; counted in `upstream_rq_pending_overflow`.
//! - `max_requests` (`http.http2MaxRequests`): requests in flight. Overflow
//!   is also `UO` and also counted in `upstream_rq_pending_overflow`, as
//!   Envoy does.
//! - `max_retries` (`http.maxRetries`): retries in flight. Overflow skips
//!   the retry (`upstream_rq_retry_overflow`).
//!
//! Every count is an atomic and every slot an RAII guard, so the request
//! path takes no lock and a request that goes away (client reset, dropped
//! future) gives its slots back. Thresholds are atomics too: a reload
//! changes them in place without touching counts in use; lowering a limit
//! below what is in use refuses new slots until enough are released, as in
//! Envoy. The `*_open` gauges are derived when read: 1 while the active
//! count is at or above its limit (Envoy sets them the same way).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::routing::CircuitBreakers;

/// One cluster's thresholds and counters.
pub struct ClusterResources {
    /// `tcp.maxConnections`; replaced on reload.
    max_connections: AtomicU64,
    /// `http.http1MaxPendingRequests`; replaced on reload.
    max_pending_requests: AtomicU64,
    /// `http.http2MaxRequests`; replaced on reload.
    max_requests: AtomicU64,
    /// `http.maxRetries`; replaced on reload.
    max_retries: AtomicU64,
    /// Connections open or being opened, each held by a
    /// [`ConnectionSlot`] for the connection's whole life.
    cx_active: AtomicU64,
    /// `upstream_cx_total`: connection attempts.
    cx_total: AtomicU64,
    /// `upstream_cx_connect_fail` (timeouts included, as in Envoy).
    cx_connect_fail: AtomicU64,
    /// `upstream_cx_connect_timeout`.
    cx_connect_timeout: AtomicU64,
    /// `upstream_cx_overflow`: a connection was wanted at the limit.
    cx_overflow: AtomicU64,
    /// Requests in flight, each held by a [`RequestSlot`].
    rq_active: AtomicU64,
    /// Requests waiting for a connection, each held by a [`PendingSlot`].
    rq_pending_active: AtomicU64,
    /// `upstream_rq_pending_overflow`: pending or request limit reached.
    rq_pending_overflow: AtomicU64,
    /// Retries in flight, each held by a [`RetrySlot`].
    rq_retry_active: AtomicU64,
    /// `upstream_rq_retry_overflow`.
    rq_retry_overflow: AtomicU64,
}

/// A point-in-time copy of a cluster's circuit-breaker state (admin,
/// metrics, tests).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceStats {
    pub cx_active: u64,
    pub cx_total: u64,
    pub cx_connect_fail: u64,
    pub cx_connect_timeout: u64,
    pub cx_overflow: u64,
    pub rq_active: u64,
    pub rq_pending_active: u64,
    pub rq_pending_overflow: u64,
    pub rq_retry_active: u64,
    pub rq_retry_overflow: u64,
    /// `circuit_breakers.default.cx_open`.
    pub cx_open: u64,
    /// `circuit_breakers.default.rq_pending_open`.
    pub rq_pending_open: u64,
    /// `circuit_breakers.default.rq_open`.
    pub rq_open: u64,
    /// `circuit_breakers.default.rq_retry_open`.
    pub rq_retry_open: u64,
}

/// A request counted in `max_requests` until dropped.
#[must_use = "the slot is released when dropped"]
pub struct RequestSlot {
    resources: Arc<ClusterResources>,
}

/// A retry counted in `max_retries` until dropped.
#[must_use = "the slot is released when dropped"]
pub struct RetrySlot {
    resources: Arc<ClusterResources>,
}

/// A request waiting for a connection, counted in `max_pending_requests`
/// until dropped.
#[must_use = "the slot is released when dropped"]
pub struct PendingSlot {
    resources: Arc<ClusterResources>,
}

/// A connection counted in `max_connections` until dropped (when its
/// driver task ends, or when connecting fails).
#[must_use = "the slot is released when dropped"]
pub struct ConnectionSlot {
    resources: Arc<ClusterResources>,
}

// === impl ClusterResources ===

impl ClusterResources {
    pub fn new(limits: CircuitBreakers) -> Arc<Self> {
        let resources = Arc::new(ClusterResources {
            max_connections: AtomicU64::new(0),
            max_pending_requests: AtomicU64::new(0),
            max_requests: AtomicU64::new(0),
            max_retries: AtomicU64::new(0),
            cx_active: AtomicU64::new(0),
            cx_total: AtomicU64::new(0),
            cx_connect_fail: AtomicU64::new(0),
            cx_connect_timeout: AtomicU64::new(0),
            cx_overflow: AtomicU64::new(0),
            rq_active: AtomicU64::new(0),
            rq_pending_active: AtomicU64::new(0),
            rq_pending_overflow: AtomicU64::new(0),
            rq_retry_active: AtomicU64::new(0),
            rq_retry_overflow: AtomicU64::new(0),
        });
        resources.set_limits(limits);
        resources
    }

    /// Installs new thresholds (configuration update); counts are kept.
    pub fn set_limits(&self, limits: CircuitBreakers) {
        self.max_connections.store(limits.max_connections, Ordering::Relaxed);
        self.max_pending_requests.store(limits.max_pending_requests, Ordering::Relaxed);
        self.max_requests.store(limits.max_requests, Ordering::Relaxed);
        self.max_retries.store(limits.max_retries, Ordering::Relaxed);
    }

    /// A slot in `max_requests` (`http2MaxRequests`); `None` on overflow,
    /// which Envoy counts in `upstream_rq_pending_overflow`.
    pub fn try_request(self: &Arc<Self>) -> Option<RequestSlot> {
        if acquire(&self.rq_active, &self.max_requests) {
            return Some(RequestSlot { resources: self.clone() });
        }
        self.rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A slot in `max_retries`; `None` on overflow
    /// (`upstream_rq_retry_overflow`).
    pub fn try_retry(self: &Arc<Self>) -> Option<RetrySlot> {
        if acquire(&self.rq_retry_active, &self.max_retries) {
            return Some(RetrySlot { resources: self.clone() });
        }
        self.rq_retry_overflow.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A slot in `max_pending_requests`; `None` on overflow
    /// (`upstream_rq_pending_overflow`).
    pub(super) fn try_pending(self: &Arc<Self>) -> Option<PendingSlot> {
        if acquire(&self.rq_pending_active, &self.max_pending_requests) {
            return Some(PendingSlot { resources: self.clone() });
        }
        self.rq_pending_overflow.fetch_add(1, Ordering::Relaxed);
        None
    }

    /// A slot in `max_connections` for a connection attempt. At the limit
    /// `upstream_cx_overflow` counts, and the slot is still granted when
    /// `endpoint_has_none` (Envoy always allows one connection per host, so
    /// a host's pending requests are never stranded by other hosts'
    /// connections).
    pub(super) fn try_connection(self: &Arc<Self>, endpoint_has_none: bool) -> Option<ConnectionSlot> {
        if !acquire(&self.cx_active, &self.max_connections) {
            self.cx_overflow.fetch_add(1, Ordering::Relaxed);
            if !endpoint_has_none {
                return None;
            }
            self.cx_active.fetch_add(1, Ordering::Relaxed);
        }
        self.cx_total.fetch_add(1, Ordering::Relaxed);
        Some(ConnectionSlot { resources: self.clone() })
    }

    /// Counts a failed connection attempt. As in Envoy, a timeout counts in
    /// both `upstream_cx_connect_timeout` and `upstream_cx_connect_fail`.
    pub(super) fn connect_failed(&self, timed_out: bool) {
        if timed_out {
            self.cx_connect_timeout.fetch_add(1, Ordering::Relaxed);
        }
        self.cx_connect_fail.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> ResourceStats {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let open = |active: u64, max: &AtomicU64| u64::from(active >= load(max));
        let cx_active = load(&self.cx_active);
        let rq_active = load(&self.rq_active);
        let rq_pending_active = load(&self.rq_pending_active);
        let rq_retry_active = load(&self.rq_retry_active);
        ResourceStats {
            cx_active,
            cx_total: load(&self.cx_total),
            cx_connect_fail: load(&self.cx_connect_fail),
            cx_connect_timeout: load(&self.cx_connect_timeout),
            cx_overflow: load(&self.cx_overflow),
            rq_active,
            rq_pending_active,
            rq_pending_overflow: load(&self.rq_pending_overflow),
            rq_retry_active,
            rq_retry_overflow: load(&self.rq_retry_overflow),
            cx_open: open(cx_active, &self.max_connections),
            rq_pending_open: open(rq_pending_active, &self.max_pending_requests),
            rq_open: open(rq_active, &self.max_requests),
            rq_retry_open: open(rq_retry_active, &self.max_retries),
        }
    }
}

/// Increments `count` if it is below `max`, atomically with the check.
fn acquire(count: &AtomicU64, max: &AtomicU64) -> bool {
    let max = max.load(Ordering::Relaxed);
    count.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

fn release(count: &AtomicU64) {
    count.fetch_sub(1, Ordering::AcqRel);
}

// === impl RequestSlot ===

impl Drop for RequestSlot {
    fn drop(&mut self) {
        release(&self.resources.rq_active);
    }
}

// === impl RetrySlot ===

impl Drop for RetrySlot {
    fn drop(&mut self) {
        release(&self.resources.rq_retry_active);
    }
}

// === impl PendingSlot ===

impl Drop for PendingSlot {
    fn drop(&mut self) {
        release(&self.resources.rq_pending_active);
    }
}

// === impl ConnectionSlot ===

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        release(&self.resources.cx_active);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: u64, max_pending_requests: u64, max_requests: u64, max_retries: u64) -> CircuitBreakers {
        CircuitBreakers { max_connections, max_pending_requests, max_requests, max_retries }
    }

    #[test]
    fn request_slots_are_limited_and_released() {
        let resources = ClusterResources::new(limits(10, 10, 2, 10));
        let a = resources.try_request().expect("first slot");
        let _b = resources.try_request().expect("second slot");
        assert_eq!(resources.stats().rq_open, 1);
        assert!(resources.try_request().is_none());
        let stats = resources.stats();
        assert_eq!((stats.rq_active, stats.rq_pending_overflow), (2, 1));
        drop(a);
        assert_eq!(resources.stats().rq_open, 0);
        let _c = resources.try_request().expect("slot after release");
        assert_eq!(resources.stats().rq_active, 2);
    }

    #[test]
    fn retry_slots_are_limited_and_released() {
        let resources = ClusterResources::new(limits(10, 10, 10, 1));
        let retry = resources.try_retry().expect("first retry");
        assert!(resources.try_retry().is_none());
        assert!(resources.try_retry().is_none());
        let stats = resources.stats();
        assert_eq!((stats.rq_retry_active, stats.rq_retry_overflow, stats.rq_retry_open), (1, 2, 1));
        drop(retry);
        let stats = resources.stats();
        assert_eq!((stats.rq_retry_active, stats.rq_retry_open), (0, 0));
        assert!(resources.try_retry().is_some());
    }

    #[test]
    fn lowered_limits_apply_to_new_slots_only() {
        let resources = ClusterResources::new(CircuitBreakers::default());
        let held: Vec<_> = (0..3).filter_map(|_| resources.try_request()).collect();
        assert_eq!(held.len(), 3);
        resources.set_limits(limits(10, 10, 2, 10));
        assert!(resources.try_request().is_none());
        drop(held);
        assert_eq!(resources.stats().rq_active, 0);
        assert!(resources.try_request().is_some());
    }

    #[test]
    fn connection_slots_allow_one_per_endpoint_over_the_limit() {
        let resources = ClusterResources::new(limits(1, 10, 10, 10));
        let first = resources.try_connection(true).expect("under the limit");
        assert!(resources.try_connection(false).is_none());
        let second = resources.try_connection(true).expect("endpoint with no connection");
        let stats = resources.stats();
        assert_eq!((stats.cx_active, stats.cx_total, stats.cx_overflow, stats.cx_open), (2, 2, 2, 1));
        drop((first, second));
        assert_eq!(resources.stats().cx_active, 0);
    }

    #[test]
    fn unlimited_by_default() {
        let resources = ClusterResources::new(CircuitBreakers::default());
        let stats = resources.stats();
        assert_eq!(stats, ResourceStats::default());
        resources.connect_failed(true);
        resources.connect_failed(false);
        let stats = resources.stats();
        assert_eq!((stats.cx_connect_fail, stats.cx_connect_timeout), (2, 1));
    }
}
