//! One upstream endpoint of one cluster and the state that must survive
//! configuration swaps.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::config::resources::Labels;
use crate::metrics::{Metrics, RequestMetricsCache};
use crate::routing::ServiceMeta;

use super::pool::ConnectionPool;

/// An endpoint: address, weight, labels, and live state.
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Balancing weight (Istio default 1).
    pub weight: u32,
    pub labels: Arc<Labels>,
    /// Requests in flight, for least-request balancing. Incremented when
    /// the endpoint is picked, decremented when the response completes.
    active: AtomicU32,
    /// Idle keep-alive connections.
    pub pool: ConnectionPool,
    /// Resolved metric handles for requests served by this endpoint.
    pub metrics: RequestMetricsCache,
    /// The registry the handles belong to (for rare label sets).
    pub registry: Arc<Metrics>,
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
        let destination =
            crate::metrics::DestinationLabels::for_service(&service.host, &service.name, &service.namespace)
                .with_endpoint(&labels);
        Endpoint {
            addr,
            weight: weight.max(1),
            labels,
            active: AtomicU32::new(0),
            pool: ConnectionPool::new(addr),
            metrics: metrics.cache(Arc::new(destination)),
            registry: metrics.clone(),
        }
    }

    /// Whether this endpoint can stand for a new spec unchanged.
    pub fn same_as(&self, addr: SocketAddr, weight: u32, labels: &Labels) -> bool {
        self.addr == addr && self.weight == weight.max(1) && *self.labels == *labels
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
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Self {
        let weighted = endpoints.windows(2).any(|w| w[0].weight != w[1].weight);
        let mut sum = 0u64;
        let cumulative = endpoints
            .iter()
            .map(|e| {
                sum += u64::from(e.weight);
                sum
            })
            .collect();
        EndpointSet { endpoints, weighted, cumulative }
    }

    pub fn total_weight(&self) -> u64 {
        self.cumulative.last().copied().unwrap_or(0)
    }
}
