//! Cross-reference checks across resources, as `istioctl analyze` does.
//! Every finding is a warning: a file validated alone (a VirtualService
//! whose DestinationRule lives in another file) must still pass.
//!
//! - a route or mirror destination whose host matches no ServiceEntry and
//!   no DestinationRule host visible to the VirtualService;
//! - a destination subset no visible DestinationRule for that host defines;
//! - several mesh VirtualServices claiming one host (spec §1.3.6: they are
//!   not merged, the first wins);
//! - a DestinationRule subset selecting no endpoint of a STATIC
//!   ServiceEntry for its host (spec §3.3: requests get 503 UH).

use std::collections::{BTreeMap, HashMap};

use super::{Origin, Report};
use crate::config::host;
use crate::config::resources::{
    Destination, DestinationRule, Labels, Resolution, Resource, ServiceEntry, VirtualService,
};
use crate::config::{Config, Problem};

/// The hosts of a config, expanded, with who may see them.
struct Index<'a> {
    service_hosts: Hosts<'a, ServiceEntry>,
    rule_hosts: Hosts<'a, DestinationRule>,
}

/// Expanded hosts of one kind of resource: exact names by hash, wildcard
/// patterns apart, so a lookup costs one probe plus the wildcards instead
/// of a scan of every host (1,000 services took ~200 ms that way).
struct Hosts<'a, T> {
    /// `(host, resource)` for every host, in config order.
    all: Vec<(String, &'a Resource<T>)>,
    /// Positions in `all` of each exact host.
    exact: HashMap<String, Vec<usize>>,
    /// Positions in `all` of the wildcard hosts.
    wildcards: Vec<usize>,
}

/// Runs every cross-reference check of `config`.
pub(super) fn check(config: &Config, out: &mut Vec<Problem>) {
    let index = Index::new(config);
    for vs in &config.virtual_services {
        let origin = Origin::of(vs);
        let mut r = Report::new(&origin, out);
        for_each_destination(&vs.spec, |field, dest| index.destination(&mut r.at(field), dest, &vs.meta.namespace));
    }
    duplicate_hosts(config, out);
    for dr in &config.destination_rules {
        empty_subsets(dr, &index, config, out);
    }
}

/// Whether a resource of `owner` namespace with `export_to` is visible from
/// namespace `viewer` (empty = the mesh default, everyone).
fn visible(export_to: &[String], owner: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to.iter().any(|e| match e.as_str() {
            "*" => true,
            "." => owner == viewer,
            "~" => false,
            ns => ns == viewer,
        })
}

/// Whether `pattern` (a host or wildcard) names `name`.
fn names(pattern: &str, name: &str) -> bool {
    pattern == name || host::covers(pattern, name)
}

/// Calls `f` with the path (under `spec`) and value of every destination
/// of `vs`: HTTP, TLS and TCP routes, mirror and mirrors.
fn for_each_destination(vs: &VirtualService, mut f: impl FnMut(String, &Destination)) {
    for (i, rule) in vs.http.iter().enumerate() {
        for (j, d) in rule.route.iter().enumerate() {
            if let Some(dest) = &d.destination {
                f(format!("http[{i}].route[{j}].destination"), dest);
            }
        }
        if let Some(dest) = &rule.mirror {
            f(format!("http[{i}].mirror"), dest);
        }
        for (j, m) in rule.mirrors.iter().enumerate() {
            if let Some(dest) = &m.destination {
                f(format!("http[{i}].mirrors[{j}].destination"), dest);
            }
        }
    }
    let tls = vs.tls.iter().map(|t| &t.route).collect::<Vec<_>>();
    let tcp = vs.tcp.iter().map(|t| &t.route).collect::<Vec<_>>();
    for (section, routes) in [("tls", tls), ("tcp", tcp)] {
        for (i, route) in routes.iter().enumerate() {
            for (j, d) in route.iter().enumerate() {
                if let Some(dest) = &d.destination {
                    f(format!("{section}[{i}].route[{j}].destination"), dest);
                }
            }
        }
    }
}

// === impl Index ===

impl<'a> Index<'a> {
    fn new(config: &'a Config) -> Self {
        let service_hosts = Hosts::new(
            config
                .service_entries
                .iter()
                .flat_map(|se| se.spec.hosts.iter().map(move |h| (host::expand(h, &se.meta.namespace), se))),
        );
        let rule_hosts =
            Hosts::new(config.destination_rules.iter().map(|dr| (host::expand(&dr.spec.host, &dr.meta.namespace), dr)));
        Index { service_hosts, rule_hosts }
    }

    /// DestinationRules visible from `namespace` whose host names `name`.
    fn rules_for<'s>(
        &'s self,
        name: &'s str,
        namespace: &'s str,
    ) -> impl Iterator<Item = &'a Resource<DestinationRule>> + 's {
        self.rule_hosts
            .naming(name)
            .filter(move |(_, dr)| visible(&dr.spec.export_to, &dr.meta.namespace, namespace))
            .map(|(_, dr)| dr)
    }

    /// Host and subset of one destination of a VS in `namespace`; `r` is
    /// rooted at the destination.
    fn destination(&self, r: &mut Report<'_>, dest: &Destination, namespace: &str) {
        if dest.host.is_empty() || host::check_wildcard_domain(&dest.host).is_err() {
            return; // refused by validation already
        }
        let name = host::expand(&dest.host, namespace);
        let by_service =
            self.service_hosts.naming(&name).any(|(_, se)| visible(&se.spec.export_to, &se.meta.namespace, namespace));
        if !by_service && self.rules_for(&name, namespace).next().is_none() {
            let message = format!(
                "host {name} matches no ServiceEntry or DestinationRule host visible from namespace {namespace}; \
                 unless it is a Kubernetes service, requests to it fail (503 NC)"
            );
            r.warning("host", message);
        }
        let Some(subset) = dest.subset.as_deref().filter(|s| !s.is_empty()) else { return };
        let defined =
            self.rules_for(&name, namespace).any(|dr| dr.spec.subsets.iter().flatten().any(|s| s.name == subset));
        if !defined {
            r.warning("subset", format!("subset {subset:?} of host {name} is not defined by any DestinationRule"));
        }
    }
}

// === impl Hosts ===

impl<'a, T> Hosts<'a, T> {
    fn new(hosts: impl Iterator<Item = (String, &'a Resource<T>)>) -> Self {
        let all: Vec<_> = hosts.collect();
        let (mut exact, mut wildcards) = (HashMap::<String, Vec<usize>>::new(), Vec::new());
        for (i, (h, _)) in all.iter().enumerate() {
            if h.starts_with('*') {
                wildcards.push(i);
            } else {
                exact.entry(h.clone()).or_default().push(i);
            }
        }
        Hosts { all, exact, wildcards }
    }

    /// Positions in `all` of the hosts that name `name` (equal, or a
    /// wildcard covering it): exact hosts first, then wildcards.
    fn positions<'s>(&'s self, name: &'s str) -> impl Iterator<Item = usize> + 's {
        let exact = self.exact.get(name).into_iter().flatten().copied();
        let covering = |i: &usize| self.all.get(*i).is_some_and(|(h, _)| names(h, name));
        exact.chain(self.wildcards.iter().copied().filter(covering))
    }

    /// `(host, resource)` of every host that names `name`.
    fn naming<'s>(&'s self, name: &'s str) -> impl Iterator<Item = (&'s str, &'a Resource<T>)> + 's {
        self.positions(name).filter_map(|i| self.all.get(i)).map(|(h, r)| (h.as_str(), *r))
    }

    /// Resources with a host that names `name` or that `name` names (a
    /// wildcard `name` covers hosts), in config order.
    fn related(&self, name: &str) -> Vec<&'a Resource<T>> {
        let mut found: Vec<usize> = if name.starts_with('*') {
            let all = self.all.iter().enumerate();
            all.filter(|(_, (h, _))| names(name, h) || names(h, name)).map(|(i, _)| i).collect()
        } else {
            self.positions(name).collect()
        };
        found.sort_unstable();
        found.into_iter().filter_map(|i| self.all.get(i)).map(|(_, r)| *r).collect()
    }
}

/// Several mesh VirtualServices claiming one host, as a sidecar in the
/// config's namespace orders them: private to its namespace, then exported
/// to it, then public; oldest first within each. The first one wins.
fn duplicate_hosts(config: &Config, out: &mut Vec<Problem>) {
    let proxy_ns = config.namespace.as_str();
    let mut ordered: Vec<(u8, &Resource<VirtualService>)> = config
        .virtual_services
        .iter()
        .filter(|vs| vs.spec.gateways.is_empty() || vs.spec.gateways.iter().any(|g| g == "mesh"))
        .filter_map(|vs| {
            let (export, ns) = (&vs.spec.export_to, vs.meta.namespace.as_str());
            let class = if export.is_empty() || export.iter().any(|e| e == "*") {
                2
            } else if ns == proxy_ns && export.iter().any(|e| e == "." || e == proxy_ns) {
                0
            } else if export.iter().any(|e| e == proxy_ns) {
                1
            } else {
                return None;
            };
            Some((class, vs))
        })
        .collect();
    // Stable: equal keys keep file order. Unknown creation times sort last.
    ordered.sort_by(|(a, x), (b, y)| {
        let time =
            |vs: &Resource<VirtualService>| (vs.meta.creation_timestamp.is_none(), vs.meta.creation_timestamp.clone());
        a.cmp(b).then_with(|| time(x).cmp(&time(y)))
    });
    let mut owners: BTreeMap<String, &Resource<VirtualService>> = BTreeMap::new();
    for (_, vs) in ordered {
        let origin = Origin::of(vs);
        let mut r = Report::new(&origin, out);
        for (i, h) in vs.spec.hosts.iter().enumerate() {
            let name = host::expand(h, &vs.meta.namespace);
            match owners.get(&name) {
                Some(winner) => {
                    let message = format!(
                        "host {name} is also claimed by {} ({}), which wins; VirtualServices are not merged, \
                         so this one is ignored for {name}",
                        winner.id(),
                        winner.source.file.display()
                    );
                    r.warning(&format!("hosts[{i}]"), message);
                }
                None => {
                    owners.insert(name, vs);
                }
            }
        }
    }
}

/// DestinationRule subsets that select no endpoint of a STATIC
/// ServiceEntry for the rule's host.
fn empty_subsets(dr: &Resource<DestinationRule>, index: &Index<'_>, config: &Config, out: &mut Vec<Problem>) {
    let name = host::expand(&dr.spec.host, &dr.meta.namespace);
    let statics: Vec<&Resource<ServiceEntry>> = index
        .service_hosts
        .related(&name)
        .into_iter()
        .filter(|se| se.spec.resolution == Some(Resolution::Static))
        .collect();
    let Some(first) = statics.first() else { return };
    let origin = Origin::of(dr);
    let mut r = Report::new(&origin, out);
    for (i, subset) in dr.spec.subsets.iter().enumerate() {
        let Some(subset) = subset else { continue };
        let selects =
            statics.iter().any(|se| endpoint_labels(se, config).any(|labels| contains(labels, &subset.labels)));
        if !selects {
            let message = format!(
                "subset {:?} selects no endpoint of STATIC ServiceEntry {}: no endpoint carries all of its labels; requests to it fail (503 UH)",
                subset.name,
                first.id()
            );
            r.warning(&format!("subsets[{i}]"), message);
        }
    }
}

/// The labels of every endpoint of `se`: inline endpoints, or the
/// WorkloadEntries of its namespace its selector picks.
fn endpoint_labels<'a>(
    se: &'a Resource<ServiceEntry>,
    config: &'a Config,
) -> Box<dyn Iterator<Item = &'a Labels> + 'a> {
    match &se.spec.workload_selector {
        Some(selector) => Box::new(
            config
                .workload_entries
                .iter()
                .filter(move |we| we.meta.namespace == se.meta.namespace && contains(&we.spec.labels, &selector.labels))
                .map(|we| &we.spec.labels),
        ),
        None => Box::new(se.spec.endpoints.iter().map(|e| &e.labels)),
    }
}

/// `wanted ⊆ labels`.
fn contains(labels: &Labels, wanted: &Labels) -> bool {
    wanted.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    const DR: &str = "host: reviews\nsubsets:\n- name: v1\n  labels: {version: v1}";

    fn vs_to(dest: &str) -> String {
        object("VirtualService", "vs", &format!("hosts: [reviews]\nhttp:\n- route:\n  - destination: {dest}"))
    }

    #[test]
    fn visibility() {
        assert!(visible(&[], "a", "b"));
        assert!(visible(&[".".into()], "a", "a"));
        assert!(!visible(&[".".into()], "a", "b"));
        assert!(visible(&["b".into()], "a", "b"));
        assert!(!visible(&["~".into()], "a", "a"));
    }

    #[test]
    fn unknown_destination_hosts_warn() {
        let p = problems(&vs_to("{host: ratings}"));
        assert_warning(&p, "spec.http[0].route[0].destination.host");
        assert_no_error(&p);
        let yaml = format!(
            "{}---\n{}",
            vs_to("{host: api.example.com}"),
            object(
                "ServiceEntry",
                "se",
                "hosts: [\"*.example.com\"]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: DNS"
            )
        );
        assert!(!problems(&yaml).iter().any(|p| p.field.ends_with("destination.host")));
        let other = object("DestinationRule", "dr", "host: reviews\nexportTo: [\".\"]")
            .replace("namespace: default", "namespace: other");
        let p = problems(&format!("{}---\n{other}", vs_to("{host: reviews.other.svc.cluster.local}")));
        assert_warning(&p, "spec.http[0].route[0].destination.host");
    }

    #[test]
    fn undefined_subsets_warn() {
        let yaml = format!("{}---\n{}", vs_to("{host: reviews, subset: v2}"), object("DestinationRule", "dr", DR));
        let p = problems(&yaml);
        assert_warning(&p, "spec.http[0].route[0].destination.subset");
        assert!(p.iter().any(|p| p.message
            == "subset \"v2\" of host reviews.default.svc.cluster.local is not defined by any DestinationRule"));
        assert_no_error(&p);
        let yaml = format!(
            "{}---\n{}",
            vs_to("{host: reviews.default.svc.cluster.local, subset: v1}"),
            object("DestinationRule", "dr", DR)
        );
        assert_clean(&problems(&yaml));
    }

    #[test]
    fn duplicate_virtual_services_warn() {
        let yaml = format!(
            "{}---\n{}",
            vs_to("{host: reviews}"),
            object(
                "VirtualService",
                "later",
                "hosts: [reviews.default.svc.cluster.local]\nhttp:\n- route:\n  - destination: {host: reviews}"
            )
        );
        let p = problems(&yaml);
        let dup = p.iter().find(|p| p.field == "spec.hosts[0]" && !p.is_error());
        assert!(
            dup.is_some_and(
                |d| d.resource.as_ref().is_some_and(|r| r.name == "later") && d.message.contains("default/vs")
            ),
            "{p:?}"
        );
        let gw = object(
            "VirtualService",
            "gw",
            "hosts: [reviews]\ngateways: [ingress]\nhttp:\n- route:\n  - destination: {host: reviews}",
        );
        assert!(!problems(&format!("{}---\n{gw}", vs_to("{host: reviews}")))
            .iter()
            .any(|p| p.field == "spec.hosts[0]"));
    }

    #[test]
    fn subsets_without_static_endpoints_warn() {
        let se = object("ServiceEntry", "se", "hosts: [reviews.default.svc.cluster.local]\nports: [{number: 80, name: http, protocol: HTTP}]\nresolution: STATIC\nendpoints:\n- {address: 10.0.0.1, labels: {version: v2}}");
        let p = problems(&format!("{}---\n{se}", object("DestinationRule", "dr", DR)));
        assert_warning(&p, "spec.subsets[0]");
        assert_no_error(&p);
        let se_v1 = se.replace("version: v2", "version: v1");
        assert!(!problems(&format!("{}---\n{se_v1}", object("DestinationRule", "dr", DR)))
            .iter()
            .any(|p| p.field == "spec.subsets[0]"));
    }
}
