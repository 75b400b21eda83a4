//! The stateful side of routing: clusters, their endpoints, balancing and
//! connection pools.
//!
//! [`Upstreams`] owns one [`Cluster`] per cluster name. The routing table
//! is replaced whole on every reload, but clusters are long-lived:
//! [`Upstreams::reconcile`] keeps every cluster whose name is still
//! configured (updating its endpoints and policy in place, keeping
//! connections and counters of endpoints that remain), creates new ones,
//! and drops removed ones (their idle connections close with them;
//! requests in flight keep their endpoint alive until they finish).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod balance;
pub mod body;
mod cluster;
mod connect;
mod dns;
mod endpoint;
pub mod hash;
pub mod outlier;
mod pool;
pub mod resources;

pub use body::RequestBody;
pub use cluster::{Cluster, ClusterState};
pub use connect::ConnectError;
pub use endpoint::{ActiveRequest, Endpoint, EndpointSet};
pub use pool::{Checkout, ConnectionPool};

use crate::metrics::Metrics;
use crate::routing::ClusterSpec;

/// All clusters, by name.
pub struct Upstreams {
    /// Touched only on reload (never on the request path, which holds
    /// `Arc<Cluster>`s from the snapshot).
    clusters: Mutex<HashMap<Arc<str>, Arc<Cluster>>>,
    metrics: Arc<Metrics>,
}

// === impl Upstreams ===

impl Upstreams {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Upstreams { clusters: Mutex::new(HashMap::new()), metrics }
    }

    /// Brings the cluster set in line with `specs`; returns the clusters in
    /// the order of `specs` (so `ClusterId(i)` indexes the result).
    pub fn reconcile(&self, specs: &[ClusterSpec]) -> Vec<Arc<Cluster>> {
        let Ok(mut clusters) = self.clusters.lock() else {
            return specs.iter().map(|s| Cluster::new(s, &self.metrics)).collect();
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
                    None => Cluster::new(spec, &self.metrics),
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
