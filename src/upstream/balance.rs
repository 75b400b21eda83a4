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
//! All picks are lock-free: an atomic counter for round robin, a
//! thread-local generator (`fastrand`) for the rest.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::endpoint::{Endpoint, EndpointSet};
use crate::routing::LbPolicy;

/// Per-cluster balancing state that must survive swaps.
#[derive(Default)]
pub struct Balancer {
    /// Round-robin position.
    next: AtomicUsize,
}

// === impl Balancer ===

impl Balancer {
    /// Picks an endpoint from `set`, or `None` when it is empty.
    pub fn pick<'a>(&self, policy: LbPolicy, set: &'a EndpointSet) -> Option<&'a Arc<Endpoint>> {
        let endpoints = &set.endpoints;
        match endpoints.len() {
            0 => None,
            1 => endpoints.first(),
            n => match policy {
                LbPolicy::RoundRobin => self.round_robin(set, n),
                LbPolicy::Random => random(set, n),
                LbPolicy::LeastRequest | LbPolicy::Passthrough => least_request(set, n),
            },
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
    let load_a = u64::from(ea.active_requests()) * u64::from(eb.weight);
    let load_b = u64::from(eb.active_requests()) * u64::from(ea.weight);
    Some(if load_a <= load_b { ea } else { eb })
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
        let service = ServiceMeta { host: "h".into(), name: "h".into(), namespace: "ns".into() };
        let endpoints = weights
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let addr = format!("127.0.0.1:{}", 1000 + i).parse().unwrap();
                Arc::new(Endpoint::new(addr, *w, Default::default(), &service, &metrics))
            })
            .collect();
        EndpointSet::new(endpoints)
    }

    fn counts(policy: LbPolicy, set: &EndpointSet, picks: usize) -> Vec<usize> {
        let balancer = Balancer::default();
        let mut counts = vec![0; set.endpoints.len()];
        for _ in 0..picks {
            let e = balancer.pick(policy, set).unwrap();
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
    fn empty_and_single() {
        assert!(Balancer::default().pick(LbPolicy::LeastRequest, &set(&[])).is_none());
        assert_eq!(counts(LbPolicy::LeastRequest, &set(&[5]), 10), vec![10]);
    }
}
