//! VirtualService `tls[]` → the SNI routes of a Gateway `PASSTHROUGH`
//! port (spec §1.17), and their lookup by the server name a ClientHello
//! carries.
//!
//! istiod turns each `tls[].match[]` block of a VirtualService bound to a
//! passthrough server into one Envoy filter chain: `sniHosts` become its
//! `server_names`, `destinationSubnets` its `prefix_ranges`, and the rule's
//! weighted destinations a `tcp_proxy`. `match.port` and `match.gateways`
//! only choose, when istiod builds the listener, which blocks belong to
//! the gateway port; meshd drops the others at compile time too.
//!
//! Envoy picks the filter chain with the most specific match, in its
//! order: the destination IP first (the longest matching prefix; a chain
//! without prefixes matches any address, less specifically), then the
//! server name (exact, then the longest `*.suffix`; `*`, which istiod
//! emits as a chain without server names, matches any name and no SNI).
//! meshd ranks the blocks the same way; on a tie the first block wins, in
//! VirtualService precedence order then rule order (istiod drops an SNI
//! host a previous block already used, so Envoy never sees the tie).
//!
//! SNI hosts that no server of the port admits ([`super::server_hosts`])
//! are left out of their block; a block left with none is dropped.

use std::net::SocketAddr;

use crate::config::host;
use crate::config::resources::{Resource, VirtualService};
use crate::config::Problem;

use super::compile::warn;
use super::routes::RouteContext;
use super::tcp_routes::{applies, compile_l4, destinations};
use super::{Forward, L4Match};

/// One TLS route: its match blocks (ORed, at least one) and its weighted
/// destinations.
#[derive(Debug)]
pub struct TlsRoute {
    pub matches: Vec<SniMatch>,
    pub forward: Forward,
}

/// One `match` block of a TLS route.
#[derive(Debug)]
pub struct SniMatch {
    /// Lower-case `sniHosts`: names, `*.suffix`es, or `*`.
    pub sni_hosts: Vec<String>,
    /// `port` and `destinationSubnets`.
    pub l4: L4Match,
}

/// How well a block matches a connection: the destination IP's prefix
/// length plus one (0: the block has no subnets), then the server name's
/// (see [`name_rank`]). Greater is more specific.
type Rank = (u8, usize);

// === impl SniMatch ===

impl SniMatch {
    /// How well the block matches a ClientHello naming `sni` (lower case)
    /// on a connection that arrived at `local`; `None` if it does not.
    fn rank(&self, sni: Option<&str>, local: SocketAddr) -> Option<Rank> {
        if !self.l4.matches(local) {
            return None;
        }
        let ip = local.ip();
        let subnet = self.l4.subnets.iter().filter(|n| n.contains(&ip)).map(|n| n.prefix_len() + 1).max();
        let name = self.sni_hosts.iter().filter_map(|pattern| name_rank(pattern, sni)).max()?;
        Some((subnet.unwrap_or(0), name))
    }
}

/// How specifically `pattern` matches `sni`: exact beats any wildcard, a
/// longer `*.suffix` a shorter one, and `*` (which also matches a
/// ClientHello without SNI) comes last.
fn name_rank(pattern: &str, sni: Option<&str>) -> Option<usize> {
    match (pattern, sni) {
        ("*", _) => Some(0),
        (_, None) => None,
        (pattern, Some(name)) if pattern == name => Some(usize::MAX),
        (pattern, Some(name)) if pattern.starts_with("*.") && host::covers(pattern, name) => Some(pattern.len()),
        _ => None,
    }
}

/// The route among `routes` for a ClientHello naming `sni` on a connection
/// that arrived at `local`: the most specific block's, the first on a tie.
pub(super) fn find<'a>(routes: &'a [TlsRoute], sni: Option<&str>, local: SocketAddr) -> Option<&'a TlsRoute> {
    let sni = sni.map(str::to_ascii_lowercase);
    let mut best: Option<(Rank, &TlsRoute)> = None;
    for route in routes {
        for rank in route.matches.iter().filter_map(|m| m.rank(sni.as_deref(), local)) {
            if best.map_or(true, |(top, _)| rank > top) {
                best = Some((rank, route));
            }
        }
    }
    best.map(|(_, route)| route)
}

/// The TLS routes of `vs` on the gateway port of `ctx`, keeping the SNI
/// hosts for which `admitted` holds.
pub(super) fn vs_tls_routes(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    admitted: &dyn Fn(&str) -> bool,
    warnings: &mut Vec<Problem>,
) -> Vec<TlsRoute> {
    let mut routes = Vec::new();
    for (i, rule) in vs.spec.tls.iter().enumerate() {
        let mut matches = Vec::new();
        for m in &rule.matches {
            let port_ok = m.port.filter(|p| *p != 0).map_or(true, |p| Some(p) == ctx.listener_port.map(u32::from));
            if !port_ok || !applies(ctx, vs, &m.gateways, &m.source_labels, m.source_namespace.as_deref()) {
                continue;
            }
            let sni_hosts: Vec<String> =
                m.sni_hosts.iter().map(|h| h.to_ascii_lowercase()).filter(|h| admitted(h)).collect();
            if !sni_hosts.is_empty() {
                matches.push(SniMatch { sni_hosts, l4: compile_l4(m.port, &m.destination_subnets) });
            }
        }
        if matches.is_empty() {
            continue;
        }
        match destinations(ctx, vs, &rule.route) {
            Some(forward) => routes.push(TlsRoute { matches, forward }),
            None => warnings.push(warn(
                vs,
                format!("spec.tls[{i}].route"),
                "no destination with a weight > 0; rule skipped",
            )),
        }
    }
    routes
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::name_rank;
    use crate::routing::testutil::{reviews, vs};
    use crate::routing::ClusterRef;

    fn gateway(servers: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: default}}\nspec:\n  servers:\n{servers}")
    }

    const PASSTHROUGH: &str =
        "  - port: {number: 8443, name: tls, protocol: TLS}\n    hosts: [\"*.example.com\"]\n    tls: {mode: PASSTHROUGH}\n";

    fn target(c: &crate::routing::Compiled, sni: Option<&str>, local: &str) -> Option<String> {
        let local: SocketAddr = local.parse().expect("address");
        let route = c.gateways.first()?.find_tls(sni, local)?;
        match &route.forward.destinations[0].cluster {
            ClusterRef::Known(id) => Some(c.clusters[id.0 as usize].name.to_string()),
            ClusterRef::Missing { name, .. } => Some(format!("missing:{name}")),
        }
    }

    #[test]
    fn names_rank_exact_then_longest_wildcard_then_star() {
        assert_eq!(name_rank("a.example.com", Some("a.example.com")), Some(usize::MAX));
        assert!(
            name_rank("*.a.example.com", Some("x.a.example.com")) > name_rank("*.example.com", Some("x.a.example.com"))
        );
        assert_eq!(name_rank("*", Some("x")), Some(0));
        assert_eq!(name_rank("*", None), Some(0));
        assert_eq!(name_rank("a.example.com", None), None);
        assert_eq!(name_rank("*.example.com", Some("example.com")), None);
    }

    #[test]
    fn the_most_specific_sni_wins_and_unadmitted_hosts_are_dropped() {
        let yaml = gateway(PASSTHROUGH)
            + &vs(
                "wild",
                "default",
                "  hosts: [\"*.example.com\"]\n  gateways: [edge]\n  tls:\n  - match: [{sniHosts: [\"*.example.com\"]}]\n    route: [{destination: {host: reviews, subset: v1}}]\n",
            )
            + &vs(
                "exact",
                "default",
                "  hosts: [a.example.com, b.example.org]\n  gateways: [edge]\n  tls:\n  - match: [{sniHosts: [a.example.com, b.example.org], port: 8443}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{sniHosts: [a.example.com], port: 9443}]\n    route: [{destination: {host: reviews, subset: v3}}]\n",
            );
        let c = reviews(&yaml);
        let local = "127.0.0.1:8443";
        let v = |s: &str| Some(format!("outbound|9080|{s}|reviews.default.svc.cluster.local"));
        assert_eq!(target(&c, Some("a.example.com"), local), v("v2"), "exact beats the earlier wildcard");
        assert_eq!(target(&c, Some("A.Example.COM"), local), v("v2"), "SNI compares case-insensitively");
        assert_eq!(target(&c, Some("z.example.com"), local), v("v1"));
        assert_eq!(target(&c, Some("b.example.org"), local), None, "no server admits b.example.org");
        assert_eq!(target(&c, None, local), None, "no SNI, no * route");
        assert_eq!(c.gateways[0].tls_routes.len(), 2, "the port 9443 block is not for this port");
    }

    #[test]
    fn subnets_rank_before_names() {
        let yaml = gateway(PASSTHROUGH)
            + &vs(
                "tls",
                "default",
                "  hosts: [\"*.example.com\"]\n  gateways: [edge]\n  tls:\n  - match: [{sniHosts: [a.example.com]}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{sniHosts: [\"*.example.com\"], destinationSubnets: [127.0.0.0/8]}]\n    route: [{destination: {host: reviews, subset: v2}}]\n",
            );
        let c = reviews(&yaml);
        let v = |s: &str| Some(format!("outbound|9080|{s}|reviews.default.svc.cluster.local"));
        assert_eq!(target(&c, Some("a.example.com"), "127.0.0.1:8443"), v("v2"));
        assert_eq!(target(&c, Some("a.example.com"), "10.0.0.1:8443"), v("v1"));
        assert_eq!(target(&c, Some("b.example.com"), "10.0.0.1:8443"), None);
    }
}
