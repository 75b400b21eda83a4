//! Helpers shared by the routing unit tests.

use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};

use super::{compile, ClusterRef, Compiled, Lookup, RequestView, Route};
use crate::config::load::load_text;
use crate::config::Config;

/// A configuration loaded from YAML text for a proxy in `namespace`;
/// panics on load errors.
pub(super) fn config(yaml: &str, namespace: &str) -> Config {
    let mut config = Config { namespace: namespace.into(), ..Config::default() };
    let mut problems = Vec::new();
    load_text(yaml, &Arc::from(Path::new("test.yaml")), &mut config, &mut problems);
    assert!(!problems.iter().any(|p| p.is_error()), "{problems:?}");
    config
}

pub(super) fn compiled(yaml: &str, namespace: &str) -> Compiled {
    compile(&config(yaml, namespace))
}

/// The `reviews` service of the routing tests (port 9080, one v1
/// endpoint; subsets v1, v2 and v3), a two-port `multi` service in `prod`,
/// and the documents `extra`, compiled for a proxy in `default`.
pub(super) fn reviews(extra: &str) -> Compiled {
    let yaml = [
        se(
            "reviews",
            "default",
            "  hosts: [reviews]\n  ports: [{number: 9080, name: http, protocol: HTTP}]\n  resolution: STATIC\n  endpoints: [{address: 10.0.0.1, labels: {version: v1}}]\n",
        ),
        se("multi", "prod", "  hosts: [multi]\n  ports: [{number: 5432, name: db, protocol: TCP}, {number: 8080, name: web, protocol: HTTP}]\n"),
        "---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews}\nspec:\n  host: reviews\n  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}, {name: v3, labels: {version: v3}}]\n".into(),
        extra.to_owned(),
    ]
    .concat();
    compiled(&yaml, "default")
}

/// The cluster of subset `subset` of [`reviews`] (empty: the default).
pub(super) fn reviews_cluster(subset: &str) -> String {
    format!("outbound|9080|{subset}|reviews.default.svc.cluster.local")
}

/// A ServiceEntry document.
pub(super) fn se(name: &str, ns: &str, spec: &str) -> String {
    format!("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}")
}

/// A VirtualService document.
pub(super) fn vs(name: &str, ns: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

/// A request to route in tests.
pub(super) struct Req {
    pub method: Method,
    pub authority: String,
    pub port: u16,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
}

pub(super) fn req(authority: &str, path: &str) -> Req {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (path.to_owned(), None),
    };
    Req { method: Method::GET, authority: authority.into(), port: 80, path, query, headers: HeaderMap::new() }
}

// === impl Req ===

impl Req {
    pub fn header(mut self, name: &'static str, value: &'static str) -> Self {
        self.headers.append(name, HeaderValue::from_static(value));
        self
    }

    pub fn view(&self) -> RequestView<'_> {
        RequestView {
            method: &self.method,
            scheme: "http",
            authority: &self.authority,
            port: self.port,
            path: &self.path,
            query: self.query.as_deref(),
            headers: &self.headers,
        }
    }

    /// `(vhost name, route name)`, or `None` when nothing matched.
    pub fn route<'a>(&self, c: &'a Compiled) -> Option<(&'a str, &'a Route)> {
        match c.table.find(&self.view()) {
            Lookup::Route(vh, r) => Some((&vh.name, r)),
            _ => None,
        }
    }
}

/// The cluster names of a route's destinations with their weights.
pub(super) fn targets(c: &Compiled, route: &Route) -> Vec<(String, u32)> {
    #[allow(irrefutable_let_patterns)]
    let super::Action::Forward(f) = &route.action
    else {
        return Vec::new();
    };
    f.destinations
        .iter()
        .map(|d| {
            let name = match &d.cluster {
                ClusterRef::Known(id) => c.clusters[id.0 as usize].name.to_string(),
                ClusterRef::Missing { name, .. } => format!("missing:{name}"),
            };
            (name, d.weight)
        })
        .collect()
}
