//! Envoy's per-cluster statistics (spec §5.3) in Envoy's Prometheus form:
//! `envoy_cluster_<stat>{cluster_name="outbound|PORT|SUBSET|HOST"}`.
//!
//! The values live where they change, as plain atomics on the upstream side
//! (circuit breakers, outlier detector, retry counters); nothing on the
//! request path touches Prometheus for them. At scrape time
//! [`ClusterSourceSlot::encode`] asks its [`ClusterStatsSource`] (the live
//! clusters) for one [`ClusterSample`] per cluster and writes them as
//! Prometheus text, so clusters removed by a reload simply stop appearing.
//!
//! The text is written directly rather than through the `prometheus`
//! crate's collector interface: that interface materialises one protobuf
//! `Metric` (label pairs as owned strings) per series before encoding, and
//! a mesh of 1,000 services has 3,000 clusters × 31 stats ≈ 93,000 series,
//! which made every scrape allocate ~40 MB. Written here, a scrape costs
//! the output buffer and one sample per cluster.

use std::io::Write;
use std::sync::{Arc, RwLock, Weak};

/// Counter or gauge, as Envoy types the stat.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatKind {
    Counter,
    Gauge,
}

/// One Envoy cluster stat.
#[derive(Debug)]
pub struct Stat {
    /// The name after `envoy_cluster_`.
    pub name: &'static str,
    pub kind: StatKind,
    pub help: &'static str,
}

/// Every per-cluster stat meshd exports; [`ClusterSample::values`] is
/// indexed by [`ClusterStat`].
pub const STATS: [Stat; ClusterStat::COUNT] = {
    use StatKind::{Counter as C, Gauge as G};
    const fn s(name: &'static str, kind: StatKind, help: &'static str) -> Stat {
        Stat { name, kind, help }
    }
    [
        s("upstream_cx_active", G, "Upstream connections open"),
        s("upstream_cx_total", C, "Upstream connections opened"),
        s("upstream_cx_connect_fail", C, "Upstream connection failures"),
        s("upstream_cx_connect_timeout", C, "Upstream connection timeouts"),
        s("upstream_cx_overflow", C, "Times the max_connections circuit breaker was hit"),
        s("upstream_rq_active", G, "Requests in flight"),
        s("upstream_rq_pending_active", G, "Requests waiting for a connection"),
        s("upstream_rq_pending_overflow", C, "Requests failed by the pending or max-requests circuit breaker"),
        s("upstream_rq_retry", C, "Retries sent"),
        s("upstream_rq_retry_success", C, "Retries that succeeded"),
        s("upstream_rq_retry_overflow", C, "Retries skipped by the max_retries circuit breaker"),
        s("upstream_rq_retry_limit_exceeded", C, "Requests whose retries were exhausted"),
        s("upstream_rq_timeout", C, "Requests that hit the route timeout"),
        s("upstream_rq_per_try_timeout", C, "Attempts that hit the per-try timeout"),
        s("circuit_breakers_default_cx_open", G, "1 while max_connections is reached"),
        s("circuit_breakers_default_rq_pending_open", G, "1 while max_pending_requests is reached"),
        s("circuit_breakers_default_rq_open", G, "1 while max_requests is reached"),
        s("circuit_breakers_default_rq_retry_open", G, "1 while max_retries is reached"),
        s("outlier_detection_ejections_active", G, "Endpoints currently ejected"),
        s("outlier_detection_ejections_enforced_total", C, "Ejections enforced"),
        s("outlier_detection_ejections_overflow", C, "Ejections prevented by max_ejection_percent"),
        s("outlier_detection_ejections_enforced_consecutive_5xx", C, "Consecutive-5xx ejections enforced"),
        s("outlier_detection_ejections_detected_consecutive_5xx", C, "Consecutive-5xx ejections detected"),
        s("outlier_detection_ejections_enforced_consecutive_gateway_failure", C, "Gateway-failure ejections enforced"),
        s("outlier_detection_ejections_detected_consecutive_gateway_failure", C, "Gateway-failure ejections detected"),
        s(
            "outlier_detection_ejections_enforced_consecutive_local_origin_failure",
            C,
            "Local-origin ejections enforced",
        ),
        s(
            "outlier_detection_ejections_detected_consecutive_local_origin_failure",
            C,
            "Local-origin ejections detected",
        ),
        s("outlier_detection_ejections_total", C, "Ejections enforced (deprecated name)"),
        s("membership_healthy", G, "Endpoints not ejected"),
        s("membership_total", G, "Endpoints"),
        s("lb_healthy_panic", C, "Requests balanced over all endpoints because too few were healthy"),
    ]
};

/// Index of a stat in [`STATS`] and in [`ClusterSample::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum ClusterStat {
    CxActive,
    CxTotal,
    CxConnectFail,
    CxConnectTimeout,
    CxOverflow,
    RqActive,
    RqPendingActive,
    RqPendingOverflow,
    RqRetry,
    RqRetrySuccess,
    RqRetryOverflow,
    RqRetryLimitExceeded,
    RqTimeout,
    RqPerTryTimeout,
    CbCxOpen,
    CbRqPendingOpen,
    CbRqOpen,
    CbRqRetryOpen,
    EjectionsActive,
    EjectionsEnforcedTotal,
    EjectionsOverflow,
    EjectionsEnforced5xx,
    EjectionsDetected5xx,
    EjectionsEnforcedGateway,
    EjectionsDetectedGateway,
    EjectionsEnforcedLocalOrigin,
    EjectionsDetectedLocalOrigin,
    EjectionsTotal,
    MembershipHealthy,
    MembershipTotal,
    LbHealthyPanic,
}

/// One cluster's values at one scrape.
#[derive(Debug, Clone)]
pub struct ClusterSample {
    /// `outbound|PORT|SUBSET|HOST`.
    pub name: Arc<str>,
    pub values: [u64; ClusterStat::COUNT],
}

/// Whatever can list the live clusters' samples (the upstream side).
pub trait ClusterStatsSource: Send + Sync {
    fn samples(&self) -> Vec<ClusterSample>;
}

/// Where the cluster stats come from; bound once the upstream side exists
/// (it is created after the registry). Weak, so metrics never keep
/// clusters alive.
#[derive(Clone, Default)]
pub struct ClusterSourceSlot(Arc<RwLock<Option<Weak<dyn ClusterStatsSource>>>>);

// === impl ClusterStat ===

impl ClusterStat {
    pub const COUNT: usize = ClusterStat::LbHealthyPanic as usize + 1;
}

// === impl ClusterSample ===

impl ClusterSample {
    pub fn new(name: Arc<str>) -> Self {
        ClusterSample { name, values: [0; ClusterStat::COUNT] }
    }

    pub fn set(&mut self, stat: ClusterStat, value: u64) {
        self.values[stat as usize] = value;
    }

    pub fn get(&self, stat: ClusterStat) -> u64 {
        self.values[stat as usize]
    }
}

// === impl ClusterSourceSlot ===

impl ClusterSourceSlot {
    pub fn bind(&self, source: Weak<dyn ClusterStatsSource>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(source);
        }
    }

    /// Appends every stat of every live cluster to `out` in the Prometheus
    /// text format (0.0.4): one family per stat, one line per cluster.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let source = self.0.read().ok().and_then(|s| s.as_ref().and_then(Weak::upgrade));
        let Some(source) = source else { return };
        let samples = source.samples();
        if samples.is_empty() {
            return;
        }
        // Roughly what the lines take, so the buffer grows once.
        let per_line: usize = samples.iter().map(|s| s.name.len() + 80).sum();
        out.reserve(per_line * STATS.len());
        for (index, stat) in STATS.iter().enumerate() {
            let kind = match stat.kind {
                StatKind::Counter => "counter",
                StatKind::Gauge => "gauge",
            };
            // Writing into a Vec cannot fail.
            let _ = writeln!(out, "# HELP envoy_cluster_{} {}", stat.name, stat.help);
            let _ = writeln!(out, "# TYPE envoy_cluster_{} {kind}", stat.name);
            for sample in &samples {
                let _ = write!(out, "envoy_cluster_{}{{cluster_name=\"", stat.name);
                escape_label(&sample.name, out);
                let _ = writeln!(out, "\"}} {}", sample.values.get(index).copied().unwrap_or(0));
            }
        }
    }
}

/// A label value as the text format requires: `\`, `"` and newlines escaped.
fn escape_label(value: &str, out: &mut Vec<u8>) {
    for byte in value.bytes() {
        match byte {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'"' => out.extend_from_slice(b"\\\""),
            b'\n' => out.extend_from_slice(b"\\n"),
            _ => out.push(byte),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<ClusterSample>);

    impl ClusterStatsSource for Fixed {
        fn samples(&self) -> Vec<ClusterSample> {
            self.0.clone()
        }
    }

    #[test]
    fn stats_table_matches_the_index() {
        assert_eq!(STATS[ClusterStat::CxActive as usize].name, "upstream_cx_active");
        assert_eq!(STATS[ClusterStat::RqPendingOverflow as usize].name, "upstream_rq_pending_overflow");
        assert_eq!(STATS[ClusterStat::EjectionsActive as usize].name, "outlier_detection_ejections_active");
        assert_eq!(STATS[ClusterStat::EjectionsTotal as usize].name, "outlier_detection_ejections_total");
        assert_eq!(STATS[ClusterStat::LbHealthyPanic as usize].name, "lb_healthy_panic");
    }

    fn encoded(slot: &ClusterSourceSlot) -> String {
        let mut out = Vec::new();
        slot.encode(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn samples_become_labelled_families() {
        let slot = ClusterSourceSlot::default();
        assert!(encoded(&slot).is_empty(), "nothing before a source is bound");
        let mut sample = ClusterSample::new("outbound|80||a.default.svc.cluster.local".into());
        sample.set(ClusterStat::RqRetry, 7);
        sample.set(ClusterStat::EjectionsActive, 1);
        let odd = ClusterSample::new("odd\"name\\x".into());
        let source: Arc<dyn ClusterStatsSource> = Arc::new(Fixed(vec![sample, odd]));
        slot.bind(Arc::downgrade(&source));
        let text = encoded(&slot);
        assert!(text.contains(
            "envoy_cluster_upstream_rq_retry{cluster_name=\"outbound|80||a.default.svc.cluster.local\"} 7\n"
        ));
        assert!(text.contains("# TYPE envoy_cluster_outlier_detection_ejections_active gauge\n"));
        assert!(text.contains("# TYPE envoy_cluster_upstream_rq_retry counter\n"));
        assert!(text.contains("envoy_cluster_outlier_detection_ejections_active{cluster_name=\"outbound|80||a.default.svc.cluster.local\"} 1\n"));
        assert!(text.contains("envoy_cluster_upstream_rq_retry{cluster_name=\"odd\\\"name\\\\x\"} 0\n"), "{text}");
        assert_eq!(text.lines().filter(|l| !l.starts_with('#')).count(), 2 * STATS.len());
        drop(source);
        assert!(encoded(&slot).is_empty(), "a dropped source exports nothing");
    }
}
