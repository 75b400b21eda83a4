//! Load-balancing algorithms over an [`EndpointSet`].
//!
//! - `LEAST_REQUEST` (Istio's default) is power-of-two-choices: draw two
//!   distinct endpoints at random and take the one with fewer requests in
//!   flight (Mitzenmacher, "The Power of Two Choices in Randomized Load
//!   Balancing", 2001; Envoy's `LEAST_REQUEST` with `choice_count: 2`).
//!   With unequal weights the draws are weighted and the comparison is of
//!   `active / weight`.
//! - `ROUND_ROBIN` walks the weighted sequence: endpoint *i* takes
//!   `weight_i` consecutive turns of every `Σ weight` (exact proportions
//!   over each cycle; one atomic increment per pick).
//! - `RANDOM` draws by weight.
//!
//! - Slow start (Envoy's `slow_start_config`): while an endpoint that
//!   joined a live cluster is inside its warm-up window, every pick is
//!   weighted by the effective weights `weight × factor(age)` (see
//!   [`Warmup::factor`]): power-of-two-choices draws by effective weight
//!   and compares `active / effective weight`; round robin and random draw
//!   by effective weight. Outside windows the normal paths run unchanged.
//! - Retries avoid the hosts already tried, as Envoy's `previous_hosts`
//!   predicate with `host_selection_retry_max_attempts: 5`: up to five
//!   picks, the first that is not in `avoid` wins; when all five land on
//!   tried hosts (least-request keeps choosing a host that fails fast: it
//!   has nothing in flight), the least loaded untried host, if any.
//!
//! All picks are lock-free: an atomic counter for round robin, a
//! thread-local generator (`fastrand`) for the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::endpoint::{Endpoint, EndpointSet};
use crate::routing::{LbPolicy, Warmup};

/// Host selections per pick when avoiding previously tried hosts.
const HOST_SELECTION_ATTEMPTS: usize = 5;

/// Per-cluster balancing state that must survive swaps.
#[derive(Default)]
pub struct Balancer {
    /// Round-robin position.
    next: AtomicUsize,
}

// === impl Balancer ===

impl Balancer {
    /// Picks an endpoint from `set`, or `None` when it is empty. Endpoints
    /// in `avoid` (hosts a retry already tried) are passed over when
    /// another can be found.
    pub fn pick<'a>(
        &self,
        policy: LbPolicy,
        set: &'a EndpointSet,
        avoid: &[Arc<Endpoint>],
    ) -> Option<&'a Arc<Endpoint>> {
        let avoided = |e: &Arc<Endpoint>| avoid.iter().any(|a| Arc::ptr_eq(a, e));
        let mut picked = self.pick_once(policy, set)?;
        for _ in 1..HOST_SELECTION_ATTEMPTS {
            if !avoided(picked) {
                return Some(picked);
            }
            picked = self.pick_once(policy, set)?;
        }
        if !avoided(picked) {
            return Some(picked);
        }
        // Every draw landed on a tried host: take the least loaded host not
        // tried yet, if there is one.
        let untried = set.endpoints.iter().filter(|e| !avoided(e)).min_by_key(|e| e.active_requests());
        Some(untried.unwrap_or(picked))
    }

    fn pick_once<'a>(&self, policy: LbPolicy, set: &'a EndpointSet) -> Option<&'a Arc<Endpoint>> {
        let endpoints = &set.endpoints;
        match endpoints.len() {
            0 => None,
            1 => endpoints.first(),
            n => {
                if let Some(warmup) = set.warming() {
                    return warming(policy, set, warmup, n);
                }
                match policy {
                    LbPolicy::RoundRobin => self.round_robin(set, n),
                    LbPolicy::Random => random(set, n),
                    LbPolicy::LeastRequest | LbPolicy::Passthrough => least_request(set, n),
                }
            }
        }
    }

    fn round_robin<'a>(&self, set: &'a EndpointSet, n: usize) -> Option<&'a Arc<Endpoint>> {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        if !set.weighted {
            return set.endpoints.get(turn % n);
        }
        let total = set.total_weight().max(1);
        set.endpoints.get(by_weight(set, turn as u64 % total))
    }
}

fn random(set: &EndpointSet, n: usize) -> Option<&Arc<Endpoint>> {
    if !set.weighted {
        return set.endpoints.get(fastrand::usize(..n));
    }
    set.endpoints.get(by_weight(set, fastrand::u64(..set.total_weight().max(1))))
}

fn least_request(set: &EndpointSet, n: usize) -> Option<&Arc<Endpoint>> {
    let (a, b) = if set.weighted {
        let total = set.total_weight().max(1);
        let a = by_weight(set, fastrand::u64(..total));
        let mut b = by_weight(set, fastrand::u64(..total));
        if a == b {
            b = (a + 1 + fastrand::usize(..n - 1)) % n;
        }
        (a, b)
    } else {
        let a = fastrand::usize(..n);
        let b = (a + 1 + fastrand::usize(..n - 1)) % n;
        (a, b)
    };
    let (ea, eb) = (set.endpoints.get(a)?, set.endpoints.get(b)?);
    // Compare active/weight without division: a/wa <= b/wb ⇔ a·wb <= b·wa.
    let load_a = u64::from(ea.active_requests()) * u64::from(eb.weight());
    let load_b = u64::from(eb.active_requests()) * u64::from(ea.weight());
    Some(if load_a <= load_b { ea } else { eb })
}

/// A pick while some endpoint warms up: draws by effective weight (O(n),
/// only inside warm-up windows).
fn warming<'a>(policy: LbPolicy, set: &'a EndpointSet, warmup: &Warmup, n: usize) -> Option<&'a Arc<Endpoint>> {
    let now = Instant::now();
    let weight = |e: &Endpoint| {
        let factor = e.added.map_or(1.0, |added| warmup.factor(now.saturating_duration_since(added)));
        f64::from(e.weight()) * factor
    };
    let total: f64 = set.endpoints.iter().map(|e| weight(e)).sum();
    let draw = || {
        let mut point = fastrand::f64() * total;
        for (i, e) in set.endpoints.iter().enumerate() {
            point -= weight(e);
            if point < 0.0 {
                return i;
            }
        }
        n - 1
    };
    let a = set.endpoints.get(draw())?;
    if !matches!(policy, LbPolicy::LeastRequest | LbPolicy::Passthrough) {
        return Some(a);
    }
    let b = set.endpoints.get(draw())?;
    let load = |e: &Endpoint| f64::from(e.active_requests() + 1) / weight(e).max(f64::MIN_POSITIVE);
    Some(if load(a) <= load(b) { a } else { b })
}

/// Index of the endpoint whose weight interval contains `point`.
fn by_weight(set: &EndpointSet, point: u64) -> usize {
    set.cumulative.partition_point(|&end| end <= point).min(set.endpoints.len().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, SourceLabels};
    use crate::routing::ServiceMeta;

    fn set(weights: &[u32]) -> EndpointSet {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let service =
            ServiceMeta { host: "h".into(), name: "h".into(), namespace: "ns".into(), reporter: Default::default() };
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Endpoint::new(addr, *w, Default::default(), &service, &metrics))
            })
            .collect();
        EndpointSet::new(endpoints, None)
    }

    fn counts(policy: LbPolicy, set: &EndpointSet, picks: usize) -> Vec<usize> {
        let balancer = Balancer::default();
        let mut counts = vec![0; set.endpoints.len()];
        for _ in 0..picks {
            let e = balancer.pick(policy, set, &[]).unwrap();
            let i = set.endpoints.iter().position(|x| Arc::ptr_eq(x, e)).unwrap();
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_is_exact_by_weight() {
        assert_eq!(counts(LbPolicy::RoundRobin, &set(&[1, 1, 1]), 300), vec![100, 100, 100]);
        assert_eq!(counts(LbPolicy::RoundRobin, &set(&[3, 1]), 400), vec![300, 100]);
    }

    #[test]
    fn random_follows_weights() {
        let c = counts(LbPolicy::Random, &set(&[9, 1]), 10_000);
        assert!((8_600..9_400).contains(&c[0]), "{c:?}");
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let s = set(&[1, 1]);
        let _busy: Vec<_> = (0..5).map(|_| s.endpoints[0].clone().start()).collect();
        assert_eq!(counts(LbPolicy::LeastRequest, &s, 100), vec![0, 100]);
    }

    #[test]
    fn least_request_spreads_when_idle() {
        let c = counts(LbPolicy::LeastRequest, &set(&[1, 1, 1, 1]), 4_000);
        assert!(c.iter().all(|n| (800..1_200).contains(n)), "{c:?}");
    }

    #[test]
    fn retries_avoid_tried_hosts() {
        let s = set(&[1, 1]);
        let balancer = Balancer::default();
        // Five draws between two hosts can all land on the avoided one; the
        // untried host is taken then.
        let avoided = (0..1000)
            .filter(|_| Arc::ptr_eq(balancer.pick(LbPolicy::Random, &s, &s.endpoints[..1]).unwrap(), &s.endpoints[0]))
            .count();
        assert_eq!(avoided, 0, "the tried host came back");
        // Least request keeps drawing an idle host that fails fast; a retry
        // still goes elsewhere.
        let _busy: Vec<_> = (0..5).map(|_| s.endpoints[1].clone().start()).collect();
        for _ in 0..100 {
            let picked = balancer.pick(LbPolicy::LeastRequest, &s, &s.endpoints[..1]).unwrap();
            assert!(Arc::ptr_eq(picked, &s.endpoints[1]));
        }
        // The only host is picked even when tried.
        let one = set(&[1]);
        assert!(balancer.pick(LbPolicy::RoundRobin, &one, &one.endpoints).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_ramps_a_new_endpoint_up() {
        let metrics = Metrics::new(SourceLabels::unknown()).unwrap();
        let service =
            ServiceMeta { host: "h".into(), name: "h".into(), namespace: "ns".into(), reporter: Default::default() };
        let old = Arc::new(Endpoint::new("127.0.0.1:1".parse().unwrap(), 1, Default::default(), &service, &metrics));
        let new = Arc::new(
            Endpoint::new("127.0.0.1:2".parse().unwrap(), 1, Default::default(), &service, &metrics)
                .added_at(Instant::now()),
        );
        let warmup =
            Warmup { duration: std::time::Duration::from_secs(100), min_weight_percent: 10.0, aggression: 1.0 };
        let s = EndpointSet::new(vec![old, new], Some(warmup));
        // At age 0 the new endpoint has 10 % of a full weight: ~1/11 of picks.
        let c = counts(LbPolicy::RoundRobin, &s, 11_000);
        assert!((700..1_300).contains(&c[1]), "{c:?}");
        // Half way: factor 0.5, a third of picks.
        tokio::time::advance(std::time::Duration::from_secs(50)).await;
        let c = counts(LbPolicy::Random, &s, 9_000);
        assert!((2_600..3_400).contains(&c[1]), "{c:?}");
        // After the window: plain round robin, exact halves.
        tokio::time::advance(std::time::Duration::from_secs(51)).await;
        assert_eq!(counts(LbPolicy::RoundRobin, &s, 1_000), vec![500, 500]);
    }

    #[test]
    fn empty_and_single() {
        assert!(Balancer::default().pick(LbPolicy::LeastRequest, &set(&[]), &[]).is_none());
        assert_eq!(counts(LbPolicy::LeastRequest, &set(&[5]), 10), vec![10]);
    }
}
