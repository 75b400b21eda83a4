//! A cluster: the live, stateful counterpart of a [`ClusterSpec`].
//!
//! Everything a request needs from a cluster (its policy and its current
//! endpoints) is one immutable [`ClusterState`] behind an `ArcSwap`, so a
//! pick sees a consistent pair with one atomic load. The state is replaced
//! when configuration changes the cluster or DNS finds new addresses;
//! endpoints that remain keep their `Arc<Endpoint>` (pool, counters).

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tokio::task::AbortHandle;

use super::balance::Balancer;
use super::dns;
use super::endpoint::{Endpoint, EndpointSet};
use crate::metrics::Metrics;
use crate::routing::{ClusterSpec, EndpointSpec};

pub struct Cluster {
    /// `outbound|PORT|SUBSET|HOST`.
    name: Arc<str>,
    /// Policy and endpoints, swapped whole.
    state: ArcSwap<ClusterState>,
    /// Round-robin position; survives state swaps.
    balancer: Balancer,
    /// Registry for the endpoints' metric handles.
    metrics: Arc<Metrics>,
    /// The DNS refresh task, for clusters with hostnames to resolve.
    dns: Mutex<Option<AbortHandle>>,
    /// `true` once the cluster has its first set of endpoints (at once for
    /// static clusters; after the first lookup for DNS ones).
    warm: watch::Sender<bool>,
}

/// One consistent view of a cluster.
pub struct ClusterState {
    pub spec: ClusterSpec,
    pub endpoints: EndpointSet,
    /// Addresses found by DNS, kept across swaps that keep the same names.
    resolved: Vec<EndpointSpec>,
}

// === impl Cluster ===

impl Cluster {
    pub fn new(spec: &ClusterSpec, metrics: &Arc<Metrics>) -> Arc<Self> {
        let cluster = Arc::new(Cluster {
            name: spec.name.clone(),
            state: ArcSwap::from_pointee(ClusterState::build(spec.clone(), Vec::new(), None, metrics)),
            balancer: Balancer::default(),
            metrics: metrics.clone(),
            dns: Mutex::new(None),
            warm: watch::Sender::new(spec.dns.is_empty()),
        });
        cluster.restart_dns(spec);
        cluster
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> arc_swap::Guard<Arc<ClusterState>> {
        self.state.load()
    }

    /// Picks an endpoint by the cluster's policy, with the connect timeout
    /// to use; `None` when the cluster has no endpoint.
    pub fn pick(&self) -> Option<(Arc<Endpoint>, std::time::Duration)> {
        let state = self.state.load();
        let endpoint = self.balancer.pick(state.spec.policy.lb, &state.endpoints)?;
        Some((endpoint.clone(), state.spec.policy.connect_timeout))
    }

    /// Applies a new spec for the same cluster name, keeping endpoint state
    /// for endpoints that remain. A no-op when nothing changed.
    pub fn update(self: &Arc<Self>, spec: &ClusterSpec) {
        let current = self.state.load_full();
        if current.spec == *spec {
            return;
        }
        let same_names = current.spec.dns == spec.dns;
        let resolved = if same_names { current.resolved.clone() } else { Vec::new() };
        let next = ClusterState::build(spec.clone(), resolved, Some(&current.endpoints), &self.metrics);
        self.state.store(Arc::new(next));
        if !same_names {
            self.warm.send_replace(spec.dns.is_empty());
            self.restart_dns(spec);
        }
    }

    /// Installs the addresses DNS found.
    pub fn set_resolved(&self, resolved: Vec<EndpointSpec>) {
        let current = self.state.load_full();
        let next = ClusterState::build(current.spec.clone(), resolved, Some(&current.endpoints), &self.metrics);
        self.state.store(Arc::new(next));
        self.warm.send_replace(true);
    }

    /// Waits until the cluster has its first endpoints (DNS answered).
    pub async fn warmed(&self) {
        let mut rx = self.warm.subscribe();
        let _ = rx.wait_for(|warm| *warm).await;
    }

    fn restart_dns(self: &Arc<Self>, spec: &ClusterSpec) {
        let task = (!spec.dns.is_empty()).then(|| dns::spawn(Arc::downgrade(self), spec.dns.clone()));
        if let Ok(mut slot) = self.dns.lock() {
            if let Some(old) = std::mem::replace(&mut *slot, task) {
                old.abort();
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.dns.lock() {
            if let Some(task) = slot.take() {
                task.abort();
            }
        }
    }
}

// === impl ClusterState ===

impl ClusterState {
    /// Builds the endpoint set of `spec` plus `resolved`, reusing endpoints
    /// of `previous` that are unchanged.
    fn build(
        spec: ClusterSpec,
        resolved: Vec<EndpointSpec>,
        previous: Option<&EndpointSet>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let endpoints = spec
            .endpoints
            .iter()
            .chain(resolved.iter())
            .map(|e| {
                previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.same_as(e.addr, e.weight, &e.labels)))
                    .cloned()
                    .unwrap_or_else(|| {
                        Arc::new(Endpoint::new(e.addr, e.weight, e.labels.clone(), &spec.service, metrics))
                    })
            })
            .collect();
        ClusterState { endpoints: EndpointSet::new(endpoints), spec, resolved }
    }
}
