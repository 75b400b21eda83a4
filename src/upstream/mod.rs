//! The stateful side of routing: clusters, their endpoints, balancing,
//! connection pools, circuit breakers and outlier detection.
//!
//! [`Upstreams`] owns one [`Cluster`] per cluster name. The routing table
//! is replaced whole on every reload, but clusters are long-lived:
//! [`Upstreams::reconcile`] keeps every cluster whose name is still
//! configured (updating its endpoints and policy in place, keeping
//! connections, counters, circuit-breaker counts and ejection state of
//! endpoints that remain), creates new ones, and drops removed ones (their
//! idle connections close with them; requests in flight keep their
//! endpoint alive until they finish).
//!
//! - `cluster`: a [`Cluster`] and its writers (reload, DNS answers,
//!   ejections); a pick reads one immutable [`ClusterState`]
//!   (`cluster_state`: all endpoints, the healthy ones, panic, the hash
//!   table) with one atomic load.
//! - `balance`: `LEAST_REQUEST` (power of two choices), `ROUND_ROBIN`,
//!   `RANDOM`, weights, slow start, avoidance of hosts a retry already
//!   tried. [`hash`]: Envoy's ring hash and Maglev tables.
//! - [`resources`]: the cluster-wide circuit breakers (`max_connections`,
//!   `max_pending_requests`, `max_requests`, `max_retries`) as RAII slots.
//! - `pool`: per-endpoint HTTP/1.1 connection pools with Envoy's pending
//!   queue, connection limits, idle timeout, maximum duration and requests
//!   per connection, and (`pool::http2`) HTTP/2 pools multiplexing streams
//!   up to `maxConcurrentStreams` per connection; `connect`: TCP (and TLS)
//!   connect with timeout and keep-alive, and the HTTP handshakes.
//! - [`outlier`]: Envoy's consecutive-error ejection; `sweep`: the task
//!   that returns ejected endpoints every `interval`.
//! - [`stats`]: router counters and the per-cluster sample behind the
//!   `envoy_cluster_*` metrics and the `/clusters` admin page.
//! - `endpoint`: one endpoint's live state; `dns`: re-resolution of
//!   `resolution: DNS` hosts; [`body`]: request bodies sent upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

mod balance;
pub mod body;
mod cluster;
mod cluster_state;
mod connect;
mod dns;
mod endpoint;
pub mod hash;
pub mod outlier;
mod pool;
pub mod resources;
pub mod shard;
pub mod stats;
mod sweep;
pub mod tls;

pub use body::RequestBody;
pub use cluster::{Cluster, ClusterState, Picked};
pub use connect::ConnectError;
pub use endpoint::{ActiveRequest, Endpoint, EndpointSet};
pub use pool::{Checkout, ConnectionPool, Http2Stream, Lease, PoolError, PooledConn};
pub use resources::{ClusterResources, RequestSlot, ResourceStats, RetrySlot};

use crate::metrics::{ClusterSample, ClusterStatsSource, Metrics};
use crate::routing::ClusterSpec;

/// How often idle upstream connections are checked against their idle
/// timeout (checkouts also skip expired ones).
const IDLE_SWEEP: Duration = Duration::from_secs(5);

/// All clusters, by name.
#[derive(Clone)]
pub struct Upstreams {
    /// The cluster map, shared with the metrics collector and the idle
    /// sweep (both hold it weakly).
    shared: Arc<Shared>,
}

struct Shared {
    /// Touched only on reload, scrape and idle sweep (never on the request
    /// path, which holds `Arc<Cluster>`s from the snapshot).
    clusters: Mutex<HashMap<Arc<str>, Arc<Cluster>>>,
    metrics: Arc<Metrics>,
}

// === impl Upstreams ===

impl Upstreams {
    /// An empty set of clusters, bound to the `envoy_cluster_*` collector;
    /// inside a runtime, also starts the idle-connection sweep.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        let shared = Arc::new(Shared { clusters: Mutex::new(HashMap::new()), metrics: metrics.clone() });
        let source: Arc<dyn ClusterStatsSource> = shared.clone();
        metrics.clusters.bind(Arc::downgrade(&source));
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(sweep_idle(Arc::downgrade(&shared)));
        }
        Upstreams { shared }
    }

    /// Brings the cluster set in line with `specs`; returns the clusters in
    /// the order of `specs` (so `ClusterId(i)` indexes the result).
    pub fn reconcile(&self, specs: &[Arc<ClusterSpec>]) -> Vec<Arc<Cluster>> {
        let metrics = &self.shared.metrics;
        let Ok(mut clusters) = self.shared.clusters.lock() else {
            return specs.iter().map(|s| Cluster::new(s, metrics)).collect();
        };
        let mut next = HashMap::with_capacity(specs.len());
        let out = specs
            .iter()
            .map(|spec| {
                let cluster = match clusters.remove(&spec.name) {
                    Some(existing) => {
                        existing.update(spec);
                        existing
                    }
                    None => Cluster::new(spec, metrics),
                };
                next.insert(spec.name.clone(), cluster.clone());
                cluster
            })
            .collect();
        *clusters = next;
        out
    }

    /// Waits (at most `timeout`) until every cluster in `clusters` has its
    /// first endpoints, as Envoy warms clusters before using them.
    pub async fn warm(clusters: &[Arc<Cluster>], timeout: Duration) {
        // The DNS tasks already run concurrently; waiting on them one after
        // the other costs no more than the slowest.
        let all = async {
            for cluster in clusters {
                cluster.warmed().await;
            }
        };
        let _ = tokio::time::timeout(timeout, all).await;
    }
}

// === impl Shared ===

impl Shared {
    fn clusters(&self) -> Vec<Arc<Cluster>> {
        self.clusters.lock().map(|c| c.values().cloned().collect()).unwrap_or_default()
    }
}

impl ClusterStatsSource for Shared {
    fn samples(&self) -> Vec<ClusterSample> {
        let mut samples: Vec<_> = self.clusters().iter().map(|c| c.sample()).collect();
        samples.sort_by(|a, b| a.name.cmp(&b.name));
        samples
    }
}

/// Closes idle connections past their idle timeout, every [`IDLE_SWEEP`],
/// for as long as the clusters exist.
async fn sweep_idle(shared: Weak<Shared>) {
    let mut ticks = tokio::time::interval(IDLE_SWEEP);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else { return };
        let now = tokio::time::Instant::now();
        for cluster in shared.clusters() {
            cluster.evict_idle(now);
        }
    }
}
