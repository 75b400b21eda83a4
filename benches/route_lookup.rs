//! `RouteTable::find` and `compile` on generated configurations.
//!
//! N ServiceEntries `svc-i.default.svc.cluster.local`, each with a
//! DestinationRule (subsets v1/v2) and a VirtualService (a header-matched
//! route to v2, then a weighted v1/v2 default), plus one VirtualService for
//! the non-registry wildcard host `*.example.com`.
//!
//! Run: `cargo bench --bench route_lookup` (about a minute).

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use meshd::config::{load, Config};
use meshd::routing::{compile, Lookup, RequestView, RouteTable};

fn yaml(n: usize) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        out.push_str(&format!(
            "---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}]
  location: MESH_INTERNAL
  resolution: STATIC
  ports: [{{number: 80, name: http, protocol: HTTP}}]
  endpoints:
  - {{address: 10.{a}.{b}.1, labels: {{version: v1}}}}
  - {{address: 10.{a}.{b}.2, labels: {{version: v2}}}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: svc-{i}}}
spec:
  host: svc-{i}
  subsets: [{{name: v1, labels: {{version: v1}}}}, {{name: v2, labels: {{version: v2}}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: svc-{i}}}
spec:
  hosts: [svc-{i}]
  http:
  - name: jason
    match: [{{headers: {{end-user: {{exact: jason}}}}}}]
    route: [{{destination: {{host: svc-{i}, subset: v2}}}}]
  - name: split
    route:
    - {{destination: {{host: svc-{i}, subset: v1}}, weight: 90}}
    - {{destination: {{host: svc-{i}, subset: v2}}, weight: 10}}
"
        ));
    }
    out.push_str(
        "---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: wildcard}
spec:
  hosts: ['*.example.com']
  http:
  - name: wildcard
    route: [{destination: {host: svc-0}}]
",
    );
    out
}

fn config(n: usize) -> Config {
    let mut config = Config { namespace: "default".into(), ..Config::default() };
    let mut problems = Vec::new();
    load::load_text(&yaml(n), &Arc::from(Path::new("bench.yaml")), &mut config, &mut problems);
    assert!(!problems.iter().any(|p| p.is_error()), "{problems:?}");
    config
}

fn headers(jason: bool) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("user-agent", HeaderValue::from_static("wrk/4.2"));
    h.insert("accept", HeaderValue::from_static("*/*"));
    h.insert("x-request-id", HeaderValue::from_static("b9c2a1c4-6c0e-4c57-9f36-6f7f1e0d3c11"));
    if jason {
        h.insert("end-user", HeaderValue::from_static("jason"));
    }
    h
}

fn view<'a>(authority: &'a str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView { method: &Method::GET, scheme: "http", authority, port: 80, path: "/reviews/0", query: None, headers }
}

/// Checks the lookup hits the expected route once, then benches it.
fn bench_find(
    c: &mut Criterion,
    group: &str,
    name: &str,
    table: &RouteTable,
    req: RequestView<'_>,
    expect: Option<&str>,
) {
    let got = match table.find(&req) {
        Lookup::Route(_, route) => Some(&*route.name),
        _ => None,
    };
    assert_eq!(got, expect, "{group}/{name}");
    let mut g = c.benchmark_group(group);
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.bench_function(name, |b| b.iter(|| matches!(table.find(black_box(&req)), Lookup::Route(..))));
    g.finish();
}

fn find(c: &mut Criterion) {
    let plain = headers(false);
    let jason = headers(true);
    for n in [1, 1000] {
        let compiled = compile(&config(n));
        let table = &compiled.table;
        let group = format!("find/{n}");
        let i = n / 2;
        let fqdn = format!("svc-{i}.default.svc.cluster.local");
        let fqdn_port = format!("{fqdn}:80");
        let alias = format!("svc-{i}");
        let upper = fqdn.to_ascii_uppercase();
        bench_find(c, &group, "exact_host", table, view(&fqdn, &plain), Some("split"));
        bench_find(c, &group, "exact_host_port", table, view(&fqdn_port, &plain), Some("split"));
        bench_find(c, &group, "upper_case_host", table, view(&upper, &plain), Some("split"));
        bench_find(c, &group, "alias", table, view(&alias, &plain), Some("split"));
        bench_find(c, &group, "header_match", table, view(&alias, &jason), Some("jason"));
        bench_find(c, &group, "wildcard", table, view("api.eu.example.com", &plain), Some("wildcard"));
        bench_find(c, &group, "miss", table, view("unknown.other.org", &plain), None);
    }
}

fn compile_bench(c: &mut Criterion) {
    let config = config(1000);
    let mut g = c.benchmark_group("compile");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.bench_function("1000", |b| b.iter(|| compile(black_box(&config))));
    g.finish();
}

criterion_group!(benches, find, compile_bench);
criterion_main!(benches);
