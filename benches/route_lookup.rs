//! `RouteTable::find` and `compile` on generated configurations.
//!
//! N ServiceEntries `svc-i.default.svc.cluster.local`, each with a
//! DestinationRule (subsets v1/v2) and a VirtualService (a header-matched
//! route to v2, then a weighted v1/v2 default), plus one VirtualService for
//! the non-registry wildcard host `*.example.com`. The `find_regex/N`
//! groups add, before the default, a route matching a uri regex and a
//! header regex, to show what regex matching costs per request.
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

/// The rule before the default in the `find_regex` tables.
const REGEX_RULE: &str = "  - name: orders
    match: [{uri: {regex: '/api/v[0-9]+/orders/[0-9]+'}, headers: {x-tenant: {regex: 'tenant-[a-z]+'}}}]
    route: [{destination: {host: svc, subset: v2}}]
";

fn yaml(n: usize, regex: bool) -> String {
    let mut out = String::new();
    for i in 0..n {
        let (a, b) = (i / 250, i % 250);
        let regex_rule =
            if regex { REGEX_RULE.replace("host: svc,", &format!("host: svc-{i},")) } else { String::new() };
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
{regex_rule}  - name: split
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

fn config(n: usize, regex: bool) -> Config {
    let mut config = Config { namespace: "default".into(), ..Config::default() };
    let mut problems = Vec::new();
    load::load_text(&yaml(n, regex), &Arc::from(Path::new("bench.yaml")), &mut config, &mut problems);
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
        let compiled = compile(&config(n, false));
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

/// Routes behind a uri-regex and header-regex rule.
fn find_regex(c: &mut Criterion) {
    let mut orders = headers(false);
    orders.insert("x-tenant", HeaderValue::from_static("tenant-blue"));
    let plain = headers(false);
    for n in [1, 1000] {
        let compiled = compile(&config(n, true));
        let table = &compiled.table;
        let group = format!("find_regex/{n}");
        let alias = format!("svc-{}", n / 2);
        let hit = RequestView { path: "/api/v2/orders/12345", ..view(&alias, &orders) };
        bench_find(c, &group, "regex_match", table, hit, Some("orders"));
        let wrong_tenant = RequestView { path: "/api/v2/orders/12345", ..view(&alias, &plain) };
        bench_find(c, &group, "regex_uri_then_header_miss", table, wrong_tenant, Some("split"));
        bench_find(c, &group, "regex_miss", table, view(&alias, &plain), Some("split"));
    }
}

fn compile_bench(c: &mut Criterion) {
    let config = config(1000, false);
    let mut g = c.benchmark_group("compile");
    g.sample_size(20).measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    g.bench_function("1000", |b| b.iter(|| compile(black_box(&config))));
    g.finish();
}

criterion_group!(benches, find, find_regex, compile_bench);
criterion_main!(benches);
