//! A VirtualService as a whole: spec items 1–4 (routes present, hosts),
//! the resource-level part of 25 (delegate VS), 26 (TLS and TCP routes), 27
//! (exportTo, via [`fields::export_to`]) and 28 (unreachable rules, as
//! warnings). Each `http[]` rule is checked by [`super::http_route`].

use super::fields::{self, Export};
use super::http_route::{self, Scope};
use super::Report;
use crate::config::host;
use crate::config::resources::{HttpMatchRequest, Labels, StringMatch, TcpRoute, TlsRoute, VirtualService};

/// The gateway name that stands for every sidecar.
const MESH: &str = "mesh";

/// Checks one VirtualService in `namespace`; `r` is rooted at `spec`.
pub(super) fn check(vs: &VirtualService, namespace: &str, r: &mut Report<'_>) {
    let delegate_vs = vs.hosts.is_empty();
    let gateway_only = !vs.gateways.is_empty() && !vs.gateways.iter().any(|g| g == MESH);
    if delegate_vs {
        for (field, set) in
            [("gateways", !vs.gateways.is_empty()), ("tls", !vs.tls.is_empty()), ("tcp", !vs.tcp.is_empty())]
        {
            if set {
                r.error(field, format!("a delegate virtual service (one without hosts) must not specify {field}"));
            }
        }
    }
    if vs.http.is_empty() && vs.tcp.is_empty() && vs.tls.is_empty() {
        r.error("", "http, tcp or tls must be provided in virtual service");
    }
    fields::gateway_names(r, "gateways", &vs.gateways);
    hosts(r, vs, gateway_only);
    let scope = Scope { delegate_vs, gateway_only };
    for (i, rule) in vs.http.iter().enumerate() {
        http_route::check(&mut r.at(format!("http[{i}]")), rule, scope);
    }
    for (i, route) in vs.tls.iter().enumerate() {
        tls_route(&mut r.at(format!("tls[{i}]")), route, vs, gateway_only);
    }
    for (i, route) in vs.tcp.iter().enumerate() {
        tcp_route(&mut r.at(format!("tcp[{i}]")), route);
    }
    fields::export_to(r, namespace, &vs.export_to, Export::Rule);
    unreachable_http(r, vs);
    unreachable(r, "tcp", &vs.tcp.iter().map(|t| t.matches.clone()).collect::<Vec<_>>(), <[_]>::is_empty);
    unreachable(r, "tls", &vs.tls.iter().map(|t| t.matches.clone()).collect::<Vec<_>>(), <[_]>::is_empty);
}

/// Items 2–4.
fn hosts(r: &mut Report<'_>, vs: &VirtualService, gateway_only: bool) {
    let mut all_valid = true;
    for (i, name) in vs.hosts.iter().enumerate() {
        let field = format!("hosts[{i}]");
        if let Err(why) = domain(name, gateway_only) {
            if !fields::is_ip(name) {
                r.error(&field, why);
                all_valid = false;
            }
        } else if name == "*" && !gateway_only {
            r.error(&field, "wildcard host * is not allowed for virtual services bound to the mesh gateway");
            all_valid = false;
        }
    }
    if !all_valid {
        return;
    }
    let lower: Vec<String> = vs.hosts.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (j, b) in lower.iter().enumerate() {
        if let Some(a) = lower[..j].iter().find(|a| host::covers(a, b) || host::covers(b, a)) {
            r.error(&format!("hosts[{j}]"), format!("duplicate hosts in virtual service: {a} & {b}"));
        }
    }
}

/// A VS host or SNI host. On gateways, SNI names Istio generates for
/// AUTO_PASSTHROUGH (`outbound_.<port>_._.<host>`) are accepted too.
fn domain(name: &str, gateway_only: bool) -> Result<(), String> {
    if gateway_only && name.starts_with("outbound_") && name.split('_').count() >= 4 {
        return Ok(());
    }
    host::check_wildcard_domain(name)
}

/// Item 26 for one `tls[]` route; `r` is rooted at it.
fn tls_route(r: &mut Report<'_>, route: &TlsRoute, vs: &VirtualService, gateway_only: bool) {
    if route.matches.is_empty() {
        r.error("", "TLS route must have at least one match condition");
    }
    for (i, m) in route.matches.iter().enumerate() {
        let mut r = r.at(format!("match[{i}]"));
        if m.sni_hosts.is_empty() {
            r.error("sniHosts", "TLS match must have at least one SNI host");
        }
        for (j, sni) in m.sni_hosts.iter().enumerate() {
            sni_host(&mut r, &format!("sniHosts[{j}]"), sni, vs, gateway_only);
        }
        l4_match(&mut r, &m.destination_subnets, m.port, &m.source_labels, &m.gateways);
    }
    if route.route.is_empty() {
        r.error("", "TLS route is required");
    }
    http_route::destinations(r, "route", route.route.iter().map(|d| (d.destination.as_ref(), d.weight)));
}

fn sni_host(r: &mut Report<'_>, field: &str, sni: &str, vs: &VirtualService, gateway_only: bool) {
    if let Err(why) = domain(sni, gateway_only) {
        if fields::is_ip(sni) {
            r.warning(
                field,
                format!("using an IP address ({sni:?}) goes against the SNI spec and most clients do not support this"),
            );
        } else {
            r.error(field, why);
        }
        return;
    }
    let sni = sni.to_ascii_lowercase();
    let within = vs.hosts.iter().map(|h| h.to_ascii_lowercase()).any(|h| h == sni || host::covers(&h, &sni));
    if !within {
        let message = format!(
            "SNI host {sni:?} is not a compatible subset of any of the virtual service hosts: [{}]",
            vs.hosts.join(", ")
        );
        r.error(field, message);
    }
}

/// Item 26 for one `tcp[]` route; `r` is rooted at it.
fn tcp_route(r: &mut Report<'_>, route: &TcpRoute) {
    for (i, m) in route.matches.iter().enumerate() {
        l4_match(&mut r.at(format!("match[{i}]")), &m.destination_subnets, m.port, &m.source_labels, &m.gateways);
    }
    if route.route.is_empty() {
        r.error("", "TCP route is required");
    }
    http_route::destinations(r, "route", route.route.iter().map(|d| (d.destination.as_ref(), d.weight)));
}

/// The L4 match attributes TLS and TCP matches share.
fn l4_match(r: &mut Report<'_>, subnets: &[String], port: Option<u32>, labels: &Labels, gateways: &[String]) {
    for (i, subnet) in subnets.iter().enumerate() {
        r.check(&format!("destinationSubnets[{i}]"), fields::ip_or_cidr(subnet));
    }
    if let Some(port) = port.filter(|p| *p != 0) {
        fields::port(r, "port", port);
    }
    fields::labels(r, "sourceLabels", labels);
    fields::gateway_names(r, "gateways", gateways);
}

/// Item 28 for `http`: duplicate and unreachable rules, then uri prefixes
/// shadowed by an earlier, less specific prefix match.
fn unreachable_http(r: &mut Report<'_>, vs: &VirtualService) {
    let rules: Vec<Vec<HttpMatchRequest>> = vs
        .http
        .iter()
        .map(|rule| {
            rule.matches.iter().map(|m| HttpMatchRequest { name: None, stat_prefix: None, ..m.clone() }).collect()
        })
        .collect();
    unreachable(r, "http", &rules, catches_all);
    // Later rules are unreachable anyway once one catches everything.
    let live = rules.iter().position(|ms| catches_all(ms)).map_or(rules.len(), |i| i + 1);
    let flat: Vec<(usize, usize, &HttpMatchRequest)> = rules[..live]
        .iter()
        .enumerate()
        .flat_map(|(i, ms)| ms.iter().enumerate().map(move |(j, m)| (i, j, m)))
        .collect();
    for (k, (i, j, later)) in flat.iter().enumerate() {
        let Some(later_prefix) = prefix(later) else { continue };
        let earlier = flat[..k].iter().find(|(_, _, e)| {
            prefix(e).is_some_and(|p| p != later_prefix && later_prefix.starts_with(p)) && covers_rest(e, later)
        });
        if let Some((ei, ej, e)) = earlier {
            let message = format!(
                "match not used: prefix {later_prefix} is shadowed by prefix {} of http[{ei}].match[{ej}]",
                prefix(e).unwrap_or_default()
            );
            r.warning(&format!("http[{i}].match[{j}]"), message);
        }
    }
}

/// Whether an HTTP rule with these matches takes every request (spec §1.4):
/// no match at all, or a match on nothing but `uri.prefix: /` or
/// `uri.regex: .*`.
fn catches_all(matches: &[HttpMatchRequest]) -> bool {
    let everything = |m: &HttpMatchRequest| {
        let uri_all = match &m.uri {
            None => true,
            Some(StringMatch { exact: None, prefix: Some(p), regex: None }) => p == "/",
            Some(StringMatch { exact: None, prefix: None, regex: Some(re) }) => re == ".*",
            Some(_) => false,
        };
        uri_all
            && HttpMatchRequest { uri: None, name: None, stat_prefix: None, ignore_uri_case: false, ..m.clone() }
                == HttpMatchRequest::default()
    };
    matches.is_empty() || matches.iter().any(everything)
}

fn prefix(m: &HttpMatchRequest) -> Option<&str> {
    m.uri.as_ref().and_then(|u| u.prefix.as_deref())
}

/// Whether every condition of `a` besides its uri also holds for `b`.
fn covers_rest(a: &HttpMatchRequest, b: &HttpMatchRequest) -> bool {
    fn sub<K: Ord, V: PartialEq>(a: &std::collections::BTreeMap<K, V>, b: &std::collections::BTreeMap<K, V>) -> bool {
        a.iter().all(|(k, v)| b.get(k) == Some(v))
    }
    fn b_has_labels(a: &crate::config::resources::Labels, b: &crate::config::resources::Labels) -> bool {
        a.iter().all(|(k, v)| b.get(k) == Some(v))
    }
    fn opt<T: PartialEq>(a: &Option<T>, b: &Option<T>) -> bool {
        a.is_none() || a == b
    }
    opt(&a.scheme, &b.scheme)
        && opt(&a.method, &b.method)
        && opt(&a.authority, &b.authority)
        && opt(&a.port, &b.port)
        && opt(&a.source_namespace, &b.source_namespace)
        && a.ignore_uri_case == b.ignore_uri_case
        && (a.gateways.is_empty() || a.gateways == b.gateways)
        && sub(&a.headers, &b.headers)
        && sub(&a.query_params, &b.query_params)
        && sub(&a.without_headers, &b.without_headers)
        && b_has_labels(&a.source_labels, &b.source_labels)
}

/// Item 28 for any route list, given each rule's matches (names removed):
/// rules after one that `catches_all`, and matches equal to earlier ones.
fn unreachable<M: PartialEq>(r: &mut Report<'_>, section: &str, rules: &[Vec<M>], catches_all: fn(&[M]) -> bool) {
    let mut catch_all: Option<usize> = None;
    let mut seen: Vec<(&M, usize, usize)> = Vec::new();
    for (i, matches) in rules.iter().enumerate() {
        let rule = format!("{section}[{i}]");
        if let Some(c) = catch_all {
            r.warning(&rule, format!("rule not used: {section}[{c}] before it matches every request"));
            continue;
        }
        if catches_all(matches) {
            catch_all = Some(i);
        }
        if matches.is_empty() {
            continue;
        }
        let mut duplicates = 0;
        for (j, m) in matches.iter().enumerate() {
            match seen.iter().find(|(s, _, _)| *s == m) {
                Some((_, si, sj)) => {
                    r.warning(
                        &format!("{rule}.match[{j}]"),
                        format!("match not used: same as {section}[{si}].match[{sj}]"),
                    );
                    duplicates += 1;
                }
                None => seen.push((m, i, j)),
            }
        }
        if duplicates == matches.len() {
            r.warning(&rule, "rule not used: all its matches are used by earlier rules");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    const ROUTE: &str = "http:\n- route:\n  - destination: {host: a}";

    // Item 1.
    #[test]
    fn needs_some_routes() {
        assert_error(&of("VirtualService", "hosts: [a]"), "spec");
        assert_clean(&of("VirtualService", &format!("hosts: [a]\n{ROUTE}")));
    }

    // Item 2.
    #[test]
    fn star_host_only_on_gateways() {
        assert_error(&of("VirtualService", &format!("hosts: [\"*\"]\n{ROUTE}")), "spec.hosts[0]");
        assert_error(&of("VirtualService", &format!("hosts: [\"*\"]\ngateways: [gw, mesh]\n{ROUTE}")), "spec.hosts[0]");
        assert_clean(&of("VirtualService", &format!("hosts: [\"*\"]\ngateways: [gw]\n{ROUTE}")));
    }

    // Item 3.
    #[test]
    fn hosts_must_be_domains() {
        for bad in ["foo_bar.com", "\"*foo*.com\"", "foo.123"] {
            assert_error(&of("VirtualService", &format!("hosts: [{bad}]\n{ROUTE}")), "spec.hosts[0]");
        }
        assert_clean(&of("VirtualService", &format!("hosts: [\"*.foo.com\", reviews, 10.0.0.1]\n{ROUTE}")));
    }

    // Item 4.
    #[test]
    fn no_overlapping_hosts() {
        assert_error(&of("VirtualService", &format!("hosts: [\"*.foo.com\", a.foo.com]\n{ROUTE}")), "spec.hosts[1]");
        assert_error(&of("VirtualService", &format!("hosts: [a, A]\n{ROUTE}")), "spec.hosts[1]");
    }

    // Item 25 (delegate VS).
    #[test]
    fn delegate_virtual_services() {
        let p = of("VirtualService", "gateways: [gw]\ntcp:\n- route:\n  - destination: {host: a}");
        assert_error(&p, "spec.gateways");
        assert_error(&p, "spec.tcp");
        assert_clean(&of("VirtualService", ROUTE));
    }

    // Item 26.
    #[test]
    fn tls_and_tcp_routes() {
        let spec = "hosts: [a.com]\ntls:\n- route:\n  - destination: {host: a.com}\n- match:\n  - sniHosts: [b.com]\n    destinationSubnets: [10.0.0.0/33]\n- match:\n  - port: 443";
        let p = of("VirtualService", spec);
        assert_error(&p, "spec.tls[0]");
        assert_error(&p, "spec.tls[1].match[0].sniHosts[0]");
        assert_error(&p, "spec.tls[1].match[0].destinationSubnets[0]");
        assert_error(&p, "spec.tls[1]");
        assert_error(&p, "spec.tls[2].match[0].sniHosts");
        assert_error(&of("VirtualService", "hosts: [a]\ntcp:\n- match:\n  - port: 5000"), "spec.tcp[0]");
        let good = "hosts: [\"*.a.com\"]\ntls:\n- match:\n  - sniHosts: [x.a.com]\n    port: 443\n  route:\n  - destination: {host: x.a.com}";
        assert_clean(&of("VirtualService", good));
    }

    // Item 28.
    #[test]
    fn unreachable_rules_warn() {
        let spec = "hosts: [a]\nhttp:\n- route:\n  - destination: {host: a}\n- match:\n  - uri: {prefix: /x}\n  route:\n  - destination: {host: b}";
        let p = of("VirtualService", spec);
        assert_warning(&p, "spec.http[1]");
        assert_no_error(&p);
        let slash = "hosts: [a]\nhttp:\n- match:\n  - uri: {prefix: /}\n  route:\n  - destination: {host: a}\n- match:\n  - uri: {exact: /x}\n  route:\n  - destination: {host: b}";
        assert_warning(&of("VirtualService", slash), "spec.http[1]");
        let dup = "hosts: [a]\nhttp:\n- match:\n  - uri: {exact: /x}\n  route:\n  - destination: {host: a}\n- match:\n  - name: again\n    uri: {exact: /x}\n  route:\n  - destination: {host: b}";
        let p = of("VirtualService", dup);
        assert_warning(&p, "spec.http[1].match[0]");
        assert_warning(&p, "spec.http[1]");
        let shadow = "hosts: [a]\nhttp:\n- match:\n  - uri: {prefix: /api}\n  route:\n  - destination: {host: a}\n- match:\n  - uri: {prefix: /api/v1}\n    method: {exact: GET}\n  route:\n  - destination: {host: b}";
        assert_warning(&of("VirtualService", shadow), "spec.http[1].match[0]");
        let distinct = "hosts: [a]\nhttp:\n- match:\n  - uri: {prefix: /api}\n    method: {exact: POST}\n  route:\n  - destination: {host: a}\n- match:\n  - uri: {prefix: /api/v1}\n    method: {exact: GET}\n  route:\n  - destination: {host: b}";
        assert_clean(&of("VirtualService", distinct));
    }
}
