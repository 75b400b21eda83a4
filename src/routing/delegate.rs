//! VirtualService delegation (spec §1.16), resolved at compile time as
//! istiod does it (`mergeVirtualServicesIfNeeded`).
//!
//! A root rule `http[i]` with `delegate: {name, namespace}` is replaced by
//! the rules of the delegate VirtualService (one without `hosts`, exported
//! to the root's namespace), one level deep: a delegate's rules may not
//! delegate again (validation refuses that), so chains and loops cannot
//! form. A missing or hidden delegate drops the root rule with a warning.
//!
//! Each delegate rule is merged under the root rule:
//! - its match blocks must each be a *subset* of one of the root's: a root
//!   `exact X` needs the child's `exact X`, a root `prefix P` a child
//!   prefix or exact starting with `P`; a regex on either side excludes any
//!   match of that property on the other; `ignoreUriCase`, `port` and
//!   `sourceNamespace` must agree. Merged blocks take the child's fields
//!   and fall back to the root's; header, query, withoutHeaders and
//!   sourceLabels maps are merged. A child rule none of whose blocks fits
//!   is dropped;
//! - `rewrite`, `timeout`, `retries`, `fault`, the mirrors, `corsPolicy`
//!   and `headers` come from the root rule when the child leaves them
//!   unset; the name becomes `root-child`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::config::resources::{HttpMatchRequest, HttpRoute, Resource, StringMatch, VirtualService};
use crate::config::{Config, Problem};

use super::compile::{exported_to, warn};

/// The rules of `vs` with every delegating rule replaced by its delegate's
/// merged rules, each with the index of the root rule it came from.
pub(super) fn expand<'a>(
    config: &'a Config,
    vs: &'a Resource<VirtualService>,
    warnings: &mut Vec<Problem>,
) -> Vec<(usize, Cow<'a, HttpRoute>)> {
    let mut out = Vec::with_capacity(vs.spec.http.len());
    for (i, rule) in vs.spec.http.iter().enumerate() {
        let Some(delegate) = &rule.delegate else {
            out.push((i, Cow::Borrowed(rule)));
            continue;
        };
        let namespace = delegate.namespace.as_deref().filter(|ns| !ns.is_empty()).unwrap_or(&vs.meta.namespace);
        let found = config.virtual_services.iter().find(|d| {
            d.meta.name == delegate.name
                && d.meta.namespace == namespace
                && d.spec.hosts.is_empty()
                && exported_to(&d.spec.export_to, &d.meta.namespace, &vs.meta.namespace)
        });
        let Some(child) = found else {
            let message =
                format!("no delegate VirtualService {namespace}/{} visible here; rule dropped", delegate.name);
            warnings.push(warn(vs, format!("spec.http[{i}].delegate"), message));
            continue;
        };
        let merged: Vec<_> = child.spec.http.iter().filter_map(|c| merge_rule(rule, c)).collect();
        if merged.len() < child.spec.http.len() {
            let dropped = child.spec.http.len() - merged.len();
            let message =
                format!("{dropped} rule(s) of delegate {namespace}/{} match outside this rule; dropped", delegate.name);
            warnings.push(warn(vs, format!("spec.http[{i}].delegate"), message));
        }
        out.extend(merged.into_iter().map(|r| (i, Cow::Owned(r))));
    }
    out
}

/// `child` merged under `root`, or `None` when none of its match blocks
/// fits within the root's.
fn merge_rule(root: &HttpRoute, child: &HttpRoute) -> Option<HttpRoute> {
    let mut merged = child.clone();
    merged.delegate = None;
    merged.matches = merge_matches(&root.matches, &child.matches)?;
    merged.name = match (&root.name, &child.name) {
        (Some(r), Some(c)) => Some(format!("{r}-{c}")),
        (r, c) => r.clone().or_else(|| c.clone()),
    };
    inherit(&mut merged.rewrite, &root.rewrite);
    inherit(&mut merged.timeout, &root.timeout);
    inherit(&mut merged.retries, &root.retries);
    inherit(&mut merged.fault, &root.fault);
    inherit(&mut merged.cors_policy, &root.cors_policy);
    inherit(&mut merged.headers, &root.headers);
    if merged.mirror.is_none() && merged.mirrors.is_empty() {
        merged.mirror = root.mirror.clone();
        merged.mirror_percentage = root.mirror_percentage;
        merged.mirror_percent = root.mirror_percent;
        merged.mirrors = root.mirrors.clone();
    }
    let answers = !merged.route.is_empty() || merged.redirect.is_some() || merged.direct_response.is_some();
    if !answers {
        merged.direct_response = root.direct_response.clone();
    }
    Some(merged)
}

fn inherit<T: Clone>(field: &mut Option<T>, root: &Option<T>) {
    if field.is_none() {
        field.clone_from(root);
    }
}

/// The merged match blocks, or `None` when the child has blocks and none
/// fits within a root block.
fn merge_matches(root: &[HttpMatchRequest], child: &[HttpMatchRequest]) -> Option<Vec<HttpMatchRequest>> {
    if root.is_empty() {
        return Some(child.to_vec());
    }
    if child.is_empty() {
        return Some(root.to_vec());
    }
    let merged: Vec<_> =
        child.iter().flat_map(|c| root.iter().filter(|r| !conflicts(r, c)).map(move |r| merge_match(r, c))).collect();
    (!merged.is_empty()).then_some(merged)
}

/// The child block with the root's fields where the child has none.
fn merge_match(root: &HttpMatchRequest, child: &HttpMatchRequest) -> HttpMatchRequest {
    let mut m = child.clone();
    inherit(&mut m.uri, &root.uri);
    inherit(&mut m.scheme, &root.scheme);
    inherit(&mut m.method, &root.method);
    inherit(&mut m.authority, &root.authority);
    inherit(&mut m.port, &root.port);
    inherit(&mut m.source_namespace, &root.source_namespace);
    merge_map(&mut m.headers, &root.headers);
    merge_map(&mut m.query_params, &root.query_params);
    merge_map(&mut m.without_headers, &root.without_headers);
    for (k, v) in root.source_labels.iter() {
        if m.source_labels.get(k).is_none() {
            m.source_labels.insert(k.clone(), v.clone());
        }
    }
    if m.gateways.is_empty() {
        m.gateways.clone_from(&root.gateways);
    }
    m.ignore_uri_case = root.ignore_uri_case || child.ignore_uri_case;
    m
}

fn merge_map<V: Clone>(into: &mut BTreeMap<String, V>, root: &BTreeMap<String, V>) {
    for (k, v) in root {
        into.entry(k.clone()).or_insert_with(|| v.clone());
    }
}

/// Whether `child` asks for something outside `root` (istiod's
/// `hasConflict`).
fn conflicts(root: &HttpMatchRequest, child: &HttpMatchRequest) -> bool {
    let strings = [
        (&root.uri, &child.uri),
        (&root.scheme, &child.scheme),
        (&root.method, &child.method),
        (&root.authority, &child.authority),
    ];
    if strings.iter().any(|(r, c)| string_conflict(r.as_ref(), c.as_ref())) {
        return true;
    }
    let maps = [
        (&root.headers, &child.headers),
        (&root.query_params, &child.query_params),
        (&root.without_headers, &child.without_headers),
    ];
    for (r, c) in maps {
        let clash = r.iter().any(|(k, rv)| c.get(k).is_some_and(|cv| string_conflict(rv.as_ref(), cv.as_ref())));
        if clash {
            return true;
        }
    }
    let differ = |r: Option<&u32>, c: Option<&u32>| matches!((r, c), (Some(a), Some(b)) if a != b);
    let labels_clash = root.source_labels.iter().any(|(k, v)| child.source_labels.get(k).is_some_and(|cv| cv != v));
    let gateways_outside = !root.gateways.is_empty() && child.gateways.iter().any(|g| !root.gateways.contains(g));
    root.ignore_uri_case != child.ignore_uri_case
        || differ(root.port.as_ref(), child.port.as_ref())
        || matches!((&root.source_namespace, &child.source_namespace), (Some(a), Some(b)) if a != b)
        || labels_clash
        || gateways_outside
}

/// Whether the child's match of one property falls outside the root's.
fn string_conflict(root: Option<&StringMatch>, child: Option<&StringMatch>) -> bool {
    let (Some(root), Some(child)) = (root, child) else { return false };
    if root.regex.is_some() || child.regex.is_some() {
        return true;
    }
    match (&root.exact, &root.prefix) {
        (Some(exact), _) => child.exact.as_ref() != Some(exact),
        (None, Some(prefix)) => {
            let child_value = child.exact.as_ref().or(child.prefix.as_ref());
            !child_value.is_some_and(|v| v.starts_with(prefix.as_str()))
        }
        (None, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{req, reviews, reviews_cluster as cluster, targets, vs};

    fn with_delegate(root_http: &str, child_http: &str) -> super::super::Compiled {
        let root = vs("reviews", "default", &format!("  hosts: [reviews]\n  http:\n{root_http}"));
        reviews(&(root + &vs("child", "default", &format!("  http:\n{child_http}"))))
    }

    #[test]
    fn child_rules_merge_under_the_root_match() {
        let c = with_delegate(
            "  - name: api\n    match: [{uri: {prefix: /api}, headers: {x-team: {exact: a}}}]\n    timeout: 3s\n    delegate: {name: child}\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
            "  - name: v2\n    match: [{uri: {prefix: /api/v2}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n  - name: outside\n    match: [{uri: {prefix: /other}}]\n    route: [{destination: {host: reviews, subset: v2}}]\n",
        );
        let (_, r) = req("reviews", "/api/v2/x").header("x-team", "a").route(&c).unwrap();
        assert_eq!(&*r.name, "api-v2");
        assert_eq!(targets(&c, r), [(cluster("v2"), 100)]);
        let super::super::Action::Forward(f) = &r.action else { panic!("forward") };
        assert_eq!(f.policy.timeout, Some(std::time::Duration::from_secs(3)), "timeout inherited from the root");
        // The root's header condition still applies to the merged route.
        let (_, r) = req("reviews", "/api/v2/x").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
        // A child rule outside the root match is dropped.
        let (_, r) = req("reviews", "/other").header("x-team", "a").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
        assert!(c.warnings.iter().any(|w| w.message.contains("match outside this rule")), "{:?}", c.warnings);
    }

    #[test]
    fn missing_delegate_drops_the_rule() {
        let c = with_delegate(
            "  - match: [{uri: {prefix: /api}}]\n    delegate: {name: nowhere}\n  - route: [{destination: {host: reviews, subset: v1}}]\n",
            "  - route: [{destination: {host: reviews, subset: v2}}]\n",
        );
        let (_, r) = req("reviews", "/api").route(&c).unwrap();
        assert_eq!(targets(&c, r), [(cluster("v1"), 100)]);
        assert!(c.warnings.iter().any(|w| w.message.contains("no delegate VirtualService default/nowhere")));
    }

    #[test]
    fn string_match_subsets() {
        use super::string_conflict;
        use crate::config::resources::StringMatch;
        let prefix = |p: &str| StringMatch { prefix: Some(p.into()), ..StringMatch::default() };
        let exact = |e: &str| StringMatch { exact: Some(e.into()), ..StringMatch::default() };
        let regex = StringMatch { regex: Some(".*".into()), ..StringMatch::default() };
        assert!(!string_conflict(Some(&prefix("/a")), Some(&prefix("/a/b"))));
        assert!(!string_conflict(Some(&prefix("/a")), Some(&exact("/a/x"))));
        assert!(string_conflict(Some(&prefix("/a")), Some(&prefix("/b"))));
        assert!(string_conflict(Some(&exact("/a")), Some(&prefix("/a"))));
        assert!(!string_conflict(Some(&exact("/a")), Some(&exact("/a"))));
        assert!(string_conflict(Some(&regex), Some(&exact("/a"))));
        assert!(!string_conflict(Some(&regex), None));
    }
}
