//! The per-cluster counters the request path keeps itself (retries,
//! timeouts, panic), and the assembly of one [`ClusterSample`] from them,
//! the circuit breakers ([`ResourceStats`]) and the outlier detector
//! ([`OutlierStats`]) for `envoy_cluster_*` metrics and `/clusters`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::outlier::OutlierStats;
use super::resources::ResourceStats;
use crate::metrics::{ClusterSample, ClusterStat};

/// Envoy router and load-balancer counters of one cluster. Relaxed
/// atomics: each is an independent count read only at scrape time.
#[derive(Debug, Default)]
pub struct RouterStats {
    /// `upstream_rq_retry`: retries sent.
    pub retry: AtomicU64,
    /// `upstream_rq_retry_success`: retried requests that ended well.
    pub retry_success: AtomicU64,
    /// `upstream_rq_retry_limit_exceeded`: retriable failures with no
    /// retry left.
    pub retry_limit_exceeded: AtomicU64,
    /// `upstream_rq_timeout`: route timeouts.
    pub timeout: AtomicU64,
    /// `upstream_rq_per_try_timeout`.
    pub per_try_timeout: AtomicU64,
    /// `lb_healthy_panic`: picks made over all endpoints because too few
    /// were healthy.
    pub healthy_panic: AtomicU64,
}

/// Endpoint counts of a cluster at one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Membership {
    pub healthy: u64,
    pub total: u64,
}

// === impl RouterStats ===

impl RouterStats {
    pub fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One cluster's sample.
pub fn sample(
    name: Arc<str>,
    router: &RouterStats,
    resources: &ResourceStats,
    outlier: &OutlierStats,
    membership: Membership,
) -> ClusterSample {
    use ClusterStat as S;
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let mut s = ClusterSample::new(name);
    let values = [
        (S::CxActive, resources.cx_active),
        (S::CxTotal, resources.cx_total),
        (S::CxConnectFail, resources.cx_connect_fail),
        (S::CxConnectTimeout, resources.cx_connect_timeout),
        (S::CxOverflow, resources.cx_overflow),
        (S::RqActive, resources.rq_active),
        (S::RqPendingActive, resources.rq_pending_active),
        (S::RqPendingOverflow, resources.rq_pending_overflow),
        (S::RqRetry, load(&router.retry)),
        (S::RqRetrySuccess, load(&router.retry_success)),
        (S::RqRetryOverflow, resources.rq_retry_overflow),
        (S::RqRetryLimitExceeded, load(&router.retry_limit_exceeded)),
        (S::RqTimeout, load(&router.timeout)),
        (S::RqPerTryTimeout, load(&router.per_try_timeout)),
        (S::CbCxOpen, resources.cx_open),
        (S::CbRqPendingOpen, resources.rq_pending_open),
        (S::CbRqOpen, resources.rq_open),
        (S::CbRqRetryOpen, resources.rq_retry_open),
        (S::EjectionsActive, outlier.ejections_active),
        (S::EjectionsEnforcedTotal, outlier.ejections_enforced_total),
        (S::EjectionsOverflow, outlier.ejections_overflow),
        (S::EjectionsEnforced5xx, outlier.ejections_enforced_consecutive_5xx),
        (S::EjectionsDetected5xx, outlier.ejections_detected_consecutive_5xx),
        (S::EjectionsEnforcedGateway, outlier.ejections_enforced_consecutive_gateway_failure),
        (S::EjectionsDetectedGateway, outlier.ejections_detected_consecutive_gateway_failure),
        (S::EjectionsEnforcedLocalOrigin, outlier.ejections_enforced_consecutive_local_origin_failure),
        (S::EjectionsDetectedLocalOrigin, outlier.ejections_detected_consecutive_local_origin_failure),
        (S::EjectionsTotal, outlier.ejections_total),
        (S::MembershipHealthy, membership.healthy),
        (S::MembershipTotal, membership.total),
        (S::LbHealthyPanic, load(&router.healthy_panic)),
    ];
    for (stat, value) in values {
        s.set(stat, value);
    }
    s
}
