//! Per-request work of the upstream side: the balancer pick of a live
//! cluster (round robin, least request, random), consistent-hash picks
//! (ring and Maglev), the request hash key, and outlier accounting of a
//! successful response.
//!
//! Run: `cargo bench --bench upstream` (about half a minute).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Request;
use meshd::metrics::{Metrics, SourceLabels};
use meshd::proxy::hash_key::request_hash;
use meshd::routing::{
    ClusterPolicy, ClusterSpec, EndpointSpec, HashKey, HashTableKind, LbPolicy, OutlierConfig, ServiceMeta,
};
use meshd::upstream::hash::{hash_bytes, HashTable};
use meshd::upstream::outlier::{Outcome, OutlierState};
use meshd::upstream::Cluster;

fn hosts(n: u16) -> Vec<(SocketAddr, u32)> {
    (0..n).map(|i| (SocketAddr::from(([10, 0, (i / 250) as u8, (i % 250) as u8], 8080)), 1)).collect()
}

/// A cluster of `n` endpoints balanced by `lb`, as the request path sees it.
fn cluster(lb: LbPolicy, n: u16, metrics: &std::sync::Arc<Metrics>) -> std::sync::Arc<Cluster> {
    let endpoints =
        hosts(n).into_iter().map(|(addr, weight)| EndpointSpec { addr, weight, labels: Default::default() });
    let spec = ClusterSpec {
        name: "outbound|80||bench".into(),
        service: std::sync::Arc::new(ServiceMeta {
            host: "bench".into(),
            name: "bench".into(),
            namespace: "ns".into(),
            reporter: Default::default(),
        }),
        port: 80,
        subset: None,
        endpoints: endpoints.collect(),
        dns: Vec::new(),
        policy: std::sync::Arc::new(ClusterPolicy { lb, ..ClusterPolicy::default() }),
    };
    Cluster::new(&std::sync::Arc::new(spec), metrics)
}

fn balancing(c: &mut Criterion) {
    let Ok(metrics) = Metrics::new(SourceLabels::unknown()) else { return };
    for (name, lb) in
        [("round_robin", LbPolicy::RoundRobin), ("least_request", LbPolicy::LeastRequest), ("random", LbPolicy::Random)]
    {
        let cluster = cluster(lb, 20, &metrics);
        c.bench_function(&format!("cluster_pick_{name}_20_hosts"), |b| b.iter(|| cluster.pick(None, black_box(&[]))));
    }
}

fn hashing(c: &mut Criterion) {
    let ring = HashTable::build(HashTableKind::Ring { min_ring_size: 1024 }, &hosts(20));
    let maglev = HashTable::build(HashTableKind::Maglev { table_size: 65537 }, &hosts(20));
    let (Some(ring), Some(maglev)) = (ring, maglev) else { return };
    let key = hash_bytes(b"user-1234");
    c.bench_function("ring_hash_pick_20_hosts", |b| b.iter(|| ring.pick(black_box(key))));
    c.bench_function("maglev_pick_20_hosts", |b| b.iter(|| maglev.pick(black_box(key))));
    let req = Request::builder().header("x-user", "user-1234").body(()).unwrap_or_default();
    let header = HashKey::Header(http::HeaderName::from_static("x-user"));
    let peer = [10, 1, 2, 3].into();
    c.bench_function("request_hash_header", |b| b.iter(|| request_hash(black_box(&header), &req, peer)));
    c.bench_function("build_maglev_65537_20_hosts", |b| {
        b.iter(|| HashTable::build(HashTableKind::Maglev { table_size: 65537 }, black_box(&hosts(20))))
    });
}

fn outlier(c: &mut Criterion) {
    let state = OutlierState::new();
    let config = OutlierConfig {
        consecutive_5xx: Some(5),
        consecutive_gateway_failure: Some(5),
        consecutive_local_origin_failure: None,
        split_external_local_origin_errors: false,
        interval: Duration::from_secs(10),
        base_ejection_time: Duration::from_secs(30),
        max_ejection_time: Duration::from_secs(300),
        max_ejection_percent: 10,
        min_health_percent: 0,
        error_codes: Vec::new(),
    };
    c.bench_function("outlier_record_200", |b| b.iter(|| state.record(black_box(&config), Outcome::Response(200))));
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = balancing, hashing, outlier
}
criterion_main!(benches);
