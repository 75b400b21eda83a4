//! Envoy's per-cluster statistics (spec §5.3) in Envoy's Prometheus form:
//! `envoy_cluster_<stat>{cluster_name="outbound|PORT|SUBSET|HOST"}`.
//!
//! The values live where they change, as plain atomics on the upstream side
//! (circuit breakers, outlier detector, retry counters); nothing on the
//! request path touches Prometheus for them. At scrape time
//! [`ClusterCollector`] asks its [`ClusterStatsSource`] (the live
//! clusters) for one [`ClusterSample`] per cluster and turns them into
//! metric families, so clusters removed by a reload simply stop appearing.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Counter, Gauge, LabelPair, Metric, MetricFamily, MetricType};

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

/// The Prometheus collector for [`STATS`].
pub struct ClusterCollector {
    /// One descriptor per stat, registered once.
    descs: Vec<Desc>,
    /// Bound after the upstream side exists (it is created after the
    /// registry); weak so the registry does not keep clusters alive.
    source: Arc<RwLock<Option<Weak<dyn ClusterStatsSource>>>>,
}

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

// === impl ClusterCollector ===

impl ClusterCollector {
    /// The collector and the slot to bind its source to later.
    pub fn new() -> Result<(Self, ClusterSourceSlot), prometheus::Error> {
        let descs = STATS
            .iter()
            .map(|s| Desc::new(full_name(s), s.help.to_owned(), vec!["cluster_name".to_owned()], HashMap::new()))
            .collect::<Result<_, _>>()?;
        let source = Arc::new(RwLock::new(None));
        Ok((ClusterCollector { descs, source: source.clone() }, ClusterSourceSlot(source)))
    }
}

impl Collector for ClusterCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let source = self.source.read().ok().and_then(|s| s.as_ref().and_then(Weak::upgrade));
        let Some(source) = source else { return Vec::new() };
        let samples = source.samples();
        if samples.is_empty() {
            return Vec::new();
        }
        STATS.iter().enumerate().map(|(i, stat)| family(stat, i, &samples)).collect()
    }
}

/// Where [`ClusterCollector`] finds its clusters; bound once the upstream
/// side exists.
#[derive(Clone)]
pub struct ClusterSourceSlot(Arc<RwLock<Option<Weak<dyn ClusterStatsSource>>>>);

impl ClusterSourceSlot {
    pub fn bind(&self, source: Weak<dyn ClusterStatsSource>) {
        if let Ok(mut slot) = self.0.write() {
            *slot = Some(source);
        }
    }
}

fn full_name(stat: &Stat) -> String {
    format!("envoy_cluster_{}", stat.name)
}

fn family(stat: &Stat, index: usize, samples: &[ClusterSample]) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(full_name(stat));
    family.set_help(stat.help.to_owned());
    family.set_field_type(match stat.kind {
        StatKind::Counter => MetricType::COUNTER,
        StatKind::Gauge => MetricType::GAUGE,
    });
    let metrics = samples
        .iter()
        .map(|sample| {
            let mut label = LabelPair::default();
            label.set_name("cluster_name".to_owned());
            label.set_value(sample.name.to_string());
            let mut metric = Metric::from_label(vec![label]);
            let value = sample.values.get(index).copied().unwrap_or(0) as f64;
            match stat.kind {
                StatKind::Counter => {
                    let mut c = Counter::default();
                    c.set_value(value);
                    metric.set_counter(c);
                }
                StatKind::Gauge => {
                    let mut g = Gauge::default();
                    g.set_value(value);
                    metric.set_gauge(g);
                }
            }
            metric
        })
        .collect();
    family.set_metric(metrics);
    family
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

    #[test]
    fn samples_become_labelled_families() {
        let registry = prometheus::Registry::new();
        let (collector, slot) = ClusterCollector::new().unwrap();
        registry.register(Box::new(collector)).unwrap();
        assert!(registry.gather().is_empty(), "nothing before a source is bound");
        let mut sample = ClusterSample::new("outbound|80||a.default.svc.cluster.local".into());
        sample.set(ClusterStat::RqRetry, 7);
        sample.set(ClusterStat::EjectionsActive, 1);
        let source: Arc<dyn ClusterStatsSource> = Arc::new(Fixed(vec![sample]));
        slot.bind(Arc::downgrade(&source));
        let mut buf = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text
            .contains("envoy_cluster_upstream_rq_retry{cluster_name=\"outbound|80||a.default.svc.cluster.local\"} 7"));
        assert!(text.contains("# TYPE envoy_cluster_outlier_detection_ejections_active gauge"));
        assert!(text.contains("envoy_cluster_outlier_detection_ejections_active{cluster_name=\"outbound|80||a.default.svc.cluster.local\"} 1"));
        drop(source);
        assert!(registry.gather().is_empty(), "a dropped source exports nothing");
    }
}
