//! Outlier detection: Envoy's consecutive-error ejection as a state machine
//! that the rest of meshd drives (spec §2.6–2.8).
//!
//! This is the algorithm of Envoy's
//! `source/common/upstream/outlier_detection_impl.cc` (`DetectorHostMonitorImpl`
//! and `DetectorImpl`, Envoy >= 1.28), described in the Envoy architecture
//! overview, "Outlier detection"
//! (<https://www.envoyproxy.io/docs/envoy/latest/intro/arch_overview/upstream/outlier>),
//! restricted to what Istio configures: the three consecutive-error
//! detectors enforced at 100 %, no success-rate or failure-percentage
//! detection, no ejection jitter and no `always_eject_one_host`.
//!
//! - **Counting** ([`OutlierState::record`], any task, atomics only).
//!   `consecutive_5xx` counts results that are errors (5xx or a configured
//!   error code) and is reset by any other response; `consecutive_gateway`
//!   counts 502/503/504 and is reset by any other response, a 500 included.
//!   Without `splitExternalLocalOriginErrors`, a connect failure or a reset
//!   counts as a 503 and a timeout as a 504; with it they feed only
//!   `consecutive_local_origin`, which a successful connect resets. When a
//!   counter becomes *equal* to its threshold the caller reports the host.
//! - **Ejection** ([`OutlierDetector::report`], serialised by the
//!   detector's lock like Envoy's main thread). A host already ejected is
//!   skipped. Otherwise it is ejected only if `100 × (ejected + 1) / hosts`
//!   stays within `maxEjectionPercent`, so clusters with fewer than 10 hosts
//!   never eject at Istio's default of 10 %; else `ejections_overflow`
//!   grows. Ejection bumps the backoff multiplier `b` while
//!   `b × base < max + base`. Either way the triggering counter restarts.
//! - **Return** ([`OutlierDetector::sweep`], every `interval`). A host
//!   comes back once `min(base × b, max) <= now − ejected_at`, so ejections
//!   round up to the next sweep; its counters restart. A host that has been
//!   back for at least one interval loses one step of `b` per sweep.
//!
//! The per-host [`OutlierState`] lives in the endpoint and survives
//! configuration swaps; the [`OutlierDetector`] lives in the cluster. The
//! number of ejected hosts that decides ejections is counted from the hosts
//! passed in, so removed hosts never distort it; the `ejections_active`
//! gauge is refreshed at every report and sweep, and
//! [`OutlierDetector::forget`] corrects it at once when a host is removed.

use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::Relaxed};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use crate::routing::OutlierConfig;

/// Per-endpoint outlier state; lives inside each endpoint and survives
/// configuration swaps.
#[derive(Debug, Default)]
pub struct OutlierState {
    /// Whether the host is out of the healthy set: read on every pick,
    /// written only under the detector's lock.
    ejected: AtomicBool,
    /// Consecutive errors (5xx or configured codes), for `consecutive5xxErrors`.
    consecutive_5xx: AtomicU32,
    /// Consecutive 502/503/504, for `consecutiveGatewayErrors`.
    consecutive_gateway: AtomicU32,
    /// Consecutive connect failures, timeouts and resets in split mode, for
    /// `consecutiveLocalOriginFailures`.
    consecutive_local_origin: AtomicU32,
    /// Ejection history, touched only on the rare paths (report, sweep,
    /// admin), always after the detector's lock when both are held.
    history: Mutex<History>,
}

/// When and how often a host was ejected.
#[derive(Debug, Default)]
struct History {
    /// Ejections so far, for the admin page.
    num_ejections: u32,
    /// The backoff multiplier `b`: an ejection lasts `min(base × b, max)`.
    multiplier: u32,
    /// Start of the current (or last) ejection, to know when it ends.
    last_ejection: Option<Instant>,
    /// End of the last ejection, to decay `b` once the host stays healthy.
    last_unejection: Option<Instant>,
}

/// One result of a request to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An upstream HTTP response with this status (gRPC already converted
    /// by the caller).
    Response(u16),
    /// Connect failure (refused, unreachable...): local origin.
    ConnectFailure,
    /// Connect timeout, per-try timeout or route timeout while awaiting
    /// headers: local origin (a synthetic 504 in non-split mode).
    Timeout,
    /// Upstream reset, connection termination or protocol error after
    /// connecting: local origin (a synthetic 503 in non-split mode).
    Reset,
    /// A connection was established: resets the local-origin counter in
    /// split mode, nothing otherwise.
    ConnectSuccess,
}

/// Which detector reached its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Consecutive5xx,
    ConsecutiveGatewayFailure,
    ConsecutiveLocalOriginFailure,
    /// Both the gateway and the 5xx counters reached their thresholds on the
    /// same result (a 502/503/504, e.g. both thresholds 5). Envoy reports
    /// both, gateway first; [`OutlierDetector::report`] does the same.
    ConsecutiveGatewayFailureAnd5xx,
}

/// A host's outlier state for the admin page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutlierStatus {
    pub ejected: bool,
    pub num_ejections: u32,
    pub multiplier: u32,
    /// Time until a sweep may return the host; `None` if not ejected.
    pub time_left: Option<Duration>,
}

/// Per-cluster detector: serialises ejection decisions and keeps Envoy's
/// `outlier_detection.*` stats.
#[derive(Debug, Default)]
pub struct OutlierDetector {
    /// Held only for one decision or one sweep, never across an await;
    /// guards the stats and orders ejections so that two hosts cannot both
    /// take the last ejection slot.
    stats: Mutex<OutlierStats>,
}

/// Envoy's `outlier_detection.*` cluster stats (spec §5.3).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutlierStats {
    /// Gauge: hosts currently ejected.
    pub ejections_active: u64,
    pub ejections_enforced_total: u64,
    /// Ejections refused by `maxEjectionPercent`.
    pub ejections_overflow: u64,
    pub ejections_enforced_consecutive_5xx: u64,
    pub ejections_enforced_consecutive_gateway_failure: u64,
    pub ejections_enforced_consecutive_local_origin_failure: u64,
    /// Detected (reported while not ejected), whether enforced or overflowed.
    pub ejections_detected_consecutive_5xx: u64,
    pub ejections_detected_consecutive_gateway_failure: u64,
    pub ejections_detected_consecutive_local_origin_failure: u64,
    /// Deprecated; as in Envoy, consecutive-5xx ejections that passed the
    /// percentage check (success-rate is off in Istio).
    pub ejections_total: u64,
    /// Deprecated; as in Envoy, equal to `ejections_detected_consecutive_5xx`.
    pub ejections_consecutive_5xx: u64,
}

/// Whether the balancer ignores health: the healthy share is below
/// `minHealthPercent` (Envoy's `healthy_panic_threshold`). Never with a
/// threshold of 0, Istio's default with `outlierDetection`.
pub fn panic(healthy: usize, total: usize, min_health_percent: u32) -> bool {
    let threshold = u64::from(min_health_percent.min(100));
    threshold > 0 && (total == 0 || 100 * (healthy as u64) < threshold * (total as u64))
}

/// How long an ejection with multiplier `b` lasts.
fn ejection_time(config: &OutlierConfig, multiplier: u32) -> Duration {
    config.base_ejection_time.saturating_mul(multiplier).min(config.max_ejection_time)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds one to a counter; true when it has just become equal to an enabled
/// threshold. A disabled detector does not count.
fn bump(counter: &AtomicU32, threshold: Option<u32>) -> bool {
    threshold.is_some_and(|t| counter.fetch_add(1, Relaxed).wrapping_add(1) == t)
}

/// Resets a counter, without writing to a cache line that is already 0.
fn clear(counter: &AtomicU32) {
    if counter.load(Relaxed) != 0 {
        counter.store(0, Relaxed);
    }
}

// === impl OutlierState ===

impl OutlierState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether the host is ejected (one relaxed load).
    pub fn is_ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }

    /// Records one result of a request to this endpoint (atomics only).
    /// Returns the trigger when a consecutive counter has just become equal
    /// to its threshold and the host is not ejected; the caller then calls
    /// [`OutlierDetector::report`].
    pub fn record(&self, config: &OutlierConfig, result: Outcome) -> Option<Trigger> {
        let status = match (result, config.split_external_local_origin_errors) {
            (Outcome::Response(status), _) => status,
            (Outcome::ConnectFailure | Outcome::Reset, false) => 503,
            (Outcome::Timeout, false) => 504,
            (Outcome::ConnectSuccess, false) => return None,
            (Outcome::ConnectSuccess, true) => {
                clear(&self.consecutive_local_origin);
                return None;
            }
            (Outcome::ConnectFailure | Outcome::Timeout | Outcome::Reset, true) => {
                let hit = bump(&self.consecutive_local_origin, config.consecutive_local_origin_failure);
                return (hit && !self.is_ejected()).then_some(Trigger::ConsecutiveLocalOriginFailure);
            }
        };
        if !config.is_error(status) {
            clear(&self.consecutive_5xx);
            clear(&self.consecutive_gateway);
            return None;
        }
        // A configured non-5xx code is reported to Envoy as a 500: it resets
        // the gateway counter.
        let gateway = if matches!(status, 502..=504) {
            bump(&self.consecutive_gateway, config.consecutive_gateway_failure)
        } else {
            clear(&self.consecutive_gateway);
            false
        };
        let five = bump(&self.consecutive_5xx, config.consecutive_5xx);
        if self.is_ejected() {
            return None;
        }
        match (gateway, five) {
            (true, true) => Some(Trigger::ConsecutiveGatewayFailureAnd5xx),
            (true, false) => Some(Trigger::ConsecutiveGatewayFailure),
            (false, true) => Some(Trigger::Consecutive5xx),
            (false, false) => None,
        }
    }

    /// The host's state for the admin page.
    pub fn status(&self, config: &OutlierConfig, now: Instant) -> OutlierStatus {
        let history = lock(&self.history);
        let ejected = self.is_ejected();
        let time_left = match history.last_ejection {
            Some(at) if ejected => {
                Some(ejection_time(config, history.multiplier).saturating_sub(now.saturating_duration_since(at)))
            }
            _ => None,
        };
        OutlierStatus { ejected, num_ejections: history.num_ejections, multiplier: history.multiplier, time_left }
    }

    fn counter(&self, trigger: Trigger) -> &AtomicU32 {
        match trigger {
            Trigger::Consecutive5xx | Trigger::ConsecutiveGatewayFailureAnd5xx => &self.consecutive_5xx,
            Trigger::ConsecutiveGatewayFailure => &self.consecutive_gateway,
            Trigger::ConsecutiveLocalOriginFailure => &self.consecutive_local_origin,
        }
    }

    fn reset_counters(&self) {
        clear(&self.consecutive_5xx);
        clear(&self.consecutive_gateway);
        clear(&self.consecutive_local_origin);
    }
}

// === impl OutlierDetector ===

impl OutlierDetector {
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides ejection for `host` among `hosts` (all endpoints of the
    /// cluster, `host` included) after [`OutlierState::record`] returned
    /// `trigger`. Returns true when the host was ejected (the caller then
    /// rebuilds its healthy set). A host no longer in `hosts` is ignored.
    pub fn report<'a>(
        &self,
        config: &OutlierConfig,
        hosts: impl Iterator<Item = &'a OutlierState> + Clone,
        host: &OutlierState,
        trigger: Trigger,
        now: Instant,
    ) -> bool {
        let mut stats = lock(&self.stats);
        let (mut total, mut active, mut member) = (0u64, 0u64, false);
        for h in hosts {
            total += 1;
            active += u64::from(h.is_ejected());
            member |= ptr::eq(h, host);
        }
        if !member {
            return false;
        }
        let steps: &[Trigger] = match trigger {
            Trigger::ConsecutiveGatewayFailureAnd5xx => &[Trigger::ConsecutiveGatewayFailure, Trigger::Consecutive5xx],
            Trigger::Consecutive5xx => &[Trigger::Consecutive5xx],
            Trigger::ConsecutiveGatewayFailure => &[Trigger::ConsecutiveGatewayFailure],
            Trigger::ConsecutiveLocalOriginFailure => &[Trigger::ConsecutiveLocalOriginFailure],
        };
        let mut ejected = false;
        for &step in steps {
            if host.is_ejected() {
                break;
            }
            match step {
                Trigger::ConsecutiveGatewayFailure => stats.ejections_detected_consecutive_gateway_failure += 1,
                Trigger::ConsecutiveLocalOriginFailure => {
                    stats.ejections_detected_consecutive_local_origin_failure += 1;
                }
                _ => {
                    stats.ejections_detected_consecutive_5xx += 1;
                    stats.ejections_consecutive_5xx += 1;
                }
            }
            // Exact form of Envoy's `100.0 * (active + 1) / total <= max`.
            let max_percent = u64::from(config.max_ejection_percent.min(100));
            if 100 * (active + 1) <= max_percent * total {
                Self::eject(&mut stats, config, host, step, now);
                active += 1;
                ejected = true;
            } else {
                stats.ejections_overflow += 1;
            }
            // Envoy restarts the triggering counter whether or not the host
            // was ejected, so that it can trigger again.
            host.counter(step).store(0, Relaxed);
        }
        stats.ejections_active = active;
        ejected
    }

    fn eject(stats: &mut OutlierStats, config: &OutlierConfig, host: &OutlierState, step: Trigger, now: Instant) {
        match step {
            Trigger::ConsecutiveGatewayFailure => stats.ejections_enforced_consecutive_gateway_failure += 1,
            Trigger::ConsecutiveLocalOriginFailure => stats.ejections_enforced_consecutive_local_origin_failure += 1,
            _ => {
                stats.ejections_enforced_consecutive_5xx += 1;
                stats.ejections_total += 1;
            }
        }
        stats.ejections_enforced_total += 1;
        let mut history = lock(&host.history);
        host.ejected.store(true, Relaxed);
        history.num_ejections = history.num_ejections.saturating_add(1);
        history.last_ejection = Some(now);
        let base = config.base_ejection_time;
        if base.saturating_mul(history.multiplier) < config.max_ejection_time.saturating_add(base) {
            history.multiplier += 1;
        }
    }

    /// The interval sweep: returns hosts whose ejection time is up, resets
    /// their counters, and decays the multiplier of hosts back for at least
    /// one interval. Returns true if any host was returned.
    pub fn sweep<'a>(
        &self,
        config: &OutlierConfig,
        hosts: impl Iterator<Item = &'a OutlierState>,
        now: Instant,
    ) -> bool {
        let mut stats = lock(&self.stats);
        let (mut changed, mut active) = (false, 0);
        for host in hosts {
            let mut history = lock(&host.history);
            if host.is_ejected() {
                let elapsed = history.last_ejection.map(|at| now.saturating_duration_since(at));
                if elapsed.is_some_and(|e| e < ejection_time(config, history.multiplier)) {
                    active += 1;
                    continue;
                }
                host.ejected.store(false, Relaxed);
                host.reset_counters();
                history.last_unejection = Some(now);
                changed = true;
            }
            if history.last_unejection.is_some_and(|at| now.saturating_duration_since(at) >= config.interval) {
                history.multiplier = history.multiplier.saturating_sub(1);
            }
        }
        stats.ejections_active = active;
        changed
    }

    /// Call for a host removed from the cluster: keeps `ejections_active`
    /// right until the next sweep recounts it. Idempotent (it clears the
    /// host's ejected flag; the host must not be reused in this cluster).
    pub fn forget(&self, host: &OutlierState) {
        let mut stats = lock(&self.stats);
        if host.ejected.swap(false, Relaxed) {
            stats.ejections_active = stats.ejections_active.saturating_sub(1);
        }
    }

    /// Returns every host and forgets its history, for a cluster whose
    /// `outlierDetection` was removed (no sweep would ever return them).
    pub fn clear<'a>(&self, hosts: impl Iterator<Item = &'a OutlierState>) {
        let mut stats = lock(&self.stats);
        for host in hosts {
            let mut history = lock(&host.history);
            host.ejected.store(false, Relaxed);
            host.reset_counters();
            *history = History::default();
        }
        stats.ejections_active = 0;
    }

    /// A copy of the stats, for Prometheus.
    pub fn stats(&self) -> OutlierStats {
        *lock(&self.stats)
    }
}

#[cfg(test)]
mod tests;
