//! One immutable, consistent view of a cluster: its spec, all endpoints,
//! the healthy ones the balancer uses, and the consistent-hash table over
//! them.
//!
//! A new state is built on every change (configuration, DNS answer,
//! ejection, return from ejection); all are rare next to requests, which
//! only read. Health follows Envoy (spec §2.7–2.8): ejected endpoints leave
//! the healthy set unless the healthy share falls below `minHealthPercent`
//! ("panic"), in which case every endpoint is used; with the Istio default
//! of 0 an all-ejected cluster has no healthy endpoint and answers 503 `UH`.
//! The hash table is built over the healthy endpoints, so an ejected
//! endpoint's keys move and nothing else does beyond what the algorithm
//! implies.

use std::sync::Arc;

use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointSet};
use super::hash::HashTable;
use super::outlier;
use crate::metrics::Metrics;
use crate::routing::{ClusterSpec, EndpointSpec};

/// One consistent view of a cluster.
pub struct ClusterState {
    pub spec: Arc<ClusterSpec>,
    /// Every endpoint, ejected or not.
    pub endpoints: EndpointSet,
    /// What balancing picks from: the endpoints not ejected, or all of
    /// them in panic.
    pub healthy: EndpointSet,
    /// Whether the healthy share is below `minHealthPercent`.
    pub panic: bool,
    /// Consistent-hash table over `healthy`, when the policy hashes.
    pub hash: Option<HashTable>,
    /// Addresses found by DNS, kept across swaps that keep the same names.
    pub(super) resolved: Vec<EndpointSpec>,
}

// === impl ClusterState ===

impl ClusterState {
    /// Builds the endpoint set of `spec` plus `resolved`, reusing endpoints
    /// of `previous` that are unchanged (with their pools, counters and
    /// ejection state). Endpoints new to a live cluster (one that already
    /// had endpoints) get slow start; a DNS cluster's first answer does not.
    pub(super) fn build(
        spec: Arc<ClusterSpec>,
        resolved: Vec<EndpointSpec>,
        previous: Option<&EndpointSet>,
        metrics: &Arc<Metrics>,
    ) -> Self {
        let now = Instant::now();
        let live = previous.is_some_and(|p| !p.endpoints.is_empty());
        let endpoints = spec
            .endpoints
            .iter()
            .chain(resolved.iter())
            .map(|e| {
                let kept = previous.and_then(|p| p.endpoints.iter().find(|old| old.same_as(e.addr, &e.labels)));
                match kept {
                    Some(kept) => {
                        kept.set_weight(e.weight);
                        kept.clone()
                    }
                    None => {
                        let endpoint = Endpoint::new(e.addr, e.weight, e.labels.clone(), &spec.service, metrics);
                        Arc::new(if live { endpoint.added_at(now) } else { endpoint })
                    }
                }
            })
            .collect();
        Self::with_health(spec, endpoints, resolved)
    }

    /// The same cluster with health re-read from the endpoints (after an
    /// ejection or a return).
    pub(super) fn refreshed(&self) -> Self {
        Self::with_health(self.spec.clone(), self.endpoints.endpoints.clone(), self.resolved.clone())
    }

    fn with_health(spec: Arc<ClusterSpec>, endpoints: Vec<Arc<Endpoint>>, resolved: Vec<EndpointSpec>) -> Self {
        let warmup = spec.policy.warmup;
        let total = endpoints.len();
        let up: Vec<Arc<Endpoint>> = endpoints.iter().filter(|e| !e.outlier.is_ejected()).cloned().collect();
        let min_health = spec.policy.outlier.as_ref().map_or(0, |o| o.min_health_percent);
        let panic = outlier::panic(up.len(), total, min_health);
        let healthy = if panic || up.len() == total { endpoints.clone() } else { up };
        let hash = spec.policy.hash.as_ref().and_then(|h| {
            let hosts: Vec<_> = healthy.iter().map(|e| (e.addr, e.weight())).collect();
            HashTable::build(h.table, &hosts)
        });
        ClusterState {
            endpoints: EndpointSet::new(endpoints, warmup),
            healthy: EndpointSet::new(healthy, warmup),
            panic,
            hash,
            spec,
            resolved,
        }
    }

    /// Endpoints not ejected.
    pub fn healthy_count(&self) -> usize {
        self.endpoints.endpoints.iter().filter(|e| !e.outlier.is_ejected()).count()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::SourceLabels;
    use crate::routing::{ClusterPolicy, OutlierConfig, ServiceMeta};
    use crate::upstream::outlier::{OutlierDetector, Trigger};

    fn spec(min_health_percent: u32) -> ClusterSpec {
        let outlier = OutlierConfig {
            consecutive_5xx: Some(1),
            consecutive_gateway_failure: None,
            consecutive_local_origin_failure: None,
            split_external_local_origin_errors: false,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 100,
            min_health_percent,
            error_codes: Vec::new(),
        };
        let endpoints = (1..=3)
            .map(|i| EndpointSpec { addr: ([127, 0, 0, 1], 9000 + i).into(), weight: 1, labels: Default::default() })
            .collect();
        ClusterSpec {
            name: "outbound|80||a".into(),
            service: Arc::new(ServiceMeta {
                host: "a".into(),
                name: "a".into(),
                namespace: "ns".into(),
                reporter: Default::default(),
            }),
            port: 80,
            subset: None,
            endpoints,
            dns: Vec::new(),
            policy: Arc::new(ClusterPolicy { outlier: Some(outlier), ..ClusterPolicy::default() }),
        }
    }

    fn eject(detector: &OutlierDetector, state: &ClusterState, i: usize) {
        let config = state.spec.policy.outlier.as_ref().unwrap();
        let hosts = state.endpoints.endpoints.iter().map(|e| &e.outlier);
        let host = &state.endpoints.endpoints[i].outlier;
        assert!(detector.report(config, hosts, host, Trigger::Consecutive5xx, Instant::now()));
    }

    /// A reload that changes only an endpoint's weight keeps the endpoint
    /// (its connections and its ejection), as Envoy keeps a host across
    /// EDS weight changes; a new address is a new endpoint.
    #[test]
    fn a_weight_change_keeps_the_endpoint_and_its_ejection() {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let detector = OutlierDetector::new();
        let state = ClusterState::build(Arc::new(spec(0)), Vec::new(), None, &metrics);
        eject(&detector, &state, 0);
        let mut reweighted = spec(0);
        reweighted.endpoints[0].weight = 5;
        reweighted.endpoints[2].addr = ([127, 0, 0, 1], 9999).into();
        let next = ClusterState::build(Arc::new(reweighted), Vec::new(), Some(&state.endpoints), &metrics);
        assert!(Arc::ptr_eq(&next.endpoints.endpoints[0], &state.endpoints.endpoints[0]));
        assert_eq!(next.endpoints.endpoints[0].weight(), 5);
        assert!(next.endpoints.weighted);
        assert_eq!(next.endpoints.total_weight(), 7);
        assert_eq!(next.healthy.endpoints.len(), 2, "still ejected after the reload");
        assert!(!Arc::ptr_eq(&next.endpoints.endpoints[2], &state.endpoints.endpoints[2]));
    }

    /// The soak's `503 UF,URX` (README, "Soak"): with one host ejected
    /// and both healthy ones tried, a third try has no untried host left.
    /// As Envoy's `previous_hosts` predicate with
    /// `host_selection_retry_max_attempts: 5`, it goes to a tried healthy
    /// host after its draws; an ejected host is never a candidate.
    #[test]
    fn a_retry_that_tried_every_healthy_host_stays_off_the_ejected_one() {
        use crate::routing::LbPolicy;
        use crate::upstream::balance::Balancer;
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let detector = OutlierDetector::new();
        let state = ClusterState::build(Arc::new(spec(0)), Vec::new(), None, &metrics);
        eject(&detector, &state, 2);
        let state = state.refreshed();
        let tried = &state.healthy.endpoints;
        assert_eq!(tried.len(), 2);
        let balancer = Balancer::default();
        for policy in [LbPolicy::LeastRequest, LbPolicy::RoundRobin, LbPolicy::Random] {
            for _ in 0..200 {
                let picked = balancer.pick(policy, &state.healthy, tried).unwrap();
                assert!(tried.iter().any(|e| Arc::ptr_eq(e, picked)), "{policy:?} picked {}", picked.addr);
            }
        }
    }

    #[test]
    fn ejected_endpoints_leave_the_healthy_set_until_panic() {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let detector = OutlierDetector::new();
        let state = ClusterState::build(Arc::new(spec(0)), Vec::new(), None, &metrics);
        assert_eq!(state.healthy.endpoints.len(), 3);
        eject(&detector, &state, 0);
        eject(&detector, &state, 1);
        let state = state.refreshed();
        assert!(!state.panic);
        assert_eq!(state.healthy.endpoints.len(), 1);
        assert_eq!(state.healthy.endpoints[0].addr.port(), 9003);
        // minHealthPercent 50: one healthy of three is below it, so the
        // balancer ignores health (panic) and uses all three. The endpoints
        // (and their ejection) survive the swap.
        let panicky = ClusterState::build(Arc::new(spec(50)), Vec::new(), Some(&state.endpoints), &metrics);
        assert!(panicky.panic);
        assert_eq!(panicky.healthy.endpoints.len(), 3);
        assert_eq!(panicky.healthy_count(), 1);
        // Threshold 0 (Istio's default): all ejected means no healthy
        // endpoint at all (503 UH), never panic.
        eject(&detector, &state, 2);
        let state = state.refreshed();
        assert!(!state.panic);
        assert!(state.healthy.endpoints.is_empty());
    }
}
