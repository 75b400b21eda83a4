//! A cluster: the live, stateful counterpart of a [`ClusterSpec`].
//!
//! Everything a request needs from a cluster (its policy, its endpoints,
//! which of them are healthy, the hash table) is one immutable
//! [`ClusterState`] behind an `ArcSwap`, so a pick sees a consistent view
//! with one atomic load. The state is replaced when configuration changes
//! the cluster, DNS finds new addresses, or outlier detection ejects or
//! returns an endpoint; writers are serialised by one mutex (never held
//! across an await, never taken by requests). Endpoints that remain keep
//! their `Arc<Endpoint>` (pool, counters, ejection state), and the cluster
//! keeps its circuit breakers, detector and counters across swaps.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::balance::Balancer;
use super::endpoint::Endpoint;
use super::outlier::{Outcome, OutlierDetector};
use super::resources::ClusterResources;
use super::stats::{self, Membership, RouterStats};
use super::tls::UpstreamTls;
use super::{dns, sweep};
use crate::metrics::{ClusterSample, DestinationLabels, Metrics};
use crate::routing::{ClusterSpec, EndpointSpec, LbPolicy, PoolSettings, ServiceMeta};

pub use super::cluster_state::ClusterState;

pub struct Cluster {
    /// `outbound|PORT|SUBSET|HOST`.
    name: Arc<str>,
    /// Policy, endpoints and health, swapped whole.
    state: ArcSwap<ClusterState>,
    /// Serialises state writers so that a DNS answer, a reload and an
    /// ejection never lose each other's change.
    write: Mutex<()>,
    /// Circuit breakers and their counters, cluster-wide; survive state
    /// swaps (only the thresholds change).
    resources: Arc<ClusterResources>,
    /// Outlier detection's decisions and stats; survives swaps.
    detector: OutlierDetector,
    /// Retry, timeout and panic counters of the request path.
    router: RouterStats,
    /// Round-robin position; survives state swaps.
    balancer: Balancer,
    /// Registry for the endpoints' metric handles.
    metrics: Arc<Metrics>,
    /// The DNS refresh task, for clusters with hostnames to resolve.
    dns: Mutex<Option<AbortHandle>>,
    /// The outlier sweep task and its period, while the cluster has
    /// `outlierDetection`.
    sweep: Mutex<Option<(Duration, AbortHandle)>>,
    /// `true` once the cluster has its first set of endpoints (at once for
    /// static clusters; after the first lookup for DNS ones).
    warm: watch::Sender<bool>,
    /// TLS origination (`trafficPolicy.tls`), rebuilt only when its
    /// settings change; `None` for plain TCP.
    tls: ArcSwapOption<UpstreamTls>,
}

/// An endpoint chosen for one attempt, with what connecting needs.
pub struct Picked {
    pub endpoint: Arc<Endpoint>,
    pub connect_timeout: Duration,
    pub pool: PoolSettings,
    /// TLS for new connections, when the cluster originates it.
    pub tls: Option<Arc<UpstreamTls>>,
}

// === impl Cluster ===

impl Cluster {
    pub fn new(spec: &Arc<ClusterSpec>, metrics: &Arc<Metrics>) -> Arc<Self> {
        let cluster = Arc::new(Cluster {
            name: spec.name.clone(),
            state: ArcSwap::from_pointee(ClusterState::build(spec.clone(), Vec::new(), None, metrics)),
            write: Mutex::new(()),
            resources: ClusterResources::new(spec.policy.limits),
            detector: OutlierDetector::new(),
            router: RouterStats::default(),
            balancer: Balancer::default(),
            metrics: metrics.clone(),
            dns: Mutex::new(None),
            sweep: Mutex::new(None),
            warm: watch::Sender::new(spec.dns.is_empty()),
            tls: ArcSwapOption::new(UpstreamTls::build(spec.policy.resolved.tls.as_ref(), &spec.service.host)),
        });
        cluster.restart_dns(spec);
        cluster.restart_sweep(spec);
        cluster
    }

    /// A cluster of one endpoint, `addr`, outside the configuration: the
    /// original destination of a captured connection (Envoy's
    /// `PassthroughCluster`, an `ORIGINAL_DST` cluster) or the app behind
    /// inbound capture. `labels` are the endpoint's; HTTP is spoken as the
    /// client spoke it.
    pub fn single(
        name: &str,
        service: ServiceMeta,
        addr: std::net::SocketAddr,
        labels: crate::config::resources::Labels,
        metrics: &Arc<Metrics>,
    ) -> Arc<Self> {
        let mut policy = crate::routing::ClusterPolicy::default();
        policy.pool.protocol = crate::routing::UpstreamProtocol::Client;
        let spec = ClusterSpec {
            name: name.into(),
            service: Arc::new(service),
            port: addr.port(),
            subset: None,
            endpoints: vec![EndpointSpec { addr, weight: 1, labels: Arc::new(labels) }],
            dns: Vec::new(),
            policy: Arc::new(policy),
        };
        Cluster::new(&Arc::new(spec), metrics)
    }

    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The cluster's circuit breakers.
    pub fn resources(&self) -> &Arc<ClusterResources> {
        &self.resources
    }

    pub fn router_stats(&self) -> &RouterStats {
        &self.router
    }

    pub fn detector(&self) -> &OutlierDetector {
        &self.detector
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current state (one atomic load).
    pub fn state(&self) -> arc_swap::Guard<Arc<ClusterState>> {
        self.state.load()
    }

    /// Destination labels of the cluster's service, for replies made
    /// before any endpoint was tried.
    pub fn service_labels(&self) -> DestinationLabels {
        let state = self.state.load();
        DestinationLabels::of(&state.spec.service)
    }

    /// Picks a healthy endpoint: by `hash` on the cluster's hash table when
    /// it has one, else by its balancer, passing over `avoid` (hosts a retry
    /// already tried). `None` when no endpoint is healthy.
    pub fn pick(&self, hash: Option<u64>, avoid: &[Arc<Endpoint>]) -> Option<Picked> {
        let state = self.state.load();
        if state.panic {
            RouterStats::inc(&self.router.healthy_panic);
        }
        let endpoint = match (&state.hash, hash) {
            (Some(table), Some(hash)) => state.healthy.endpoints.get(table.pick(hash)),
            // A hashing cluster without a key balances at random, as
            // Envoy's hash balancers do.
            (Some(_), None) => self.balancer.pick(LbPolicy::Random, &state.healthy, avoid),
            (None, _) => self.balancer.pick(state.spec.policy.lb, &state.healthy, avoid),
        }?;
        let policy = &state.spec.policy;
        let tls = self.tls.load_full();
        Some(Picked { endpoint: endpoint.clone(), connect_timeout: policy.connect_timeout, pool: policy.pool, tls })
    }

    /// Reports one result of a request to `endpoint` to outlier detection;
    /// ejects it when a detector fires and the ejection is allowed.
    pub fn record(&self, endpoint: &Endpoint, outcome: Outcome) {
        let state = self.state.load();
        let Some(config) = &state.spec.policy.outlier else { return };
        if config.split_external_local_origin_errors && matches!(outcome, Outcome::Response(_)) {
            // A response means the connection worked.
            endpoint.outlier.record(config, Outcome::ConnectSuccess);
        }
        let Some(trigger) = endpoint.outlier.record(config, outcome) else { return };
        let hosts = state.endpoints.endpoints.iter().map(|e| &e.outlier);
        if self.detector.report(config, hosts, &endpoint.outlier, trigger, Instant::now()) {
            drop(state);
            self.refresh_health();
            // Logged once picks no longer see the endpoint: a request that
            // started after this line was never sent to it.
            tracing::info!(cluster = %self.name, endpoint = %endpoint.addr, ?trigger, "endpoint ejected");
        }
    }

    /// The interval sweep of outlier detection: returns endpoints whose
    /// ejection time is up and decays backoff multipliers.
    pub fn sweep(&self, now: Instant) {
        let state = self.state.load();
        let Some(config) = &state.spec.policy.outlier else { return };
        if self.detector.sweep(config, state.endpoints.endpoints.iter().map(|e| &e.outlier), now) {
            drop(state);
            self.refresh_health();
        }
    }

    /// Closes idle connections past their idle timeout.
    pub fn evict_idle(&self, now: Instant) {
        for endpoint in &self.state.load().endpoints.endpoints {
            for pool in endpoint.pools() {
                pool.evict_idle(now);
            }
        }
    }

    /// The cluster's Envoy stats, for `envoy_cluster_*`.
    pub fn sample(&self) -> ClusterSample {
        let state = self.state.load();
        let membership =
            Membership { healthy: state.healthy_count() as u64, total: state.endpoints.endpoints.len() as u64 };
        stats::sample(self.name.clone(), &self.router, &self.resources.stats(), &self.detector.stats(), membership)
    }

    /// Applies a new spec for the same cluster name, keeping endpoint state
    /// for endpoints that remain. A no-op when nothing changed.
    pub fn update(self: &Arc<Self>, spec: &Arc<ClusterSpec>) {
        let Ok(_writing) = self.write.lock() else { return };
        let current = self.state.load_full();
        if current.spec == *spec {
            return;
        }
        self.resources.set_limits(spec.policy.limits);
        let tls = spec.policy.resolved.tls.as_ref();
        if !self.tls.load().as_ref().map_or(tls.is_none(), |t| t.built_from(tls, &spec.service.host)) {
            self.tls.store(UpstreamTls::build(tls, &spec.service.host));
        }
        let same_names = current.spec.dns == spec.dns;
        let resolved = if same_names { current.resolved.clone() } else { Vec::new() };
        let next = ClusterState::build(spec.clone(), resolved, Some(&current.endpoints), &self.metrics);
        self.forget_removed(&current, &next);
        self.state.store(Arc::new(next));
        if !same_names {
            self.warm.send_replace(spec.dns.is_empty());
            self.restart_dns(spec);
        }
        self.restart_sweep(spec);
    }

    /// Installs the addresses DNS found.
    pub fn set_resolved(&self, resolved: Vec<EndpointSpec>) {
        if let Ok(_writing) = self.write.lock() {
            let current = self.state.load_full();
            let next = ClusterState::build(current.spec.clone(), resolved, Some(&current.endpoints), &self.metrics);
            self.forget_removed(&current, &next);
            self.state.store(Arc::new(next));
        }
        self.warm.send_replace(true);
    }

    /// Waits until the cluster has its first endpoints (DNS answered).
    pub async fn warmed(&self) {
        let mut rx = self.warm.subscribe();
        let _ = rx.wait_for(|warm| *warm).await;
    }

    /// Rebuilds the state after health changed.
    fn refresh_health(&self) {
        if let Ok(_writing) = self.write.lock() {
            let next = self.state.load().refreshed();
            self.state.store(Arc::new(next));
        }
    }

    /// Drops the ejection state of endpoints that left the cluster, and of
    /// all endpoints when outlier detection was turned off.
    fn forget_removed(&self, current: &ClusterState, next: &ClusterState) {
        if next.spec.policy.outlier.is_none() {
            self.detector.clear(next.endpoints.endpoints.iter().map(|e| &e.outlier));
        }
        for old in &current.endpoints.endpoints {
            if !next.endpoints.endpoints.iter().any(|e| Arc::ptr_eq(e, old)) {
                self.detector.forget(&old.outlier);
            }
        }
    }

    fn restart_dns(self: &Arc<Self>, spec: &ClusterSpec) {
        let task = (!spec.dns.is_empty()).then(|| dns::spawn(Arc::downgrade(self), spec.dns.clone()));
        if let Ok(mut slot) = self.dns.lock() {
            if let Some(old) = std::mem::replace(&mut *slot, task) {
                old.abort();
            }
        }
    }

    /// Starts, restarts or stops the sweep to match the outlier interval.
    fn restart_sweep(self: &Arc<Self>, spec: &ClusterSpec) {
        let period = spec.policy.outlier.as_ref().map(|o| o.interval);
        let Ok(mut slot) = self.sweep.lock() else { return };
        if slot.as_ref().map(|(p, _)| *p) == period {
            return;
        }
        let task = period.map(|p| (p, sweep::spawn(Arc::downgrade(self), p)));
        if let Some((_, old)) = std::mem::replace(&mut *slot, task) {
            old.abort();
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
        if let Ok(mut slot) = self.sweep.lock() {
            if let Some((_, task)) = slot.take() {
                task.abort();
            }
        }
    }
}
