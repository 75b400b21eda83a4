//! A DestinationRule: spec items 29 (host), 30 (empty policies and
//! port-level entries), 31 (subsets), 37 (tunnel, proxy protocol) and 38
//! (workload selector, exportTo). The blocks a policy holds are checked in
//! [`super::load_balancer`] (34, 35) and [`super::policy_blocks`] (32, 33,
//! 36).

use std::collections::BTreeSet;

use super::fields::{self, Export};
use super::{load_balancer, policy_blocks, Report};
use crate::config::host;
use crate::config::resources::{
    ClientTlsSettings, ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection, TrafficPolicy,
};

/// Checks one DestinationRule in `namespace`; `r` is rooted at `spec`.
pub(super) fn check(dr: &DestinationRule, namespace: &str, r: &mut Report<'_>) {
    r.check("host", host::check_wildcard_domain(&dr.host));
    if let Some(policy) = &dr.traffic_policy {
        traffic_policy(&mut r.at("trafficPolicy"), namespace, policy);
    }
    let mut names = BTreeSet::new();
    for (i, subset) in dr.subsets.iter().enumerate() {
        let mut r = r.at(format!("subsets[{i}]"));
        let Some(subset) = subset else {
            r.error("", "subset may not be null");
            continue;
        };
        if subset.name.is_empty() {
            r.error("name", "subset name cannot be empty");
        } else if !fields::is_label(&subset.name) {
            r.error("name", format!("subset name {:?} is invalid: expected a DNS-1123 label", subset.name));
        } else if !names.insert(subset.name.as_str()) {
            r.error("name", format!("duplicate subset names: {}", subset.name));
        }
        fields::labels(&mut r, "labels", &subset.labels);
        if let Some(policy) = &subset.traffic_policy {
            traffic_policy(&mut r.at("trafficPolicy"), namespace, policy);
        }
    }
    if let Some(selector) = &dr.workload_selector {
        fields::workload_selector(r, "workloadSelector", selector);
    }
    let kind = if dr.workload_selector.is_some() { Export::SelectorRule } else { Export::Rule };
    fields::export_to(r, namespace, &dr.export_to, kind);
}

/// Items 30 and 37, and the blocks of 32–36; `r` is rooted at the policy.
fn traffic_policy(r: &mut Report<'_>, namespace: &str, policy: &TrafficPolicy) {
    if policy.is_empty() {
        r.error("", "traffic policy must have at least one field");
        return;
    }
    if policy.tunnel.is_some() && policy.proxy_protocol.is_some() {
        r.error("", "tunnel and proxyProtocol must not be set together");
    }
    let blocks = Blocks {
        load_balancer: policy.load_balancer.as_ref(),
        connection_pool: policy.connection_pool.as_ref(),
        outlier_detection: policy.outlier_detection.as_ref(),
        tls: policy.tls.as_ref(),
    };
    blocks.check(r, namespace);
    for (i, port) in policy.port_level_settings.iter().enumerate() {
        let mut r = r.at(format!("portLevelSettings[{i}]"));
        if port.port.is_none() {
            r.error("port", "a port traffic policy must have a port");
        }
        let blocks = Blocks {
            load_balancer: port.load_balancer.as_ref(),
            connection_pool: port.connection_pool.as_ref(),
            outlier_detection: port.outlier_detection.as_ref(),
            tls: port.tls.as_ref(),
        };
        if blocks.is_empty() {
            r.error("", "port traffic policy must have at least one field besides port");
        }
        blocks.check(&mut r, namespace);
    }
    if let Some(tunnel) = &policy.tunnel {
        let mut r = r.at("tunnel");
        if let Some(protocol) = tunnel.protocol.as_deref().filter(|p| !["", "CONNECT", "POST"].contains(p)) {
            r.error("protocol", format!("tunnel protocol {protocol:?} must be \"CONNECT\" or \"POST\""));
        }
        if host::check_dns_name(&tunnel.target_host).is_err() && !fields::is_ip(&tunnel.target_host) {
            r.error(
                "targetHost",
                format!("tunnel target host {:?} must be a valid FQDN or IP address", tunnel.target_host),
            );
        }
        fields::port(&mut r, "targetPort", tunnel.target_port);
    }
    if let Some(version) = policy.proxy_protocol.as_ref().and_then(|p| p.version.as_deref()) {
        if version != "V1" && version != "V2" {
            r.error(
                "proxyProtocol.version",
                format!("proxy protocol version {version:?} is invalid: expected V1 or V2"),
            );
        }
    }
    if let Some(percent) = policy.retry_budget.as_ref().and_then(|b| b.percent) {
        fields::percent(r, "retryBudget.percent", percent);
    }
}

/// The four blocks a policy and its port-level entries share.
struct Blocks<'a> {
    load_balancer: Option<&'a LoadBalancerSettings>,
    connection_pool: Option<&'a ConnectionPoolSettings>,
    outlier_detection: Option<&'a OutlierDetection>,
    tls: Option<&'a ClientTlsSettings>,
}

// === impl Blocks ===

impl Blocks<'_> {
    fn is_empty(&self) -> bool {
        self.load_balancer.is_none()
            && self.connection_pool.is_none()
            && self.outlier_detection.is_none()
            && self.tls.is_none()
    }

    fn check(&self, r: &mut Report<'_>, namespace: &str) {
        if let Some(lb) = self.load_balancer {
            load_balancer::check(&mut r.at("loadBalancer"), lb, self.outlier_detection.is_some());
        }
        if let Some(pool) = self.connection_pool {
            policy_blocks::connection_pool(&mut r.at("connectionPool"), pool);
        }
        if let Some(outlier) = self.outlier_detection {
            policy_blocks::outlier_detection(&mut r.at("outlierDetection"), outlier);
        }
        if let Some(tls) = self.tls {
            policy_blocks::client_tls(&mut r.at("tls"), namespace, tls);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    // Item 29.
    #[test]
    fn host_is_a_domain() {
        assert_error(&of("DestinationRule", "host: foo_bar"), "spec.host");
        assert_error(&of("DestinationRule", "host: 10.0.0.1"), "spec.host");
        assert_clean(&of("DestinationRule", "host: \"*\""));
        assert_clean(&of("DestinationRule", "host: \"*.example.com\""));
    }

    // Item 30.
    #[test]
    fn empty_policies() {
        assert_error(&policy("{}"), "spec.trafficPolicy");
        assert_error(&policy("{connectionPool: {}}"), "spec.trafficPolicy.connectionPool");
        assert_error(&policy("{portLevelSettings: [{port: {number: 80}}]}"), "spec.trafficPolicy.portLevelSettings[0]");
        let p = policy("{portLevelSettings: [{loadBalancer: {simple: RANDOM}}]}");
        assert_error(&p, "spec.trafficPolicy.portLevelSettings[0].port");
    }

    // Item 31.
    #[test]
    fn subsets() {
        let p = dr(
            "subsets:\n- name: v1\n- name: v1\n- null\n- name: v1.0\n- name: \"\"\n- name: v2\n  labels: {\"-bad\": x}",
        );
        assert_error(&p, "spec.subsets[1].name");
        assert_error(&p, "spec.subsets[2]");
        assert_error(&p, "spec.subsets[3].name");
        assert_error(&p, "spec.subsets[4].name");
        assert_error(&p, "spec.subsets[5].labels");
        assert_clean(&dr(
            "subsets:\n- name: v1\n  labels: {version: v1}\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}",
        ));
    }

    // Item 37.
    #[test]
    fn tunnel_and_proxy_protocol() {
        let p =
            policy("{tunnel: {protocol: GET, targetHost: \"bad_host\", targetPort: 0}, proxyProtocol: {version: V3}}");
        assert_error(&p, "spec.trafficPolicy");
        assert_error(&p, "spec.trafficPolicy.tunnel.protocol");
        assert_error(&p, "spec.trafficPolicy.tunnel.targetHost");
        assert_error(&p, "spec.trafficPolicy.tunnel.targetPort");
        assert_error(&p, "spec.trafficPolicy.proxyProtocol.version");
        assert_clean(&policy("{tunnel: {protocol: CONNECT, targetHost: proxy.example.com, targetPort: 3128}}"));
    }

    // Item 38.
    #[test]
    fn workload_selector_and_export() {
        let p = dr("workloadSelector: {matchLabels: {\"\": x, app: \"*\"}}\nexportTo: [other]");
        assert_error(&p, "spec.workloadSelector");
        assert_error(&p, "spec.exportTo");
        assert_warning(&dr("workloadSelector: {matchLabels: {}}"), "spec.workloadSelector");
        let p = dr("workloadSelector: {matchLabels: {app: a}}\nexportTo: [\".\", other]");
        assert_error(&p, "spec.exportTo");
        assert_clean(&dr("workloadSelector: {matchLabels: {app: a}}\nexportTo: [\".\"]"));
    }
}
