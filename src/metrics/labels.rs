//! Istio's standard label set (spec §5.1), in the order Istio emits it.

use crate::config::resources::Labels;

/// Label names of the HTTP request metrics.
pub const ISTIO_LABELS: [&str; 25] = [
    "reporter",
    "source_workload",
    "source_canonical_service",
    "source_canonical_revision",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_canonical_service",
    "destination_canonical_revision",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

/// Label names of the TCP metrics: [`ISTIO_LABELS`] without
/// `response_code` and `grpc_response_status`.
pub const TCP_LABELS: [&str; 23] = tcp_labels();

const fn tcp_labels() -> [&'static str; 23] {
    let mut out = [""; 23];
    let mut i = 0;
    // Everything up to `request_protocol` (index 20), then the last two.
    while i <= 20 {
        out[i] = ISTIO_LABELS[i];
        i += 1;
    }
    out[21] = ISTIO_LABELS[23];
    out[22] = ISTIO_LABELS[24];
    out
}

const UNKNOWN: &str = "unknown";

/// The peer of inbound requests: meshd has no metadata exchange, so the
/// calling workload is unknown.
static UNKNOWN_PEER: std::sync::LazyLock<SourceLabels> = std::sync::LazyLock::new(SourceLabels::unknown);

/// The proxy's own workload, from the pod's environment.
#[derive(Clone, Debug)]
pub struct SourceLabels {
    pub workload: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub namespace: String,
    pub app: String,
    pub version: String,
    pub cluster: String,
}

/// Which proxy reports a request (Istio's `reporter` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub enum Reporter {
    /// The client's proxy (outbound, gateways): `source_*` is this
    /// workload.
    #[default]
    Source,
    /// The server's proxy (sidecar inbound capture): `destination_*` is
    /// this workload, and `source_*` the unknown peer.
    Destination,
}

/// The labels of one destination: a service and, when an endpoint was
/// chosen, that endpoint's workload labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct DestinationLabels {
    pub reporter: Reporter,
    pub service: String,
    pub service_name: String,
    pub service_namespace: String,
    pub workload: String,
    pub workload_namespace: String,
    pub app: String,
    pub version: String,
    pub canonical_service: String,
    pub canonical_revision: String,
    pub request_protocol: &'static str,
}

// === impl SourceLabels ===

impl SourceLabels {
    pub fn unknown() -> Self {
        SourceLabels {
            workload: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: "latest".into(),
            namespace: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            cluster: UNKNOWN.into(),
        }
    }

    /// This workload as Istio's injector describes it: the pod's labels
    /// (`app` or `app.kubernetes.io/name`, `version` or
    /// `app.kubernetes.io/version`, `service.istio.io/canonical-name` and
    /// `-revision`), and the downward-API variables `ISTIO_META_WORKLOAD_NAME`
    /// (else the Deployment's name taken from `POD_NAME`) and
    /// `ISTIO_META_CLUSTER_ID`. `MESHD_APP`, `MESHD_VERSION`,
    /// `MESHD_CANONICAL_SERVICE` and `MESHD_CANONICAL_REVISION` override the
    /// labels.
    pub fn from_env(namespace: &str, pod_labels: &Labels) -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let label = |names: &[&str]| names.iter().find_map(|n| pod_labels.get(*n).filter(|v| !v.is_empty()).cloned());
        let app = var("MESHD_APP").or_else(|| label(&["app", "app.kubernetes.io/name"]));
        let version = var("MESHD_VERSION").or_else(|| label(&["version", "app.kubernetes.io/version"]));
        let canonical_service = var("MESHD_CANONICAL_SERVICE")
            .or_else(|| label(&["service.istio.io/canonical-name"]))
            .or_else(|| app.clone());
        let canonical_revision = var("MESHD_CANONICAL_REVISION")
            .or_else(|| label(&["service.istio.io/canonical-revision"]))
            .or_else(|| version.clone());
        let workload = var("ISTIO_META_WORKLOAD_NAME").or_else(|| var("POD_NAME").map(|pod| deployment_of(&pod)));
        let unknown = || UNKNOWN.to_owned();
        SourceLabels {
            workload: workload.unwrap_or_else(unknown),
            canonical_service: canonical_service.unwrap_or_else(unknown),
            canonical_revision: canonical_revision.unwrap_or_else(|| "latest".into()),
            namespace: namespace.to_owned(),
            cluster: var("ISTIO_META_CLUSTER_ID").unwrap_or_else(unknown),
            app: app.unwrap_or_else(unknown),
            version: version.unwrap_or_else(unknown),
        }
    }
}

/// The Deployment a pod name belongs to: `reviews-v1-5d8f6c7b9-x2x4k` is
/// `reviews-v1` (the ReplicaSet hash and the pod suffix dropped); a name
/// with fewer parts is kept whole.
fn deployment_of(pod: &str) -> String {
    let parts: Vec<&str> = pod.split('-').collect();
    if parts.len() >= 3 {
        parts[..parts.len() - 2].join("-")
    } else {
        pod.to_owned()
    }
}

/// Reads a downward-API labels file (`key="value"` per line, the value
/// quoted as Go quotes it); a missing or unreadable file is no labels.
pub fn read_pod_labels(path: &std::path::Path) -> Labels {
    std::fs::read_to_string(path).map(|text| parse_pod_labels(&text)).unwrap_or_default()
}

fn parse_pod_labels(text: &str) -> Labels {
    let mut labels = Labels::default();
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else { continue };
        let value = value.trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        let value = value.replace("\\\"", "\"").replace("\\\\", "\\");
        labels.insert(key.trim().to_owned(), value);
    }
    labels
}

// === impl DestinationLabels ===

impl DestinationLabels {
    /// The destination of `service`'s requests (no endpoint chosen).
    pub fn of(service: &crate::routing::ServiceMeta) -> Self {
        DestinationLabels {
            reporter: service.reporter,
            ..DestinationLabels::for_service(&service.host, &service.name, &service.namespace)
        }
    }

    /// A destination known only by its service (no endpoint chosen).
    pub fn for_service(host: &str, name: &str, namespace: &str) -> Self {
        DestinationLabels {
            reporter: Reporter::Source,
            service: host.to_owned(),
            service_name: name.to_owned(),
            service_namespace: namespace.to_owned(),
            workload: UNKNOWN.into(),
            workload_namespace: UNKNOWN.into(),
            app: UNKNOWN.into(),
            version: UNKNOWN.into(),
            canonical_service: UNKNOWN.into(),
            canonical_revision: "latest".into(),
            request_protocol: "http",
        }
    }

    /// Adds an endpoint's labels: `app`, `version`, the canonical-service
    /// labels, and the workload name label when present.
    pub fn with_endpoint(mut self, labels: &Labels) -> Self {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(app) = get("app") {
            self.app = app;
        }
        if let Some(version) = get("version") {
            self.version = version;
        }
        self.canonical_service =
            get("service.istio.io/canonical-name").or_else(|| get("app")).unwrap_or_else(|| UNKNOWN.into());
        self.canonical_revision =
            get("service.istio.io/canonical-revision").or_else(|| get("version")).unwrap_or_else(|| "latest".into());
        if let Some(workload) = get("workload") {
            self.workload = workload;
            self.workload_namespace = self.service_namespace.clone();
        }
        self
    }
}

/// The 25 label values for one record, in [`ISTIO_LABELS`] order. `grpc`
/// is the `grpc-status` of a gRPC request (empty when none came), which
/// also makes `request_protocol` `grpc`.
pub fn values<'a>(
    source: &'a SourceLabels,
    destination: &'a DestinationLabels,
    code: &'a str,
    grpc: Option<&'a str>,
    flags: &'a str,
) -> [&'a str; 25] {
    let (reporter, source) = match destination.reporter {
        Reporter::Source => ("source", source),
        Reporter::Destination => ("destination", &*UNKNOWN_PEER),
    };
    [
        reporter,
        &source.workload,
        &source.canonical_service,
        &source.canonical_revision,
        &source.namespace,
        UNKNOWN,
        &source.app,
        &source.version,
        &source.cluster,
        &destination.workload,
        &destination.workload_namespace,
        UNKNOWN,
        &destination.app,
        &destination.version,
        &destination.service,
        &destination.canonical_service,
        &destination.canonical_revision,
        &destination.service_name,
        &destination.service_namespace,
        UNKNOWN,
        if grpc.is_some() { "grpc" } else { destination.request_protocol },
        code,
        grpc.unwrap_or_default(),
        flags,
        UNKNOWN,
    ]
}

/// The 23 label values of a TCP record, in [`TCP_LABELS`] order
/// (`request_protocol` is `tcp`).
pub fn tcp_values<'a>(source: &'a SourceLabels, destination: &'a DestinationLabels, flags: &'a str) -> [&'a str; 23] {
    let [head @ .., _protocol, _code, _grpc, _flags, security] = values(source, destination, "", None, flags);
    let mut out = [UNKNOWN; 23];
    out[..20].copy_from_slice(&head);
    out[20] = "tcp";
    out[21] = flags;
    out[22] = security;
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_labels_and_deployment_names() {
        let labels = parse_pod_labels(
            "app=\"reviews\"\nversion=\"v2\"\npod-template-hash=\"5d8f6c7b9\"\nnote=\"a \\\"quoted\\\" word\"\n",
        );
        assert_eq!(labels.get("app").map(String::as_str), Some("reviews"));
        assert_eq!(labels.get("version").map(String::as_str), Some("v2"));
        assert_eq!(labels.get("note").map(String::as_str), Some("a \"quoted\" word"));
        assert_eq!(deployment_of("reviews-v2-5d8f6c7b9-x2x4k"), "reviews-v2");
        assert_eq!(deployment_of("single"), "single");
        let source = SourceLabels::from_env("default", &labels);
        assert_eq!((source.app.as_str(), source.version.as_str()), ("reviews", "v2"));
        assert_eq!((source.canonical_service.as_str(), source.canonical_revision.as_str()), ("reviews", "v2"));
    }

    #[test]
    fn tcp_labels_drop_the_response_code_and_grpc_status() {
        assert_eq!(TCP_LABELS[20], "request_protocol");
        assert_eq!(TCP_LABELS[21..], ["response_flags", "connection_security_policy"]);
        let (source, destination) = (SourceLabels::unknown(), DestinationLabels::for_service("h", "h", "ns"));
        let values = tcp_values(&source, &destination, "UF");
        assert_eq!(values[20..], ["tcp", "UF", "unknown"]);
    }
}
