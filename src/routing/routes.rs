//! VirtualService `http[]` → flat, ordered routes (spec §1.4, §1.6).
//!
//! - `http[i]` with k match blocks becomes k routes, in order; without
//!   `match` it becomes one route matching everything.
//! - Route names: `http[i].name`, or `<vs-name>.http[i]` when the HTTPRoute
//!   has none; `.` + `match.name` is appended for a named match block.
//! - Match blocks are filtered at compile time: `gateways` without `mesh`,
//!   any `sourceLabels` (the proxy has no workload labels yet; sidecar mode
//!   will supply them) and a `sourceNamespace` other than the proxy's drop
//!   the block. An `http[i]` whose blocks are all dropped contributes
//!   nothing.
//! - A rule forwards to weighted destinations, or answers itself with a
//!   `redirect` or a `directResponse`; its `fault`, `rewrite` and
//!   `headers` are compiled per match block ([`super::actions`]: a prefix
//!   rewrite replaces that block's matched prefix).
//! - A rule with `delegate` is replaced by its delegate's rules, merged
//!   under it first ([`super::delegate`]).
//! - After a catch-all route every later route is discarded (one warning).
//!   A catch-all truncates even when it is itself skipped, so requests
//!   never reach routes Istio would never reach.

use std::sync::Arc;

use crate::config::resources::{Destination, HttpMatchRequest, HttpRoute, Resource, StringMatch, VirtualService};
use crate::config::{host, Config, Problem};

use super::actions::{mirror_shares, ActionError, DestinationHeaders, DirectResponse, Mirror, Redirect, RouteExtras};
use super::compile::warn;
use super::delegate;
use super::retry::RoutePolicy;
use super::services::{cluster_name, service_meta, Registry, Service};
use super::{Action, ClusterRef, Forward, RequestMatch, Route, WeightedDestination};

/// What route compilation needs besides the VirtualService.
pub(super) struct RouteContext<'a, 'c> {
    pub config: &'c Config,
    pub registry: &'a Registry<'c>,
    /// The port used for a destination of an unknown host without
    /// `port.number` (istiod uses the listener port): the virtual host's
    /// service port, or 80 for a non-registry host.
    pub listener_port: Option<u16>,
    /// Which listeners the routes are for: the mesh (`None`) or the
    /// Gateway `namespace/name`.
    pub gateway: Option<&'a str>,
}

/// The routes `vs` yields; empty when every rule was filtered out.
pub(super) fn vs_routes(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    warnings: &mut Vec<Problem>,
) -> Vec<Route> {
    let mut routes = Vec::new();
    let mut discarded = 0usize;
    let mut truncated_at: Option<String> = None;
    for (i, http) in delegate::expand(ctx.config, vs, warnings) {
        let http = &*http;
        let base = http.name.clone().unwrap_or_else(|| format!("{}.http[{i}]", vs.meta.name));
        let blocks = match_blocks(ctx, vs, i, http, &base, warnings);
        if blocks.is_empty() {
            continue;
        }
        if truncated_at.is_some() {
            discarded += blocks.len();
            continue;
        }
        let target = target(ctx, vs, i, http, warnings);
        let policy = Arc::new(RoutePolicy::from_istio(http));
        let mirrors = mirrors(ctx, vs, i, http, warnings);
        for (name, matcher, uri) in blocks {
            if truncated_at.is_some() {
                discarded += 1;
                continue;
            }
            if matcher.as_ref().map_or(true, RequestMatch::is_catch_all) {
                truncated_at = Some(name.clone());
            }
            let Some(target) = &target else { continue };
            match route(target, http, uri, &policy, &mirrors) {
                Ok((action, extras)) => routes.push(Route { name: name.into(), matcher, action, extras }),
                Err(why) => warnings.push(warn(vs, format!("spec.http[{i}]"), format!("{why}; route skipped"))),
            }
        }
    }
    if let (Some(at), true) = (truncated_at, discarded > 0) {
        let msg = format!("{discarded} route(s) after catch-all route {at:?} can never match; discarded");
        warnings.push(warn(vs, "spec.http", msg));
    }
    routes
}

/// The kept match blocks of `http[i]`: (route name, matcher, uri match).
/// A block without conditions compiles to no matcher.
fn match_blocks<'h>(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    i: usize,
    http: &'h HttpRoute,
    base: &str,
    warnings: &mut Vec<Problem>,
) -> Vec<(String, Option<RequestMatch>, Option<&'h StringMatch>)> {
    if http.matches.is_empty() {
        return vec![(base.to_owned(), None, None)];
    }
    let mut out = Vec::with_capacity(http.matches.len());
    for (j, m) in http.matches.iter().enumerate() {
        if !applies_to_proxy(m, &ctx.config.namespace, ctx.gateway, &vs.meta.namespace) {
            continue;
        }
        let name = match &m.name {
            Some(suffix) if !suffix.is_empty() => format!("{base}.{suffix}"),
            _ => base.to_owned(),
        };
        match RequestMatch::compile(m) {
            Ok(matcher) => out.push((name, Some(matcher).filter(|m| !m.is_empty()), m.uri.as_ref())),
            Err(why) => warnings.push(warn(vs, format!("spec.http[{i}].match[{j}]"), format!("{why}; route skipped"))),
        }
    }
    out
}

/// Config-time selectors of a match block (spec §1.4): its `gateways` name
/// the listeners' binding (`mesh`, or the gateway as `name` in the VS's
/// namespace or `namespace/name`).
fn applies_to_proxy(m: &HttpMatchRequest, proxy_namespace: &str, gateway: Option<&str>, vs_namespace: &str) -> bool {
    let gateway_ok = m.gateways.is_empty() || m.gateways.iter().any(|g| binds(g, gateway, vs_namespace));
    let ns_ok = m.source_namespace.as_deref().map_or(true, |ns| ns == proxy_namespace);
    gateway_ok && m.source_labels.is_empty() && ns_ok
}

/// Whether a `gateways` entry `name` of a resource in `namespace` names the
/// binding `gateway` (`None`: the mesh).
pub(super) fn binds(name: &str, gateway: Option<&str>, namespace: &str) -> bool {
    match gateway {
        None => name == "mesh",
        Some(key) => match name.split_once('/') {
            Some(_) => name == key,
            None => key.split_once('/').is_some_and(|(ns, gw)| ns == namespace && gw == name),
        },
    }
}

/// What a rule's routes lead to, before the per-block parts.
enum Target {
    /// Weighted destinations: the total and each (weight, cluster,
    /// destination headers).
    Forward(u32, Vec<(u32, ClusterRef, Option<Arc<DestinationHeaders>>)>),
    Redirect,
    Direct(Arc<DirectResponse>),
}

/// The action and extras of one match block of `http` with `uri` match.
fn route(
    target: &Target,
    http: &HttpRoute,
    uri: Option<&StringMatch>,
    policy: &Arc<RoutePolicy>,
    mirrors: &[Mirror],
) -> Result<(Action, Option<Arc<RouteExtras>>), ActionError> {
    let mut extras = RouteExtras::compile(http, uri)?;
    extras.mirrors = mirrors.to_vec();
    let extras = extras.has_any().then(|| Arc::new(extras));
    let action = match target {
        Target::Forward(total_weight, destinations) => {
            let destinations = destinations
                .iter()
                .map(|(weight, cluster, headers)| WeightedDestination {
                    weight: *weight,
                    cluster: cluster.clone(),
                    headers: headers.clone(),
                })
                .collect();
            Action::Forward(Forward { destinations, total_weight: *total_weight, policy: policy.clone() })
        }
        Target::Redirect => match &http.redirect {
            Some(redirect) => Action::Redirect(Arc::new(Redirect::compile(redirect, uri)?)),
            None => return Err(ActionError::Direct("redirect missing".into())),
        },
        Target::Direct(direct) => Action::Direct(direct.clone()),
    };
    Ok((action, extras))
}

/// What `http[i]` leads to, or `None` (with a warning) when the rule
/// cannot be served.
fn target(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    i: usize,
    http: &HttpRoute,
    warnings: &mut Vec<Problem>,
) -> Option<Target> {
    if http.route.is_empty() {
        let field = format!("spec.http[{i}]");
        if http.redirect.is_some() {
            return Some(Target::Redirect);
        }
        if let Some(direct) = &http.direct_response {
            return match DirectResponse::compile(direct) {
                Ok(direct) => Some(Target::Direct(Arc::new(direct))),
                Err(why) => {
                    warnings.push(warn(vs, format!("{field}.directResponse"), format!("{why}; rule skipped")));
                    None
                }
            };
        }
        warnings.push(warn(vs, field, "a rule without route; rule skipped"));
        return None;
    }
    let (total, destinations) = destinations(ctx, vs, i, http, warnings)?;
    Some(Target::Forward(total, destinations))
}

/// The mirrors of `http[i]` whose clusters exist; the others are warned
/// about and left out (a copy to nowhere is no copy).
fn mirrors(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    i: usize,
    http: &HttpRoute,
    warnings: &mut Vec<Problem>,
) -> Vec<Mirror> {
    let mut out = Vec::new();
    for (dest, share) in mirror_shares(http) {
        match cluster_ref(ctx, vs, dest) {
            ClusterRef::Known(cluster) => out.push(Mirror { cluster, share }),
            ClusterRef::Missing { name, .. } => {
                let message = format!("no cluster {name}; requests are not mirrored there");
                warnings.push(warn(vs, format!("spec.http[{i}].mirror"), message));
            }
        }
    }
    out
}

/// A route destination: its weight, cluster and header operations.
type Weighted = (u32, ClusterRef, Option<Arc<DestinationHeaders>>);

/// `(total, [(weight, cluster, headers)])` of `http[i].route`, or `None`
/// (with a warning) when no destination has a weight.
fn destinations(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    i: usize,
    http: &HttpRoute,
    warnings: &mut Vec<Problem>,
) -> Option<(u32, Vec<Weighted>)> {
    let single = http.route.len() == 1;
    let mut out = Vec::with_capacity(http.route.len());
    for (j, d) in http.route.iter().enumerate() {
        let Some(dest) = &d.destination else {
            warnings.push(warn(vs, format!("spec.http[{i}].route[{j}]"), "no destination; ignored"));
            continue;
        };
        // Zero weights are dropped.
        let weight = weight(single, d.weight);
        if weight == 0 {
            continue;
        }
        let cluster = cluster_ref(ctx, vs, dest);
        if let ClusterRef::Missing { name, .. } = &cluster {
            let field = format!("spec.http[{i}].route[{j}].destination");
            warnings.push(warn(vs, field, format!("no cluster {name}; requests routed there get 503 NC")));
        }
        let headers = DestinationHeaders::compile(d.headers.as_deref()).unwrap_or_else(|why| {
            warnings.push(warn(vs, format!("spec.http[{i}].route[{j}].headers"), format!("{why}; ignored")));
            None
        });
        out.push((weight, cluster, headers));
    }
    let mut total: u64 = out.iter().map(|(w, _, _)| u64::from(*w)).sum();
    if total == 0 {
        warnings.push(warn(vs, format!("spec.http[{i}].route"), "no destination with a weight > 0; rule skipped"));
        return None;
    }
    if total > u64::from(u32::MAX) {
        // Huge weights: scale them down so the total fits in a u32.
        for (w, _, _) in &mut out {
            *w = u32::try_from(u64::from(*w) * u64::from(u32::MAX / 2) / total).unwrap_or(u32::MAX).max(1);
        }
        total = out.iter().map(|(w, _, _)| u64::from(*w)).sum();
    }
    Some((u32::try_from(total).unwrap_or(u32::MAX), out))
}

/// The cluster a destination names, known or not.
fn cluster_ref(ctx: &RouteContext<'_, '_>, vs: &Resource<VirtualService>, dest: &Destination) -> ClusterRef {
    cluster_ref_with(ctx, vs, dest, |s| s.default_port(), ctx.listener_port)
}

/// [`cluster_ref`], with the port a destination without `port.number`
/// takes: `service_port` of a registry service, else `unknown_port`.
pub(super) fn cluster_ref_with(
    ctx: &RouteContext<'_, '_>,
    vs: &Resource<VirtualService>,
    dest: &Destination,
    service_port: fn(&Service<'_>) -> Option<u16>,
    unknown_port: Option<u16>,
) -> ClusterRef {
    let vs_ns = vs.meta.namespace.as_str();
    let fqdn = host::expand(&dest.host, vs_ns);
    let subset = dest.subset.as_deref().unwrap_or("");
    let explicit = dest.port.map(|p| p.number).filter(|n| *n != 0);
    match ctx.registry.service(&fqdn) {
        Some(service) => {
            let port = explicit.or_else(|| service_port(service).map(u32::from));
            let name = cluster_name(port, subset, &fqdn);
            match ctx.registry.cluster(&name) {
                Some(id) => ClusterRef::Known(id),
                None => ClusterRef::Missing { name: name.into(), service: service.meta.clone() },
            }
        }
        None => {
            let port = explicit.or(unknown_port.map(u32::from));
            let namespace = host::kube_service(&fqdn).map_or(vs_ns, |(_, ns)| ns);
            let service = Arc::new(service_meta(&fqdn, namespace));
            ClusterRef::Missing { name: cluster_name(port, subset, &fqdn).into(), service }
        }
    }
}

/// A destination's weight (Istio, spec §1.6): one destination takes
/// everything; among several, a missing weight is 0.
pub(super) fn weight(single: bool, weight: Option<i64>) -> u32 {
    if single {
        100
    } else {
        u32::try_from(weight.unwrap_or(0).max(0)).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{req, reviews, reviews_cluster, targets, vs};
    use super::super::{Action, ClusterRef, Compiled};

    const HOST: &str = "reviews.default.svc.cluster.local";

    fn bookinfo(http: &str) -> Compiled {
        reviews(&vs("reviews", "default", &format!("  hosts: [reviews]\n  http:\n{http}")))
    }

    fn cluster(subset: &str) -> String {
        reviews_cluster(subset)
    }

    #[test]
    fn header_match_routes_jason_to_v2() {
        let c = bookinfo(
            "  - match: [{headers: {end-user: {exact: jason}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
        );
        let (vh, r) = req("reviews:9080", "/reviews/0").header("end-user", "jason").route(&c).unwrap();
        assert_eq!(vh, HOST);
        assert_eq!(&*r.name, "reviews.http[0]");
        assert_eq!(targets(&c, r), [(cluster("v2"), 100)]);
        let (_, r) = req("reviews:9080", "/reviews/0").header("end-user", "mary").route(&c).unwrap();
        assert_eq!(&*r.name, "reviews.http[1]");
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
    }

    #[test]
    fn weights_follow_istio_rules() {
        let c = bookinfo(
            "  - match: [{uri: {prefix: /one}}]\n    route: [{destination: {host: reviews, subset: v1}, weight: 0}]\n  - match: [{uri: {prefix: /split}}]\n    route:\n    - {destination: {host: reviews, subset: v1}, weight: 75}\n    - {destination: {host: reviews, subset: v2}, weight: 0}\n    - {destination: {host: reviews, subset: v3}, weight: 25}\n    - {destination: {host: reviews}}\n",
        );
        // One destination takes everything, whatever its weight.
        let (_, r) = req("reviews", "/one").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
        // Several: zero and missing weights are dropped.
        let (_, r) = req("reviews", "/split").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 75), (cluster("v3"), 25)]);
        let Action::Forward(f) = &r.action else { panic!("not a forward route") };
        assert_eq!(f.total_weight, 100);
        let mut counts = [0u32; 2];
        for roll in 0..1000u32 {
            let picked = f.pick(roll).unwrap();
            let i = f.destinations.iter().position(|d| std::ptr::eq(d, picked)).unwrap();
            counts[i] += 1;
        }
        assert_eq!(counts, [750, 250]);
        assert!(std::ptr::eq(f.pick(74).unwrap(), &f.destinations[0]));
        assert!(std::ptr::eq(f.pick(75).unwrap(), &f.destinations[1]));
        assert!(std::ptr::eq(f.pick(u32::MAX).unwrap(), &f.destinations[1]));
    }

    #[test]
    fn missing_clusters_are_kept_as_missing() {
        let c = bookinfo(
            "  - match: [{uri: {prefix: /nosubset}}]\n    route: [{destination: {host: reviews, subset: v9}}]\n  - match: [{uri: {prefix: /unknown}}]\n    route: [{destination: {host: ghost.prod.svc.cluster.local}}]\n  - match: [{uri: {prefix: /port}}]\n    route: [{destination: {host: reviews, port: {number: 1234}}}]\n",
        );
        let missing = |path: &str| {
            let (_, r) = req("reviews", path).route(&c).unwrap();
            let Action::Forward(f) = &r.action else { panic!("not a forward route") };
            match &f.destinations[0].cluster {
                ClusterRef::Missing { name, service } => (name.to_string(), service.clone()),
                ClusterRef::Known(_) => panic!("{path}: known"),
            }
        };
        let (name, service) = missing("/nosubset");
        assert_eq!(name, cluster("v9"));
        assert_eq!((&*service.name, &*service.namespace), ("reviews", "default"));
        // Unknown host: the listener port (the vhost's service port), and
        // the namespace from the host.
        let (name, service) = missing("/unknown");
        assert_eq!(name, "outbound|9080||ghost.prod.svc.cluster.local");
        assert_eq!(
            (&*service.host, &*service.name, &*service.namespace),
            ("ghost.prod.svc.cluster.local", "ghost", "prod")
        );
        let (name, _) = missing("/port");
        assert_eq!(name, format!("outbound|1234||{HOST}"));
        assert_eq!(c.warnings.iter().filter(|w| w.message.contains("503 NC")).count(), 3);
    }

    #[test]
    fn destination_port_defaults_to_the_http_port() {
        let c = bookinfo("  - route: [{destination: {host: multi.prod.svc.cluster.local}}]\n");
        let (_, r) = req("reviews", "/").route(&c).unwrap();
        assert_eq!(targets(&c, r), [("outbound|8080||multi.prod.svc.cluster.local".to_owned(), 100)]);
        // The service's own default route uses the same choice.
        let (_, r) = req("multi.prod", "/").route(&c).unwrap();
        assert_eq!(targets(&c, r), [("outbound|8080||multi.prod.svc.cluster.local".to_owned(), 100)]);
    }

    #[test]
    fn match_blocks_flatten_with_names_and_filters() {
        let c = bookinfo(
            "  - name: api\n    match:\n    - {name: v1, uri: {prefix: /v1}}\n    - {uri: {prefix: /v2}}\n    - {uri: {prefix: /gw}, gateways: [ingress]}\n    - {uri: {prefix: /mesh}, gateways: [mesh]}\n    - {uri: {prefix: /labels}, sourceLabels: {app: x}}\n    - {uri: {prefix: /ns}, sourceNamespace: other}\n    - {uri: {prefix: /myns}, sourceNamespace: default}\n    route: [{destination: {host: reviews}}]\n",
        );
        let name = |path: &str| req("reviews", path).route(&c).map(|(_, r)| r.name.to_string());
        assert_eq!(name("/v1/x").as_deref(), Some("api.v1"));
        assert_eq!(name("/v2/x").as_deref(), Some("api"));
        assert_eq!(name("/mesh").as_deref(), Some("api"));
        assert_eq!(name("/myns").as_deref(), Some("api"));
        assert_eq!(name("/gw"), None);
        assert_eq!(name("/labels"), None);
        assert_eq!(name("/ns"), None);
        assert_eq!(c.table.virtual_hosts[0].routes.len(), 4);
    }

    #[test]
    fn catch_all_truncates_later_routes() {
        let c = bookinfo(
            "  - match: [{uri: {prefix: /a}}, {uri: {prefix: /}}, {uri: {prefix: /b}}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - route: [{destination: {host: reviews, subset: v2}}]\n",
        );
        let routes = &c.table.virtual_hosts[0].routes;
        assert_eq!(routes.len(), 2);
        assert!(c.warnings.iter().any(|w| w.message.starts_with("2 route(s) after catch-all")), "{:?}", c.warnings);
        let (_, r) = req("reviews", "/b").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
    }

    #[test]
    fn redirects_and_direct_responses_compile_and_bad_rules_are_skipped() {
        let c = bookinfo(
            "  - match: [{uri: {exact: /old}}]\n    redirect: {uri: /new}\n  - match: [{uri: {regex: '(('}}]\n    route: [{destination: {host: reviews}}]\n  - match: [{uri: {exact: /down}}]\n    directResponse: {status: 503, body: {string: down}}\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
        );
        let (_, r) = req("reviews", "/old").route(&c).unwrap();
        assert!(matches!(r.action, Action::Redirect(_)), "{:?}", r.action);
        let (_, r) = req("reviews", "/down").route(&c).unwrap();
        let Action::Direct(direct) = &r.action else { panic!("a direct response: {:?}", r.action) };
        assert_eq!((direct.status.as_u16(), &direct.body[..]), (503, &b"down"[..]));
        assert_eq!(c.table.virtual_hosts[0].routes.len(), 3);
        assert!(c.warnings.iter().any(|w| w.message.contains("invalid regex")));
    }

    #[test]
    fn uri_and_query_matching_end_to_end() {
        let c = bookinfo(
            "  - match: [{uri: {exact: /Login}, ignoreUriCase: true}]\n    route: [{destination: {host: reviews, subset: v1}}]\n  - match: [{uri: {regex: '/api/v[0-9]+'}, queryParams: {debug: {exact: ''}}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - match: [{withoutHeaders: {x-skip: {}}}]\n    route: [{destination: {host: reviews, subset: v3}}]\n",
        );
        let subset = |r: &super::super::testutil::Req| r.route(&c).map(|(_, route)| targets(&c, route)[0].0.clone());
        assert_eq!(subset(&req("reviews", "/LOGIN")), Some(cluster("v1")));
        assert_eq!(subset(&req("reviews", "/api/v2?debug")), Some(cluster("v2")));
        assert_eq!(subset(&req("reviews", "/api/v2?debug=1")), Some(cluster("v3")));
        assert_eq!(subset(&req("reviews", "/x")), Some(cluster("v3")));
        assert_eq!(subset(&req("reviews", "/x").header("x-skip", "1")), None);
    }
}
