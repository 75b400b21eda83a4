//! Gateway listeners (spec §1.3, §1.17, issue 6): each port a visible
//! `Gateway`'s servers name becomes one listener with routes of its own,
//! built from the VirtualServices bound to those gateways.
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
//! - What a port serves ([`PortKind`]) follows its servers' protocol, as
//!   Envoy's listener for it would: `HTTP`, `HTTP2` and `GRPC` in clear
//!   text and `HTTPS` with TLS terminated ([`TlsServer`]) serve the
//!   bound `http` routes; `TLS` or `HTTPS` with `tls.mode: PASSTHROUGH`
//!   routes raw TLS by its SNI with the bound `tls` routes
//!   ([`super::tls_routes`]); `TCP` (and `MONGO`, `MYSQL`, `REDIS`, which
//!   Istio proxies as TCP) relays with the bound `tcp` routes. A
//!   server's `tls.mode` left out is `PASSTHROUGH`, Istio's default.
//!   `AUTO_PASSTHROUGH` is served as `PASSTHROUGH` (by `tls` routes;
//!   istiod's routing of `outbound_.PORT_.SUBSET_.HOST` names without
//!   VirtualServices is not done), with a warning. `TLS` servers that
//!   terminate (`SIMPLE`, `MUTUAL`) are skipped with a warning.
//! - One port serves one kind, its first server's: istiod refuses servers
//!   whose protocol conflicts with the port's; meshd skips them with a
//!   warning (terminated `HTTPS` and `PASSTHROUGH` servers on one port
//!   included).
//! - An HTTP server with `tls.httpsRedirect` answers every request with a
//!   301 to `https`.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use crate::config::resources::{Gateway, Resource, Server, ServerTlsSettings, VirtualService};
use crate::config::{Config, Problem};

use super::compile::{exported_to, precedence, warn, Claims};
use super::routes::{binds, vs_routes, RouteContext};
use super::server_hosts::{self, ServerHost};
use super::services::Registry;
use super::tcp_routes::vs_tcp_routes;
use super::tls_routes::{self, vs_tls_routes, TlsRoute};
use super::{HostIndex, RouteTable, TcpRoute, VirtualHost};

/// One listener a Gateway asks for.
#[derive(Debug)]
pub struct GatewayListener {
    pub port: u16,
    /// What the port does with its connections.
    pub kind: PortKind,
    /// `HTTPS` servers on the port: their hosts and TLS settings (empty
    /// for a clear-text port).
    pub tls: Vec<TlsServer>,
    /// Every request gets a 301 to `https` (`tls.httpsRedirect`).
    pub https_redirect: bool,
    /// The routes of the VirtualServices bound to the port's gateways
    /// (empty unless [`PortKind::Http`]).
    pub table: RouteTable,
    /// [`PortKind::TlsPassthrough`]: the bound `tls` routes, in
    /// VirtualService precedence order.
    pub tls_routes: Vec<TlsRoute>,
    /// [`PortKind::Tcp`]: the bound `tcp` routes, in VirtualService
    /// precedence order; the first whose match applies wins.
    pub tcp: Vec<TcpRoute>,
}

/// What a Gateway port does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortKind {
    /// HTTP, in clear text or behind TLS termination.
    Http,
    /// Raw TLS, routed by the ClientHello's SNI without terminating.
    TlsPassthrough,
    /// Raw TCP.
    Tcp,
}

/// An `HTTPS` server of a Gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsServer {
    /// The SNI names it answers (`*` for any).
    pub hosts: Vec<String>,
    pub settings: ServerTlsSettings,
}

/// A server, with the Gateway it belongs to.
struct BoundServer<'c> {
    /// `namespace/name` of the Gateway: what VirtualServices' `gateways`
    /// name.
    gateway: String,
    /// The Gateway's namespace, which `./host` entries stand for.
    namespace: &'c str,
    /// Its port, hosts and TLS settings.
    server: &'c Server,
}

/// The servers of one port.
struct PortServers<'c> {
    /// The first server's kind, which the port serves.
    kind: PortKind,
    /// The servers of that kind, in Gateway and server order.
    servers: Vec<BoundServer<'c>>,
}

// === impl GatewayListener ===

impl GatewayListener {
    /// The TLS route for a ClientHello naming `sni` on a connection that
    /// arrived at `local`.
    pub fn find_tls(&self, sni: Option<&str>, local: SocketAddr) -> Option<&TlsRoute> {
        tls_routes::find(&self.tls_routes, sni, local)
    }

    /// The TCP route for a connection that arrived at `local`.
    pub fn find_tcp(&self, local: SocketAddr) -> Option<&TcpRoute> {
        self.tcp.iter().find(|r| r.matches(local))
    }
}

// === impl PortServers ===

impl PortServers<'_> {
    /// The first gateway of the port that `vs` binds to.
    fn bound_gateway(&self, vs: &Resource<VirtualService>) -> Option<&str> {
        self.servers
            .iter()
            .map(|b| b.gateway.as_str())
            .find(|key| vs.spec.gateways.iter().any(|g| binds(g, Some(key), &vs.meta.namespace)))
    }

    /// Whether a server of the port, of a gateway `vs` binds to, admits
    /// `host` of `vs`.
    fn admits(&self, vs: &Resource<VirtualService>, host: &str) -> bool {
        self.servers.iter().any(|b| {
            vs.spec.gateways.iter().any(|g| binds(g, Some(&b.gateway), &vs.meta.namespace))
                && b.server.hosts.iter().any(|h| ServerHost::parse(h, b.namespace).admits(&vs.meta.namespace, host))
        })
    }
}

/// The listeners of every visible Gateway, by port.
pub(super) fn compile(config: &Config, registry: &Registry<'_>, warnings: &mut Vec<Problem>) -> Vec<GatewayListener> {
    let mut ports: BTreeMap<u16, PortServers<'_>> = BTreeMap::new();
    for gw in config.gateways.iter().filter(|g| exported_to(&[], &g.meta.namespace, &config.namespace)) {
        collect_servers(gw, &mut ports, warnings);
    }
    ports
        .into_iter()
        .map(|(port, servers)| match servers.kind {
            PortKind::Http => http_listener(config, registry, port, &servers, warnings),
            kind => l4_listener(config, registry, port, kind, &servers, warnings),
        })
        .collect()
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
        let kind = match kind(server) {
            Ok(kind) => kind,
            Err(why) => {
                warnings.push(warn(gw, format!("spec.servers[{i}]"), format!("{why}; server skipped")));
                continue;
            }
        };
        if let Some(message) = server.tls.as_ref().and_then(|tls| passthrough_note(kind, tls)) {
            warnings.push(warn(gw, format!("spec.servers[{i}].tls.mode"), message));
        }
        let bound = BoundServer { gateway: key.clone(), namespace: &gw.meta.namespace, server };
        let entry = ports.entry(number).or_insert_with(|| PortServers { kind, servers: Vec::new() });
        if entry.kind == kind {
            entry.servers.push(bound);
        } else {
            let message =
                format!("port {number} already serves {:?} (its first server); {kind:?} server skipped", entry.kind);
            warnings.push(warn(gw, format!("spec.servers[{i}].port"), message));
        }
    }
}

/// What a server's port serves, or why meshd cannot serve it.
fn kind(server: &Server) -> Result<PortKind, String> {
    let protocol = server.port.as_ref().map(|p| p.protocol.to_ascii_uppercase()).unwrap_or_default();
    // Istio's default mode (the enum's zero) is PASSTHROUGH.
    let mode = server.tls.as_ref().and_then(|t| t.mode.as_deref()).unwrap_or("PASSTHROUGH");
    let passthrough = matches!(mode, "PASSTHROUGH" | "AUTO_PASSTHROUGH");
    match protocol.as_str() {
        "HTTP" | "HTTP2" | "GRPC" => Ok(PortKind::Http),
        "HTTPS" | "TLS" if passthrough => Ok(PortKind::TlsPassthrough),
        "HTTPS" => Ok(PortKind::Http),
        "TLS" => Err(format!("TLS servers that terminate TLS ({mode}) are not supported yet")),
        "TCP" | "MONGO" | "MYSQL" | "REDIS" => Ok(PortKind::Tcp),
        other => Err(format!("{other} servers are not supported")),
    }
}

/// What to say of a passthrough server's TLS settings that may not do what
/// they seem to.
fn passthrough_note(kind: PortKind, tls: &ServerTlsSettings) -> Option<&'static str> {
    let certificates = tls.server_certificate.is_some() || tls.credential_name.is_some();
    match tls.mode.as_deref() {
        _ if kind != PortKind::TlsPassthrough => None,
        Some("AUTO_PASSTHROUGH") => {
            Some("AUTO_PASSTHROUGH is served as PASSTHROUGH: by tls routes, not by the cluster the SNI names")
        }
        None if certificates => {
            Some("no mode means PASSTHROUGH (Istio's default): TLS is not terminated and the certificates are unused")
        }
        _ => None,
    }
}

/// The listener of an HTTP `port`.
fn http_listener(
    config: &Config,
    registry: &Registry<'_>,
    port: u16,
    servers: &PortServers<'_>,
    warnings: &mut Vec<Problem>,
) -> GatewayListener {
    let https = |s: &Server| s.port.as_ref().is_some_and(|p| p.protocol.eq_ignore_ascii_case("HTTPS"));
    let tls = servers
        .servers
        .iter()
        .filter(|b| https(b.server))
        .map(|b| TlsServer {
            hosts: b.server.hosts.iter().map(|h| server_hosts::name(h).to_owned()).collect(),
            settings: b.server.tls.clone().unwrap_or_default(),
        })
        .collect();
    let https_redirect = servers
        .servers
        .iter()
        .any(|b| !https(b.server) && b.server.tls.as_ref().is_some_and(|t| t.https_redirect == Some(true)));
    let claims = Claims::new(config, |vs| servers.bound_gateway(vs).is_some(), warnings);
    let mut vhosts = Vec::new();
    let mut hosts = HostIndex::default();
    for (vs_host, vs_index) in &claims.order {
        let vs = &config.virtual_services[*vs_index];
        if !servers.admits(vs, vs_host) {
            continue;
        }
        let ctx = RouteContext { config, registry, listener_port: Some(port), gateway: servers.bound_gateway(vs) };
        let routes = vs_routes(&ctx, vs, warnings);
        if routes.is_empty() {
            continue;
        }
        let index = vhosts.len();
        vhosts.push(VirtualHost { name: vs_host.as_str().into(), routes, tcp: Vec::new(), ports: Vec::new() });
        if !hosts.insert(vs_host, index) {
            vhosts.pop();
        }
    }
    let table = RouteTable { hosts, virtual_hosts: vhosts };
    GatewayListener { port, kind: PortKind::Http, tls, https_redirect, table, tls_routes: Vec::new(), tcp: Vec::new() }
}

/// The listener of a `TLS` passthrough or `TCP` `port`: the `tls` or `tcp`
/// routes of the bound VirtualServices one of whose hosts a server admits,
/// in precedence order (the proxy's namespace first, then oldest first).
/// Unlike HTTP hosts, which one VirtualService owns, every such
/// VirtualService contributes: istiod builds one filter chain per block.
fn l4_listener(
    config: &Config,
    registry: &Registry<'_>,
    port: u16,
    kind: PortKind,
    servers: &PortServers<'_>,
    warnings: &mut Vec<Problem>,
) -> GatewayListener {
    let mut bound: Vec<(usize, &Resource<VirtualService>)> = config
        .virtual_services
        .iter()
        .enumerate()
        .filter(|(_, vs)| exported_to(&vs.spec.export_to, &vs.meta.namespace, &config.namespace))
        .filter(|(_, vs)| {
            vs.spec.hosts.iter().any(|h| servers.admits(vs, &crate::config::host::expand(h, &vs.meta.namespace)))
        })
        .collect();
    bound.sort_by(|(i, a), (j, b)| precedence(a, *i, &config.namespace).cmp(&precedence(b, *j, &config.namespace)));
    let mut listener = GatewayListener {
        port,
        kind,
        tls: Vec::new(),
        https_redirect: false,
        table: RouteTable::default(),
        tls_routes: Vec::new(),
        tcp: Vec::new(),
    };
    for (_, vs) in bound {
        let ctx = RouteContext { config, registry, listener_port: Some(port), gateway: servers.bound_gateway(vs) };
        match kind {
            PortKind::TlsPassthrough => {
                let admitted = |sni: &str| servers.admits(vs, sni);
                listener.tls_routes.extend(vs_tls_routes(&ctx, vs, &admitted, warnings));
            }
            PortKind::Tcp => listener.tcp.extend(vs_tcp_routes(&ctx, vs, warnings)),
            PortKind::Http => {}
        }
    }
    listener
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{reviews, vs};
    use super::super::{ClusterRef, Lookup, RequestView};
    use super::PortKind;
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

    /// Scenario: ports serve their first server's kind: HTTP, TLS
    /// passthrough (also HTTPS without a mode, Istio's default), TCP;
    /// servers of another kind on a taken port, and TLS servers that
    /// terminate, are skipped with a warning.
    #[test]
    fn ports_serve_the_kind_of_their_servers() {
        let servers = "  - port: {number: 80, name: http, protocol: HTTP}\n    hosts: [\"*\"]\n  - port: {number: 80, name: tcp-80, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 443, name: https, protocol: HTTPS}\n    hosts: [\"*\"]\n    tls: {serverCertificate: /c.pem, privateKey: /k.pem}\n  - port: {number: 31400, name: tcp, protocol: TCP}\n    hosts: [\"*\"]\n  - port: {number: 9443, name: tls-simple, protocol: TLS}\n    hosts: [\"*\"]\n    tls: {mode: SIMPLE, credentialName: x}\n";
        let yaml = gateway("edge", servers)
            + &vs("tcp", "default", "  hosts: [\"*\"]\n  gateways: [edge]\n  tcp:\n  - match: [{port: 31400}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews, subset: v2}}]\n");
        let c = reviews(&yaml);
        let warnings: Vec<String> = c.warnings.iter().map(|w| format!("{}: {}", w.field, w.message)).collect();
        let kinds: Vec<(u16, PortKind)> = c.gateways.iter().map(|g| (g.port, g.kind)).collect();
        assert_eq!(kinds, [(80, PortKind::Http), (443, PortKind::TlsPassthrough), (31400, PortKind::Tcp)]);
        assert!(
            warnings.iter().any(|w| w.starts_with("spec.servers[1].port: port 80 already serves Http")),
            "{warnings:?}"
        );
        assert!(warnings.iter().any(|w| w.starts_with("spec.servers[4]: TLS servers that terminate")), "{warnings:?}");
        assert!(
            warnings.iter().any(|w| w.starts_with("spec.servers[2].tls.mode: no mode means PASSTHROUGH")),
            "{warnings:?}"
        );
        let tcp = &c.gateways[2];
        assert_eq!(tcp.tcp.len(), 2);
        let local = "127.0.0.1:31400".parse().expect("address");
        let route = tcp.find_tcp(local).expect("a TCP route");
        let cluster = match &route.forward.destinations[0].cluster {
            ClusterRef::Known(id) => c.clusters[id.0 as usize].name.to_string(),
            ClusterRef::Missing { name, .. } => format!("missing:{name}"),
        };
        assert_eq!(cluster, "outbound|9080|v1|reviews.default.svc.cluster.local");
    }
}
