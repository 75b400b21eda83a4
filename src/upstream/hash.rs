//! Consistent-hash lookup tables for `consistentHash` clusters (spec §2.3),
//! built from a cluster's healthy endpoints when that set changes and looked
//! up per request with no allocation and no lock. Hosts are hashed by their
//! address text (`10.0.0.1:8080`, `[fd00::1]:8080`), as Envoy does without
//! `use_hostname_for_hashing`, so meshd and Envoy map a request hash to the
//! same address (the tests replay Envoy's own vectors).
//!
//! # Ring hash
//!
//! Envoy's `RingHashLoadBalancer` (`source/extensions/load_balancing_policies/
//! ring_hash/ring_hash_lb.cc`, formerly `source/common/upstream/ring_hash_lb.cc`),
//! a port of libketama (Karger et al., STOC 1997). With weights normalised
//! to sum to 1, `scale = min(ceil(min_w × min_ring_size) / min_w, 8M)` gives
//! the lightest host a whole number of entries; walking the hosts in order
//! with running sums (`target += scale × w`, add entries while `current <
//! target`), each host gets about `w × scale` entries at xxHash64 of
//! `"<address>_<i>"`. A request hash picks the first entry at or after it,
//! wrapping. Removing a host removes its entries; but when that rescales
//! the ring (the others are owed more entries), the added `"<address>_<i>"`
//! also take some keys of remaining hosts. Envoy does the same
//! (envoyproxy/envoy#22558); meshd keeps its layout.
//!
//! # Maglev
//!
//! Envoy's `MaglevLoadBalancer` (`source/extensions/load_balancing_policies/
//! maglev/maglev_lb.cc`, formerly `source/common/upstream/maglev_lb.cc`),
//! after Eisenbud et al., "Maglev", NSDI 2016. `M` slots (prime, default
//! 65537); each host prefers slots `(offset + skip × j) mod M`, `offset =
//! xxh64(address, 0) mod M`, `skip = xxh64(address, 1) mod (M − 1) + 1` (a
//! full cycle, `M` being prime). Hosts, sorted by address so the table does
//! not depend on their order, take turns claiming their next free preferred
//! slot until the table is full; a host takes its turn in round `r` only if
//! `r × w` reaches its target, which grows by the largest weight per claim,
//! so slots follow weights. A request hash picks `table[hash mod M]`.
//! Removing a host frees its slots and moves a few percent of the others.

use std::fmt;
use std::io::Write as _;
use std::net::SocketAddr;

use xxhash_rust::xxh64::xxh64;

use crate::routing::HashTableKind;

/// Envoy's default `maximum_ring_size` (Istio cannot set it).
pub const MAX_RING_SIZE: u64 = 8 * 1024 * 1024;

/// Istio's upper bound on the Maglev table size (a prime).
pub const MAX_MAGLEV_SIZE: u64 = 5_000_011;

/// A consistent-hash lookup table over a list of hosts.
pub enum HashTable {
    Ring(Ring),
    Maglev(Maglev),
}

/// A ketama ring: `positions` ascending, `hosts[i]` owning `positions[i]`.
pub struct Ring {
    positions: Box<[u64]>,
    hosts: Box<[u32]>,
}

/// A full Maglev table of host indices.
pub struct Maglev {
    table: Box<[u32]>,
}

/// One host while the Maglev table fills.
struct Claimant {
    key: String,
    host: u32,
    /// The host's next preferred slot.
    slot: u64,
    skip: u64,
    weight: f64,
    target: f64,
}

// === impl HashTable ===

impl HashTable {
    /// Builds the table for `hosts` (address, weight ≥ 1; a zero weight
    /// counts as 1), in the caller's order. `None` for an empty list.
    pub fn build(kind: HashTableKind, hosts: &[(SocketAddr, u32)]) -> Option<Self> {
        match kind {
            HashTableKind::Ring { min_ring_size } => Ring::build(min_ring_size, hosts).map(HashTable::Ring),
            HashTableKind::Maglev { table_size } => Maglev::build(table_size, hosts).map(HashTable::Maglev),
        }
    }

    /// The index into `hosts` for a request hash.
    #[inline]
    pub fn pick(&self, hash: u64) -> usize {
        self.pick_attempt(hash, 0)
    }

    /// The `attempt`-th alternative for a request hash (0: [`pick`]), as
    /// Envoy's hash balancers when a retry host predicate asks for another
    /// host: the ring walks `attempt` entries forward, Maglev rehashes. The
    /// result may still be the same host.
    ///
    /// [`pick`]: Self::pick
    pub fn pick_attempt(&self, hash: u64, attempt: u32) -> usize {
        match self {
            HashTable::Ring(ring) => ring.pick(hash, attempt),
            HashTable::Maglev(maglev) => maglev.pick(hash, attempt),
        }
    }

    /// Ring entries or Maglev slots.
    pub fn size(&self) -> usize {
        match self {
            HashTable::Ring(ring) => ring.positions.len(),
            HashTable::Maglev(maglev) => maglev.table.len(),
        }
    }
}

impl fmt::Debug for HashTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            HashTable::Ring(_) => "Ring",
            HashTable::Maglev(_) => "Maglev",
        };
        f.debug_struct("HashTable").field("kind", &kind).field("size", &self.size()).finish()
    }
}

// === impl Ring ===

impl Ring {
    fn build(min_ring_size: u64, hosts: &[(SocketAddr, u32)]) -> Option<Self> {
        let weights = normalize(hosts)?;
        let min_weight = weights.iter().copied().fold(1.0, f64::min);
        let min_size = min_ring_size.clamp(1, MAX_RING_SIZE) as f64;
        let scale = ((min_weight * min_size).ceil() / min_weight).min(MAX_RING_SIZE as f64);

        let mut entries: Vec<(u64, u32)> = Vec::with_capacity(scale.ceil() as usize + hosts.len());
        let mut key = Vec::with_capacity(64);
        let (mut current, mut target) = (0.0_f64, 0.0_f64);
        for (host, ((addr, _), weight)) in (0u32..).zip(hosts.iter().zip(&weights)) {
            key.clear();
            let _ = write!(key, "{addr}_");
            let prefix = key.len();
            target += scale * weight;
            let mut i = 0u64;
            while current < target {
                key.truncate(prefix);
                let _ = write!(key, "{i}");
                entries.push((xxh64(&key, 0), host));
                i += 1;
                current += 1.0;
            }
        }
        if entries.is_empty() {
            return None;
        }
        entries.sort_unstable();
        let (positions, hosts) = entries.into_iter().unzip::<_, _, Vec<_>, Vec<_>>();
        Some(Ring { positions: positions.into(), hosts: hosts.into() })
    }

    /// The first entry at or after `hash`, wrapping (ketama_get_server).
    fn pick(&self, hash: u64, attempt: u32) -> usize {
        let len = self.positions.len();
        let mut at = self.positions.partition_point(|p| *p < hash);
        if at == len {
            at = 0;
        }
        if attempt > 0 {
            at = (at as u64 + u64::from(attempt)).checked_rem(len as u64).unwrap_or(0) as usize;
        }
        self.hosts.get(at).map_or(0, |h| *h as usize)
    }
}

// === impl Maglev ===

impl Maglev {
    const EMPTY: u32 = u32::MAX;

    fn build(table_size: u64, hosts: &[(SocketAddr, u32)]) -> Option<Self> {
        let weights = normalize(hosts)?;
        let max_weight = weights.iter().copied().fold(0.0, f64::max);
        let size = maglev_size(table_size);

        let mut claimants: Vec<Claimant> = (0u32..)
            .zip(hosts.iter().zip(weights))
            .map(|(host, ((addr, _), weight))| {
                let key = addr.to_string();
                let slot = xxh64(key.as_bytes(), 0) % size;
                let skip = xxh64(key.as_bytes(), 1) % (size - 1) + 1;
                Claimant { key, host, slot, skip, weight, target: 0.0 }
            })
            .collect();
        // Envoy sorts by address so that the fill order, hence the table,
        // does not depend on the order of the endpoints (envoy#20703).
        claimants.sort_by(|a, b| a.key.cmp(&b.key));

        let mut table = vec![Self::EMPTY; size as usize];
        let mut filled = 0u64;
        let mut round = 1u32;
        while filled < size {
            for c in claimants.iter_mut() {
                if filled == size {
                    break;
                }
                if f64::from(round) * c.weight < c.target {
                    continue;
                }
                c.target += max_weight;
                // A free slot exists and the permutation visits every slot
                // (size is prime), so this ends within `size` steps.
                while table[c.slot as usize] != Self::EMPTY {
                    c.slot = (c.slot + c.skip) % size;
                }
                table[c.slot as usize] = c.host;
                c.slot = (c.slot + c.skip) % size;
                filled += 1;
            }
            round = round.saturating_add(1);
        }
        Some(Maglev { table: table.into() })
    }

    fn pick(&self, mut hash: u64, attempt: u32) -> usize {
        if attempt > 0 {
            // Envoy: `hash ^= ~0ULL - attempt + 1`, flipping most bits.
            hash ^= u64::from(attempt).wrapping_neg();
        }
        let at = hash.checked_rem(self.table.len() as u64).unwrap_or(0);
        self.table.get(at as usize).map_or(0, |h| *h as usize)
    }
}

/// xxHash64 with seed 0, as Envoy hashes header values, cookie values, IPs
/// and query parameters.
#[inline]
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    xxh64(bytes, 0)
}

/// Weights as fractions of their sum (Envoy's `normalizeHostWeights`).
/// `None` for no hosts or more than a table can index.
fn normalize(hosts: &[(SocketAddr, u32)]) -> Option<Vec<f64>> {
    if hosts.is_empty() || hosts.len() >= Maglev::EMPTY as usize {
        return None;
    }
    let sum: u64 = hosts.iter().map(|(_, w)| u64::from((*w).max(1))).sum();
    Some(hosts.iter().map(|(_, w)| f64::from((*w).max(1)) / sum as f64).collect())
}

/// The configured size if prime, else the next prime; within
/// `[2, MAX_MAGLEV_SIZE]` (validation refuses other sizes; this only keeps
/// the fill loop finite).
fn maglev_size(requested: u64) -> u64 {
    let mut n = requested.clamp(2, MAX_MAGLEV_SIZE);
    while !is_prime(n) {
        n += 1;
    }
    n
}

fn is_prime(n: u64) -> bool {
    if n < 4 {
        return n >= 2;
    }
    if n % 2 == 0 {
        return false;
    }
    (3..).step_by(2).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn hosts(n: u16) -> Vec<(SocketAddr, u32)> {
        (0..n).map(|i| (SocketAddr::from(([10, 0, 0, i as u8 + 1], 8080)), 1)).collect()
    }

    fn ring() -> HashTableKind {
        HashTableKind::Ring { min_ring_size: 1024 }
    }

    fn maglev() -> HashTableKind {
        HashTableKind::Maglev { table_size: 65537 }
    }

    fn keys(n: usize) -> Vec<u64> {
        let mut rng = fastrand::Rng::with_seed(7);
        (0..n).map(|_| rng.u64(..)).collect()
    }

    fn weighted(weights: &[u32]) -> Vec<(SocketAddr, u32)> {
        hosts(weights.len() as u16).into_iter().zip(weights).map(|((a, _), w)| (a, *w)).collect()
    }

    fn counts(table: &HashTable, n: usize, keys: &[u64]) -> Vec<usize> {
        let mut counts = vec![0; n];
        for k in keys {
            counts[table.pick(*k)] += 1;
        }
        counts
    }

    #[test]
    fn empty_list_builds_nothing() {
        assert!(HashTable::build(ring(), &[]).is_none());
        assert!(HashTable::build(maglev(), &[]).is_none());
        assert_eq!(hash_bytes(b""), 0xEF46_DB37_51D8_E999); // xxh64, seed 0
    }

    #[test]
    fn picks_every_host_stably() {
        let hosts = hosts(5);
        for kind in [ring(), maglev()] {
            let (a, b) =
                (HashTable::build(kind, &hosts).expect("table"), HashTable::build(kind, &hosts).expect("table"));
            assert!(counts(&a, 5, &keys(1000)).iter().all(|c| *c > 0), "{kind:?}");
            assert!(keys(1000).iter().all(|k| a.pick(*k) == a.pick(*k) && a.pick(*k) == b.pick(*k)));
        }
    }

    #[test]
    fn distribution_follows_weights() {
        let keys = keys(10_000);
        for (hosts, total) in [(hosts(5), 5.0), (weighted(&[1, 2, 3, 4]), 10.0)] {
            for kind in [ring(), maglev()] {
                let table = HashTable::build(kind, &hosts).expect("table");
                let counts = counts(&table, hosts.len(), &keys);
                for ((_, w), c) in hosts.iter().zip(&counts) {
                    let expected = keys.len() as f64 * f64::from(*w) / total;
                    let off = (*c as f64 - expected).abs() / expected;
                    assert!(off <= 0.15, "{kind:?} weight {w}: {c} picks, expected {expected}");
                }
            }
        }
    }

    /// Keys of the remaining hosts that change host when `hosts[gone]` goes.
    fn moved(kind: HashTableKind, hosts: &[(SocketAddr, u32)], gone: usize, keys: &[u64]) -> (usize, usize) {
        let after: Vec<_> = hosts.iter().enumerate().filter(|(i, _)| *i != gone).map(|(_, h)| *h).collect();
        let old = HashTable::build(kind, hosts).expect("table");
        let new = HashTable::build(kind, &after).expect("table");
        let stayed: Vec<_> = keys.iter().filter(|k| old.pick(**k) != gone).collect();
        let moved = stayed.iter().filter(|k| after[new.pick(***k)].0 != hosts[old.pick(***k)].0).count();
        (moved, stayed.len())
    }

    #[test]
    fn ring_removal_moves_only_removed_host_keys() {
        // When the remaining hosts keep their entry counts, only the
        // removed host's keys move.
        assert_eq!(moved(ring(), &weighted(&[1, 400, 400, 400, 400]), 2, &keys(10_000)).0, 0);
        assert_eq!(moved(HashTableKind::Ring { min_ring_size: 4 }, &hosts(5), 2, &keys(10_000)).0, 0);
    }

    #[test]
    fn ring_removal_keeps_remaining_entries() {
        // Rescaling (5 × 205 → 4 × 256 entries) adds entries to the
        // remaining hosts, as in Envoy: every old entry of a remaining host
        // stays, so their keys move only onto the new entries.
        let entries = |table: &HashTable, hosts: &[(SocketAddr, u32)]| -> HashSet<(u64, SocketAddr)> {
            let HashTable::Ring(ring) = table else { panic!("not a ring") };
            ring.positions.iter().zip(ring.hosts.iter()).map(|(p, h)| (*p, hosts[*h as usize].0)).collect()
        };
        let before = hosts(5);
        let after: Vec<_> = before.iter().copied().filter(|h| *h != before[2]).collect();
        let old = entries(&HashTable::build(ring(), &before).expect("ring"), &before);
        let new = entries(&HashTable::build(ring(), &after).expect("ring"), &after);
        assert_eq!((old.len(), new.len()), (1025, 1024));
        assert!(old.iter().filter(|(_, a)| *a != before[2].0).all(|e| new.contains(e)));
        let (moved, stayed) = moved(ring(), &before, 2, &keys(10_000));
        assert!(moved * 5 < stayed, "{moved} of {stayed}");
    }

    #[test]
    fn maglev_removal_moves_few_other_keys() {
        let (moved, stayed) = moved(maglev(), &hosts(5), 2, &keys(10_000));
        assert!(moved * 10 < stayed, "{moved} of {stayed} keys of remaining hosts moved");
    }

    #[test]
    fn ring_matches_envoy() {
        // Envoy's RingHashLoadBalancerTest.Basic.
        let hosts: Vec<_> = (90..96).map(|p| (SocketAddr::from(([127, 0, 0, 1], p)), 1)).collect();
        let table = HashTable::build(HashTableKind::Ring { min_ring_size: 12 }, &hosts).expect("ring");
        let picks =
            [0, u64::MAX, 3551244743356806947, 3551244743356806948, 16117243373044804880].map(|h| table.pick(h));
        assert_eq!((table.size(), picks), (12, [4, 4, 5, 3, 0]));
    }

    #[test]
    fn maglev_matches_envoy() {
        // Envoy's MaglevLoadBalancerTest.Basic; the table ignores host order.
        let mut hosts: Vec<_> = (90..96).map(|p| (SocketAddr::from(([127, 0, 0, 1], p)), 1)).collect();
        for reversed in [false, true] {
            let table = HashTable::build(HashTableKind::Maglev { table_size: 7 }, &hosts).expect("maglev");
            let picks = [0, 1, 2, 3, 4, 5, 6].map(|h| if reversed { 5 - table.pick(h) } else { table.pick(h) });
            assert_eq!(picks, [2, 4, 0, 1, 5, 0, 3]);
            hosts.reverse();
        }
    }

    #[test]
    fn ring_sizing_follows_envoy() {
        // min weight 1/3: ceil(1024 / 3) × 3 = 1026 entries, 342 and 684.
        let HashTable::Ring(ring) = HashTable::build(ring(), &weighted(&[1, 2])).expect("ring") else { panic!() };
        let first = ring.hosts.iter().filter(|h| **h == 0).count();
        assert_eq!((first, ring.hosts.len() - first), (342, 684));
    }

    #[test]
    fn maglev_size_is_prime() {
        assert!(is_prime(65537) && is_prime(MAX_MAGLEV_SIZE) && is_prime(7) && !is_prime(65535));
        assert_eq!(maglev_size(8), 11);
        assert_eq!(maglev_size(0), 2);
        assert_eq!(maglev_size(u64::MAX), MAX_MAGLEV_SIZE);
        // Fewer slots than hosts still fills.
        let table = HashTable::build(HashTableKind::Maglev { table_size: 3 }, &hosts(5)).expect("maglev");
        assert_eq!(table.size(), 3);
    }

    #[test]
    fn attempts_pick_alternatives() {
        let hosts = hosts(5);
        for kind in [ring(), maglev()] {
            let table = HashTable::build(kind, &hosts).expect("table");
            let keys = keys(1000);
            assert!(keys.iter().all(|k| table.pick_attempt(*k, 0) == table.pick(*k)));
            let changed = keys.iter().filter(|k| table.pick_attempt(**k, 1) != table.pick(**k)).count();
            assert!(changed > 500, "{kind:?}: {changed}");
        }
    }
}
