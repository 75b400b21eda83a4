//! Gateway listeners (spec §1.3, issue 6): each port a visible `Gateway`'s
//! servers name becomes one listener with a route table of its own, built
//! from the VirtualServices bound to those gateways.
//!
//! - A VirtualService binds to a gateway by listing it in `gateways`, as
//!   `name` (a gateway in the VirtualService's namespace) or
//!   `namespace/name`; `mesh` (or no `gateways`) binds it to the sidecar
//!   listeners only.
//! - Of a bound VirtualService's hosts, those a server of that gateway on
//!   the port admits are served, `hosts` entries restricting the
//!   VirtualService's namespace with `ns/`, `./` or `*/`
//!   ([`super::server_hosts`]).
//! - Match blocks with `gateways` apply when they name this gateway.
//! - Protocols `HTTP`, `HTTP2` and `GRPC` listen in clear text, `HTTPS`
//!   with TLS ([`TlsServer`]); `TLS` and `TCP` servers are skipped with a
//!   warning. An HTTP server with `tls.httpsRedirect` answers every request
//!   with a 301 to `https`.

use std::collections::BTreeMap;

use crate::config::resources::{Gateway, Resource, ServerTlsSettings};
use crate::config::{Config, Problem};

use super::compile::{exported_to, warn, Claims};
use super::routes::{binds, vs_routes, RouteContext};
use super::server_hosts::{self, ServerHost};
use super::services::Registry;
use super::{HostIndex, RouteTable, VirtualHost};

/// One listener a Gateway asks for.
#[derive(Debug)]
pub struct GatewayListener {
    pub port: u16,
    /// `HTTPS` servers on the port: their hosts and TLS settings (empty
    /// for a clear-text port).
    pub tls: Vec<TlsServer>,
    /// Every request gets a 301 to `https` (`tls.httpsRedirect`).
    pub https_redirect: bool,
    /// The routes of the VirtualServices bound to the port's gateways.
    pub table: RouteTable,
}

/// An `HTTPS` server of a Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServer {
    /// The SNI names it answers (`*` for any).
    pub hosts: Vec<String>,
    pub settings: ServerTlsSettings,
}

/// The servers of one port, with the gateway (`namespace/name`) of each.
#[derive(Default)]
struct PortServers<'c> {
    servers: Vec<(String, &'c crate::config::resources::Server)>,
}

/// The listeners of every visible Gateway, by port.
pub(super) fn compile(config: &Config, registry: &Registry<'_>, warnings: &mut Vec<Problem>) -> Vec<GatewayListener> {
    let mut ports: BTreeMap<u16, PortServers<'_>> = BTreeMap::new();
    for gw in config.gateways.iter().filter(|g| exported_to(&[], &g.meta.namespace, &config.namespace)) {
        collect_servers(gw, &mut ports, warnings);
    }
    ports.into_iter().map(|(port, servers)| listener(config, registry, port, &servers, warnings)).collect()
}

fn collect_servers<'c>(
    gw: &'c Resource<Gateway>,
    ports: &mut BTreeMap<u16, PortServers<'c>>,
    warnings: &mut Vec<Problem>,
) {
    let key = format!("{}/{}", gw.meta.namespace, gw.meta.name);
    for (i, server) in gw.spec.servers.iter().enumerate() {
        let Some(port) = server.port.as_ref() else { continue };
        let Ok(number) = u16::try_from(port.number) else { continue };
        match port.protocol.to_ascii_uppercase().as_str() {
            "HTTP" | "HTTP2" | "GRPC" | "HTTPS" => ports.entry(number).or_default().servers.push((key.clone(), server)),
            other => {
                let message = format!("{other} servers are not supported yet; server skipped");
                warnings.push(warn(gw, format!("spec.servers[{i}].port.protocol"), message));
            }
        }
    }
}

/// The listener of `port`.
fn listener(
    config: &Config,
    registry: &Registry<'_>,
    port: u16,
    servers: &PortServers<'_>,
    warnings: &mut Vec<Problem>,
) -> GatewayListener {
    let https = |s: &crate::config::resources::Server| {
        s.port.as_ref().is_some_and(|p| p.protocol.eq_ignore_ascii_case("HTTPS"))
    };
    let tls = servers
        .servers
        .iter()
        .filter(|(_, s)| https(s))
        .map(|(_, s)| TlsServer {
            hosts: s.hosts.iter().map(|h| server_hosts::name(h).to_owned()).collect(),
            settings: s.tls.clone().unwrap_or_default(),
        })
        .collect();
    let https_redirect = servers
        .servers
        .iter()
        .any(|(_, s)| !https(s) && s.tls.as_ref().is_some_and(|t| t.https_redirect == Some(true)));
    let bound_gateway = |vs: &Resource<crate::config::resources::VirtualService>| {
        servers
            .servers
            .iter()
            .map(|(key, _)| key.as_str())
            .find(|key| vs.spec.gateways.iter().any(|g| binds(g, Some(key), &vs.meta.namespace)))
    };
    let claims = Claims::new(config, |vs| bound_gateway(vs).is_some(), warnings);
    let mut vhosts = Vec::new();
    let mut hosts = HostIndex::default();
    for (vs_host, vs_index) in &claims.order {
        let vs = &config.virtual_services[*vs_index];
        let accepted = servers.servers.iter().any(|(key, s)| {
            let gateway_namespace = key.split_once('/').map_or("", |(ns, _)| ns);
            vs.spec.gateways.iter().any(|g| binds(g, Some(key), &vs.meta.namespace))
                && s.hosts.iter().any(|h| ServerHost::parse(h, gateway_namespace).admits(&vs.meta.namespace, vs_host))
        });
        if !accepted {
            continue;
        }
        let ctx = RouteContext { config, registry, listener_port: Some(port), gateway: bound_gateway(vs) };
        let routes = vs_routes(&ctx, vs, warnings);
        if routes.is_empty() {
            continue;
        }
        let index = vhosts.len();
        vhosts.push(VirtualHost { name: vs_host.as_str().into(), routes, tcp: Vec::new() });
        if !hosts.insert(vs_host, index) {
            vhosts.pop();
        }
    }
    GatewayListener { port, tls, https_redirect, table: RouteTable { hosts, virtual_hosts: vhosts } }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{reviews, vs};
    use super::super::{Lookup, RequestView};
    use http::{HeaderMap, Method};

    fn gateway(name: &str, servers: &str) -> String {
        format!("---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}, namespace: default}}\nspec:\n  servers:\n{servers}")
    }

    #[test]
    fn bound_virtual_services_route_on_their_gateway_port_only() {
        let yaml = gateway("web", "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n")
            + &gateway("secure", "  - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [\"default/shop.example.com\"]\n    tls: {mode: SIMPLE, serverCertificate: /c.pem, privateKey: /k.pem}\n")
            + &vs("front", "default", "  hosts: [shop.example.com]\n  gateways: [web, default/secure]\n  http:\n  - route: [{destination: {host: reviews}}]\n")
            + &vs("inner", "default", "  hosts: [reviews]\n  http:\n  - route: [{destination: {host: reviews, subset: v2}}]\n");
        let c = reviews(&yaml);
        assert_eq!(c.gateways.iter().map(|g| g.port).collect::<Vec<_>>(), [8080, 8443]);
        let headers = HeaderMap::new();
        let view = |authority| RequestView {
            method: &Method::GET,
            scheme: "http",
            authority,
            port: 8080,
            path: "/",
            query: None,
            headers: &headers,
        };
        let found = |i: usize, host| matches!(c.gateways[i].table.find(&view(host)), Lookup::Route(..));
        assert!(found(0, "shop.example.com") && found(1, "shop.example.com"));
        assert!(!found(0, "reviews"), "a mesh-only VirtualService is not on the gateway");
        assert_eq!(c.gateways[1].tls.len(), 1);
        assert_eq!(c.gateways[1].tls[0].hosts, ["shop.example.com"]);
        // The mesh does not serve the gateway-only host.
        assert!(matches!(c.table.find(&view("shop.example.com")), Lookup::NoVirtualHost));
    }

    /// Scenario: server hosts `shop/…` admit VirtualServices of namespace
    /// `shop` only, `./…` those of the Gateway's namespace, `*/…` and
    /// plain hosts those of any namespace.
    #[test]
    fn server_hosts_restrict_the_virtual_services_namespace() {
        let servers = "  - port: {number: 8080, name: http, protocol: HTTP}\n    hosts: [\"shop/shop.example.com\", \"./own.example.com\", \"*/any.example.com\", plain.example.com]\n";
        let bound = |name: &str, ns: &str, host: &str| {
            vs(name, ns, &format!("  hosts: [{host}]\n  gateways: [default/web]\n  http:\n  - route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]\n"))
        };
        let yaml = gateway("web", servers)
            + &bound("shop-in-shop", "shop", "shop.example.com")
            + &bound("own-in-shop", "shop", "own.example.com")
            + &bound("any-in-shop", "shop", "any.example.com")
            + &bound("plain-in-shop", "shop", "plain.example.com");
        let c = reviews(&yaml);
        let served: Vec<&str> = c.gateways[0].table.virtual_hosts.iter().map(|v| &*v.name).collect();
        assert_eq!(served, ["shop.example.com", "any.example.com", "plain.example.com"]);
        let yaml = gateway("web", servers)
            + &bound("shop-in-default", "default", "shop.example.com")
            + &bound("own-in-default", "default", "own.example.com");
        let c = reviews(&yaml);
        let served: Vec<&str> = c.gateways[0].table.virtual_hosts.iter().map(|v| &*v.name).collect();
        assert_eq!(served, ["own.example.com"]);
    }
}
