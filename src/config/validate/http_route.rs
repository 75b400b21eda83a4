//! One `http[]` rule of a VirtualService: spec items 5–8 (what a rule
//! does), 9–10 (destinations, also used by TLS/TCP routes), 11–14 (match
//! blocks) and the rule-level part of 25 (delegate). Mirrors, redirect,
//! rewrite, authority, headers and directResponse are in
//! [`super::http_actions`]; retries, timeout, fault and CORS in
//! [`super::http_policy`].

use super::fields;
use super::{http_actions, http_policy, strings, Report};
use crate::config::host;
use crate::config::resources::{Destination, HttpMatchRequest, HttpRoute};

/// What the enclosing VirtualService says about its rules.
#[derive(Clone, Copy, Debug)]
pub(super) struct Scope {
    /// The VS has no hosts: it is a delegate, its rules may not delegate.
    pub delegate_vs: bool,
    /// The VS is bound to gateways only (not `mesh`): JWT-claim matches are
    /// allowed.
    pub gateway_only: bool,
}

/// Checks one HTTP rule; `r` is rooted at `spec.http[i]`.
pub(super) fn check(r: &mut Report<'_>, rule: &HttpRoute, scope: Scope) {
    actions(r, rule, scope);
    for (i, m) in rule.matches.iter().enumerate() {
        match_request(&mut r.at(format!("match[{i}]")), m, scope);
    }
    destinations(r, "route", rule.route.iter().map(|d| (d.destination.as_ref(), d.weight)));
    http_actions::check(r, rule);
    http_policy::check(r, rule);
}

/// Items 5–8 and 25: route, redirect, directResponse and delegate exclude
/// one another, and one of them is required.
fn actions(r: &mut Report<'_>, rule: &HttpRoute, scope: Scope) {
    let has_route = !rule.route.is_empty();
    if rule.delegate.is_some() && !scope.delegate_vs {
        // A root rule only delegates.
        if rule.redirect.is_some() {
            r.error("redirect", "a rule with delegate must not specify redirect");
        }
        if has_route {
            r.error("route", "a rule with delegate must not specify route");
        }
        return;
    }
    if rule.delegate.is_some() {
        r.error("delegate", "a rule of a delegate virtual service cannot delegate again");
    }
    let conflicts: [(&str, bool); 3] =
        [("route", has_route), ("fault", rule.fault.is_some()), ("rewrite", rule.rewrite.is_some())];
    if rule.redirect.is_some() || rule.direct_response.is_some() {
        let action = if rule.redirect.is_some() { "redirect" } else { "directResponse" };
        for (other, _) in conflicts.iter().filter(|(_, set)| *set) {
            r.error("", format!("HTTP route cannot contain both {other} and {action}"));
        }
        if rule.redirect.is_some() && rule.direct_response.is_some() {
            r.error("", "HTTP route cannot contain both redirect and directResponse");
        }
    } else if !has_route {
        r.error("", "HTTP route, redirect or directResponse is required");
    }
    if rule.mirror.is_some() && !rule.mirrors.is_empty() {
        r.error("", "HTTP route cannot contain both mirror and mirrors");
    }
}

/// Items 11–14; `r` is rooted at the match block.
fn match_request(r: &mut Report<'_>, m: &HttpMatchRequest, scope: Scope) {
    for (what, m, empty_prefix_ok) in [
        ("uri", &m.uri, true),
        ("scheme", &m.scheme, false),
        ("method", &m.method, false),
        ("authority", &m.authority, false),
    ] {
        if let Some(m) = m {
            strings::string_match(r, what, m, empty_prefix_ok);
        }
    }
    for (name, value) in &m.headers {
        let field = format!("headers.{name}");
        r.check(&field, strings::match_header_name(name));
        match value {
            None => r.error(&field, format!("header match {name} cannot be null")),
            Some(value) => strings::string_match(r, &field, value, false),
        }
    }
    for (name, value) in &m.without_headers {
        let field = format!("withoutHeaders.{name}");
        r.check(&field, strings::match_header_name(name));
        // `regex: "*"` is not a regex here but "header present".
        if let Some(value) = value.as_ref().filter(|v| v.regex.as_deref() != Some("*")) {
            strings::string_match(r, &field, value, false);
        }
    }
    if !scope.gateway_only {
        let keys =
            m.headers.keys().map(|k| ("headers", k)).chain(m.without_headers.keys().map(|k| ("withoutHeaders", k)));
        for (map, name) in keys.filter(|(_, k)| strings::is_jwt_claim(k)) {
            let message = format!("JWT claim based routing (key: {name}) is only supported for gateways, not for mesh");
            r.error(&format!("{map}.{name}"), message);
        }
    }
    for (name, value) in &m.query_params {
        if let Some(value) = value {
            strings::string_match(r, &format!("queryParams.{name}"), value, false);
        }
    }
    if let Some(port) = m.port.filter(|p| *p != 0) {
        fields::port(r, "port", port);
    }
    fields::labels(r, "sourceLabels", &m.source_labels);
    fields::gateway_names(r, "gateways", &m.gateways);
    if let Some(ns) = m.source_namespace.as_deref().filter(|ns| !ns.is_empty() && !fields::is_label(ns)) {
        r.error("sourceNamespace", format!("sourceNamespace match {ns} is invalid: expected a DNS-1123 label"));
    }
}

/// Items 9 and 10 for a `route` list (HTTP, TLS or TCP): every entry has a
/// valid destination, no negative weight, and several entries do not all
/// weigh 0.
pub(super) fn destinations<'d>(
    r: &mut Report<'_>,
    field: &str,
    entries: impl Iterator<Item = (Option<&'d Destination>, Option<i64>)>,
) {
    let (mut count, mut total) = (0, 0i64);
    for (i, (dest, weight)) in entries.enumerate() {
        let entry = format!("{field}[{i}]");
        match dest {
            None => r.error(&entry, "destination is required"),
            Some(dest) => destination(&mut r.at(format!("{entry}.destination")), dest),
        }
        let weight = weight.unwrap_or(0);
        if weight < 0 {
            r.error(&format!("{entry}.weight"), format!("weight {weight} must not be negative"));
        }
        count += 1;
        total = total.saturating_add(weight);
    }
    if count > 1 && total == 0 {
        r.error(field, "total destination weight = 0");
    }
}

/// Item 10; `r` is rooted at the destination.
pub(super) fn destination(r: &mut Report<'_>, dest: &Destination) {
    if dest.host == "*" {
        r.error("host", "invalid destination host *");
    } else {
        r.check("host", host::check_wildcard_domain(&dest.host));
    }
    match dest.subset.as_deref() {
        Some("") => r.error("subset", "subset name cannot be empty"),
        Some(s) if !fields::is_label(s) => {
            r.error("subset", format!("subset name {s:?} is invalid: expected a DNS-1123 label"))
        }
        _ => {}
    }
    if let Some(port) = &dest.port {
        fields::port(r, "port.number", port.number);
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    // Item 5.
    #[test]
    fn a_rule_needs_an_action() {
        assert_error(&rule("match:\n- uri: {prefix: /}"), "spec.http[0]");
        assert_clean(&rule(ROUTE));
        assert_clean(&rule("directResponse: {status: 200}"));
        assert_clean(&rule("redirect: {uri: /b}"));
    }

    // Item 6.
    #[test]
    fn route_excludes_redirect_and_direct_response() {
        assert_error(&rule(&format!("redirect: {{uri: /b}}\n{ROUTE}")), "spec.http[0]");
        assert_error(&rule(&format!("directResponse: {{status: 200}}\n{ROUTE}")), "spec.http[0]");
    }

    // Item 7.
    #[test]
    fn redirect_excludes_rewrite_fault_and_direct_response() {
        assert_error(&rule("redirect: {uri: /b}\nrewrite: {uri: /c}"), "spec.http[0]");
        assert_error(&rule("redirect: {uri: /b}\nfault: {abort: {httpStatus: 500}}"), "spec.http[0]");
        assert_error(&rule("redirect: {uri: /b}\ndirectResponse: {status: 200}"), "spec.http[0]");
        assert_error(&rule("directResponse: {status: 200}\nrewrite: {uri: /c}"), "spec.http[0]");
    }

    // Item 8.
    #[test]
    fn mirror_excludes_mirrors() {
        let p = rule(&format!("{ROUTE}\nmirror: {{host: b}}\nmirrors:\n- destination: {{host: c}}"));
        assert_error(&p, "spec.http[0]");
    }

    // Item 9.
    #[test]
    fn weights() {
        let two = "route:\n- destination: {host: a}\n  weight: 0\n- destination: {host: b}";
        assert_error(&rule(two), "spec.http[0].route");
        assert_error(&rule("route:\n- destination: {host: a}\n  weight: -1"), "spec.http[0].route[0].weight");
        assert_clean(&rule("route:\n- destination: {host: a}\n  weight: 0"));
        assert_clean(&rule("route:\n- destination: {host: a}\n  weight: 30\n- destination: {host: b}\n  weight: 30"));
    }

    // Item 10.
    #[test]
    fn destinations() {
        assert_error(&rule("route:\n- weight: 1"), "spec.http[0].route[0]");
        assert_error(&rule("route:\n- destination: {host: \"*\"}"), "spec.http[0].route[0].destination.host");
        assert_error(&rule("route:\n- destination: {host: foo_bar}"), "spec.http[0].route[0].destination.host");
        assert_error(
            &rule("route:\n- destination: {host: a, subset: v1.0}"),
            "spec.http[0].route[0].destination.subset",
        );
        assert_error(
            &rule("route:\n- destination: {host: a, subset: \"\"}"),
            "spec.http[0].route[0].destination.subset",
        );
        let p = rule("route:\n- destination: {host: a, port: {number: 70000}}");
        assert_error(&p, "spec.http[0].route[0].destination.port.number");
    }

    // Item 13.
    #[test]
    fn header_matches() {
        let p = rule(&format!("match:\n- headers: {{x: null}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].match[0].headers.x");
        let p = rule(&format!("match:\n- headers: {{\"bad name\": {{exact: a}}}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].match[0].headers.bad name");
        let p = rule(&format!("match:\n- headers: {{\"@request.auth.claims.sub\": {{exact: a}}}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].match[0].headers.@request.auth.claims.sub");
        let p = rule(&format!("match:\n- withoutHeaders: {{x: {{regex: \"*\"}}}}\n{ROUTE}"));
        assert_clean(&p);
    }

    #[test]
    fn jwt_claims_are_fine_on_gateways() {
        let spec = "hosts: [a.com]\ngateways: [gw]\nhttp:\n- match:\n  - headers: {\"@request.auth.claims.sub\": {exact: a}}\n  route:\n  - destination: {host: a}";
        assert_clean(&of("VirtualService", spec));
    }

    // Item 14.
    #[test]
    fn match_selectors() {
        assert_error(&rule(&format!("match:\n- port: 70000\n{ROUTE}")), "spec.http[0].match[0].port");
        assert_error(
            &rule(&format!("match:\n- sourceLabels: {{\"-x\": a}}\n{ROUTE}")),
            "spec.http[0].match[0].sourceLabels",
        );
        assert_error(
            &rule(&format!("match:\n- sourceNamespace: Foo_Bar\n{ROUTE}")),
            "spec.http[0].match[0].sourceNamespace",
        );
        assert_error(
            &rule(&format!("match:\n- gateways: [\"ns/bad_gw\"]\n{ROUTE}")),
            "spec.http[0].match[0].gateways[0]",
        );
    }

    // Item 25 (rule level).
    #[test]
    fn delegating_rules() {
        let p = rule(&format!("delegate: {{name: b}}\n{ROUTE}"));
        assert_error(&p, "spec.http[0].route");
        assert_clean(&rule("delegate: {name: b, namespace: c}"));
        let nested = "http:\n- delegate: {name: c}\n  route:\n  - destination: {host: a}";
        assert_error(&of("VirtualService", nested), "spec.http[0].delegate");
    }
}
