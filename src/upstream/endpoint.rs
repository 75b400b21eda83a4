//! One upstream endpoint of one cluster and the state that must survive
//! configuration swaps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::time::Instant;

use crate::config::resources::Labels;
use crate::metrics::{Metrics, RequestMetricsCache};
use crate::routing::{ServiceMeta, Warmup};

use super::outlier::OutlierState;
use super::pool::ConnectionPool;

/// An endpoint: address, weight, labels, and live state.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Balancing weight (Istio default 1). Updated in place when a reload
    /// changes only the weight: the endpoint keeps its connections and its
    /// outlier state, as an Envoy host does across EDS weight changes.
    weight: AtomicU32,
    pub labels: Arc<Labels>,
    /// Requests in flight, for least-request balancing. Incremented when
    /// the endpoint is picked, decremented when the response completes.
    active: AtomicU32,
    /// Connections to this endpoint, one pool per worker thread
    /// ([`shard`](super::shard)): a connection stays with the thread that
    /// drives it. Made at the first request: most endpoints of a large
    /// mesh are never called from one pod.
    pools: OnceLock<Box<[ConnectionPool]>>,
    /// Consecutive-error counters and ejection state; lives with the
    /// endpoint so it survives configuration swaps that keep it.
    pub outlier: OutlierState,
    /// Resolved metric handles for requests served by this endpoint.
    pub metrics: Arc<RequestMetricsCache>,
    /// The registry the handles belong to (for rare label sets).
    pub registry: Arc<Metrics>,
    /// When the endpoint joined a live cluster, for slow start; `None` for
    /// the cluster's first endpoints, which take full traffic at once.
    pub added: Option<Instant>,
}

/// A request in flight on an endpoint; dropping it ends the request.
pub struct ActiveRequest {
    endpoint: Arc<Endpoint>,
}

/// The endpoints of a cluster at one moment, with what balancing needs
/// precomputed.
pub struct EndpointSet {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Whether weights differ (weighted algorithms are needed).
    pub weighted: bool,
    /// Running sums of weights, for weighted random picks.
    pub cumulative: Vec<u64>,
    /// Slow start, while some endpoint is inside its window: the policy
    /// and the instant the last window ends.
    pub warmup: Option<(Warmup, Instant)>,
}

// === impl Endpoint ===

impl Endpoint {
    pub fn new(
        addr: SocketAddr,
        weight: u32,
        labels: Arc<Labels>,
        service: &ServiceMeta,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let destination = crate::metrics::DestinationLabels::of(service).with_endpoint(&labels);
        Endpoint {
            addr,
            weight: AtomicU32::new(weight.max(1)),
            labels,
            active: AtomicU32::new(0),
            pools: OnceLock::new(),
            outlier: OutlierState::new(),
            metrics: metrics.cache(destination),
            registry: metrics.clone(),
            added: None,
        }
    }

    /// Marks the endpoint as joining a live cluster at `at` (slow start).
    pub fn added_at(mut self, at: Instant) -> Self {
        self.added = Some(at);
        self
    }

    /// Whether this endpoint can stand for a new spec (its weight is set
    /// apart, with [`Endpoint::set_weight`]).
    pub fn same_as(&self, addr: SocketAddr, labels: &Labels) -> bool {
        self.addr == addr && *self.labels == *labels
    }

    /// Balancing weight (Istio default 1).
    pub fn weight(&self) -> u32 {
        self.weight.load(Ordering::Relaxed)
    }

    /// Sets the weight a reload gave the endpoint.
    pub fn set_weight(&self, weight: u32) {
        self.weight.store(weight.max(1), Ordering::Relaxed);
    }

    /// The calling worker's connection pool.
    pub fn pool(&self) -> &ConnectionPool {
        let pools = self.pools.get_or_init(|| {
            // At least one, so the index below is always in range.
            let count = super::shard::count().max(1);
            (0..count).map(|_| ConnectionPool::new(self.addr)).collect()
        });
        let shard = super::shard::current();
        // The modulo keeps a stray shard index in range.
        &pools[shard % pools.len()]
    }

    /// Every worker's pool (for eviction and the admin page); empty until
    /// the first request.
    pub fn pools(&self) -> &[ConnectionPool] {
        self.pools.get().map_or(&[], |pools| pools)
    }

    pub fn active_requests(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }

    /// Marks a request in flight until the returned guard drops.
    pub fn start(self: Arc<Self>) -> ActiveRequest {
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveRequest { endpoint: self }
    }
}

// === impl ActiveRequest ===

impl ActiveRequest {
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }
}

impl Drop for ActiveRequest {
    fn drop(&mut self) {
        self.endpoint.active.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl EndpointSet ===

impl EndpointSet {
    /// The set of `endpoints`; with `warmup`, endpoints added less than
    /// its duration ago get slow start.
    pub fn new(endpoints: Vec<Arc<Endpoint>>, warmup: Option<Warmup>) -> Self {
        let weighted = endpoints.windows(2).any(|w| w[0].weight() != w[1].weight());
        let mut sum = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight());
                sum
            })
            .collect();
        let warmup = warmup.and_then(|w| {
            let until = endpoints.iter().filter_map(|e| e.added).max()? + w.duration;
            (until > Instant::now()).then_some((w, until))
        });
        EndpointSet { endpoints, weighted, cumulative, warmup }
    }

    /// The slow-start policy if some endpoint is still warming up now.
    pub fn warming(&self) -> Option<&Warmup> {
        self.warmup.as_ref().filter(|(_, until)| Instant::now() < *until).map(|(w, _)| w)
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}
