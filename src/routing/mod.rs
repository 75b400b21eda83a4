//! The compiled, immutable routing table.
//!
//! [`compile`] turns a validated [`Config`](crate::config::Config) into a [`Compiled`]: a
//! [`RouteTable`] (virtual hosts indexed by domain, each with its ordered
//! routes) and one [`ClusterSpec`] per Envoy-style cluster
//! `outbound|PORT|SUBSET|HOST`. Routes name clusters by [`ClusterId`], an
//! index into `Compiled::clusters`, so the stateful upstream side can be
//! bound to a new table without any lookup on the request path.
//!
//! Request-time work is [`RouteTable::find`]: one hash lookup for the host
//! (then wildcard suffixes), then the first matching route.

use crate::metrics::Reporter;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderMap, Method};

use crate::config::resources::Labels;
use crate::config::Problem;

pub mod actions;
mod cluster_policy;
mod compile;
mod delegate;
mod dest_rule;
mod gateways;
mod host_index;
mod matcher;
mod policy;
pub mod retry;
mod routes;
mod server_hosts;
mod services;
mod tcp_routes;
#[cfg(test)]
mod testutil;
mod tls_routes;

pub use cluster_policy::{
    CircuitBreakers, ClusterPolicy, HashKey, HashPolicy, HashTableKind, Keepalive, LbPolicy, OutlierConfig,
    PoolSettings, UpstreamProtocol, Warmup, UNLIMITED,
};
pub use compile::compile;
pub use gateways::{GatewayListener, PortKind, TlsServer};
pub use host_index::HostIndex;
pub use matcher::RequestMatch;
pub use policy::{resolve_policy, ResolvedPolicy};
pub use tcp_routes::{L4Match, TcpRoute};
pub use tls_routes::{SniMatch, TlsRoute};

/// The output of [`compile`].
#[derive(Debug)]
pub struct Compiled {
    pub table: RouteTable,
    /// Indexed by [`ClusterId`]. Shared: the live cluster and each of its
    /// states hold the same spec rather than copies (~1.6 KB each).
    pub clusters: Vec<Arc<ClusterSpec>>,
    /// Non-fatal findings of compilation (dropped duplicate virtual hosts,
    /// unreachable routes, skipped endpoints…).
    pub warnings: Vec<Problem>,
    /// The listeners Gateways ask for, by port, each with its own table.
    pub gateways: Vec<GatewayListener>,
}

/// Virtual hosts and the index that finds them by Host / `:authority`.
#[derive(Debug, Default)]
pub struct RouteTable {
    /// Domain → index into `virtual_hosts`.
    pub hosts: HostIndex,
    pub virtual_hosts: Vec<VirtualHost>,
}

/// One virtual host: a service (with its alias domains) or a VirtualService
/// host that is not a registry service.
#[derive(Debug)]
pub struct VirtualHost {
    /// The canonical host (FQDN or VS host), used in logs and dumps.
    pub name: Arc<str>,
    /// Ordered routes; the first match wins. Empty never happens: a
    /// service without VirtualService gets the `default` route.
    pub routes: Vec<Route>,
    /// Ordered TCP routes, for connections on a TCP listener bound to this
    /// host (empty for most hosts).
    pub tcp: Vec<TcpRoute>,
    /// The service's ports (empty for a host outside the registry: any
    /// port). Captured traffic to another port does not take this host
    /// (Istio builds one route table per port).
    pub ports: Vec<u16>,
}

/// One Envoy route: a single match block of an Istio HTTPRoute (an
/// HTTPRoute with k match blocks becomes k routes).
#[derive(Debug)]
pub struct Route {
    /// `http[].name`, with `.` + match name appended when the match block
    /// is named; `default` for the implicit route.
    pub name: Arc<str>,
    /// All conditions of one HTTPMatchRequest (ANDed). `None` matches every
    /// request.
    pub matcher: Option<RequestMatch>,
    pub action: Action,
    /// Fault, rewrite and header operations of the rule; `None` for a
    /// route that has none (most), so the request path checks one pointer.
    pub extras: Option<Arc<actions::RouteExtras>>,
}

/// What a route does with a matched request.
#[derive(Debug)]
pub enum Action {
    Forward(Forward),
    /// `redirect`: meshd answers with a `Location`.
    Redirect(Arc<actions::Redirect>),
    /// `directResponse`: meshd answers with a fixed status and body.
    Direct(Arc<actions::DirectResponse>),
}

/// Weighted destinations of a forwarding route (Istio weights, spec §1.6:
/// one destination gets 100 %; zero weights are dropped).
#[derive(Debug)]
pub struct Forward {
    pub destinations: Vec<WeightedDestination>,
    /// Sum of the weights, > 0.
    pub total_weight: u32,
    /// Timeout and retries of the HTTPRoute (shared by its match blocks).
    pub policy: Arc<retry::RoutePolicy>,
}

#[derive(Debug)]
pub struct WeightedDestination {
    pub weight: u32,
    pub cluster: ClusterRef,
    /// `route[].headers` of this destination, if it has any.
    pub headers: Option<Arc<actions::DestinationHeaders>>,
}

/// A route's target cluster: one that exists, or one that does not (unknown
/// host, or a subset no DestinationRule defines), which answers 503 `NC`.
#[derive(Debug, Clone)]
pub enum ClusterRef {
    Known(ClusterId),
    Missing { name: Arc<str>, service: Arc<ServiceMeta> },
}

/// Index into [`Compiled::clusters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u32);

/// Everything the upstream side needs to build or update one cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterSpec {
    /// `outbound|PORT|SUBSET|HOST` (SUBSET empty for the default cluster).
    pub name: Arc<str>,
    pub service: Arc<ServiceMeta>,
    pub port: u16,
    pub subset: Option<Arc<str>>,
    /// Endpoints with IP addresses, already filtered by the subset labels.
    pub endpoints: Vec<EndpointSpec>,
    /// Hostnames to resolve (ServiceEntry `resolution: DNS`), filtered by
    /// the subset labels; every address found becomes an endpoint.
    pub dns: Vec<DnsTarget>,
    /// Shared by the clusters of one service port that resolve alike.
    pub policy: Arc<ClusterPolicy>,
}

/// A service, as metrics label it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceMeta {
    /// `destination_service`: the FQDN.
    pub host: Arc<str>,
    /// `destination_service_name`: `reviews` for a Kubernetes-style FQDN,
    /// else the host.
    pub name: Arc<str>,
    /// `destination_service_namespace`: the ServiceEntry's namespace.
    pub namespace: Arc<str>,
    /// Who reports the requests: `source` for the outbound clusters,
    /// `destination` for the inbound ones of sidecar capture.
    pub reporter: Reporter,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    pub addr: SocketAddr,
    /// Istio default 1.
    pub weight: u32,
    pub labels: Arc<Labels>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsTarget {
    pub hostname: Arc<str>,
    pub port: u16,
    pub weight: u32,
    pub labels: Arc<Labels>,
}

/// The parts of a request that routing looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// `http` or `https` (downstream connection).
    pub scheme: &'a str,
    /// Host / `:authority` as sent (port included if the client sent it).
    pub authority: &'a str,
    /// The destination port the client addressed (Host port, else the
    /// scheme's default); `match.port` compares with it.
    pub port: u16,
    /// Path without the query string.
    pub path: &'a str,
    /// Raw query string without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// Result of [`RouteTable::find`].
#[derive(Debug)]
pub enum Lookup<'a> {
    /// No virtual host for the Host: 404 `NR`.
    NoVirtualHost,
    /// The virtual host matched but no route did: 404 `NR`.
    NoRoute(&'a VirtualHost),
    Route(&'a VirtualHost, &'a Route),
}

// === impl RouteTable ===

impl RouteTable {
    /// Finds the virtual host for `req.authority` (port ignored,
    /// case-insensitive, exact then longest wildcard suffix then `*`) and
    /// its first matching route.
    pub fn find<'a>(&'a self, req: &RequestView<'_>) -> Lookup<'a> {
        let Some(index) = self.hosts.lookup(req.authority) else {
            return Lookup::NoVirtualHost;
        };
        let Some(vhost) = self.virtual_hosts.get(index) else {
            return Lookup::NoVirtualHost;
        };
        match vhost.routes.iter().find(|r| r.matcher.as_ref().map_or(true, |m| m.matches(req))) {
            Some(route) => Lookup::Route(vhost, route),
            None => Lookup::NoRoute(vhost),
        }
    }
}

impl VirtualHost {
    /// Whether traffic to `port` may take this host.
    pub fn serves_port(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port)
    }
}

impl RouteTable {
    /// The TCP route for a connection to `host` that arrived at `local`
    /// (the address and port the client connected to).
    pub fn find_tcp(&self, host: &str, local: SocketAddr) -> Option<&TcpRoute> {
        let vhost = self.virtual_hosts.get(self.hosts.lookup(host)?)?;
        vhost.tcp.iter().find(|r| r.matches(local))
    }

    /// [`Self::find_tcp`] for a captured connection to `original`: only a
    /// host that serves its port (Istio's `<VIP>:<port>` listener).
    pub fn find_captured_tcp(&self, host: &str, original: SocketAddr) -> Option<&TcpRoute> {
        let vhost = self.virtual_hosts.get(self.hosts.lookup(host)?)?;
        if !vhost.serves_port(original.port()) {
            return None;
        }
        vhost.tcp.iter().find(|r| r.matches(original))
    }
}

// === impl Forward ===

impl Forward {
    /// Picks a destination for a uniformly random `roll` in `0..u32::MAX`.
    pub fn pick(&self, roll: u32) -> Option<&WeightedDestination> {
        if self.destinations.len() == 1 {
            return self.destinations.first();
        }
        let mut point = roll % self.total_weight.max(1);
        for d in &self.destinations {
            if point < d.weight {
                return Some(d);
            }
            point -= d.weight;
        }
        self.destinations.last()
    }
}
