//! What this version of meshd parses and validates but does not apply yet:
//! one warning per resource naming those fields. [`NOT_APPLIED`] is the one
//! list to shrink as features land.

use serde_json::Value;

use super::{Origin, Report};
use crate::config::resources::{Resolution, Resource};
use crate::config::{Config, Problem};

/// Everything parsed and checked but not applied yet.
struct NotApplied {
    /// VirtualService `http[]` fields, as [`HttpRoute::unapplied_fields`]
    /// lists them.
    ///
    /// [`HttpRoute::unapplied_fields`]: crate::config::resources::HttpRoute::unapplied_fields
    http_route_fields: bool,
    /// VirtualService route lists.
    routes: &'static [&'static str],
    /// VirtualService route lists applied on Gateway listeners only:
    /// named for a VirtualService bound to no Gateway.
    gateway_routes: &'static [&'static str],
    /// TrafficPolicy blocks, at the top level, in `portLevelSettings` and
    /// in subsets alike.
    policy_blocks: &'static [&'static str],
    /// `loadBalancer` fields.
    load_balancer: &'static [&'static str],
    /// `connectionPool` fields (the HTTP/2 upstream settings).
    connection_pool: &'static [&'static str],
    /// ServiceEntry resolutions, with what to say about them.
    resolutions: &'static [(Resolution, &'static str)],
    /// Gateways as a whole.
    gateways: bool,
}

const NOT_APPLIED: NotApplied = NotApplied {
    http_route_fields: true,
    routes: &[],
    gateway_routes: &["tls"],
    policy_blocks: &["tunnel", "proxyProtocol", "retryBudget"],
    load_balancer: &["localityLbSetting", "zoneAwareLbSetting"],
    connection_pool: &[],
    resolutions: &[
        (Resolution::None, "resolution NONE needs sidecar capture; no endpoints until then"),
        (Resolution::DnsRoundRobin, "not applied yet: resolution DNS_ROUND_ROBIN"),
        (Resolution::DynamicDns, "not applied yet: resolution DYNAMIC_DNS"),
    ],
    gateways: false,
};

/// One warning per resource using something in [`NOT_APPLIED`].
pub(super) fn collect(config: &Config) -> Vec<Problem> {
    let mut out = Vec::new();
    for vs in &config.virtual_services {
        let mut fields = Vec::new();
        if NOT_APPLIED.http_route_fields {
            fields.extend(vs.spec.http.iter().flat_map(|rule| rule.unapplied_fields()).map(|f| format!("http.{f}")));
        }
        let spec = json(&vs.spec);
        fields.extend(present(&spec, NOT_APPLIED.routes, ""));
        if vs.spec.gateways.iter().all(|g| g == "mesh") {
            fields.extend(present(&spec, NOT_APPLIED.gateway_routes, ""));
        }
        warn_fields(vs, fields, &mut out);
    }
    for dr in &config.destination_rules {
        let spec = json(&dr.spec);
        let mut fields = policy(&spec["trafficPolicy"], "trafficPolicy");
        for subset in spec["subsets"].as_array().into_iter().flatten() {
            fields.extend(policy(&subset["trafficPolicy"], "subsets.trafficPolicy"));
        }
        warn_fields(dr, fields, &mut out);
    }
    for se in &config.service_entries {
        let resolution = se.spec.resolution.unwrap_or_default();
        if let Some((_, message)) = NOT_APPLIED.resolutions.iter().find(|(r, _)| *r == resolution) {
            let origin = Origin::of(se);
            Report::new(&origin, &mut out).warning("resolution", *message);
        }
    }
    if NOT_APPLIED.gateways {
        for gw in &config.gateways {
            let origin = Origin::of(gw);
            Report::new(&origin, &mut out).warning("", "Gateway listeners are not opened yet");
        }
    }
    out
}

/// The unapplied blocks of one TrafficPolicy (JSON) at `path`, and of its
/// port-level entries.
fn policy(policy: &Value, path: &str) -> Vec<String> {
    let mut fields = present(policy, NOT_APPLIED.policy_blocks, path);
    fields.extend(present(&policy["loadBalancer"], NOT_APPLIED.load_balancer, &format!("{path}.loadBalancer")));
    let http = &policy["connectionPool"]["http"];
    fields.extend(present(http, NOT_APPLIED.connection_pool, &format!("{path}.connectionPool.http")));
    for port in policy["portLevelSettings"].as_array().into_iter().flatten() {
        fields.extend(self::policy(port, &format!("{path}.portLevelSettings")));
    }
    fields
}

/// `path.name` for each of `names` that `object` sets (not null, not an
/// empty list).
fn present(object: &Value, names: &[&str], path: &str) -> Vec<String> {
    let set = |v: &Value| !v.is_null() && v.as_array().map_or(true, |a| !a.is_empty());
    names.iter().filter(|n| object.get(**n).is_some_and(set)).map(|n| super::join(path, n)).collect()
}

/// A spec as JSON (the resource types serialize with Istio's field names);
/// `Null` if that fails, which then names nothing.
fn json<T: serde::Serialize>(spec: &T) -> Value {
    serde_json::to_value(spec).unwrap_or(Value::Null)
}

/// One warning for `resource` naming `fields` (relative to `spec`, possibly
/// repeated): `spec.http: not applied yet: fault, retries` when they share
/// a parent, `spec: not applied yet: http.fault, tcp` otherwise.
fn warn_fields<T>(resource: &Resource<T>, mut fields: Vec<String>, out: &mut Vec<Problem>) {
    let mut seen = std::collections::BTreeSet::new();
    fields.retain(|f| seen.insert(f.clone()));
    let Some(first) = fields.first() else { return };
    let parent = first.split_once('.').map(|(head, _)| head.to_owned());
    let shared =
        parent.filter(|p| fields.iter().all(|f| f.strip_prefix(p.as_str()).is_some_and(|rest| rest.starts_with('.'))));
    let (field, names) = match &shared {
        Some(parent) => (parent.as_str(), fields.iter().map(|f| &f[parent.len() + 1..]).collect::<Vec<_>>()),
        None => ("", fields.iter().map(String::as_str).collect()),
    };
    let origin = Origin::of(resource);
    Report::new(&origin, out).warning(field, format!("not applied yet: {}", names.join(", ")));
}

#[cfg(test)]
mod tests {
    use super::super::testing::{load, object};
    use super::*;

    fn unapplied(yaml: &str) -> Vec<String> {
        collect(&load(yaml))
            .iter()
            .map(|p| {
                format!(
                    "{}: {}: {}",
                    p.resource.as_ref().map(ToString::to_string).unwrap_or_default(),
                    p.field,
                    p.message
                )
            })
            .collect()
    }

    #[test]
    fn one_warning_per_virtual_service() {
        let spec = "hosts: [ratings]\nhttp:\n- fault: {abort: {httpStatus: 500}}\n  retries: {attempts: 1}\n  route:\n  - destination: {host: ratings}\n- retries: {attempts: 2, retryRemoteLocalities: true}\n  route:\n  - destination: {host: ratings}";
        assert_eq!(
            unapplied(&object("VirtualService", "ratings", spec)),
            ["VirtualService default/ratings: spec.http: not applied yet: retries.retryRemoteLocalities"]
        );
        let tcp = "hosts: [a]\nhttp:\n- retries: {attempts: 2, retryRemoteLocalities: true}\n  timeout: 1s\n  route:\n  - destination: {host: a}\ntls:\n- match: [{sniHosts: [a]}]\n  route:\n  - destination: {host: a}";
        assert_eq!(
            unapplied(&object("VirtualService", "a", tcp)),
            ["VirtualService default/a: spec: not applied yet: http.retries.retryRemoteLocalities, tls"]
        );
        assert!(unapplied(&object("VirtualService", "a", "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}"))
            .is_empty());
        let on_gateway = "hosts: [a.example.com]\ngateways: [edge]\ntls:\n- match: [{sniHosts: [a.example.com]}]\n  route:\n  - destination: {host: a}";
        assert!(unapplied(&object("VirtualService", "a", on_gateway)).is_empty(), "tls routes apply on Gateways");
    }

    #[test]
    fn destination_rule_policies_beyond_simple_load_balancing() {
        let spec = "host: a\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM}\n  tunnel: {targetHost: a, targetPort: 80}\n  portLevelSettings:\n  - port: {number: 80}\n    tls: {mode: SIMPLE}\nsubsets:\n- name: v1\n  trafficPolicy: {connectionPool: {tcp: {maxConnections: 1}, http: {h2UpgradePolicy: UPGRADE}}, loadBalancer: {consistentHash: {useSourceIp: true}, localityLbSetting: {enabled: false}}}";
        assert_eq!(
            unapplied(&object("DestinationRule", "a", spec)),
            ["DestinationRule default/a: spec: not applied yet: trafficPolicy.tunnel, subsets.trafficPolicy.loadBalancer.localityLbSetting"]
        );
        let applied = "host: a\ntrafficPolicy:\n  connectionPool: {tcp: {maxConnections: 1}, http: {http1MaxPendingRequests: 1, h2UpgradePolicy: UPGRADE, maxConcurrentStreams: 10}}\n  outlierDetection: {consecutive5xxErrors: 1}\n  loadBalancer: {consistentHash: {httpHeaderName: x}, warmupDurationSecs: 10s}";
        assert!(unapplied(&object("DestinationRule", "a", applied)).is_empty());
        assert!(unapplied(&object("DestinationRule", "a", "host: a\ntrafficPolicy: {loadBalancer: {simple: RANDOM}}"))
            .is_empty());
    }

    #[test]
    fn resolutions_and_gateways() {
        let se = object("ServiceEntry", "s", "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]");
        assert_eq!(
            unapplied(&se),
            ["ServiceEntry default/s: spec.resolution: resolution NONE needs sidecar capture; no endpoints until then"]
        );
        let dns = object(
            "ServiceEntry",
            "s",
            "hosts: [a.com]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS",
        );
        assert!(unapplied(&dns).is_empty());
        let gw = object("Gateway", "g", "servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: [\"*\"]}]");
        assert!(unapplied(&gw).is_empty(), "Gateway listeners are opened");
    }
}
