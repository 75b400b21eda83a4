//! VirtualService `tcp[]` → TCP routes of a virtual host (spec §1.17).
//!
//! A TCP listener is bound to one host (`--listen tcp://ADDR=HOST`); a
//! connection to it takes the first route of that host whose match
//! applies, then a weighted destination. A match block applies when its
//! `port` is the port the client connected to and the address it connected
//! to lies in one of its `destinationSubnets` (each left out matches
//! anything); blocks are ORed, and a rule without blocks matches every
//! connection. Blocks for other gateways, with `sourceLabels` or for
//! another `sourceNamespace` are dropped as for HTTP routes. A service
//! without a VirtualService gets one route to its TCP port's default
//! cluster.
//!
//! A destination without `port.number` uses the service's only port, else
//! its first port that is not HTTP.

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::config::resources::{L4MatchAttributes, Labels, Resource, RouteDestination, VirtualService};
use crate::config::Problem;

use super::compile::warn;
use super::routes::{binds, cluster_ref_with, weight, RouteContext};
use super::services::{cluster_name, Registry, Service};
use super::{ClusterRef, Forward, WeightedDestination};

/// One TCP route: its match blocks (ORed; none matches everything) and
/// its weighted destinations.
#[derive(Debug)]
pub struct TcpRoute {
    pub matches: Vec<L4Match>,
    pub forward: Forward,
}

/// One `match` block of a TCP route.
#[derive(Debug)]
pub struct L4Match {
    /// The port the client connected to.
    pub port: Option<u16>,
    /// The address the client connected to lies in one of these.
    pub subnets: Vec<IpNet>,
}

// === impl TcpRoute ===

impl TcpRoute {
    /// Whether a connection that arrived at `local` takes this route.
    pub fn matches(&self, local: SocketAddr) -> bool {
        self.matches.is_empty() || self.matches.iter().any(|m| m.matches(local))
    }
}

// === impl L4Match ===

impl L4Match {
    /// Whether a connection that arrived at `local` fits the block.
    pub(super) fn matches(&self, local: SocketAddr) -> bool {
        self.port.map_or(true, |p| p == local.port())
            && (self.subnets.is_empty() || self.subnets.iter().any(|net| net.contains(&local.ip())))
    }
}

/// The TCP routes of `vs`.
pub(super) fn vs_tcp_routes(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    warnings: &mut Vec<Problem>,
) -> Vec<TcpRoute> {
    let mut routes = Vec::new();
    for (i, rule) in vs.spec.tcp.iter().enumerate() {
        let kept: Vec<&L4MatchAttributes> = rule
            .matches
            .iter()
            .filter(|m| applies(ctx, vs, &m.gateways, &m.source_labels, m.source_namespace.as_deref()))
            .collect();
        if !rule.matches.is_empty() && kept.is_empty() {
            continue;
        }
        let matches = kept.into_iter().map(|m| compile_l4(m.port, &m.destination_subnets)).collect();
        match destinations(ctx, vs, &rule.route) {
            Some(forward) => routes.push(TcpRoute { matches, forward }),
            None => warnings.push(warn(
                vs,
                format!("spec.tcp[{i}].route"),
                "no destination with a weight > 0; rule skipped",
            )),
        }
    }
    routes
}

/// The route of a service without TCP rules: everything to the default
/// cluster of its TCP port.
pub(super) fn default_tcp_route(registry: &Registry<'_>, service: &Service<'_>) -> Option<TcpRoute> {
    let port = tcp_port(service)?;
    let name = cluster_name(Some(u32::from(port)), "", &service.host);
    let cluster = match registry.cluster(&name) {
        Some(id) => ClusterRef::Known(id),
        None => ClusterRef::Missing { name: name.into(), service: service.meta.clone() },
    };
    let destinations = vec![WeightedDestination { weight: 100, cluster, headers: None }];
    Some(TcpRoute {
        matches: Vec::new(),
        forward: Forward { destinations, total_weight: 100, policy: Default::default() },
    })
}

/// The port a TCP destination without `port.number` uses.
fn tcp_port(service: &Service<'_>) -> Option<u16> {
    match service.ports.as_slice() {
        [(only, _)] => Some(*only),
        ports => ports.iter().find(|(_, p)| !p.protocol().is_http()).or(ports.first()).map(|(n, _)| *n),
    }
}

/// Whether a TCP or TLS match block with these config-time selectors
/// applies to the listeners of `ctx` (`gateways` naming them; no
/// `sourceLabels`, which a gateway or a sidecar without labels never has;
/// `sourceNamespace` the proxy's).
pub(super) fn applies(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    gateways: &[String],
    source_labels: &Labels,
    source_namespace: Option<&str>,
) -> bool {
    let gateway_ok = gateways.is_empty() || gateways.iter().any(|g| binds(g, ctx.gateway, &vs.meta.namespace));
    let ns_ok = source_namespace.map_or(true, |ns| ns == ctx.config.namespace);
    gateway_ok && source_labels.is_empty() && ns_ok
}

/// The runtime part of a match block: `port` and `destinationSubnets`
/// (addresses or CIDRs; ones that do not parse, which validation refuses,
/// are left out).
pub(super) fn compile_l4(port: Option<u32>, subnets: &[String]) -> L4Match {
    let subnets = subnets
        .iter()
        .filter_map(|s| s.parse::<IpNet>().ok().or_else(|| s.parse::<std::net::IpAddr>().ok().map(IpNet::from)))
        .collect();
    L4Match { port: port.and_then(|p| u16::try_from(p).ok()), subnets }
}

/// The weighted destinations of a TCP rule: one destination takes
/// everything; among several, zero and missing weights are dropped.
pub(super) fn destinations(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    route: &[RouteDestination],
) -> Option<Forward> {
    let single = route.len() == 1;
    let mut destinations = Vec::with_capacity(route.len());
    for d in route {
        let Some(dest) = &d.destination else { continue };
        let weight = weight(single, d.weight);
        if weight == 0 {
            continue;
        }
        let cluster = cluster_ref_with(ctx, vs, dest, tcp_port, None);
        destinations.push(WeightedDestination { weight, cluster, headers: None });
    }
    let total: u64 = destinations.iter().map(|d| u64::from(d.weight)).sum();
    let total_weight = u32::try_from(total).unwrap_or(u32::MAX);
    (total_weight > 0).then(|| Forward { destinations, total_weight, policy: Default::default() })
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::testutil::{reviews, vs};
    use super::super::ClusterRef;

    fn target(c: &super::super::Compiled, host: &str, local: &str) -> Option<String> {
        let local: SocketAddr = local.parse().unwrap();
        let route = c.table.find_tcp(host, local)?;
        match &route.forward.destinations[0].cluster {
            ClusterRef::Known(id) => Some(c.clusters[id.0 as usize].name.to_string()),
            ClusterRef::Missing { name, .. } => Some(format!("missing:{name}")),
        }
    }

    #[test]
    fn tcp_rules_match_port_and_subnet_and_services_default_to_their_tcp_port() {
        let c = reviews(&vs(
            "multi",
            "prod",
            "  hosts: [multi]\n  tcp:\n  - match: [{port: 15432}, {destinationSubnets: [10.1.0.0/16]}]\n    route: [{destination: {host: multi, port: {number: 8080}}}]\n  - route: [{destination: {host: multi}}]\n",
        ));
        let host = "multi.prod.svc.cluster.local";
        assert_eq!(target(&c, host, "127.0.0.1:15432").as_deref(), Some("outbound|8080||multi.prod.svc.cluster.local"));
        assert_eq!(target(&c, host, "10.1.2.3:9999").as_deref(), Some("outbound|8080||multi.prod.svc.cluster.local"));
        assert_eq!(target(&c, host, "127.0.0.1:9999").as_deref(), Some("outbound|5432||multi.prod.svc.cluster.local"));
        // No VirtualService: the service's only port.
        let reviews_host = "reviews.default.svc.cluster.local";
        assert_eq!(
            target(&c, reviews_host, "127.0.0.1:1").as_deref(),
            Some("outbound|9080||reviews.default.svc.cluster.local")
        );
        assert_eq!(target(&c, "unknown.example", "127.0.0.1:1"), None);
    }
}
