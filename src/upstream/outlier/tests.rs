//! The per-host state machine and the detector's sweep, stepped in paused time.

use super::*;

const E503: Outcome = Outcome::Response(503);
const E500: Outcome = Outcome::Response(500);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Istio's defaults with the 5xx detector at 5, at most 100 % ejected.
fn config() -> OutlierConfig {
    OutlierConfig {
        consecutive_5xx: Some(5),
        consecutive_gateway_failure: None,
        consecutive_local_origin_failure: None,
        split_external_local_origin_errors: false,
        interval: secs(10),
        base_ejection_time: secs(30),
        max_ejection_time: secs(300),
        max_ejection_percent: 100,
        min_health_percent: 0,
        error_codes: vec![],
    }
}

/// A cluster of `n` hosts with a clock starting at `t0`.
struct Bench {
    cfg: OutlierConfig,
    det: OutlierDetector,
    hosts: Vec<OutlierState>,
    t0: Instant,
}

impl Bench {
    fn new(n: usize) -> Self {
        let hosts = (0..n).map(|_| OutlierState::new()).collect();
        Bench { cfg: config(), det: OutlierDetector::new(), hosts, t0: Instant::now() }
    }

    /// Feeds 503s to host `i` until it triggers, then reports it at `t0 + s`.
    fn fail(&self, i: usize, s: u64) -> bool {
        let trigger = (0..1000).find_map(|_| self.hosts[i].record(&self.cfg, E503));
        trigger.is_some_and(|t| self.det.report(&self.cfg, self.hosts.iter(), &self.hosts[i], t, self.t0 + secs(s)))
    }

    fn sweep(&self, s: u64) -> bool {
        self.det.sweep(&self.cfg, self.hosts.iter(), self.t0 + secs(s))
    }

    fn status(&self, i: usize, s: u64) -> OutlierStatus {
        self.hosts[i].status(&self.cfg, self.t0 + secs(s))
    }

    fn feed(&self, i: usize, outcomes: &[Outcome]) -> Vec<Option<Trigger>> {
        outcomes.iter().map(|o| self.hosts[i].record(&self.cfg, *o)).collect()
    }
}

#[test]
fn ejects_on_nth_consecutive_5xx() {
    let b = Bench::new(1);
    assert_eq!(b.feed(0, &[E500; 4]), vec![None; 4]);
    assert_eq!(b.feed(0, &[E500]), vec![Some(Trigger::Consecutive5xx)]);
    assert!(b.det.report(&b.cfg, b.hosts.iter(), &b.hosts[0], Trigger::Consecutive5xx, b.t0));
    assert!(b.hosts[0].is_ejected());
    // Ejected: counting goes on but nothing is reported.
    assert_eq!(b.feed(0, &[E500; 6]), vec![None; 6]);
    let stats = b.det.stats();
    assert_eq!((stats.ejections_active, stats.ejections_enforced_total, stats.ejections_total), (1, 1, 1));
    assert_eq!((stats.ejections_enforced_consecutive_5xx, stats.ejections_detected_consecutive_5xx), (1, 1));
}

#[test]
fn success_resets_counters() {
    let mut b = Bench::new(1);
    b.cfg.error_codes = vec![429];
    let (r200, r404, r429) = (Outcome::Response(200), Outcome::Response(404), Outcome::Response(429));
    let outcomes = [E503, E503, E503, E503, r200, r429, r429, r429, r429, r404, E500, E500, E500, E500];
    assert!(b.feed(0, &outcomes).iter().all(Option::is_none));
    assert_eq!(b.feed(0, &[r429]), vec![Some(Trigger::Consecutive5xx)]);
}

#[test]
fn gateway_detector_counts_only_gateway_errors() {
    let mut b = Bench::new(1);
    b.cfg.consecutive_5xx = None;
    b.cfg.consecutive_gateway_failure = Some(3);
    let [r502, r504] = [502, 504].map(Outcome::Response);
    assert_eq!(b.feed(0, &[E503, r502, E500, E503, r504]), vec![None; 5]);
    assert_eq!(b.feed(0, &[E503]), vec![Some(Trigger::ConsecutiveGatewayFailure)]);
    // Both detectors at the same threshold: one report covers both,
    // gateway first (Envoy posts that one first).
    let mut b = Bench::new(1);
    b.cfg.consecutive_gateway_failure = Some(5);
    assert_eq!(b.feed(0, &[E503; 4]), vec![None; 4]);
    assert_eq!(b.feed(0, &[E503]), vec![Some(Trigger::ConsecutiveGatewayFailureAnd5xx)]);
    assert!(b.det.report(&b.cfg, b.hosts.iter(), &b.hosts[0], Trigger::ConsecutiveGatewayFailureAnd5xx, b.t0));
    let stats = b.det.stats();
    assert_eq!(stats.ejections_enforced_consecutive_gateway_failure, 1);
    assert_eq!((stats.ejections_detected_consecutive_5xx, stats.ejections_enforced_total), (0, 1));
}

#[test]
fn local_origin_errors_count_as_5xx_without_split() {
    let mut b = Bench::new(1);
    b.cfg.consecutive_gateway_failure = Some(3);
    let outcomes = [Outcome::ConnectFailure, Outcome::ConnectSuccess, Outcome::Timeout];
    assert_eq!(b.feed(0, &outcomes), vec![None; 3]);
    assert_eq!(b.feed(0, &[Outcome::Reset]), vec![Some(Trigger::ConsecutiveGatewayFailure)]);
    assert_eq!(b.feed(0, &[Outcome::ConnectFailure, Outcome::Timeout]), [None, Some(Trigger::Consecutive5xx)]);
}

#[test]
fn local_origin_errors_feed_only_their_counter_with_split() {
    let mut b = Bench::new(1);
    b.cfg.split_external_local_origin_errors = true;
    b.cfg.consecutive_local_origin_failure = Some(3);
    let [fail, timeout, reset, ok] =
        [Outcome::ConnectFailure, Outcome::Timeout, Outcome::Reset, Outcome::ConnectSuccess];
    assert_eq!(b.feed(0, &[fail, timeout, ok, fail, reset]), vec![None; 5]);
    // 5xx responses neither reset it nor are fed by it.
    assert_eq!(b.feed(0, &[E503; 4]), vec![None; 4]);
    assert_eq!(b.feed(0, &[timeout]), vec![Some(Trigger::ConsecutiveLocalOriginFailure)]);
    assert_eq!(b.feed(0, &[E503]), vec![Some(Trigger::Consecutive5xx)]);
}

#[tokio::test(start_paused = true)]
async fn returned_at_first_sweep_after_base_time() {
    let b = Bench::new(2);
    assert!(b.fail(0, 0));
    assert_eq!(b.status(0, 0).time_left, Some(secs(30)));
    for _ in 0..2 {
        tokio::time::advance(b.cfg.interval).await;
        assert!(!b.det.sweep(&b.cfg, b.hosts.iter(), Instant::now()));
        assert!(b.hosts[0].is_ejected());
    }
    assert_eq!(b.status(0, 20).time_left, Some(secs(10)));
    tokio::time::advance(b.cfg.interval).await;
    assert!(b.det.sweep(&b.cfg, b.hosts.iter(), Instant::now()));
    let returned = OutlierStatus { ejected: false, num_ejections: 1, multiplier: 1, time_left: None };
    assert_eq!(b.status(0, 30), returned);
    assert_eq!(b.det.stats().ejections_active, 0);
    // Counters restart on return: four errors are not enough.
    assert_eq!(b.feed(0, &[E500; 4]), vec![None; 4]);
    // An ejection between ticks is rounded up to the next one.
    assert!(b.fail(1, 35));
    assert!(!b.sweep(60));
    assert!(b.sweep(70));
}

#[test]
fn multiplier_grows_and_decays() {
    let b = Bench::new(1);
    assert!(b.fail(0, 0));
    assert!(b.sweep(30));
    // Fails again right away: the second ejection lasts 60 s.
    assert!(b.fail(0, 30));
    assert_eq!(b.status(0, 30).multiplier, 2);
    assert!([40, 50, 60, 70, 80].iter().all(|s| !b.sweep(*s)));
    assert!(b.sweep(90));
    assert_eq!(b.status(0, 90).multiplier, 2);
    // Each sweep from one interval after the return takes a step off.
    b.sweep(100);
    assert_eq!(b.status(0, 100).multiplier, 1);
    b.sweep(110);
    b.sweep(120);
    assert_eq!(b.status(0, 120).multiplier, 0);
    assert!(b.fail(0, 125));
    assert_eq!((b.status(0, 125).time_left, b.status(0, 125).num_ejections), (Some(secs(30)), 3));
}

#[test]
fn ejection_time_capped_at_max() {
    let b = Bench::new(1);
    let mut now = 0;
    for k in 1..=14 {
        assert!(b.fail(0, now));
        let expected = (30 * k).min(300);
        assert_eq!(b.status(0, now).time_left, Some(secs(expected)));
        assert!(!b.sweep(now + expected - 10));
        now += expected;
        assert!(b.sweep(now));
    }
    // `b` stops at 11: 11 × 30 s is not below 300 s + 30 s.
    assert_eq!(b.status(0, now).multiplier, 11);
}

/// How many of `n` failing hosts get ejected at `percent`, and overflows.
fn ejectable(n: usize, percent: u32) -> (usize, u64) {
    let mut b = Bench::new(n);
    b.cfg.max_ejection_percent = percent;
    let ejected = (0..n).filter(|&i| b.fail(i, 0)).count();
    assert_eq!(b.hosts.iter().filter(|h| h.is_ejected()).count(), ejected);
    assert_eq!(b.det.stats().ejections_active, ejected as u64);
    (ejected, b.det.stats().ejections_overflow)
}

#[test]
fn max_ejection_percent_floor() {
    assert_eq!(
        [ejectable(3, 10), ejectable(9, 10), ejectable(10, 10), ejectable(20, 10)],
        [(0, 3), (0, 9), (1, 9), (2, 18)]
    );
    assert_eq!([33, 34, 66, 67, 100].map(|p| ejectable(3, p).0), [0, 1, 1, 2, 3]);
}

#[test]
fn overflow_counts_detection_and_restarts_counter() {
    let mut b = Bench::new(3);
    b.cfg.max_ejection_percent = 10;
    assert!(!b.fail(0, 0));
    let stats = b.det.stats();
    assert_eq!((stats.ejections_overflow, stats.ejections_detected_consecutive_5xx), (1, 1));
    assert_eq!((stats.ejections_enforced_total, stats.ejections_total), (0, 0));
    // The counter restarted: the next trigger takes five more errors.
    assert_eq!(b.feed(0, &[E500; 4]), vec![None; 4]);
    assert_eq!(b.feed(0, &[E500]), vec![Some(Trigger::Consecutive5xx)]);
}

#[test]
fn removed_hosts_are_ignored_and_forgotten() {
    let b = Bench::new(3);
    assert!(b.fail(2, 0));
    // Host 2 leaves the cluster.
    b.det.forget(&b.hosts[2]);
    b.det.forget(&b.hosts[2]);
    assert_eq!(b.det.stats().ejections_active, 0);
    assert_eq!(b.feed(2, &[E500; 5])[4], Some(Trigger::Consecutive5xx));
    assert!(!b.det.report(&b.cfg, b.hosts[..2].iter(), &b.hosts[2], Trigger::Consecutive5xx, b.t0));
    assert!(b.fail(0, 0));
    b.det.clear(b.hosts.iter());
    assert!(b.hosts.iter().all(|h| !h.is_ejected()));
    assert_eq!((b.det.stats().ejections_active, b.status(0, 0).num_ejections), (0, 0));
}

#[test]
fn panic_threshold() {
    assert!(!panic(0, 10, 0));
    assert!(panic(4, 10, 50) && !panic(5, 10, 50));
    assert!(panic(1, 3, 34) && !panic(1, 3, 33));
    assert!(panic(0, 0, 1));
}
