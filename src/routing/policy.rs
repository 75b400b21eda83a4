//! Istio's traffic-policy override rules (spec §2.2), and the
//! [`ClusterPolicy`] meshd derives from the result.

use super::ClusterPolicy;
use crate::config::resources::{
    ClientTlsSettings, ConnectionPoolSettings, LoadBalancerSettings, OutlierDetection, PortTrafficPolicy, TrafficPolicy,
};

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
///
/// 1. Start from `top`; if `top.portLevelSettings` has an entry for `port`,
///    that entry replaces all four blocks (blocks it omits become `None`,
///    not the top-level ones).
/// 2. If `subset` has a port-level entry for `port`, it replaces all four
///    blocks likewise; otherwise each block the subset sets replaces the
///    corresponding block of step 1.
///
/// The first port-level entry naming `port` is used, as istiod does.
pub fn resolve_policy(top: Option<&TrafficPolicy>, subset: Option<&TrafficPolicy>, port: u16) -> ResolvedPolicy {
    let mut resolved = match top {
        None => ResolvedPolicy::default(),
        Some(top) => match port_entry(top, port) {
            Some(entry) => ResolvedPolicy::from_port(entry),
            None => ResolvedPolicy::from_top(top),
        },
    };
    if let Some(subset) = subset {
        match port_entry(subset, port) {
            Some(entry) => resolved = ResolvedPolicy::from_port(entry),
            None => {
                if subset.load_balancer.is_some() {
                    resolved.load_balancer = subset.load_balancer.clone();
                }
                if subset.connection_pool.is_some() {
                    resolved.connection_pool = subset.connection_pool.clone();
                }
                if subset.outlier_detection.is_some() {
                    resolved.outlier_detection = subset.outlier_detection.clone();
                }
                if subset.tls.is_some() {
                    resolved.tls = subset.tls.clone();
                }
            }
        }
    }
    resolved
}

fn port_entry(policy: &TrafficPolicy, port: u16) -> Option<&PortTrafficPolicy> {
    policy.port_level_settings.iter().find(|p| p.port.is_some_and(|s| s.number == u32::from(port)))
}

// === impl ResolvedPolicy ===

impl ResolvedPolicy {
    fn from_top(top: &TrafficPolicy) -> Self {
        ResolvedPolicy {
            load_balancer: top.load_balancer.clone(),
            connection_pool: top.connection_pool.clone(),
            outlier_detection: top.outlier_detection.clone(),
            tls: top.tls.clone(),
        }
    }

    fn from_port(entry: &PortTrafficPolicy) -> Self {
        ResolvedPolicy {
            load_balancer: entry.load_balancer.clone(),
            connection_pool: entry.connection_pool.clone(),
            outlier_detection: entry.outlier_detection.clone(),
            tls: entry.tls.clone(),
        }
    }
}

/// What meshd derives from a resolved policy (see [`ClusterPolicy`]).
pub(super) fn cluster_policy(resolved: ResolvedPolicy) -> ClusterPolicy {
    ClusterPolicy::from_resolved(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::resources::SimpleLb;
    use crate::routing::LbPolicy;

    fn policy(yaml: &str) -> TrafficPolicy {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn simple(resolved: &ResolvedPolicy) -> Option<SimpleLb> {
        resolved.load_balancer.as_ref().and_then(|lb| lb.simple)
    }

    const TOP: &str = "
loadBalancer: {simple: ROUND_ROBIN}
connectionPool: {tcp: {maxConnections: 10}}
outlierDetection: {consecutive5xxErrors: 3}
portLevelSettings:
- port: {number: 8080}
  loadBalancer: {simple: RANDOM}
- port: {number: 8080}
  loadBalancer: {simple: PASSTHROUGH}
";

    #[test]
    fn no_policy_is_all_defaults() {
        assert_eq!(resolve_policy(None, None, 80), ResolvedPolicy::default());
        let p = cluster_policy(resolve_policy(None, None, 80));
        assert_eq!(p, ClusterPolicy::default());
        assert_eq!(p.connect_timeout, std::time::Duration::from_secs(10));
        assert_eq!(p.lb, LbPolicy::LeastRequest);
    }

    #[test]
    fn top_level_applies_to_other_ports() {
        let top = policy(TOP);
        let r = resolve_policy(Some(&top), None, 80);
        assert_eq!(simple(&r), Some(SimpleLb::RoundRobin));
        assert_eq!(r.connection_pool.unwrap().tcp.unwrap().max_connections, Some(10));
        assert!(r.outlier_detection.is_some());
    }

    #[test]
    fn port_level_replaces_all_blocks_wholesale() {
        let top = policy(TOP);
        let r = resolve_policy(Some(&top), None, 8080);
        // First entry for the port wins.
        assert_eq!(simple(&r), Some(SimpleLb::Random));
        // Omitted blocks become defaults, not the top-level ones.
        assert_eq!(r.connection_pool, None);
        assert_eq!(r.outlier_detection, None);
    }

    #[test]
    fn subset_blocks_replace_only_what_they_set() {
        let top = policy(TOP);
        let subset = policy("connectionPool: {http: {http1MaxPendingRequests: 1}}");
        let r = resolve_policy(Some(&top), Some(&subset), 80);
        assert_eq!(simple(&r), Some(SimpleLb::RoundRobin));
        // Whole block replaced: tcp from the top level is gone.
        let pool = r.connection_pool.unwrap();
        assert!(pool.tcp.is_none());
        assert_eq!(pool.http.unwrap().http1_max_pending_requests, Some(1));
        assert!(r.outlier_detection.is_some());
        // On the port with a top-level port entry, the subset block applies
        // on top of that entry.
        let r = resolve_policy(Some(&top), Some(&subset), 8080);
        assert_eq!(simple(&r), Some(SimpleLb::Random));
        assert!(r.connection_pool.is_some());
        assert!(r.outlier_detection.is_none());
    }

    #[test]
    fn subset_port_level_replaces_everything() {
        let top = policy(TOP);
        let subset =
            policy("loadBalancer: {simple: RANDOM}\nportLevelSettings:\n- port: {number: 80}\n  tls: {mode: SIMPLE}\n");
        let r = resolve_policy(Some(&top), Some(&subset), 80);
        assert_eq!(r.load_balancer, None);
        assert_eq!(r.connection_pool, None);
        assert!(r.tls.is_some());
        // Other ports: the subset's own blocks apply.
        let r = resolve_policy(Some(&top), Some(&subset), 9090);
        assert_eq!(simple(&r), Some(SimpleLb::Random));
        assert!(r.connection_pool.is_some());
        assert!(r.tls.is_none());
    }

    #[test]
    fn cluster_policy_maps_lb_and_connect_timeout() {
        let lb = |s: &str| cluster_policy(resolve_policy(Some(&policy(s)), None, 80)).lb;
        assert_eq!(lb("loadBalancer: {simple: LEAST_CONN}"), LbPolicy::LeastRequest);
        assert_eq!(lb("loadBalancer: {simple: UNSPECIFIED}"), LbPolicy::LeastRequest);
        assert_eq!(lb("loadBalancer: {simple: ROUND_ROBIN}"), LbPolicy::RoundRobin);
        assert_eq!(lb("loadBalancer: {simple: RANDOM}"), LbPolicy::Random);
        assert_eq!(lb("loadBalancer: {simple: PASSTHROUGH}"), LbPolicy::Passthrough);
        let p =
            cluster_policy(resolve_policy(Some(&policy("connectionPool: {tcp: {connectTimeout: 250ms}}")), None, 80));
        assert_eq!(p.connect_timeout, std::time::Duration::from_millis(250));
    }
}
