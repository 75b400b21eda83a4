//! Routing over real sockets: host aliases and wildcards, HTTPRoute
//! matches, weighted splits, the default route of a ServiceEntry without a
//! VirtualService, WorkloadEntries, DNS endpoints, load balancing, and the
//! local replies 404 `NR`, 503 `NC` and 503 `UH`.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, Response, StatusCode};

/// Counts of `(status, upstream name)` as `Mesh::tally` returns them.
fn only(entries: &[(u16, &str, usize)]) -> BTreeMap<(u16, String), usize> {
    entries.iter().map(|(s, n, c)| ((*s, n.to_string()), *c)).collect()
}

/// Scenario: the demo's 80/20 split between v1 and v2 holds within ±3 %
/// over 2,000 requests (v1 count in 1540..=1660), every request 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_80_20_within_3_percent_over_2000_requests() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_demo_routes())).await;
    let counts = mesh.tally(&get("reviews", "/reviews/1"), 2000, 4).await;
    let n1 = counts.get(&(200, "reviews-v1".into())).copied().unwrap_or(0);
    let n2 = counts.get(&(200, "reviews-v2".into())).copied().unwrap_or(0);
    assert_eq!(n1 + n2, 2000, "every request must be a 200 from v1 or v2: {counts:?}");
    assert!((1540..=1660).contains(&n1), "v1 got {n1} of 2000 (expected 1600 ± 60): {counts:?}");
}

/// Scenario: `end-user: jason` always goes to v2; another value (even
/// `Jason`, exact match is case-sensitive) falls through to the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_end_user_jason_routes_to_v2() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_demo_routes())).await;
    let jason = mesh.tally(&get("reviews", "/").header("end-user", "jason"), 200, 2).await;
    assert_eq!(jason, only(&[(200, "reviews-v2", 200)]));
    let others = mesh.tally(&get("reviews", "/").header("end-user", "Jason"), 100, 2).await;
    assert!(
        others.get(&(200, "reviews-v1".into())).is_some_and(|n| *n > 40),
        "non-jason requests must hit the split: {others:?}"
    );
}

/// Scenario: every Host form of a Kubernetes-style service reaches it —
/// bare name, `name.ns`, `name.ns.svc`, FQDN, trailing dot, any case, with
/// or without a port, and the VIP — and the Host is forwarded unchanged.
/// From another namespace the bare name is not an alias; unrelated
/// truncations of the FQDN are not either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_host_alias_form_reaches_the_service() {
    let (v1, v2) = reviews_upstreams().await;
    let ratings = echo("ratings").await;
    let yaml = reviews_service(v1, v2)
        + &reviews_all_to("v1")
        + &service_entry("ratings", "prod", &["ratings"], 9080, &[ep(ratings, &[("app", "ratings")])]);
    let mesh = Mesh::with(&yaml).await;
    for host in [
        "reviews",
        "reviews:9080",
        "reviews.default",
        "reviews.default:9080",
        "reviews.default.svc",
        "reviews.default.svc:80",
        "reviews.default.svc.cluster.local",
        "reviews.default.svc.cluster.local:9080",
        "reviews.default.svc.cluster.local.",
        "REVIEWS.Default.SVC.Cluster.Local",
        "Reviews:9080",
        "240.0.0.10",
        "240.0.0.10:9080",
    ] {
        let resp = mesh.get(host, "/alias").await;
        assert_eq!(resp.status, StatusCode::OK, "Host {host}: {}", resp.text());
        assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"), "Host {host}");
        assert_eq!(resp.json()["host"], host, "the upstream must see the Host as sent");
    }
    // A service of namespace `prod`, seen from `default`, and a short name
    // that expands with the ServiceEntry's namespace.
    for host in ["ratings.prod", "ratings.prod.svc", "ratings.prod.svc.cluster.local", "ratings.prod:9080"] {
        let resp = mesh.get(host, "/").await;
        assert_eq!(resp.echo_name().as_deref(), Some("ratings"), "Host {host}: {} {}", resp.status, resp.text());
    }
    let labels = [
        ("destination_service", "ratings.prod.svc.cluster.local"),
        ("destination_service_name", "ratings"),
        ("destination_service_namespace", "prod"),
        ("destination_app", "ratings"),
    ];
    mesh.wait_requests(&labels, 4.0).await;
    for host in [
        "ratings",
        "ratings.default",
        "reviews.prod",
        "reviews.default.svc.cluster",
        "reviews.default.svc.cluster.local.x",
    ] {
        let resp = mesh.get(host, "/").await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "Host {host} must not be an alias: {}", resp.text());
    }
}

/// Scenario: virtual-host lookup is exact first, then the wildcard
/// `*.example.com` (any depth, any case, port ignored); the wildcard does
/// not cover `example.com` itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_host_wins_over_wildcard_and_wildcard_covers_subdomains() {
    let (a, b) = (echo("svc-a").await, echo("svc-b").await);
    let yaml = [
        service_entry("a", NS, &["a.internal"], 80, &[ep(a, &[])]),
        service_entry("b", NS, &["b.internal"], 80, &[ep(b, &[])]),
        virtual_service("exact", NS, &["api.example.com"], "- route:\n  - destination: {host: b.internal}\n"),
        virtual_service("wild", NS, &["'*.example.com'"], "- route:\n  - destination: {host: a.internal}\n"),
    ]
    .concat();
    let mesh = Mesh::with(&yaml).await;
    for (host, want) in [
        ("api.example.com", Some("svc-b")),
        ("API.Example.COM:8443", Some("svc-b")),
        ("www.example.com", Some("svc-a")),
        ("Www.EXAMPLE.com:80", Some("svc-a")),
        ("deep.api.example.com", Some("svc-a")),
        ("example.com", None),
        ("www.example.org", None),
    ] {
        let resp = mesh.get(host, "/").await;
        match want {
            Some(name) => {
                assert_eq!(resp.status, StatusCode::OK, "Host {host}: {}", resp.text());
                assert_eq!(resp.echo_name().as_deref(), Some(name), "Host {host}");
            }
            None => assert_eq!(resp.status, StatusCode::NOT_FOUND, "Host {host}"),
        }
    }
}

/// The `shop` service (port 80): eight echo endpoints `e1`..`e8`, a
/// subset per endpoint, and the VirtualService routes `http`.
async fn shop_with(http: &str) -> Mesh {
    let mut endpoints = Vec::new();
    for i in 1..=8 {
        let name = format!("e{i}");
        endpoints.push(ep(echo(&name).await, &[("app", "shop"), ("route", &name)]));
    }
    let mut dr = "host: shop\nsubsets:\n".to_owned();
    for i in 1..=8 {
        dr += &format!("- {{name: e{i}, labels: {{route: e{i}}}}}\n");
    }
    let yaml = service_entry("shop", NS, &["shop.default.svc.cluster.local"], 80, &endpoints)
        + &object("DestinationRule", "shop", NS, &dr)
        + &virtual_service("shop", NS, &["shop"], http);
    Mesh::with(&yaml).await
}

/// The `shop` service with one route per match kind.
async fn shop() -> Mesh {
    let http = "\
- name: exact
  match: [{uri: {exact: /exact}}, {uri: {exact: /also-exact}}]
  route: [{destination: {host: shop, subset: e1}}]
- name: prefix
  match: [{uri: {prefix: /pre}}]
  route: [{destination: {host: shop, subset: e2}}]
- name: regex
  match: [{uri: {regex: '/re/[0-9]+'}}]
  route: [{destination: {host: shop, subset: e3}}]
- name: method
  match: [{method: {exact: DELETE}}]
  route: [{destination: {host: shop, subset: e4}}]
- name: header
  match: [{headers: {x-tier: {exact: gold}}}]
  route: [{destination: {host: shop, subset: e5}}]
- name: query
  match: [{queryParams: {debug: {exact: '1'}}}]
  route: [{destination: {host: shop, subset: e6}}]
- name: both
  match: [{uri: {prefix: /and}, headers: {x-a: {regex: 'b+'}}}]
  route: [{destination: {host: shop, subset: e7}}]
- name: rest
  match: [{withoutHeaders: {x-deny: {}}}]
  route: [{destination: {host: shop, subset: e8}}]
";
    shop_with(http).await
}

/// Scenario: uri exact / prefix / regex (full match), method, headers,
/// queryParams, conditions ANDed within a block and blocks ORed, first
/// match wins, and `withoutHeaders`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_method_header_query_and_without_headers_matches() {
    let mesh = shop().await;
    let cases: Vec<(Req, &str)> = vec![
        (get("shop", "/exact"), "e1"),
        (get("shop", "/also-exact"), "e1"),
        (get("shop", "/exact/more"), "e8"),
        (get("shop", "/exact?x=1"), "e1"),
        (get("shop", "/pre"), "e2"),
        (get("shop", "/prefix/deeper"), "e2"),
        (get("shop", "/pr"), "e8"),
        (get("shop", "/re/123"), "e3"),
        (get("shop", "/re/12a"), "e8"),
        (get("shop", "/x/re/1"), "e8"),
        (get("shop", "/anything").method(Method::DELETE), "e4"),
        (get("shop", "/exact").method(Method::DELETE), "e1"),
        (get("shop", "/anything").method(Method::POST), "e8"),
        (get("shop", "/h").header("x-tier", "gold"), "e5"),
        (get("shop", "/h").header("x-tier", "Gold"), "e8"),
        (get("shop", "/h").header("x-tier", "silver"), "e8"),
        (get("shop", "/q?debug=1"), "e6"),
        (get("shop", "/q?verbose=yes&debug=1"), "e6"),
        (get("shop", "/q?debug=2"), "e8"),
        (get("shop", "/q?debug=10"), "e8"),
        (get("shop", "/and").header("x-a", "bbb"), "e7"),
        (get("shop", "/and").header("x-a", "abc"), "e8"),
        (get("shop", "/and"), "e8"),
        (get("shop", "/other").header("x-a", "b"), "e8"),
    ];
    for (req, want) in cases {
        let resp = mesh.send(&req).await;
        assert_eq!(resp.status, StatusCode::OK, "{} {} {:?}: {}", req.method, req.path, req.headers, resp.text());
        assert_eq!(resp.echo_name().as_deref(), Some(want), "{} {} {:?}", req.method, req.path, req.headers);
        assert_eq!(resp.json()["method"], req.method.as_str());
    }
    // `withoutHeaders` excludes; nothing else matches: 404 NR.
    let resp = mesh.send(&get("shop", "/other").header("x-deny", "1")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.echo_name(), None);
}

/// Scenario: the finer points of matching (spec §1.5): `ignoreUriCase`,
/// `authority` as sent (port included), `port` against the Host port,
/// `scheme`, a header sent twice (values joined with `,`), value-form
/// `withoutHeaders` (a missing header counts as empty), `queryParams`
/// `exact: ""` for a bare key, and regex full match on the raw value of a
/// parameter's first occurrence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finer_match_semantics() {
    let http = "\
- match: [{uri: {exact: /login}, ignoreUriCase: true}]
  route: [{destination: {host: shop, subset: e1}}]
- match: [{authority: {exact: shop}, uri: {prefix: /auth}}]
  route: [{destination: {host: shop, subset: e2}}]
- match: [{port: 8080, uri: {prefix: /port}}]
  route: [{destination: {host: shop, subset: e3}}]
- match: [{scheme: {exact: http}, uri: {prefix: /scheme}}]
  route: [{destination: {host: shop, subset: e4}}]
- match: [{headers: {x-multi: {exact: 'a,b'}}}]
  route: [{destination: {host: shop, subset: e5}}]
- match: [{uri: {prefix: /without}, withoutHeaders: {x-env: {exact: prod}}}]
  route: [{destination: {host: shop, subset: e6}}]
- match: [{queryParams: {flag: {exact: ''}}}, {queryParams: {id: {regex: '[0-9]+'}}}]
  route: [{destination: {host: shop, subset: e7}}]
- route: [{destination: {host: shop, subset: e8}}]
";
    let mesh = shop_with(http).await;
    let cases: Vec<(Req, &str)> = vec![
        (get("shop", "/login"), "e1"),
        (get("shop", "/LOGIN"), "e1"),
        (get("shop", "/Login/x"), "e8"),
        (get("shop", "/auth"), "e2"),
        (get("shop:80", "/auth"), "e8"),
        (get("shop.default", "/auth"), "e8"),
        (get("shop:8080", "/port"), "e3"),
        (get("shop", "/port"), "e8"),
        (get("shop", "/scheme"), "e4"),
        (get("shop", "/m").header("x-multi", "a").header("x-multi", "b"), "e5"),
        (get("shop", "/m").header("x-multi", "a"), "e8"),
        (get("shop", "/without"), "e6"),
        (get("shop", "/without").header("x-env", "dev"), "e6"),
        (get("shop", "/without").header("x-env", "prod"), "e8"),
        (get("shop", "/q?flag"), "e7"),
        (get("shop", "/q?flag="), "e7"),
        (get("shop", "/q?flag=1"), "e8"),
        (get("shop", "/q?id=42"), "e7"),
        (get("shop", "/q?id=42x"), "e8"),
        (get("shop", "/q?id=1&id=x"), "e7"),
        (get("shop", "/q?id=x&id=1"), "e8"),
        (get("shop", "/q?id=%34%32"), "e8"),
    ];
    for (req, want) in cases {
        let resp = mesh.send(&req).await;
        assert_eq!(resp.status, StatusCode::OK, "{} Host {} {:?}: {}", req.path, req.host, req.headers, resp.text());
        assert_eq!(resp.echo_name().as_deref(), Some(want), "{} Host {} {:?}", req.path, req.host, req.headers);
    }
}

/// Scenario: uri matching runs on the normalised path (spec §1.5: Istio's
/// default `BASE` normalisation, RFC 3986 dot-segment removal), and the
/// normalised path is what goes upstream: `/x/../exact` is `/exact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uri_match_uses_the_normalised_path() {
    let mesh = shop().await;
    for (target, want, path) in
        [("/x/../exact", "e1", "/exact"), ("/./pre/a/./b", "e2", "/pre/a/b"), ("/re/1/../2", "e3", "/re/2")]
    {
        let raw = raw_exchange(
            mesh.addr,
            format!("GET {target} HTTP/1.1\r\nHost: shop\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{target}: {raw}");
        assert!(raw.contains(&format!("x-echo-name: {want}\r\n")), "{target} must route as {path} (to {want}): {raw}");
        assert!(raw.contains(&format!(r#""path":"{path}""#)), "{target} must go upstream as {path}: {raw}");
    }
}

/// Scenario: a Host no virtual host serves gets 404 with an empty body and
/// response flag `NR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_host_is_404_nr() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let resp = mesh.get("nowhere.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.body.is_empty(), "404 NR has an empty body: {:?}", resp.text());
    let want = [("response_code", "404"), ("response_flags", "NR"), ("destination_service", "nowhere.example.com")];
    mesh.wait_requests(&want, 1.0).await;
}

/// Scenario: the VirtualService owns the host but no route matches: 404,
/// empty body, flag `NR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn virtual_service_without_matching_route_is_404_nr() {
    let (v1, v2) = reviews_upstreams().await;
    let routes = virtual_service(
        "reviews",
        NS,
        &["reviews"],
        "- match: [{uri: {prefix: /only}}]\n  route: [{destination: {host: reviews, subset: v1}}]\n",
    );
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &routes)).await;
    assert_eq!(mesh.get("reviews", "/only/this").await.echo_name().as_deref(), Some("reviews-v1"));
    let resp = mesh.get("reviews", "/other").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.body.is_empty(), "{:?}", resp.text());
    mesh.wait_requests(&[("response_code", "404"), ("response_flags", "NR")], 1.0).await;
}

/// Routes of the local-reply tests: `/nc` to an undefined subset, `/ghost`
/// to an unknown host, `/uh` to subset v3 (defined, no endpoint).
fn local_reply_routes() -> String {
    virtual_service(
        "reviews",
        NS,
        &["reviews"],
        "\
- match: [{uri: {prefix: /nc}}]
  route: [{destination: {host: reviews, subset: v9}}]
- match: [{uri: {prefix: /ghost}}]
  route: [{destination: {host: ghost}}]
- match: [{uri: {prefix: /uh}}]
  route: [{destination: {host: reviews, subset: v3}}]
- route: [{destination: {host: reviews, subset: v1}}]
",
    )
}

/// Scenario: a route to a subset no DestinationRule defines answers 503
/// with flag `NC`, labelled with the service.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undefined_subset_is_503_nc() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &local_reply_routes())).await;
    let resp = mesh.get("reviews", "/nc").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{}", resp.text());
    assert_eq!(resp.echo_name(), None);
    mesh.wait_requests(&[("response_code", "503"), ("response_flags", "NC"), ("destination_service", REVIEWS)], 1.0)
        .await;
    // The other routes still work.
    assert_eq!(mesh.get("reviews", "/fine").await.echo_name().as_deref(), Some("reviews-v1"));
}

/// Scenario: a route to a host no ServiceEntry declares answers 503 `NC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_destination_host_is_503_nc() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &local_reply_routes())).await;
    let resp = mesh.get("reviews", "/ghost").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{}", resp.text());
    let labels = [
        ("response_code", "503"),
        ("response_flags", "NC"),
        ("destination_service", "ghost.default.svc.cluster.local"),
    ];
    mesh.wait_requests(&labels, 1.0).await;
}

/// Scenario: a defined subset that selects no endpoint answers 503 `UH`
/// with Envoy's body `no healthy upstream`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subset_without_endpoints_is_503_uh() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &local_reply_routes())).await;
    let resp = mesh.get("reviews", "/uh").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text(), "no healthy upstream");
    assert!(resp.headers.get("x-envoy-upstream-service-time").is_none(), "local replies have no upstream service time");
    mesh.wait_requests(&[("response_code", "503"), ("response_flags", "UH"), ("destination_service", REVIEWS)], 1.0)
        .await;
}

/// Three echo endpoints `n1`..`n3` of service `pool` (port 80), with an
/// optional DestinationRule load balancer.
async fn pool(lb: Option<&str>) -> Mesh {
    let mut endpoints = Vec::new();
    for name in ["n1", "n2", "n3"] {
        endpoints.push(ep(echo(name).await, &[("app", "pool")]));
    }
    let mut yaml = service_entry("pool", NS, &["pool.example.com"], 80, &endpoints);
    if let Some(lb) = lb {
        yaml += &destination_rule("pool", NS, "pool.example.com", Some(lb), &[]);
    }
    Mesh::with(&yaml).await
}

/// Scenario: a ServiceEntry host without any VirtualService gets the
/// default route to all of its endpoints (Istio's default LEAST_REQUEST).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_entry_without_virtual_service_routes_to_all_endpoints() {
    let mesh = pool(None).await;
    let counts = mesh.tally(&get("pool.example.com", "/"), 300, 3).await;
    assert_eq!(counts.values().sum::<usize>(), 300);
    for name in ["n1", "n2", "n3"] {
        let n = counts.get(&(200, name.into())).copied().unwrap_or(0);
        assert!(n >= 50, "endpoint {name} got {n} of 300: {counts:?}");
    }
}

/// Scenario: ROUND_ROBIN cycles through the endpoints exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_cycles_endpoints_exactly() {
    let mesh = pool(Some("ROUND_ROBIN")).await;
    let counts = mesh.tally(&get("pool.example.com", "/"), 300, 1).await;
    assert_eq!(counts, only(&[(200, "n1", 100), (200, "n2", 100), (200, "n3", 100)]));
}

/// Scenario: endpoint weights (3:1) apply to ROUND_ROBIN exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_weights_apply_to_round_robin() {
    let (heavy, light) = (echo("heavy").await, echo("light").await);
    let spec = format!(
        "hosts: [weighted.example.com]\nresolution: STATIC\nports:\n- {{number: 80, name: http}}\nendpoints:\n- {{address: 127.0.0.1, ports: {{http: {}}}, weight: 3}}\n- {{address: 127.0.0.1, ports: {{http: {}}}}}\n",
        heavy.port(),
        light.port()
    );
    let yaml = object("ServiceEntry", "weighted", NS, &spec)
        + &destination_rule("weighted", NS, "weighted.example.com", Some("ROUND_ROBIN"), &[]);
    let mesh = Mesh::with(&yaml).await;
    let counts = mesh.tally(&get("weighted.example.com", "/"), 400, 1).await;
    assert_eq!(counts, only(&[(200, "heavy", 300), (200, "light", 100)]));
}

/// Scenario: RANDOM spreads requests over every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_spreads_over_all_endpoints() {
    let mesh = pool(Some("RANDOM")).await;
    let counts = mesh.tally(&get("pool.example.com", "/"), 600, 2).await;
    assert_eq!(counts.values().sum::<usize>(), 600);
    for name in ["n1", "n2", "n3"] {
        let n = counts.get(&(200, name.into())).copied().unwrap_or(0);
        assert!((120..=280).contains(&n), "endpoint {name} got {n} of 600 (expected about 200): {counts:?}");
    }
}

/// Scenario: LEAST_REQUEST sends nothing to an endpoint that holds a
/// request in flight while the other endpoint is idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_request_avoids_the_busy_endpoint() {
    let held = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let counter = held.clone();
    let busy = upstream(move |_req| {
        let (counter, mut released) = (counter.clone(), released.clone());
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = released.wait_for(|r| *r).await;
            let mut response = Response::new(full("busy"));
            response.headers_mut().insert("x-echo-name", http::HeaderValue::from_static("busy"));
            response
        }
    })
    .await;
    let idle = echo("idle").await;
    let yaml = service_entry("lr", NS, &["lr.example.com"], 80, &[ep(busy.addr, &[]), ep(idle, &[])])
        + &destination_rule("lr", NS, "lr.example.com", Some("LEAST_REQUEST"), &[]);
    let mesh = Mesh::with(&yaml).await;

    // Send requests one at a time until one is held by the busy endpoint.
    let mut pending = None;
    for _ in 0..60 {
        let (c, req) = (mesh.client.clone(), get("lr.example.com", "/").build(mesh.addr, empty()));
        let task = tokio::spawn(async move { send(&c, req).await });
        let (held_ref, task_ref) = (&held, &task);
        let state = wait_for("the request to finish or be held", Duration::from_secs(5), || async move {
            if held_ref.load(Ordering::SeqCst) == 1 {
                Ok(true)
            } else if task_ref.is_finished() {
                Ok(false)
            } else {
                Err("in flight".to_owned())
            }
        })
        .await;
        if state {
            pending = Some(task);
            break;
        }
        assert_eq!(task.await.expect("task").echo_name().as_deref(), Some("idle"));
    }
    let pending = pending.expect("no request reached the busy endpoint in 60 tries");

    let counts = mesh.tally(&get("lr.example.com", "/"), 100, 1).await;
    assert_eq!(counts, only(&[(200, "idle", 100)]), "the busy endpoint must be avoided");
    assert_eq!(held.load(Ordering::SeqCst), 1);
    release.send_replace(true);
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, pending).await.expect("held request").expect("task");
    assert_eq!((resp.status, resp.text()), (StatusCode::OK, "busy".to_owned()));
}

/// Scenario: a ServiceEntry with a `workloadSelector` takes its endpoints
/// from the matching WorkloadEntries of its own namespace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_entries_are_selected_by_workload_selector() {
    let (r1, r2, other, elsewhere) = (echo("r1").await, echo("r2").await, echo("other").await, echo("elsewhere").await);
    let we = |name: &str, ns: &str, addr: std::net::SocketAddr, labels: &str| {
        object(
            "WorkloadEntry",
            name,
            ns,
            &format!("address: 127.0.0.1\nports: {{http: {}}}\nlabels: {labels}\n", addr.port()),
        )
    };
    let yaml = [
        object(
            "ServiceEntry",
            "ratings",
            NS,
            "hosts: [ratings.default.svc.cluster.local]\nlocation: MESH_INTERNAL\nresolution: STATIC\nports:\n- {number: 9080, name: http, protocol: HTTP}\nworkloadSelector:\n  labels: {app: ratings}\n",
        ),
        we("r1", NS, r1, "{app: ratings, version: v1}"),
        we("r2", NS, r2, "{app: ratings, version: v2}"),
        we("other", NS, other, "{app: details}"),
        we("elsewhere", "prod", elsewhere, "{app: ratings}"),
        destination_rule("ratings", NS, "ratings", Some("ROUND_ROBIN"), &[]),
    ]
    .concat();
    let mesh = Mesh::with(&yaml).await;
    let counts = mesh.tally(&get("ratings", "/"), 100, 1).await;
    assert_eq!(counts, only(&[(200, "r1", 50), (200, "r2", 50)]));
    // The endpoints' labels label the metrics.
    let labels = [
        ("destination_service", "ratings.default.svc.cluster.local"),
        ("destination_version", "v2"),
        ("destination_app", "ratings"),
    ];
    mesh.wait_requests(&labels, 50.0).await;
}

/// Scenario: `resolution: DNS` with no endpoints resolves the host itself:
/// a ServiceEntry for `localhost` on the echo's port reaches the echo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_service_entry_resolves_its_host() {
    let upstream = echo("dns-host").await;
    let yaml = object(
        "ServiceEntry",
        "local",
        NS,
        &format!(
            "hosts: [localhost]\nresolution: DNS\nports:\n- {{number: {}, name: http, protocol: HTTP}}\n",
            upstream.port()
        ),
    );
    let mesh = Mesh::with(&yaml).await;
    let resp = mesh.get(&format!("localhost:{}", upstream.port()), "/dns").await;
    let clusters = mesh.admin("/config_dump").await.json()["clusters"].clone();
    assert_eq!(resp.status, StatusCode::OK, "{}; clusters: {clusters}", resp.text());
    assert_eq!(resp.echo_name().as_deref(), Some("dns-host"));
}

/// Scenario: `resolution: DNS` endpoints given by name (`localhost`) are
/// resolved and used.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_service_entry_resolves_endpoint_names() {
    let upstream = echo("dns-endpoint").await;
    let yaml = object(
        "ServiceEntry",
        "named",
        NS,
        &format!(
            "hosts: [named.example.com]\nresolution: DNS\nports:\n- {{number: 80, name: http, protocol: HTTP}}\nendpoints:\n- {{address: localhost, ports: {{http: {}}}}}\n",
            upstream.port()
        ),
    );
    let mesh = Mesh::with(&yaml).await;
    let resp = mesh.get("named.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.echo_name().as_deref(), Some("dns-endpoint"));
    let dump = mesh.admin("/config_dump").await.json();
    let endpoints = dump["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .find(|c| c["name"] == "outbound|80||named.example.com")
        .map(|c| c["endpoints"].clone());
    assert_eq!(endpoints, Some(serde_json::json!([format!("127.0.0.1:{}", upstream.port())])));
}
