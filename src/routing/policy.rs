//! Istio's traffic-policy override rules (spec §2.2). (To be implemented.)

use crate::config::resources::{ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, TrafficPolicy};

/// The four blocks that apply to one cluster, after port-level and subset
/// overrides (whole blocks replace; no field-level merge).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResolvedPolicy {
    pub load_balancer: Option<LoadBalancerSettings>,
    pub connection_pool: Option<ConnectionPoolSettings>,
    pub outlier_detection: Option<OutlierDetection>,
    pub tls: Option<ClientTlsSettings>,
}

/// Resolves the policy for port `port` of a cluster, given the
/// DestinationRule's top-level policy and the subset's policy.
pub fn resolve_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> ResolvedPolicy {
    let _ = (top, subset, port);
    ResolvedPolicy::default()
}
