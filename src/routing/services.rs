//! ServiceEntries → services, and services × ports × subsets → clusters
//! (spec §2.11, §3).
//!
//! Each host of a visible ServiceEntry is a service with the entry's ports.
//! Every port of every service gets a default cluster `outbound|P||HOST`
//! and one cluster per subset of the DestinationRule that applies to the
//! host, `outbound|P|SUBSET|HOST`, whether or not a route uses it.
//!
//! Two ServiceEntries defining the same host are not merged: the one in the
//! proxy's namespace wins, then the oldest (creationTimestamp, then load
//! order); later ones are dropped with a warning.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::resources::{
    Labels, PortMap, PortProtocol, Resolution, Resource, ServiceEntry, ServicePort, Subset,
};
use crate::config::{host, Config, Problem};
use crate::metrics::Reporter;

use super::compile::{exported_to, precedence, warn};
use super::dest_rule::{MergedRule, RuleIndex};
use super::policy::{cluster_policy, resolve_policy};
use super::{ClusterId, ClusterPolicy, ClusterSpec, DnsTarget, EndpointSpec, ServiceMeta, UpstreamProtocol};

/// One registry service: a host of a ServiceEntry.
#[derive(Debug)]
pub(super) struct Service<'c> {
    /// Lower-case FQDN (or wildcard host).
    pub host: Arc<str>,
    pub meta: Arc<ServiceMeta>,
    pub entry: &'c Resource<ServiceEntry>,
    /// Valid port numbers, in declaration order.
    pub ports: Vec<(u16, &'c ServicePort)>,
}

/// The services and the clusters built for them.
#[derive(Debug, Default)]
pub(super) struct Registry<'c> {
    pub services: Vec<Service<'c>>,
    by_host: HashMap<Arc<str>, usize>,
    clusters: HashMap<Arc<str>, ClusterId>,
}

/// An endpoint before subset filtering.
#[derive(Debug)]
struct Endpoint {
    target: Target,
    port: u16,
    weight: u32,
    labels: Arc<Labels>,
}

#[derive(Debug, Clone)]
enum Target {
    Ip(IpAddr),
    Dns(Arc<str>),
}

/// An endpoint source (inline or standalone WorkloadEntry) before ports.
struct Candidate<'c> {
    target: Target,
    ports: &'c PortMap,
    weight: u32,
    labels: Arc<Labels>,
}

// === impl Service ===

impl Service<'_> {
    /// The port used when a destination names none (and by the `default`
    /// route): the only port; else the first HTTP-family port; else the
    /// first port.
    pub fn default_port(&self) -> Option<u16> {
        match self.ports.as_slice() {
            [(only, _)] => Some(*only),
            ports => ports.iter().find(|(_, p)| p.protocol().is_http()).or(ports.first()).map(|(n, _)| *n),
        }
    }
}

/// `outbound|PORT|SUBSET|HOST`.
pub(super) fn cluster_name(port: Option<u32>, subset: &str, host: &str) -> String {
    match port {
        Some(port) => format!("outbound|{port}|{subset}|{host}"),
        None => format!("outbound||{subset}|{host}"),
    }
}

// === impl Registry ===

impl<'c> Registry<'c> {
    /// Builds every visible service and its clusters.
    pub fn build(config: &'c Config, warnings: &mut Vec<Problem>) -> (Registry<'c>, Vec<ClusterSpec>) {
        let rules = RuleIndex::new(config, warnings);
        let mut entries: Vec<(usize, &Resource<ServiceEntry>)> = config
            .service_entries
            .iter()
            .enumerate()
            .filter(|(_, se)| exported_to(&se.spec.export_to, &se.meta.namespace, &config.namespace))
            .collect();
        entries
            .sort_by(|(i, a), (j, b)| precedence(a, *i, &config.namespace).cmp(&precedence(b, *j, &config.namespace)));
        let mut registry = Registry::default();
        let mut clusters = Vec::new();
        for (_, entry) in entries {
            let ns = entry.meta.namespace.as_str();
            let mut ports = Vec::new();
            for (i, port) in entry.spec.ports.iter().enumerate() {
                match u16::try_from(port.number) {
                    Ok(n) if n != 0 => ports.push((n, port)),
                    _ => warnings.push(warn(entry, format!("spec.ports[{i}].number"), "invalid port; ignored")),
                }
            }
            let candidates = candidates(config, entry, warnings);
            let per_port: Vec<Vec<Endpoint>> =
                ports.iter().map(|(_, port)| resolve_ports(entry, &candidates, port, warnings)).collect();
            for name in &entry.spec.hosts {
                let fqdn: Arc<str> = host::expand(name, ns).into();
                if let Some(&other) = registry.by_host.get(&fqdn) {
                    let other = registry.services[other].entry.id();
                    let msg = format!("host {fqdn} is already defined by {other}; ignored");
                    warnings.push(warn(entry, "spec.hosts", msg));
                    continue;
                }
                let meta = Arc::new(service_meta(&fqdn, ns));
                let implicit = implicit_dns(entry, name, warnings);
                let rule = rules.lookup(&fqdn, ns).unwrap_or_default();
                for ((number, port), endpoints) in ports.iter().zip(&per_port) {
                    let target_port = u16::try_from(port.endpoint_port()).ok().filter(|p| *p != 0).unwrap_or(*number);
                    let build = ClusterBuild {
                        host: &fqdn,
                        meta: &meta,
                        port: *number,
                        protocol: port.protocol(),
                        target_port,
                        endpoints,
                        implicit: &implicit,
                    };
                    let mut policy = None;
                    registry.push_cluster(&mut clusters, build.cluster(&rule, None, &mut policy));
                    for subset in &rule.subsets {
                        registry.push_cluster(&mut clusters, build.cluster(&rule, Some(subset), &mut policy));
                    }
                }
                registry.by_host.insert(fqdn.clone(), registry.services.len());
                registry.services.push(Service { host: fqdn, meta, entry, ports: ports.clone() });
            }
        }
        (registry, clusters)
    }

    pub fn service(&self, host: &str) -> Option<&Service<'c>> {
        self.by_host.get(host).map(|&i| &self.services[i])
    }

    pub fn cluster(&self, name: &str) -> Option<ClusterId> {
        self.clusters.get(name).copied()
    }

    /// Adds a cluster. Beyond 2^32 clusters (far past any memory) further
    /// ones are not added, and routes to them answer `NC`.
    fn push_cluster(&mut self, clusters: &mut Vec<ClusterSpec>, spec: ClusterSpec) {
        let Ok(index) = u32::try_from(clusters.len()) else { return };
        self.clusters.insert(spec.name.clone(), ClusterId(index));
        clusters.push(spec);
    }
}

/// `destination_service*` labels: `name` is the first label of a
/// Kubernetes-style FQDN, else the host.
pub(super) fn service_meta(fqdn: &str, namespace: &str) -> ServiceMeta {
    let name = host::kube_service(fqdn).map_or(fqdn, |(name, _)| name);
    ServiceMeta { host: fqdn.into(), name: name.into(), namespace: namespace.into(), reporter: Reporter::Source }
}

/// Inputs shared by the clusters of one service port.
struct ClusterBuild<'a> {
    host: &'a Arc<str>,
    meta: &'a Arc<ServiceMeta>,
    port: u16,
    /// The port's protocol: it chooses the upstream HTTP version.
    protocol: PortProtocol,
    /// `targetPort`, else `port`: where the implicit DNS endpoint listens.
    target_port: u16,
    endpoints: &'a [Endpoint],
    /// The host itself, for DNS resolution without endpoints.
    implicit: &'a Option<DnsTarget>,
}

impl ClusterBuild<'_> {
    /// The cluster of `subset` (the default cluster when `None`). `shared`
    /// is the previous cluster's policy of this port: a subset without a
    /// policy of its own resolves to the same one, and shares it.
    fn cluster(
        &self,
        rule: &MergedRule<'_>,
        subset: Option<&Subset>,
        shared: &mut Option<Arc<ClusterPolicy>>,
    ) -> ClusterSpec {
        let selector = subset.map(|s| &s.labels);
        let in_subset =
            |labels: &Labels| selector.map_or(true, |sel| sel.iter().all(|(k, v)| labels.get(k) == Some(v)));
        let mut endpoints = Vec::new();
        let mut dns = Vec::new();
        for e in self.endpoints.iter().filter(|e| in_subset(&e.labels)) {
            match &e.target {
                Target::Ip(ip) => endpoints.push(EndpointSpec {
                    addr: SocketAddr::new(*ip, e.port),
                    weight: e.weight,
                    labels: e.labels.clone(),
                }),
                Target::Dns(name) => dns.push(DnsTarget {
                    hostname: name.clone(),
                    port: e.port,
                    weight: e.weight,
                    labels: e.labels.clone(),
                }),
            }
        }
        // The implicit endpoint has no labels: only label-less subsets
        // contain it (spec §3.3).
        if let Some(target) = self.implicit.as_ref().filter(|t| in_subset(&t.labels)) {
            dns.push(DnsTarget { port: self.target_port, ..target.clone() });
        }
        let subset_name = subset.map_or("", |s| s.name.as_str());
        let mut policy =
            cluster_policy(resolve_policy(rule.policy, subset.and_then(|s| s.traffic_policy.as_deref()), self.port));
        let http = policy.resolved.connection_pool.as_ref().and_then(|p| p.http.as_ref());
        policy.pool.protocol = UpstreamProtocol::for_port(self.protocol, http);
        let policy = match shared.as_ref().filter(|s| ***s == policy) {
            Some(same) => same.clone(),
            None => shared.insert(Arc::new(policy)).clone(),
        };
        ClusterSpec {
            name: cluster_name(Some(self.port.into()), subset_name, self.host).into(),
            service: self.meta.clone(),
            port: self.port,
            subset: subset.map(|s| s.name.as_str().into()),
            endpoints,
            dns,
            policy,
        }
    }
}

fn resolves_dns(entry: &ServiceEntry) -> bool {
    matches!(entry.resolution, Some(Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns))
}

/// The DNS target for a DNS-resolved entry without endpoints: the host
/// itself (its port is set per cluster). The name resolved is the host as
/// written (lower-cased, no trailing dot), not the FQDN a short name
/// expands to: `localhost` must resolve as `localhost`, and a short name is
/// left to the resolver's search domains.
fn implicit_dns(entry: &Resource<ServiceEntry>, written: &str, warnings: &mut Vec<Problem>) -> Option<DnsTarget> {
    let spec = &entry.spec;
    if !resolves_dns(spec) || !spec.endpoints.is_empty() || spec.workload_selector.is_some() {
        return None;
    }
    let name = written.strip_suffix('.').unwrap_or(written).to_ascii_lowercase();
    if name.starts_with('*') {
        warnings.push(warn(entry, "spec.resolution", format!("cannot resolve wildcard host {name}; no endpoints")));
        return None;
    }
    Some(DnsTarget { hostname: name.into(), port: 0, weight: 1, labels: Arc::default() })
}

/// Endpoint sources of `entry`: its inline endpoints, or the standalone
/// WorkloadEntries of its namespace its `workloadSelector` selects.
///
/// `resolution: NONE` yields nothing: such a service is passthrough to the
/// address the client dialled, which needs sidecar capture (the original
/// destination) that meshd does not have yet.
fn candidates<'c>(
    config: &'c Config,
    entry: &'c Resource<ServiceEntry>,
    warnings: &mut Vec<Problem>,
) -> Vec<Candidate<'c>> {
    let spec = &entry.spec;
    let dns = resolves_dns(spec);
    if spec.resolution.unwrap_or_default() == Resolution::None {
        return Vec::new();
    }
    let mut out = Vec::new();
    if let Some(selector) = &spec.workload_selector {
        for we in &config.workload_entries {
            if we.meta.namespace != entry.meta.namespace {
                continue;
            }
            // Metadata labels take precedence over spec labels, as istiod
            // merges them.
            let mut labels = we.spec.labels.clone();
            for (k, v) in we.meta.labels.iter() {
                labels.insert(k.clone(), v.clone());
            }
            if !selector.labels.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            match target(&we.spec.address, dns) {
                Ok(target) => out.push(Candidate {
                    target,
                    ports: &we.spec.ports,
                    weight: we.spec.effective_weight(),
                    labels: Arc::new(labels),
                }),
                Err(why) => warnings.push(warn(we, "spec.address", format!("{why}; endpoint skipped"))),
            }
        }
        return out;
    }
    for (i, e) in spec.endpoints.iter().enumerate() {
        match target(&e.address, dns) {
            Ok(target) => out.push(Candidate {
                target,
                ports: &e.ports,
                weight: e.effective_weight(),
                labels: Arc::new(e.labels.clone()),
            }),
            Err(why) => warnings.push(warn(entry, format!("spec.endpoints[{i}].address"), format!("{why}; skipped"))),
        }
    }
    out
}

fn target(address: &str, dns: bool) -> Result<Target, String> {
    if address.starts_with("unix://") {
        return Err(format!("unix domain socket address {address:?} is not supported"));
    }
    if address.is_empty() {
        return Err("no address (cross-network endpoints are not supported)".into());
    }
    let bare = address.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(address);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(Target::Ip(ip));
    }
    if dns && host::check_dns_name(address).is_ok() {
        let name = address.strip_suffix('.').unwrap_or(address).to_ascii_lowercase();
        return Ok(Target::Dns(name.into()));
    }
    let expected = if dns { "an IP address or DNS name" } else { "an IP address" };
    Err(format!("address {address:?} is not {expected}"))
}

/// Endpoint port: `ports[port.name]` › `port.targetPort` › `port.number`.
fn resolve_ports(
    entry: &Resource<ServiceEntry>,
    candidates: &[Candidate<'_>],
    port: &ServicePort,
    warnings: &mut Vec<Problem>,
) -> Vec<Endpoint> {
    let mut out = Vec::with_capacity(candidates.len());
    for c in candidates {
        let number = c.ports.get(&port.name).copied().unwrap_or_else(|| port.endpoint_port());
        match u16::try_from(number) {
            Ok(n) if n != 0 => {
                out.push(Endpoint { target: c.target.clone(), port: n, weight: c.weight, labels: c.labels.clone() })
            }
            _ => {
                let msg =
                    format!("endpoint port {number} for service port {:?} is invalid; endpoint skipped", port.name);
                warnings.push(warn(entry, "spec.endpoints", msg));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{compiled, se};
    use super::super::{Compiled, LbPolicy};
    use super::*;

    fn cluster<'a>(c: &'a Compiled, name: &str) -> &'a ClusterSpec {
        c.clusters.iter().find(|s| &*s.name == name).unwrap_or_else(|| panic!("no cluster {name}"))
    }

    fn addrs(spec: &ClusterSpec) -> Vec<String> {
        spec.endpoints.iter().map(|e| e.addr.to_string()).collect()
    }

    const REVIEWS: &str = "  hosts: [reviews]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 9080, name: http, protocol: HTTP, targetPort: 8080}]\n  endpoints:\n  - {address: 10.0.0.1, labels: {app: reviews, version: v1}}\n  - {address: 10.0.0.2, labels: {app: reviews, version: v2}, weight: 3, ports: {http: 9999}}\n  - {address: 'unix:///var/run/sock', labels: {version: v1}}\n  - {address: not_an_ip, labels: {version: v1}}\n";

    const REVIEWS_DR: &str = "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}\n  subsets:\n  - {name: v1, labels: {version: v1}}\n  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}\n  - {name: none, labels: {version: v3}}\n";

    #[test]
    fn subset_endpoints_are_selected_by_labels() {
        let c = compiled(&(se("reviews", "default", REVIEWS) + REVIEWS_DR), "default");
        let names: Vec<&str> = c.clusters.iter().map(|s| &*s.name).collect();
        let host = "reviews.default.svc.cluster.local";
        assert_eq!(
            names,
            [
                format!("outbound|9080||{host}"),
                format!("outbound|9080|v1|{host}"),
                format!("outbound|9080|v2|{host}"),
                format!("outbound|9080|none|{host}"),
            ]
        );
        let all = cluster(&c, names[0]);
        // targetPort for the first, the endpoint's own `ports` for the second.
        assert_eq!(addrs(all), ["10.0.0.1:8080", "10.0.0.2:9999"]);
        assert_eq!(all.endpoints[0].weight, 1);
        assert_eq!(all.endpoints[1].weight, 3);
        assert_eq!(all.subset, None);
        assert_eq!(all.port, 9080);
        assert_eq!(all.policy.lb, LbPolicy::RoundRobin);
        assert_eq!(*all.service, service_meta(host, "default"));
        assert_eq!(&*all.service.name, "reviews");
        let v1 = cluster(&c, names[1]);
        assert_eq!(addrs(v1), ["10.0.0.1:8080"]);
        assert_eq!(v1.subset.as_deref(), Some("v1"));
        assert_eq!(v1.policy.lb, LbPolicy::RoundRobin);
        let v2 = cluster(&c, names[2]);
        assert_eq!(addrs(v2), ["10.0.0.2:9999"]);
        assert_eq!(v2.policy.lb, LbPolicy::Random);
        assert!(cluster(&c, names[3]).endpoints.is_empty());
        // The unix socket and the bad address are skipped with warnings.
        let skipped: Vec<_> = c.warnings.iter().filter(|w| w.field.starts_with("spec.endpoints[")).collect();
        assert_eq!(skipped.len(), 2, "{:?}", c.warnings);
    }

    #[test]
    fn workload_entries_selected_in_the_entry_namespace() {
        let we = |name: &str, ns: &str, spec: &str| {
            format!("---\napiVersion: networking.istio.io/v1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n")
        };
        let yaml = [
            se(
                "vm",
                "default",
                "  hosts: [vm.example.com]\n  resolution: STATIC\n  ports: [{number: 80, name: http}, {number: 443, name: tls, protocol: TLS}]\n  workloadSelector: {labels: {app: vm}}\n",
            ),
            we("a", "default", "{address: 10.1.0.1, labels: {app: vm, version: v1}, ports: {http: 8080}}"),
            we("b", "default", "{address: 10.1.0.2, labels: {app: other}}"),
            we("c", "elsewhere", "{address: 10.1.0.3, labels: {app: vm}}"),
            we("d", "default", "{address: 10.1.0.4, labels: {app: vm}, weight: 0}"),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let http = cluster(&c, "outbound|80||vm.example.com");
        assert_eq!(addrs(http), ["10.1.0.1:8080", "10.1.0.4:80"]);
        assert_eq!(http.endpoints[1].weight, 1);
        assert_eq!(http.endpoints[0].labels.get("version").map(String::as_str), Some("v1"));
        assert_eq!(addrs(cluster(&c, "outbound|443||vm.example.com")), ["10.1.0.1:443", "10.1.0.4:443"]);
        assert_eq!(&*http.service.name, "vm.example.com");
    }

    #[test]
    fn dns_resolution_targets() {
        let yaml = [
            se(
                "ext",
                "default",
                "  hosts: [api.example.com, '*.wild.com']\n  resolution: DNS\n  ports: [{number: 443, name: https, protocol: HTTPS}, {number: 80, name: http, targetPort: 8080}]\n",
            ),
            se(
                "mixed",
                "default",
                "  hosts: [mixed.example.com]\n  resolution: DNS\n  ports: [{number: 80, name: http}]\n  endpoints:\n  - {address: Backend.Example.com., labels: {v: a}}\n  - {address: 192.0.2.1}\n",
            ),
            se("none", "default", "  hosts: [none.example.com]\n  resolution: NONE\n  ports: [{number: 80, name: http}]\n"),
            se("local", "default", "  hosts: [LocalHost.]\n  resolution: DNS\n  ports: [{number: 8080, name: http}]\n"),
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: api}\nspec:\n  host: api.example.com\n  subsets: [{name: all}, {name: labelled, labels: {v: a}}]\n".into(),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let api = cluster(&c, "outbound|443||api.example.com");
        assert!(api.endpoints.is_empty());
        assert_eq!(api.dns.len(), 1);
        assert_eq!((&*api.dns[0].hostname, api.dns[0].port, api.dns[0].weight), ("api.example.com", 443, 1));
        assert_eq!(cluster(&c, "outbound|80||api.example.com").dns[0].port, 8080);
        assert_eq!(cluster(&c, "outbound|443|all|api.example.com").dns.len(), 1);
        assert!(cluster(&c, "outbound|443|labelled|api.example.com").dns.is_empty());
        // A wildcard host cannot be resolved.
        assert!(cluster(&c, "outbound|443||*.wild.com").dns.is_empty());
        assert!(c.warnings.iter().any(|w| w.message.contains("*.wild.com")));
        let mixed = cluster(&c, "outbound|80||mixed.example.com");
        assert_eq!(addrs(mixed), ["192.0.2.1:80"]);
        assert_eq!(mixed.dns.len(), 1);
        assert_eq!((&*mixed.dns[0].hostname, mixed.dns[0].port), ("backend.example.com", 80));
        // A short host is resolved as written.
        let local = cluster(&c, "outbound|8080||localhost.default.svc.cluster.local");
        assert_eq!((&*local.dns[0].hostname, local.dns[0].port), ("localhost", 8080));
        // NONE: passthrough, no endpoints.
        let none = cluster(&c, "outbound|80||none.example.com");
        assert!(none.endpoints.is_empty() && none.dns.is_empty());
    }

    #[test]
    fn first_entry_for_a_host_wins_and_export_to_hides() {
        let yaml = [
            se("other", "other", "  hosts: [dup.example.com]\n  ports: [{number: 81, name: http}]\n"),
            se("mine", "default", "  hosts: [dup.example.com]\n  ports: [{number: 80, name: http}]\n"),
            se(
                "hidden",
                "other",
                "  hosts: [hidden.example.com]\n  exportTo: ['.']\n  ports: [{number: 80, name: http}]\n",
            ),
            se(
                "shared",
                "other",
                "  hosts: [shared.example.com]\n  exportTo: [default]\n  ports: [{number: 80, name: http}]\n",
            ),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let names: Vec<&str> = c.clusters.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["outbound|80||dup.example.com", "outbound|80||shared.example.com"]);
        assert!(c.warnings.iter().any(|w| w.message.contains("already defined")));
        assert_eq!(&*c.clusters[1].service.namespace, "other");
    }
}
