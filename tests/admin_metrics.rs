//! The admin port (`/ready`, `/healthz`, `/stats/prometheus`, `/metrics`,
//! `/config_dump`, `/clusters`) and exact metric values after a known set
//! of requests.

mod common;

use common::*;
use http::{Method, Request, StatusCode};

/// Routes of the metrics tests: `/v1`, `/v2` to the subsets, `/nc` to an
/// undefined subset, `/uh` to the empty subset v3; anything else: no route.
fn metrics_routes() -> String {
    virtual_service(
        "reviews",
        NS,
        &["reviews"],
        "\
- match: [{uri: {prefix: /v1}}]
  route: [{destination: {host: reviews, subset: v1}}]
- match: [{uri: {prefix: /v2}}]
  route: [{destination: {host: reviews, subset: v2}}]
- match: [{uri: {prefix: /nc}}]
  route: [{destination: {host: reviews, subset: v9}}]
- match: [{uri: {prefix: /uh}}]
  route: [{destination: {host: reviews, subset: v3}}]
",
    )
}

/// Sends `n` requests `GET path` with `Host: host`, each expecting `want`.
async fn hit(mesh: &Mesh, host: &str, path: &str, n: usize, want: StatusCode) {
    for _ in 0..n {
        let resp = mesh.get(host, path).await;
        assert_eq!(resp.status, want, "{host} {path}: {}", resp.text());
    }
}

/// Scenario: every admin page answers as documented: `/ready` and
/// `/healthz` 200, both metrics paths the same Prometheus text with the
/// Prometheus content type, `/config_dump` JSON with version, content hash,
/// every resource and every cluster with its endpoints, `/clusters` per
/// endpoint; unknown paths 404 and writes 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_answer_as_documented() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_demo_routes())).await;

    let ready = mesh.admin("/ready").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::OK, "ready\n".to_owned()));
    let health = mesh.admin("/healthz").await;
    assert_eq!((health.status, health.text()), (StatusCode::OK, "ok\n".to_owned()));

    for path in ["/stats/prometheus", "/metrics"] {
        let resp = mesh.admin(path).await;
        assert_eq!(resp.status, StatusCode::OK, "{path}");
        assert_eq!(resp.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"), "{path}");
        let m = Prom::parse(&resp.text());
        assert_eq!(m.sum("istio_build", &[("component", "proxy"), ("tag", env!("CARGO_PKG_VERSION"))]), 1.0, "{path}");
        assert_eq!(m.sum("meshd_config_version", &[]), 1.0, "{path}");
        assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "applied")]), 1.0, "{path}");
    }

    let dump = mesh.admin("/config_dump").await;
    assert_eq!(dump.header("content-type"), Some("application/json"));
    let dump = dump.json();
    assert_eq!(dump["version"], 1);
    let hash = dump["contentHash"].as_str().expect("contentHash");
    assert!(hash.len() == 16 && hash.chars().all(|c| c.is_ascii_hexdigit()), "{hash}");
    let config = &dump["config"];
    assert_eq!(config["namespace"], NS);
    let name = |kind: &str| config[kind][0]["meta"]["name"].clone();
    assert_eq!(config["serviceEntries"].as_array().map(Vec::len), Some(1));
    assert_eq!(config["destinationRules"].as_array().map(Vec::len), Some(1));
    assert_eq!(config["virtualServices"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        (name("serviceEntries"), name("destinationRules"), name("virtualServices")),
        ("reviews".into(), "reviews".into(), "reviews".into())
    );
    assert_eq!(config["virtualServices"][0]["spec"]["http"][0]["name"], "jason");
    let clusters: Vec<(String, Vec<String>)> = dump["clusters"]
        .as_array()
        .expect("clusters")
        .iter()
        .map(|c| {
            let endpoints =
                c["endpoints"].as_array().expect("endpoints").iter().map(|e| e.as_str().unwrap().to_owned()).collect();
            (c["name"].as_str().unwrap().to_owned(), endpoints)
        })
        .collect();
    let cluster = |subset: &str| format!("outbound|9080|{subset}|{REVIEWS}");
    assert_eq!(
        clusters,
        vec![
            (cluster(""), vec![v1.to_string(), v2.to_string()]),
            (cluster("v1"), vec![v1.to_string()]),
            (cluster("v2"), vec![v2.to_string()]),
            (cluster("v3"), vec![]),
        ]
    );

    let text = mesh.admin("/clusters").await.text();
    for line in [
        format!("{}::{v1}::rq_active::0", cluster("v1")),
        format!("{}::{v2}::cx_idle::0", cluster("v2")),
        format!("{}::{v1}::weight::1", cluster("")),
    ] {
        assert!(text.lines().any(|l| l == line), "/clusters lacks {line:?}:\n{text}");
    }

    assert_eq!(mesh.admin("/nope").await.status, StatusCode::NOT_FOUND);
    let post =
        Request::builder().method(Method::POST).uri(format!("http://{}/ready", mesh.admin)).body(empty()).unwrap();
    assert_eq!(send(&mesh.client, post).await.status, StatusCode::METHOD_NOT_ALLOWED);
}

/// Scenario: after a known set of requests, `istio_requests_total` and the
/// three histograms hold exactly those requests, labelled by destination
/// service, version, app, response code and flags.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_metrics_count_exactly_the_requests_sent() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &metrics_routes())).await;
    hit(&mesh, "reviews", "/v1", 7, StatusCode::OK).await;
    hit(&mesh, "reviews", "/v2", 3, StatusCode::OK).await;
    hit(&mesh, "reviews", "/v2/slow?delay_ms=300", 1, StatusCode::OK).await;
    hit(&mesh, "reviews", "/v1/fail?status=503", 2, StatusCode::SERVICE_UNAVAILABLE).await;
    hit(&mesh, "reviews", "/nc", 4, StatusCode::SERVICE_UNAVAILABLE).await;
    hit(&mesh, "reviews", "/uh", 1, StatusCode::SERVICE_UNAVAILABLE).await;
    hit(&mesh, "reviews", "/nothing", 3, StatusCode::NOT_FOUND).await;
    hit(&mesh, "unknown.example", "/", 2, StatusCode::NOT_FOUND).await;

    // Everything is recorded (at the end of each response).
    mesh.wait_requests(&[("reporter", "source")], 23.0).await;
    let m = mesh.metrics().await;
    let count = |labels: &[(&str, &str)]| m.sum("istio_requests_total", labels);
    let v1_ok = reviews_labels("v1", "200", "-");
    let v2_ok = reviews_labels("v2", "200", "-");
    assert_eq!(count(&v1_ok), 7.0, "{}", m.show("istio_requests_total"));
    assert_eq!(count(&v2_ok), 4.0);
    assert_eq!(count(&reviews_labels("v1", "503", "-")), 2.0);
    let nc = [
        ("destination_service", REVIEWS),
        ("destination_service_name", "reviews"),
        ("response_code", "503"),
        ("response_flags", "NC"),
    ];
    assert_eq!(count(&nc), 4.0);
    assert_eq!(count(&[("destination_service", REVIEWS), ("response_code", "503"), ("response_flags", "UH")]), 1.0);
    assert_eq!(count(&[("response_code", "404"), ("response_flags", "NR")]), 5.0);
    assert_eq!(
        count(&[("destination_service", "unknown.example"), ("response_code", "404"), ("response_flags", "NR")]),
        2.0
    );
    // Source labels of a proxy without pod metadata.
    assert_eq!(
        count(&[
            ("source_workload_namespace", NS),
            ("source_workload", "unknown"),
            ("connection_security_policy", "unknown")
        ]),
        23.0
    );

    // The histograms count the same requests; the 300 ms request shows in
    // the duration histogram.
    for family in
        ["istio_request_duration_milliseconds_count", "istio_request_bytes_count", "istio_response_bytes_count"]
    {
        assert_eq!(m.sum(family, &v1_ok), 7.0, "{family}");
        assert_eq!(m.sum(family, &v2_ok), 4.0, "{family}");
        assert_eq!(m.sum(family, &[("reporter", "source")]), 23.0, "{family}");
    }
    let bucket = |le: &str| {
        let mut labels = v2_ok.clone();
        labels.push(("le", le));
        m.sum("istio_request_duration_milliseconds_bucket", &labels)
    };
    assert_eq!(bucket("250"), 3.0, "{}", m.show("istio_request_duration_milliseconds_bucket"));
    assert_eq!(bucket("500"), 4.0);
    assert!(m.sum("istio_request_duration_milliseconds_sum", &v2_ok) >= 300.0);
    // Every 200 response carries a JSON body of dozens of bytes plus headers.
    assert!(m.sum("istio_response_bytes_sum", &v1_ok) >= 7.0 * 100.0, "{}", m.show("istio_response_bytes_sum"));
    let mut small = v1_ok.clone();
    small.push(("le", "25"));
    assert_eq!(m.sum("istio_response_bytes_bucket", &small), 0.0, "a response is more than 25 bytes");
}

/// Scenario: `istio_request_bytes` counts the body of a streamed (chunked)
/// request as it passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bytes_count_a_streamed_body() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let (tx, body) = channel_body();
    let req = get("reviews", "/upload").method(Method::POST).build(mesh.addr, body);
    let client = mesh.client.clone();
    let exchange = tokio::spawn(async move { send(&client, req).await });
    for _ in 0..10 {
        tx.send(bytes::Bytes::from(vec![b'x'; 100_000])).await.unwrap();
    }
    drop(tx);
    assert_eq!(exchange.await.unwrap().status, StatusCode::OK);
    let labels = reviews_labels("v1", "200", "-");
    mesh.wait_metric("istio_request_bytes_count", &labels, 1.0).await;
    let sum = mesh.metrics().await.sum("istio_request_bytes_sum", &labels);
    assert!(
        (1_000_000.0..1_001_000.0).contains(&sum),
        "request bytes {sum} must be the 1,000,000-byte body plus the head"
    );
}

/// Scenario: `meshd_downstream_connections_active` follows open downstream
/// connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downstream_connection_gauge_follows_connections() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    mesh.wait_metric("meshd_downstream_connections_active", &[], 0.0).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(tokio::net::TcpStream::connect(mesh.addr).await.unwrap());
    }
    mesh.wait_metric("meshd_downstream_connections_active", &[], 3.0).await;
    drop(open);
    mesh.wait_metric("meshd_downstream_connections_active", &[], 0.0).await;
}

/// Scenario: the reload counters: one applied at start, a rejected one
/// after a broken file, another applied after a fix; `meshd_config_version`
/// follows applied ones only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_counters_and_version_gauge() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    mesh.config.write("reviews.yaml", "{{{ not yaml");
    mesh.wait_reloads("rejected", 1.0).await;
    assert_eq!(mesh.metrics().await.sum("meshd_config_version", &[]), 1.0);
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v1"));
    mesh.config.write("reviews.yaml", &(reviews_service(v1, v2) + &reviews_all_to("v2")));
    mesh.wait_reloads("applied", 2.0).await;
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "rejected")]), 1.0);
    assert_eq!(m.sum("meshd_config_version", &[]), 2.0);
    // The phases of the last applied reload: each measured, none absurd.
    for phase in ["load", "compile", "apply"] {
        let seconds = m.sum("meshd_config_reload_seconds", &[("phase", phase)]);
        assert!(m.show("meshd_config_reload_seconds").contains(phase), "{phase}");
        assert!((0.0..5.0).contains(&seconds), "{phase}: {seconds}");
    }
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v2"));
}

/// Scenario: responses without a body (HEAD, 204, 304) are recorded once
/// each, with their status and no response flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_are_recorded_without_flags() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let head = mesh.send(&get("reviews", "/").method(Method::HEAD)).await;
    assert_eq!((head.status, head.body.len()), (StatusCode::OK, 0));
    hit(&mesh, "reviews", "/?status=204", 1, StatusCode::NO_CONTENT).await;
    hit(&mesh, "reviews", "/?status=304", 1, StatusCode::NOT_MODIFIED).await;
    mesh.wait_requests(&[("reporter", "source")], 3.0).await;
    let m = mesh.metrics().await;
    for code in ["200", "204", "304"] {
        assert_eq!(
            m.sum("istio_requests_total", &reviews_labels("v1", code, "-")),
            1.0,
            "{code}: {}",
            m.show("istio_requests_total")
        );
    }
    let clusters = mesh.admin("/clusters").await.text();
    assert!(
        clusters.contains(&format!("|v1|{REVIEWS}::{v1}::cx_idle::1")),
        "completed exchanges return their connection: {clusters}"
    );
}
