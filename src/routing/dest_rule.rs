//! Which DestinationRule applies to a service host (spec §2.1).
//!
//! Scopes, in order: DRs in the proxy's namespace, then in the service's
//! namespace, then in the root namespace (`istio-system`); only DRs
//! exported to the proxy count. Within a scope, a DR whose host equals the
//! service host wins, else the most specific (longest) wildcard covering it.
//! DRs of one scope with that same host are merged: subsets concatenated
//! (a later duplicate name is ignored), and the top-level `trafficPolicy`
//! is the first one set, oldest DR first — istiod's merge keeps the first
//! DR's policy and only fills it in from a later DR when it has none.
//!
//! DRs with a `workloadSelector` are skipped: they apply only to proxies
//! whose labels match, and meshd has no workload labels yet (sidecar mode
//! will supply them).

use std::collections::HashMap;

use crate::config::resources::{DestinationRule, Resource, Subset, TrafficPolicy};
use crate::config::{host, Config, Problem};

use super::compile::{age_key, exported_to};

/// Istio's root namespace.
pub(super) const ROOT_NAMESPACE: &str = "istio-system";

/// The consolidated DR of one service host.
#[derive(Debug, Default)]
pub(super) struct MergedRule<'c> {
    pub policy: Option<&'c TrafficPolicy>,
    pub subsets: Vec<&'c Subset>,
}

/// The visible DRs, indexed for per-host lookup.
pub(super) struct RuleIndex<'c> {
    /// Namespace → exact host → DRs, oldest first.
    exact: HashMap<&'c str, HashMap<String, Vec<&'c Resource<DestinationRule>>>>,
    /// Wildcard hosts: (namespace, pattern, DRs oldest first).
    wildcard: Vec<(&'c str, String, Vec<&'c Resource<DestinationRule>>)>,
    proxy_namespace: &'c str,
}

// === impl RuleIndex ===

impl<'c> RuleIndex<'c> {
    pub fn new(config: &'c Config, warnings: &mut Vec<Problem>) -> Self {
        let mut rules: Vec<(usize, &Resource<DestinationRule>)> = Vec::new();
        for (i, dr) in config.destination_rules.iter().enumerate() {
            if !exported_to(&dr.spec.export_to, &dr.meta.namespace, &config.namespace) {
                continue;
            }
            if dr.spec.workload_selector.is_some() {
                let msg = "DestinationRule with a workloadSelector ignored: meshd has no workload labels yet";
                warnings.push(Problem::warning(
                    Some(dr.source.file.clone()),
                    Some(dr.id()),
                    "spec.workloadSelector",
                    msg,
                ));
                continue;
            }
            rules.push((i, dr));
        }
        rules.sort_by(|a, b| age_key(a.1, a.0).cmp(&age_key(b.1, b.0)));
        let mut exact: HashMap<&str, HashMap<String, Vec<_>>> = HashMap::new();
        let mut wildcard: Vec<(&str, String, Vec<_>)> = Vec::new();
        for (_, dr) in rules {
            let ns = dr.meta.namespace.as_str();
            let pattern = host::expand(&dr.spec.host, ns);
            if pattern.starts_with('*') {
                match wildcard.iter_mut().find(|(n, p, _)| *n == ns && *p == pattern) {
                    Some((_, _, list)) => list.push(dr),
                    None => wildcard.push((ns, pattern, vec![dr])),
                }
            } else {
                exact.entry(ns).or_default().entry(pattern).or_default().push(dr);
            }
        }
        // Longest pattern first: the first covering one is the most specific.
        wildcard.sort_by_key(|(_, pattern, _)| std::cmp::Reverse(pattern.len()));
        RuleIndex { exact, wildcard, proxy_namespace: &config.namespace }
    }

    /// The DR for service `fqdn` of namespace `service_namespace`, merged.
    pub fn lookup(&self, fqdn: &str, service_namespace: &str) -> Option<MergedRule<'c>> {
        let scopes = [self.proxy_namespace, service_namespace, ROOT_NAMESPACE];
        for (i, ns) in scopes.iter().enumerate() {
            if scopes[..i].contains(ns) {
                continue;
            }
            let found = self.exact.get(ns).and_then(|hosts| hosts.get(fqdn)).or_else(|| {
                self.wildcard.iter().find(|(n, p, _)| n == ns && host::covers(p, fqdn)).map(|(_, _, list)| list)
            });
            if let Some(list) = found {
                return Some(merge(list));
            }
        }
        None
    }
}

fn merge<'c>(rules: &[&'c Resource<DestinationRule>]) -> MergedRule<'c> {
    let mut merged = MergedRule::default();
    for dr in rules {
        if merged.policy.is_none() {
            merged.policy = dr.spec.traffic_policy.as_deref();
        }
        for subset in dr.spec.subsets.iter().flatten() {
            if !merged.subsets.iter().any(|s| s.name == subset.name) {
                merged.subsets.push(subset);
            }
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::super::testutil::config;
    use super::*;

    fn dr(name: &str, ns: &str, host: &str, extra: &str) -> String {
        format!(
            "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  host: '{host}'\n{extra}"
        )
    }

    fn names<'c>(rule: &MergedRule<'c>) -> Vec<&'c str> {
        rule.subsets.iter().map(|s| s.name.as_str()).collect()
    }

    const SUBSETS_V1: &str = "  subsets: [{name: v1, labels: {version: v1}}]\n";

    #[test]
    fn proxy_namespace_then_service_namespace_then_root() {
        let yaml = [
            dr("root", ROOT_NAMESPACE, "reviews.prod.svc.cluster.local", "  subsets: [{name: root}]\n"),
            dr("svc", "prod", "reviews", "  subsets: [{name: svc}]\n"),
            dr("mine", "default", "reviews.prod.svc.cluster.local", "  subsets: [{name: mine}]\n"),
        ]
        .concat();
        let c = config(&yaml, "default");
        let mut w = Vec::new();
        let idx = RuleIndex::new(&c, &mut w);
        assert_eq!(names(&idx.lookup("reviews.prod.svc.cluster.local", "prod").unwrap()), ["mine"]);
        // From another proxy namespace the service namespace comes first.
        let c = config(&yaml, "other");
        let idx = RuleIndex::new(&c, &mut w);
        assert_eq!(names(&idx.lookup("reviews.prod.svc.cluster.local", "prod").unwrap()), ["svc"]);
        let c = config(&dr("root", ROOT_NAMESPACE, "*.svc.cluster.local", "  subsets: [{name: root}]\n"), "x");
        let idx = RuleIndex::new(&c, &mut w);
        assert_eq!(names(&idx.lookup("reviews.prod.svc.cluster.local", "prod").unwrap()), ["root"]);
        assert!(idx.lookup("example.com", "prod").is_none());
    }

    #[test]
    fn exact_beats_wildcard_and_longest_wildcard_wins() {
        let yaml = [
            dr("any", "default", "*.com", "  subsets: [{name: any}]\n"),
            dr("foo", "default", "*.foo.com", "  subsets: [{name: foo}]\n"),
            dr("exact", "default", "a.foo.com", "  subsets: [{name: exact}]\n"),
        ]
        .concat();
        let c = config(&yaml, "default");
        let idx = RuleIndex::new(&c, &mut Vec::new());
        assert_eq!(names(&idx.lookup("a.foo.com", "default").unwrap()), ["exact"]);
        assert_eq!(names(&idx.lookup("b.foo.com", "default").unwrap()), ["foo"]);
        assert_eq!(names(&idx.lookup("foo.com", "default").unwrap()), ["any"]);
    }

    #[test]
    fn same_host_rules_merge() {
        let yaml = [
            dr("b", "default", "reviews", "  subsets: [{name: v1, labels: {x: later}}, {name: v2}]\n"),
            dr(
                "a",
                "default",
                "reviews",
                &format!("  trafficPolicy: {{loadBalancer: {{simple: RANDOM}}}}\n{SUBSETS_V1}"),
            ),
        ]
        .concat();
        // No timestamps: load order, so `b` first; its policy is unset, so
        // `a`'s fills it in.
        let c = config(&yaml, "default");
        let idx = RuleIndex::new(&c, &mut Vec::new());
        let merged = idx.lookup("reviews.default.svc.cluster.local", "default").unwrap();
        assert_eq!(names(&merged), ["v1", "v2"]);
        assert_eq!(merged.subsets[0].labels.get("x").unwrap(), "later");
        assert!(merged.policy.is_some());
        // With timestamps, `a` is older and comes first.
        let yaml = yaml.replace(
            "{name: a, namespace: default}",
            "{name: a, namespace: default, creationTimestamp: '2024-01-01T00:00:00Z'}",
        );
        let c = config(&yaml, "default");
        let idx = RuleIndex::new(&c, &mut Vec::new());
        let merged = idx.lookup("reviews.default.svc.cluster.local", "default").unwrap();
        assert_eq!(names(&merged), ["v1", "v2"]);
        assert_eq!(merged.subsets[0].labels.get("version").unwrap(), "v1");
    }

    #[test]
    fn export_to_and_workload_selector() {
        let yaml = [
            dr("hidden", "prod", "reviews", &format!("  exportTo: ['.']\n{SUBSETS_V1}")),
            dr("sel", "default", "reviews.prod.svc.cluster.local", "  workloadSelector: {matchLabels: {app: a}}\n"),
        ]
        .concat();
        let c = config(&yaml, "default");
        let mut w = Vec::new();
        let idx = RuleIndex::new(&c, &mut w);
        assert!(idx.lookup("reviews.prod.svc.cluster.local", "prod").is_none());
        assert_eq!(w.len(), 1);
        let c = config(&yaml, "prod");
        let idx = RuleIndex::new(&c, &mut Vec::new());
        assert!(idx.lookup("reviews.prod.svc.cluster.local", "prod").is_some());
    }
}
