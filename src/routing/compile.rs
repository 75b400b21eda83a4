//! Config → routing table + cluster specs.
//!
//! 1. Services and clusters ([`super::services`]): every visible
//!    ServiceEntry host, with its DestinationRule's subsets.
//! 2. VirtualService ownership: each host of a VS that applies to the mesh
//!    is claimed by the first VS in order (proxy namespace first, then the
//!    others; oldest first within each); later claims are dropped.
//! 3. Virtual hosts: one per service (routes from the VS owning its host,
//!    exactly or by the most specific wildcard; else the `default` route),
//!    then one per claimed VS host that is not a service.
//! 4. The domain index: canonical names first, then aliases and VIPs, so a
//!    canonical name is never shadowed by another service's alias.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::config::resources::{Resource, VirtualService};
use crate::config::{host, Config, Problem};

use super::routes::{vs_routes, RouteContext};
use super::services::{cluster_name, Registry, Service};
use super::tcp_routes::{default_tcp_route, vs_tcp_routes};
use super::{Action, ClusterRef, Compiled, Forward, HostIndex, Route, RouteTable, VirtualHost, WeightedDestination};

/// Istio only builds non-registry VS hosts on port 80.
const NON_REGISTRY_PORT: u16 = 80;

/// Compiles a validated configuration.
pub fn compile(config: &Config) -> Compiled {
    let mut warnings = Vec::new();
    let (registry, clusters) = Registry::build(config, &mut warnings);
    let for_mesh =
        |vs: &Resource<VirtualService>| vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh");
    let claims = Claims::new(config, for_mesh, &mut warnings);
    let mut vhosts = Vec::new();
    // (domain, vhost, canonical)
    let mut domains: Vec<(String, usize, bool)> = Vec::new();
    let mut compiled_once = HashSet::new();
    let tcp_routes_of = |vs_index: usize, listener_port: Option<u16>, warnings: &mut Vec<Problem>| {
        let ctx = RouteContext { config, registry: &registry, listener_port, gateway: None };
        vs_tcp_routes(&ctx, &config.virtual_services[vs_index], warnings)
    };
    let mut routes_of = |vs_index: usize, listener_port: Option<u16>, warnings: &mut Vec<Problem>| {
        let ctx = RouteContext { config, registry: &registry, listener_port, gateway: None };
        let vs = &config.virtual_services[vs_index];
        // A wildcard VS may serve many hosts: report its problems once.
        if compiled_once.insert(vs_index) {
            vs_routes(&ctx, vs, warnings)
        } else {
            vs_routes(&ctx, vs, &mut Vec::new())
        }
    };

    for service in &registry.services {
        let index = vhosts.len();
        let port = service.default_port();
        let owner = claims.owner(&service.host);
        let routes = owner
            .map(|vs| routes_of(vs, port, &mut warnings))
            .filter(|routes| !routes.is_empty())
            .unwrap_or_else(|| vec![default_route(&registry, service)]);
        let tcp = owner
            .map(|vs| tcp_routes_of(vs, port, &mut warnings))
            .filter(|tcp| !tcp.is_empty())
            .unwrap_or_else(|| default_tcp_route(&registry, service).into_iter().collect());
        let ports = service.ports.iter().map(|(number, _)| *number).collect();
        vhosts.push(VirtualHost { name: service.host.clone(), routes, tcp, ports });
        let mut aliases = host::aliases(&service.host, &config.namespace).into_iter();
        domains.extend(aliases.next().map(|canonical| (canonical, index, true)));
        domains.extend(aliases.map(|alias| (alias, index, false)));
        // VIPs (CIDRs only select TCP traffic).
        let vips = service.entry.spec.addresses.iter().filter(|a| !a.contains('/'));
        domains.extend(vips.map(|vip| (vip.trim_matches(['[', ']']).to_ascii_lowercase(), index, false)));
    }

    for (vs_host, vs_index) in &claims.order {
        if registry.service(vs_host).is_some() {
            continue;
        }
        let routes = routes_of(*vs_index, Some(NON_REGISTRY_PORT), &mut warnings);
        let tcp = tcp_routes_of(*vs_index, Some(NON_REGISTRY_PORT), &mut warnings);
        let vs = &config.virtual_services[*vs_index];
        if routes.is_empty() && tcp.is_empty() {
            warnings.push(warn(vs, "spec.http", format!("no usable route for host {vs_host}; host not served")));
            continue;
        }
        let index = vhosts.len();
        vhosts.push(VirtualHost { name: vs_host.as_str().into(), routes, tcp, ports: Vec::new() });
        domains.push((vs_host.clone(), index, true));
        if !vs_host.starts_with('*') && vs_host.ends_with(host::CLUSTER_DOMAIN) {
            let aliases = host::aliases(vs_host, &config.namespace).into_iter().skip(1);
            domains.extend(aliases.map(|alias| (alias, index, false)));
        }
    }

    let mut hosts = HostIndex::default();
    domains.sort_by_key(|(_, _, canonical)| !canonical);
    for (domain, index, _) in domains {
        if !hosts.insert(&domain, index) {
            let holder = hosts.lookup(&domain).map_or("", |i| &*vhosts[i].name);
            // A VIP shared by the hosts of one ServiceEntry is expected.
            if same_entry(&registry, holder, &vhosts[index].name) {
                continue;
            }
            let msg = format!("domain {domain} of {} is already served by {holder}; ignored", vhosts[index].name);
            warnings.push(match registry.service(&vhosts[index].name) {
                Some(service) => warn(service.entry, "spec.hosts", msg),
                None => Problem::warning(None, None, "", msg),
            });
        }
    }
    let gateways = super::gateways::compile(config, &registry, &mut warnings);
    let clusters = clusters.into_iter().map(Arc::new).collect();
    Compiled { table: RouteTable { hosts, virtual_hosts: vhosts }, clusters, warnings, gateways }
}

fn same_entry(registry: &Registry<'_>, a: &str, b: &str) -> bool {
    match (registry.service(a), registry.service(b)) {
        (Some(a), Some(b)) => std::ptr::eq(a.entry, b.entry),
        _ => false,
    }
}

/// `default`: everything to `outbound|PORT||HOST` (spec §1.3.9).
fn default_route(registry: &Registry<'_>, service: &Service<'_>) -> Route {
    let name = cluster_name(service.default_port().map(u32::from), "", &service.host);
    let cluster = match registry.cluster(&name) {
        Some(id) => ClusterRef::Known(id),
        None => ClusterRef::Missing { name: name.into(), service: service.meta.clone() },
    };
    let forward = Forward {
        destinations: vec![WeightedDestination { weight: 100, cluster, headers: None }],
        total_weight: 100,
        policy: Default::default(),
    };
    Route { name: Arc::from("default"), matcher: None, action: Action::Forward(forward), extras: None }
}

/// VirtualService hosts and who owns them.
pub(super) struct Claims {
    /// Host → VS index.
    exact: HashMap<String, usize>,
    /// Wildcard hosts, longest first.
    wildcards: Vec<(String, usize)>,
    /// Every claim, in claim order.
    pub(super) order: Vec<(String, usize)>,
}

// === impl Claims ===

impl Claims {
    /// The claims of the visible VirtualServices for which `applies`
    /// (bound to the listeners at hand) holds.
    pub(super) fn new(
        config: &Config,
        applies: impl Fn(&Resource<VirtualService>) -> bool,
        warnings: &mut Vec<Problem>,
    ) -> Claims {
        let mut applicable: Vec<(usize, &Resource<VirtualService>)> = config
            .virtual_services
            .iter()
            .enumerate()
            .filter(|(_, vs)| exported_to(&vs.spec.export_to, &vs.meta.namespace, &config.namespace))
            .filter(|(_, vs)| applies(vs))
            .collect();
        applicable
            .sort_by(|(i, a), (j, b)| precedence(a, *i, &config.namespace).cmp(&precedence(b, *j, &config.namespace)));
        let mut claims = Claims { exact: HashMap::new(), wildcards: Vec::new(), order: Vec::new() };
        for (index, vs) in applicable {
            for h in &vs.spec.hosts {
                let fqdn = host::expand(h, &vs.meta.namespace);
                if let Some(&owner) = claims.exact.get(&fqdn) {
                    if owner == index {
                        continue; // listed twice in one VS
                    }
                    let owner = config.virtual_services[owner].id();
                    let msg = format!("host {fqdn} is already claimed by {owner}; ignored for this host");
                    warnings.push(warn(vs, "spec.hosts", msg));
                    continue;
                }
                claims.exact.insert(fqdn.clone(), index);
                if fqdn.starts_with('*') {
                    claims.wildcards.push((fqdn.clone(), index));
                }
                claims.order.push((fqdn, index));
            }
        }
        claims.wildcards.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));
        claims
    }

    /// The VS owning service host `fqdn`: exact, else most specific wildcard.
    fn owner(&self, fqdn: &str) -> Option<usize> {
        self.exact
            .get(fqdn)
            .or_else(|| self.wildcards.iter().find(|(p, _)| host::covers(p, fqdn)).map(|(_, vs)| vs))
            .copied()
    }
}

/// Whether a resource of `namespace` with `export_to` is visible from
/// `proxy_namespace`: empty or `*` ⇒ everyone; `.` ⇒ its own namespace;
/// `~` ⇒ nobody; else the namespaces listed.
pub(super) fn exported_to(export_to: &[String], namespace: &str, proxy_namespace: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => namespace == proxy_namespace,
            other => other == proxy_namespace,
        })
}

/// Sort key "oldest first": by creationTimestamp (RFC 3339 strings compare
/// in time order), resources without one after those with one (they count
/// as created at load time), then by load order.
pub(super) fn age_key<T>(r: &Resource<T>, load_index: usize) -> (bool, &str, usize) {
    let ts = r.meta.creation_timestamp.as_deref();
    (ts.is_none(), ts.unwrap_or(""), load_index)
}

/// Sort key "proxy namespace first, then oldest first".
pub(super) fn precedence<'r, T>(
    r: &'r Resource<T>,
    load_index: usize,
    proxy_namespace: &str,
) -> (bool, (bool, &'r str, usize)) {
    (r.meta.namespace != proxy_namespace, age_key(r, load_index))
}

/// A warning about `r`.
pub(super) fn warn<T>(r: &Resource<T>, field: impl Into<String>, message: impl Into<String>) -> Problem {
    Problem::warning(Some(r.source.file.clone()), Some(r.id()), field, message)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{compiled, req, se, targets, vs};
    use super::super::Lookup;

    const REVIEWS: &str = "  hosts: [reviews]\n  addresses: [240.0.0.1]\n  resolution: STATIC\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  endpoints: [{address: 10.0.0.1}]\n";

    fn vhost(c: &super::Compiled, authority: &str) -> Option<String> {
        req(authority, "/").route(c).map(|(vh, _)| vh.to_owned())
    }

    #[test]
    fn aliases_from_the_same_namespace() {
        let c = compiled(&se("reviews", "default", REVIEWS), "default");
        let fqdn = "reviews.default.svc.cluster.local";
        for authority in [
            fqdn,
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "reviews:9080",
            "reviews.default.svc.cluster.local:9080",
            "Reviews.DEFAULT.svc.cluster.local",
            "reviews.default.svc.cluster.local.",
            "240.0.0.1:9080",
        ] {
            assert_eq!(vhost(&c, authority).as_deref(), Some(fqdn), "{authority}");
        }
        assert!(matches!(c.table.find(&req("ratings", "/").view()), Lookup::NoVirtualHost));
        let (_, route) = req("reviews", "/").route(&c).unwrap();
        assert_eq!(&*route.name, "default");
        assert_eq!(targets(&c, route), [(format!("outbound|9080||{fqdn}"), 100)]);
    }

    #[test]
    fn bare_name_only_from_the_same_namespace() {
        let c = compiled(&se("reviews", "default", REVIEWS), "other");
        assert_eq!(vhost(&c, "reviews"), None);
        assert!(vhost(&c, "reviews.default").is_some());
        assert!(vhost(&c, "reviews.default.svc").is_some());
    }

    #[test]
    fn wildcard_virtual_service_hosts() {
        let yaml = [
            se("ext", "default", "  hosts: [x.bar.foo.com, y.foo.com, foo.com]\n  ports: [{number: 80, name: http}]\n"),
            se("a", "default", "  hosts: [a.internal]\n  ports: [{number: 80, name: http}]\n"),
            se("b", "default", "  hosts: [b.internal]\n  ports: [{number: 80, name: http}]\n"),
            vs(
                "foo",
                "default",
                "  hosts: ['*.foo.com']\n  http: [{name: foo, route: [{destination: {host: a.internal}}]}]\n",
            ),
            vs(
                "bar",
                "default",
                "  hosts: ['*.bar.foo.com']\n  http: [{name: bar, route: [{destination: {host: b.internal}}]}]\n",
            ),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let route = |authority: &str| req(authority, "/").route(&c).map(|(vh, r)| (vh.to_owned(), r.name.to_string()));
        // Registry services attach to the most specific wildcard VS.
        assert_eq!(route("x.bar.foo.com"), Some(("x.bar.foo.com".into(), "bar".into())));
        assert_eq!(route("y.foo.com"), Some(("y.foo.com".into(), "foo".into())));
        // `*.foo.com` does not cover `foo.com`.
        assert_eq!(route("foo.com"), Some(("foo.com".into(), "default".into())));
        // Other names fall to the wildcard virtual hosts.
        assert_eq!(route("z.bar.foo.com"), Some(("*.bar.foo.com".into(), "bar".into())));
        assert_eq!(route("Q.FOO.COM:8080"), Some(("*.foo.com".into(), "foo".into())));
        assert_eq!(route("foo.org"), None);
        let (_, r) = req("z.bar.foo.com", "/").route(&c).unwrap();
        assert_eq!(targets(&c, r), [("outbound|80||b.internal".to_owned(), 100)]);
    }

    #[test]
    fn export_to_and_gateways_decide_visibility() {
        let yaml = [
            se("reviews", "prod", REVIEWS),
            se("hidden", "prod", "  hosts: [hidden]\n  exportTo: ['.']\n  ports: [{number: 80, name: http}]\n"),
            vs("private", "prod", "  hosts: [reviews]\n  exportTo: ['.']\n  http: [{name: private, route: [{destination: {host: reviews}}]}]\n"),
            vs("gw", "default", "  hosts: [reviews.prod.svc.cluster.local]\n  gateways: [my-gateway]\n  http: [{name: gw, route: [{destination: {host: reviews.prod.svc.cluster.local}}]}]\n"),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        assert_eq!(vhost(&c, "hidden.prod"), None);
        let (_, r) = req("reviews.prod", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "default");
        let c = compiled(&yaml, "prod");
        assert!(vhost(&c, "hidden").is_some());
        let (_, r) = req("reviews", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "private");
        let shared = yaml.replace("exportTo: ['.']\n  http", "exportTo: [default]\n  http");
        let c = compiled(&shared, "default");
        let (_, r) = req("reviews.prod", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "private");
    }

    #[test]
    fn duplicate_virtual_services_first_wins() {
        let route = |name: &str| {
            format!("  hosts: [reviews.default.svc.cluster.local]\n  http: [{{name: {name}, route: [{{destination: {{host: reviews.default.svc.cluster.local}}}}]}}]\n")
        };
        let yaml = [
            se("reviews", "default", REVIEWS),
            vs("elsewhere", "other", &route("elsewhere")),
            vs("newer", "default", &route("newer")),
            vs("older", "default", &route("older"))
                .replace("namespace: default}", "namespace: default, creationTimestamp: '2020-01-01T00:00:00Z'}"),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let (_, r) = req("reviews", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "older");
        let dropped = c.warnings.iter().filter(|w| w.message.contains("already claimed")).count();
        assert_eq!(dropped, 2, "{:?}", c.warnings);
        // From another namespace, that namespace's VS comes first.
        let c = compiled(&yaml, "other");
        let (_, r) = req("reviews.default", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "elsewhere");
    }

    #[test]
    fn non_registry_hosts_get_their_own_virtual_host() {
        let yaml = [
            se("reviews", "default", REVIEWS),
            vs(
                "site",
                "default",
                "  hosts: [bookinfo.com, ratings]\n  http: [{name: site, route: [{destination: {host: reviews}}]}]\n",
            ),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        assert_eq!(vhost(&c, "BookInfo.com:80").as_deref(), Some("bookinfo.com"));
        // A `*.svc.cluster.local` host also gets the short aliases.
        assert_eq!(vhost(&c, "ratings").as_deref(), Some("ratings.default.svc.cluster.local"));
        assert_eq!(vhost(&c, "ratings.default.svc").as_deref(), Some("ratings.default.svc.cluster.local"));
        let (_, r) = req("bookinfo.com", "/").route(&c).unwrap();
        assert_eq!(targets(&c, r), [("outbound|9080||reviews.default.svc.cluster.local".to_owned(), 100)]);
    }

    #[test]
    fn virtual_service_without_usable_routes_falls_back_to_default() {
        let yaml = [
            se("reviews", "default", REVIEWS),
            vs("gw-only", "default", "  hosts: [reviews]\n  http:\n  - name: gw\n    match: [{gateways: [my-gw]}]\n    route: [{destination: {host: reviews}}]\n"),
        ]
        .concat();
        let c = compiled(&yaml, "default");
        let (_, r) = req("reviews", "/").route(&c).unwrap();
        assert_eq!(&*r.name, "default");
    }

    #[test]
    fn compiled_table_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<super::Compiled>();
        assert_send_sync::<super::RouteTable>();
    }

    #[test]
    fn vip_shared_by_the_hosts_of_one_entry_is_quiet() {
        let yaml = se(
            "multi",
            "default",
            "  hosts: [a.example.com, b.example.com]\n  addresses: [240.0.0.9]\n  ports: [{number: 80, name: http}]\n",
        );
        let c = compiled(&yaml, "default");
        assert_eq!(vhost(&c, "240.0.0.9").as_deref(), Some("a.example.com"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    }
}
