//! Prometheus metrics: Istio's standard request metrics (spec §5.1) and
//! meshd's own.
//!
//! One [`Registry`] per process, owned by [`Metrics`]. The request path never
//! builds a label set: [`RequestMetricsCache`] holds resolved handles per
//! destination for the common `(status, no flags)` combinations, so
//! recording a request is a few atomic adds. Rare combinations (error
//! statuses with response flags) resolve their handles through the label
//! hash map once per request, which is acceptable off the happy path.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub mod clusters;
mod labels;
mod tcp;

pub use clusters::{ClusterSample, ClusterStat, ClusterStatsSource};
pub use labels::{read_pod_labels, DestinationLabels, Reporter, SourceLabels};
pub use tcp::TcpClose;

/// Envoy's default histogram buckets, used by Istio for all three request
/// histograms (milliseconds or bytes).
pub const BUCKETS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0, 60000.0, 300000.0,
    600000.0, 1800000.0, 3600000.0,
];

/// Statuses whose handles are cached per destination (with no response
/// flags): the ones a healthy service answers with.
const COMMON_STATUSES: [u16; 12] = [200, 201, 202, 204, 206, 301, 302, 304, 400, 401, 403, 404];

/// The process's metric families.
pub struct Metrics {
    /// The one registry `/stats/prometheus` encodes.
    registry: Registry,
    /// Workload identity of this proxy, the `source_*` labels.
    source: SourceLabels,
    requests_total: IntCounterVec,
    request_duration: HistogramVec,
    request_bytes: HistogramVec,
    response_bytes: HistogramVec,
    /// `meshd_config_reloads_total{result="applied"|"rejected"|"unchanged"}`.
    pub config_reloads: IntCounterVec,
    /// `meshd_config_reload_seconds{phase="load"|"compile"|"apply"}`: how
    /// long each phase of the last applied reload took (read and parse;
    /// validate and compile; reconcile clusters and swap).
    pub config_reload_seconds: prometheus::GaugeVec,
    /// `meshd_config_version`: version of the active snapshot.
    pub config_version: prometheus::IntGauge,
    /// `meshd_downstream_connections_active`.
    pub downstream_connections: prometheus::IntGauge,
    /// `meshd_downstream_connections_refused_total`: connections closed at
    /// accept because `--max-connections` were open.
    pub downstream_refused: IntCounter,
    /// `meshd_downstream_requests_refused_total{reason}`: requests meshd
    /// answered itself for breaking a limit (`src/proxy/limits.rs`).
    pub downstream_requests_refused: IntCounterVec,
    /// `meshd_downstream_timeouts_total{kind="request_headers"|"idle"|"request_body"}`:
    /// connections and requests ended by a downstream timeout.
    pub downstream_timeouts: IntCounterVec,
    /// `envoy_cluster_upstream_cx_total{cluster_name}`-style counters are
    /// per cluster; this family holds connects by result.
    pub upstream_connects: IntCounterVec,
    /// Istio's TCP connection and byte counters.
    tcp: tcp::TcpMetrics,
    /// Where the `envoy_cluster_*` collector finds the live clusters; the
    /// upstream side binds itself here.
    pub clusters: clusters::ClusterSourceSlot,
    /// One handle cache per distinct destination label set, shared by every
    /// endpoint that reports it: the labels name no address, so the ten
    /// endpoints of one version (and the same endpoints in the subset
    /// cluster) feed one series. Locked only while building endpoints
    /// (reloads, DNS refreshes), never on the request path.
    caches: Mutex<Caches>,
}

/// The interned caches, weakly held: a label set disappears with the last
/// endpoint that used it.
#[derive(Default)]
struct Caches {
    by_labels: HashMap<Arc<DestinationLabels>, Weak<RequestMetricsCache>>,
    /// Size after the last sweep of dead entries; the next sweep runs when
    /// the map has doubled, so sweeping costs O(1) per insert.
    swept_len: usize,
}

/// Resolved handles for one label set.
#[derive(Clone)]
pub struct RequestMetrics {
    requests: IntCounter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

/// Per-destination cache of [`RequestMetrics`] for the common statuses (`COMMON_STATUSES`).
pub struct RequestMetricsCache {
    labels: Arc<DestinationLabels>,
    common: [OnceLock<RequestMetrics>; COMMON_STATUSES.len()],
}

/// One finished request, ready to record.
pub struct RequestRecord<'a> {
    pub status: u16,
    /// For a gRPC request, its `grpc-status` if one came; `None` for other
    /// requests.
    pub grpc: Option<Option<u32>>,
    /// Envoy's `%RESPONSE_FLAGS%` (`-` when none).
    pub flags: &'a str,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("metrics registry: {0}")]
pub struct MetricsError(#[from] prometheus::Error);

// === impl Metrics ===

impl Metrics {
    /// This workload's labels (`source_*` of what it reports as source).
    pub fn source(&self) -> &SourceLabels {
        &self.source
    }

    pub fn new(source: SourceLabels) -> Result<Arc<Self>, MetricsError> {
        let registry = Registry::new();
        let tcp = tcp::TcpMetrics::new(&registry)?;
        let histogram = |name: &str, help: &str| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), &labels::ISTIO_LABELS)
        };
        let metrics = Metrics {
            requests_total: IntCounterVec::new(
                Opts::new("istio_requests_total", "Requests handled, by source and destination"),
                &labels::ISTIO_LABELS,
            )?,
            request_duration: histogram("istio_request_duration_milliseconds", "Request duration in milliseconds")?,
            request_bytes: histogram("istio_request_bytes", "Request size in bytes (headers and body)")?,
            response_bytes: histogram("istio_response_bytes", "Response size in bytes (headers and body)")?,
            config_reloads: IntCounterVec::new(
                Opts::new("meshd_config_reloads_total", "Configuration reloads by result"),
                &["result"],
            )?,
            config_reload_seconds: prometheus::GaugeVec::new(
                Opts::new("meshd_config_reload_seconds", "Duration of each phase of the last applied reload"),
                &["phase"],
            )?,
            config_version: prometheus::IntGauge::new("meshd_config_version", "Version of the active configuration")?,
            downstream_connections: prometheus::IntGauge::new(
                "meshd_downstream_connections_active",
                "Open downstream connections",
            )?,
            downstream_refused: IntCounter::new(
                "meshd_downstream_connections_refused_total",
                "Downstream connections closed at accept over --max-connections",
            )?,
            downstream_requests_refused: IntCounterVec::new(
                Opts::new(
                    "meshd_downstream_requests_refused_total",
                    "Requests refused for breaking a limit, by reason",
                ),
                &["reason"],
            )?,
            downstream_timeouts: IntCounterVec::new(
                Opts::new("meshd_downstream_timeouts_total", "Downstream connections and requests ended by a timeout"),
                &["kind"],
            )?,
            upstream_connects: IntCounterVec::new(
                Opts::new("meshd_upstream_connects_total", "Upstream connection attempts by result"),
                &["result"],
            )?,
            tcp,
            clusters: clusters::ClusterSourceSlot::default(),
            caches: Mutex::default(),
            registry,
            source,
        };
        let build = IntGaugeVec::new(Opts::new("istio_build", "Proxy build"), &["component", "tag"])?;
        build.with_label_values(&["proxy", env!("CARGO_PKG_VERSION")]).set(1);
        let r = &metrics.registry;
        r.register(Box::new(metrics.requests_total.clone()))?;
        r.register(Box::new(metrics.request_duration.clone()))?;
        r.register(Box::new(metrics.request_bytes.clone()))?;
        r.register(Box::new(metrics.response_bytes.clone()))?;
        r.register(Box::new(metrics.config_reloads.clone()))?;
        r.register(Box::new(metrics.config_version.clone()))?;
        r.register(Box::new(metrics.config_reload_seconds.clone()))?;
        r.register(Box::new(metrics.downstream_connections.clone()))?;
        r.register(Box::new(metrics.upstream_connects.clone()))?;
        r.register(Box::new(metrics.downstream_refused.clone()))?;
        r.register(Box::new(metrics.downstream_requests_refused.clone()))?;
        r.register(Box::new(metrics.downstream_timeouts.clone()))?;
        r.register(Box::new(build))?;
        Ok(Arc::new(metrics))
    }

    /// The registry, for families other modules register.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Prometheus text exposition of every family.
    pub fn encode(&self) -> String {
        let mut buf = Vec::with_capacity(16 * 1024);
        // Encoding into a Vec cannot fail on I/O; a family that fails to
        // encode is skipped rather than failing the scrape.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        self.clusters.encode(&mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The cache of handles for requests to `destination`, shared with
    /// every other holder of an equal label set.
    pub fn cache(&self, destination: DestinationLabels) -> Arc<RequestMetricsCache> {
        let mut caches = self.caches.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(live) = caches.by_labels.get(&destination).and_then(Weak::upgrade) {
            return live;
        }
        let labels = Arc::new(destination);
        let cache = Arc::new(RequestMetricsCache { labels: labels.clone(), common: Default::default() });
        caches.by_labels.insert(labels, Arc::downgrade(&cache));
        if caches.by_labels.len() >= 2 * caches.swept_len.max(64) {
            caches.by_labels.retain(|_, weak| weak.strong_count() > 0);
            caches.swept_len = caches.by_labels.len();
        }
        cache
    }

    /// Counts a TCP connection opened to `destination`.
    pub fn tcp_opened(&self, destination: &DestinationLabels) {
        self.tcp.opened(&self.source, destination);
    }

    /// Counts a TCP connection to `destination` closed, with its bytes.
    pub fn tcp_closed(&self, destination: &DestinationLabels, close: &TcpClose<'_>) {
        self.tcp.closed(&self.source, destination, close);
    }

    /// Records one request to `destination` without a cache (local replies,
    /// rare statuses).
    pub fn record(&self, destination: &DestinationLabels, record: &RequestRecord<'_>) {
        self.resolve(destination, record.status, record.grpc, record.flags).observe(record);
    }

    fn resolve(
        &self,
        destination: &DestinationLabels,
        status: u16,
        grpc: Option<Option<u32>>,
        flags: &str,
    ) -> RequestMetrics {
        let code = status.to_string();
        let grpc = grpc.map(|status| status.map(|s| s.to_string()).unwrap_or_default());
        let values = labels::values(&self.source, destination, &code, grpc.as_deref(), flags);
        RequestMetrics {
            requests: self.requests_total.with_label_values(&values),
            duration: self.request_duration.with_label_values(&values),
            request_bytes: self.request_bytes.with_label_values(&values),
            response_bytes: self.response_bytes.with_label_values(&values),
        }
    }
}

// === impl RequestMetrics ===

impl RequestMetrics {
    fn observe(&self, record: &RequestRecord<'_>) {
        self.requests.inc();
        self.duration.observe(record.duration_ms);
        self.request_bytes.observe(record.request_bytes as f64);
        self.response_bytes.observe(record.response_bytes as f64);
    }
}

// === impl RequestMetricsCache ===

impl RequestMetricsCache {
    pub fn labels(&self) -> &Arc<DestinationLabels> {
        &self.labels
    }

    /// Records one request, through cached handles when the status is
    /// common and there are no flags (and it is no gRPC request).
    pub fn record(&self, metrics: &Metrics, record: &RequestRecord<'_>) {
        let slot = (record.flags == "-" && record.grpc.is_none())
            .then(|| COMMON_STATUSES.iter().position(|s| *s == record.status))
            .flatten()
            .and_then(|i| self.common.get(i));
        match slot {
            Some(slot) => slot.get_or_init(|| metrics.resolve(&self.labels, record.status, None, "-")).observe(record),
            None => metrics.record(&self.labels, record),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_and_uncached_records_land_in_one_series() {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let dest = DestinationLabels::for_service("r.default.svc.cluster.local", "r", "default");
        let cache = metrics.cache(dest.clone());
        let rec = |status, flags| RequestRecord {
            status,
            grpc: None,
            flags,
            duration_ms: 1.0,
            request_bytes: 10,
            response_bytes: 20,
        };
        cache.record(&metrics, &rec(200, "-"));
        cache.record(&metrics, &rec(200, "-"));
        metrics.record(&dest, &rec(200, "-"));
        cache.record(&metrics, &rec(503, "UF"));
        let text = metrics.encode();
        let line = |code: &str, flags: &str| {
            text.lines()
                .find(|l| {
                    l.starts_with("istio_requests_total{")
                        && l.contains(&format!("response_code=\"{code}\""))
                        && l.contains(&format!("response_flags=\"{flags}\""))
                })
                .map(|l| l.rsplit(' ').next().unwrap_or_default().to_owned())
        };
        assert_eq!(line("200", "-").as_deref(), Some("3"));
        assert_eq!(line("503", "UF").as_deref(), Some("1"));
        assert!(text.contains("istio_request_duration_milliseconds_bucket{"));
    }

    #[test]
    fn equal_destinations_share_one_cache_until_the_last_holder_drops() {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let v1 = || DestinationLabels::for_service("r.default.svc.cluster.local", "r", "default");
        let a = metrics.cache(v1());
        let b = metrics.cache(v1());
        assert!(Arc::ptr_eq(&a, &b));
        let other = metrics.cache(DestinationLabels::for_service("s.default.svc.cluster.local", "s", "default"));
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        for i in 0..200 {
            drop(metrics.cache(DestinationLabels::for_service(&format!("h{i}"), "h", "default")));
        }
        let live = metrics.caches.lock().unwrap().by_labels.values().filter(|w| w.strong_count() > 0).count();
        let kept = metrics.caches.lock().unwrap().by_labels.len();
        assert_eq!(live, 1, "only `other` is still held");
        assert!(kept < 200, "dead entries are swept: {kept} kept");
    }
}
