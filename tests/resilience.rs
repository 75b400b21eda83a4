//! Resilience over real sockets (issue 3): outlier detection (ejection,
//! return, `maxEjectionPercent`, all hosts ejected ⇒ 503 `UH`, ejection
//! state kept across reloads), circuit breaking (503 `UO` with
//! `x-envoy-overloaded`), retries (`retryOn`, `attempts: 0`, exhaustion ⇒
//! `URX`, Istio's default connect-failure retries to another host), route
//! and per-try timeouts (504 `UT`), consistent hashing by header and
//! cookie, request bodies kept for replay up to the limit, and the
//! `/clusters` admin page with endpoint health.
//!
//! Spec: `../shared/spec/istio-semantics.md` §1.11, §1.12, §2.3–2.8, §4.1,
//! §5.3. Envoy cluster stats are read as
//! `envoy_cluster_<stat>{cluster_name="outbound|PORT||HOST"}`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

/// The port every service of this file declares.
const PORT: u16 = 80;

/// `envoy_cluster_*` label set of the cluster of `host`.
fn cluster_labels(host: &str) -> Vec<(&'static str, String)> {
    vec![("cluster_name", cluster_name(host, PORT))]
}

/// Value (sum) of the Envoy cluster stat `name` of `host`'s cluster.
fn stat(m: &Prom, name: &str, host: &str) -> f64 {
    let labels = cluster_labels(host);
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
    m.sum(name, &labels)
}

/// Waits until the Envoy cluster stat `name` of `host` satisfies `ok`.
async fn wait_stat(mesh: &Mesh, name: &str, host: &str, want: &str, ok: impl Fn(f64) -> bool) {
    let what = format!("{name}{{cluster_name={:?}}} {want}", cluster_name(host, PORT));
    let ok = &ok;
    wait_for(&what, Duration::from_secs(5), || async move {
        let m = mesh.metrics().await;
        let seen = stat(&m, name, host);
        if ok(seen) {
            Ok(())
        } else {
            Err(format!("{seen}; samples:\n{}", m.show(name)))
        }
    })
    .await
}

/// Waits until the Envoy cluster stat `name` of `host` is exactly `n`.
async fn wait_stat_eq(mesh: &Mesh, name: &str, host: &str, n: f64) {
    wait_stat(mesh, name, host, &format!("== {n}"), |v| v == n).await
}

/// Sends `req` `n` times, one after the other, and returns each
/// `(status, x-echo-name or "-")`.
async fn sequence(mesh: &Mesh, req: &Req, n: usize) -> Vec<(u16, String)> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let resp = mesh.send(req).await;
        out.push((resp.status.as_u16(), resp.echo_name().unwrap_or_else(|| "-".into())));
    }
    out
}

/// Counts of `(status, upstream name)`, to compare with [`count`].
fn only(entries: &[(u16, &str, usize)]) -> BTreeMap<(u16, String), usize> {
    entries.iter().map(|(s, n, c)| ((*s, n.to_string()), *c)).collect()
}

/// Counts `(status, name)` pairs.
fn count(seen: &[(u16, String)]) -> BTreeMap<(u16, String), usize> {
    let mut counts = BTreeMap::new();
    for key in seen {
        *counts.entry(key.clone()).or_insert(0) += 1;
    }
    counts
}

/// A ServiceEntry `name` for `host` (port 80) over the upstreams `eps`.
fn service(name: &str, host: &str, eps: &[std::net::SocketAddr]) -> String {
    let eps: Vec<Ep> = eps.iter().map(|a| ep(*a, &[("app", name)])).collect();
    service_entry(name, NS, &[host], PORT, &eps)
}

/// `ROUND_ROBIN` plus `outlierDetection` ejecting after `consecutive`
/// 5xx for `base`, sweeping every second, up to 100 % of the hosts.
fn outlier_policy(consecutive: u32, base: &str) -> String {
    format!(
        "loadBalancer: {{simple: ROUND_ROBIN}}\noutlierDetection: {{consecutive5xxErrors: {consecutive}, interval: 1s, baseEjectionTime: {base}, maxEjectionPercent: 100}}\n"
    )
}

/// Two good upstreams `good-1`, `good-2` and one always answering 503,
/// `bad`.
async fn two_good_one_bad() -> (Programmable, Programmable, Programmable) {
    (
        programmable("good-1", Behaviour::Ok).await,
        programmable("good-2", Behaviour::Ok).await,
        programmable("bad", Behaviour::Status(503)).await,
    )
}

/// Sends 30 requests one after the other to `host` (three round-robin
/// endpoints, `bad` ejected after 3 × 503) and checks that `bad` answered
/// exactly 3 of them, all 503, and the good ones the rest with 200.
/// Returns when the client received the third 503 from `bad`.
async fn eject_bad(mesh: &Mesh, host: &str, bad: &Programmable) -> Instant {
    let req = get(host, "/eject");
    let mut seen = Vec::new();
    let mut third_503 = None;
    for _ in 0..30 {
        let resp = mesh.send(&req).await;
        let name = resp.echo_name().unwrap_or_else(|| "-".into());
        if name == "bad" && seen.iter().filter(|(_, n): &&(u16, String)| n == "bad").count() == 2 {
            third_503 = Some(Instant::now());
        }
        seen.push((resp.status.as_u16(), name));
    }
    let counts = count(&seen);
    let bad_hits = counts.get(&(503, "bad".into())).copied().unwrap_or(0);
    assert_eq!(
        bad_hits, 3,
        "the bad endpoint must get exactly 3 requests (then be ejected): {counts:?}; in order: {seen:?}"
    );
    let good = counts.get(&(200, "good-1".into())).copied().unwrap_or(0)
        + counts.get(&(200, "good-2".into())).copied().unwrap_or(0);
    assert_eq!(good, 27, "every other request must be a 200 from a good endpoint: {counts:?}");
    assert_eq!(bad.hits(), 3, "the bad upstream itself must have seen exactly 3 requests");
    third_503.expect("third 503 seen")
}

// ---------------------------------------------------------------------------
// Outlier detection
// ---------------------------------------------------------------------------

/// Scenario: three round-robin endpoints, one always 503, DR
/// `outlierDetection {consecutive5xxErrors: 3, interval: 1s,
/// baseEjectionTime: 2s, maxEjectionPercent: 100}`: the bad endpoint gets
/// exactly 3 of 30 requests (its 503s pass through: the default retry
/// policy does not retry 503), `ejections_active` is 1 and
/// `ejections_enforced_total` ≥ 1 while it is out; after its ejection time
/// (2 s, rounded up to the next 1 s sweep) it is picked again and the gauge
/// returns to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_5xx_ejects_the_endpoint_and_it_returns_after_base_ejection_time() {
    let host = "outlier.example.com";
    let (g1, g2, bad) = two_good_one_bad().await;
    let yaml = service("outlier", host, &[g1.addr, g2.addr, bad.addr])
        + &destination_rule_with_policy("outlier", NS, host, &outlier_policy(3, "2s"));
    let mesh = Mesh::with(&yaml).await;

    let ejected_at = eject_bad(&mesh, host, &bad).await;
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;
    wait_stat(&mesh, "envoy_cluster_outlier_detection_ejections_enforced_total", host, ">= 1", |v| v >= 1.0).await;
    assert!(g1.hits() + g2.hits() == 27, "good endpoints: {} + {}", g1.hits(), g2.hits());

    // The 503s were passed through, not retried, and counted as such.
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "-")], 3.0).await;

    // It comes back after the ejection time: keep sending until it answers.
    let (mesh_ref, req) = (&mesh, get(host, "/return"));
    let req = &req;
    let returned_at = wait_for("the ejected endpoint to be picked again", Duration::from_secs(8), || async move {
        let resp = mesh_ref.send(req).await;
        if resp.echo_name().as_deref() == Some("bad") {
            Ok(Instant::now())
        } else {
            Err(format!("{} from {:?}", resp.status, resp.echo_name()))
        }
    })
    .await;
    let out_for = returned_at - ejected_at;
    assert!(
        out_for >= Duration::from_millis(1900),
        "the endpoint came back after {out_for:?}, before its baseEjectionTime of 2s"
    );
    assert_eq!(bad.hits(), 4);
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 0.0).await;
}

/// Scenario: both endpoints always 503 and `consecutive5xxErrors: 2`: after
/// 4 requests (2 per endpoint, passed through) both are ejected and the
/// next request gets meshd's own 503 `no healthy upstream` with flag `UH`
/// (panic threshold `minHealthPercent` defaults to 0: no panic routing);
/// the upstreams see nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_endpoints_ejected_is_503_no_healthy_upstream_uh() {
    let host = "allbad.example.com";
    let (b1, b2) =
        (programmable("bad-1", Behaviour::Status(503)).await, programmable("bad-2", Behaviour::Status(503)).await);
    let yaml = service("allbad", host, &[b1.addr, b2.addr])
        + &destination_rule_with_policy("allbad", NS, host, &outlier_policy(2, "60s"));
    let mesh = Mesh::with(&yaml).await;

    let first = sequence(&mesh, &get(host, "/"), 4).await;
    assert_eq!(
        count(&first),
        only(&[(503, "bad-1", 2), (503, "bad-2", 2)]),
        "the first 4 requests reach the upstreams, round robin: {first:?}"
    );
    for i in 0..5 {
        let resp = mesh.get(host, "/after").await;
        assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "request {i} after both ejections");
        assert_eq!(resp.echo_name(), None, "request {i} must not reach an ejected upstream");
        assert_eq!(resp.text(), "no healthy upstream", "request {i}");
    }
    assert_eq!(b1.hits() + b2.hits(), 4, "ejected upstreams must receive nothing");
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "UH")], 5.0).await;
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "-")], 4.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 2.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_enforced_total", host, 2.0).await;
}

/// Scenario: `maxEjectionPercent: 50` over three endpoints, two of them
/// always 503: the first bad one is ejected (1 of 3 = 33 % ≤ 50 %), the
/// second is not (2 of 3 = 67 % > 50 %: `ejections_overflow`) and keeps
/// receiving its share of traffic (spec §2.7 step 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ejection_percent_caps_the_ejected_hosts() {
    let host = "cap.example.com";
    let good = programmable("good", Behaviour::Ok).await;
    let (b1, b2) =
        (programmable("bad-1", Behaviour::Status(503)).await, programmable("bad-2", Behaviour::Status(503)).await);
    let policy = "loadBalancer: {simple: ROUND_ROBIN}\noutlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50}\n";
    let yaml =
        service("cap", host, &[good.addr, b1.addr, b2.addr]) + &destination_rule_with_policy("cap", NS, host, policy);
    let mesh = Mesh::with(&yaml).await;

    // 2 rounds: both bad hosts reach 2 consecutive 503s; only one is ejected.
    sequence(&mesh, &get(host, "/"), 6).await;
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;
    wait_stat(&mesh, "envoy_cluster_outlier_detection_ejections_overflow", host, ">= 1", |v| v >= 1.0).await;
    let (h1, h2) = (b1.hits(), b2.hits());
    let seen = sequence(&mesh, &get(host, "/"), 40).await;
    let counts = count(&seen);
    let (more1, more2) = (b1.hits() - h1, b2.hits() - h2);
    assert!(
        (more1 == 0) != (more2 == 0),
        "exactly one bad endpoint must be ejected and the other keep getting traffic: bad-1 +{more1}, bad-2 +{more2}; {counts:?}"
    );
    assert_eq!(more1 + more2, 20, "the host left in takes half of the traffic (round robin over 2): {counts:?}");
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;
}

/// Scenario: an endpoint ejected for 60 s stays ejected across reloads that
/// keep it: adding an unrelated service with its VirtualService, then a
/// VirtualService for the service itself (routes only; the cluster is
/// unchanged). After each reload is applied (`meshd_config_version`
/// increases) the ejected endpoint gets no traffic and
/// `ejections_active` is still 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ejection_survives_config_reloads_that_keep_the_endpoint() {
    let host = "sticky-eject.example.com";
    let (g1, g2, bad) = two_good_one_bad().await;
    let config = ConfigDir::new();
    config.write(
        "services.yaml",
        &(service("sticky-eject", host, &[g1.addr, g2.addr, bad.addr])
            + &destination_rule_with_policy("sticky-eject", NS, host, &outlier_policy(3, "60s"))),
    );
    let mesh = Mesh::start(config).await;
    mesh.wait_ready().await;
    eject_bad(&mesh, host, &bad).await;
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;

    // Reload 1: another service and a VirtualService for it.
    let other = echo("other").await;
    mesh.config.write(
        "other.yaml",
        &(service("other", "other.example.com", &[other])
            + &virtual_service(
                "other",
                NS,
                &["other.example.com"],
                "- route:\n  - destination: {host: other.example.com}\n",
            )),
    );
    mesh.wait_reloads("applied", 2.0).await;
    assert_eq!(mesh.metrics().await.sum("meshd_config_version", &[]), 2.0);
    assert_eq!(mesh.get("other.example.com", "/").await.echo_name().as_deref(), Some("other"), "reload 1 applied");
    let after = count(&sequence(&mesh, &get(host, "/after-1"), 30).await);
    assert_eq!(bad.hits(), 3, "the ejected endpoint must stay ejected after reload 1: {after:?}");
    assert_eq!(after.values().sum::<usize>(), 30);
    assert_eq!(after.keys().filter(|(s, _)| *s != 200).count(), 0, "{after:?}");
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;

    // Reload 2: a VirtualService for the service itself (routes change, the
    // cluster does not).
    mesh.config.write(
        "routes.yaml",
        &virtual_service(
            "sticky-eject",
            NS,
            &[host],
            &format!(
                "- match: [{{uri: {{prefix: /v2}}}}]\n  route:\n  - destination: {{host: {host}}}\n- route:\n  - destination: {{host: {host}}}\n"
            ),
        ),
    );
    mesh.wait_reloads("applied", 3.0).await;
    assert_eq!(mesh.metrics().await.sum("meshd_config_version", &[]), 3.0);
    let after = count(&sequence(&mesh, &get(host, "/after-2"), 30).await);
    assert_eq!(bad.hits(), 3, "the ejected endpoint must stay ejected after reload 2: {after:?}");
    assert_eq!(after.keys().filter(|(s, _)| *s != 200).count(), 0, "{after:?}");
    wait_stat_eq(&mesh, "envoy_cluster_outlier_detection_ejections_active", host, 1.0).await;
}

// ---------------------------------------------------------------------------
// Circuit breaking
// ---------------------------------------------------------------------------

/// Scenario: `connectionPool {tcp.maxConnections: 1,
/// http.http1MaxPendingRequests: 1}` and an upstream holding each request
/// 500 ms; 10 clients at once, each on its own connection: one request is
/// served, one waits for the connection, the rest are refused at once with
/// 503 `x-envoy-overloaded: true`, Envoy's overflow body and flag `UO`;
/// the upstream never has more than 2 requests in flight (1 expected);
/// `upstream_rq_pending_overflow` counts the refusals; afterwards the
/// circuit is closed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_pool_overflow_is_503_uo_with_x_envoy_overloaded() {
    let host = "cb.example.com";
    let slow = programmable("slow", Behaviour::Slow(Duration::from_millis(500))).await;
    let policy = "connectionPool:\n  tcp: {maxConnections: 1}\n  http: {http1MaxPendingRequests: 1}\n";
    let yaml = service("cb", host, &[slow.addr]) + &destination_rule_with_policy("cb", NS, host, policy);
    let mesh = Mesh::with(&yaml).await;

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let (http, addr) = (client(), mesh.addr);
        tasks.spawn(async move {
            let started = Instant::now();
            let resp = send(&http, get(host, &format!("/cb/{i}")).build(addr, empty())).await;
            (i, resp, started.elapsed())
        });
    }
    let (mut ok, mut overflowed) = (0usize, 0usize);
    while let Some(done) = tasks.join_next().await {
        let (i, resp, elapsed) = done.expect("client task");
        match resp.status {
            StatusCode::OK => {
                ok += 1;
                assert_eq!(resp.echo_name().as_deref(), Some("slow"), "client {i}");
                assert!(resp.headers.get("x-envoy-overloaded").is_none(), "client {i}: a 200 is not overloaded");
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                overflowed += 1;
                assert_eq!(resp.header("x-envoy-overloaded"), Some("true"), "client {i}: {:?}", resp.headers);
                assert_eq!(resp.echo_name(), None, "client {i}: an overflow never reaches the upstream");
                assert_eq!(
                    resp.text(),
                    "upstream connect error or disconnect/reset before headers. reset reason: overflow",
                    "client {i}"
                );
                assert!(
                    elapsed < Duration::from_millis(450),
                    "client {i}: an overflow must be refused at once, not queued ({elapsed:?})"
                );
            }
            other => panic!("client {i}: unexpected {other} {}", resp.text()),
        }
    }
    assert!(ok >= 1, "at least one request must be served ({ok} ok, {overflowed} overflowed)");
    assert!(overflowed >= 6, "10 concurrent requests over 1 connection + 1 pending: {ok} ok, {overflowed} overflowed");
    assert_eq!(ok + overflowed, 10);
    assert!(slow.max_in_flight() <= 2, "the upstream saw {} requests at once", slow.max_in_flight());
    assert_eq!(slow.hits(), ok, "only served requests reach the upstream");

    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_pending_overflow", host, overflowed as f64).await;
    mesh.wait_requests(
        &[("destination_service", host), ("response_code", "503"), ("response_flags", "UO")],
        overflowed as f64,
    )
    .await;
    // The circuit closes again once the burst is over.
    let resp = mesh.get(host, "/after").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

/// A VirtualService for `host` with one route to it and `extra` route
/// fields (e.g. `retries: {...}`, `timeout: 1s`).
fn route_with(name: &str, host: &str, extra: &str) -> String {
    virtual_service(name, NS, &[host], &format!("- route:\n  - destination: {{host: {host}}}\n{}", indent(extra, 2)))
}

/// Scenario: every 2nd upstream response is 503, route `retries {attempts:
/// 3, retryOn: 5xx}`: 50 requests one after the other are all 200; each
/// failed attempt was retried once (upstream hits = 50 + retries =
/// `upstream_rq_retry`); first attempts carry `x-envoy-attempt-count: 1`,
/// retries `2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_on_5xx_hide_a_flaky_upstream() {
    let host = "flaky.example.com";
    let flaky = programmable("flaky", Behaviour::FailEvery { every: 2, status: 503 }).await;
    let yaml =
        service("flaky", host, &[flaky.addr]) + &route_with("flaky", host, "retries: {attempts: 3, retryOn: 5xx}\n");
    let mesh = Mesh::with(&yaml).await;

    let seen = count(&sequence(&mesh, &get(host, "/flaky"), 50).await);
    assert_eq!(seen, only(&[(200, "flaky", 50)]), "every request must end in a 200");
    let retried = flaky.hits() - 50;
    assert!(retried > 0, "the flaky upstream failed some attempts, so some were retried");
    let attempts = flaky.attempt_counts();
    let ones = attempts.iter().filter(|a| a.as_deref() == Some("1")).count();
    let twos = attempts.iter().filter(|a| a.as_deref() == Some("2")).count();
    assert_eq!((ones, twos), (50, retried), "x-envoy-attempt-count per upstream request: {attempts:?}");
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry", host, retried as f64).await;
    mesh.wait_requests(&[("destination_service", host), ("response_code", "200"), ("response_flags", "-")], 50.0).await;
}

/// Scenario: `retries: {attempts: 0}` disables retrying: with every 2nd
/// upstream response 503, half of 20 requests get the 503 unchanged and
/// the upstream sees exactly 20 requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_attempts_zero_disables_retries() {
    let host = "noretry.example.com";
    let flaky = programmable("flaky", Behaviour::FailEvery { every: 2, status: 503 }).await;
    let yaml = service("noretry", host, &[flaky.addr]) + &route_with("noretry", host, "retries: {attempts: 0}\n");
    let mesh = Mesh::with(&yaml).await;

    let seen = count(&sequence(&mesh, &get(host, "/"), 20).await);
    assert_eq!(seen, only(&[(200, "flaky", 10), (503, "flaky", 10)]), "503s must pass through");
    assert_eq!(flaky.hits(), 20, "no request may be retried");
    assert!(flaky.attempt_counts().iter().all(|a| a.as_deref() == Some("1")), "{:?}", flaky.attempt_counts());
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "-")], 10.0).await;
    assert_eq!(stat(&mesh.metrics().await, "envoy_cluster_upstream_rq_retry", host), 0.0);
}

/// Scenario: an always-503 upstream with `retries {attempts: 2, retryOn:
/// 5xx}`: 3 attempts (attempt counts 1, 2, 3), then the last upstream 503
/// is returned as is, with flag `URX`; `upstream_rq_retry` = 2,
/// `upstream_rq_retry_limit_exceeded` = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_exhausted_return_the_last_503_with_urx() {
    let host = "down503.example.com";
    let down = programmable("down", Behaviour::Status(503)).await;
    let yaml =
        service("down503", host, &[down.addr]) + &route_with("down503", host, "retries: {attempts: 2, retryOn: 5xx}\n");
    let mesh = Mesh::with(&yaml).await;

    let resp = mesh.get(host, "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.echo_name().as_deref(), Some("down"), "the upstream's own 503 is returned");
    assert_eq!(resp.text(), "down 3", "the last attempt's response is returned");
    assert_eq!(down.hits(), 3, "1 + 2 retries");
    assert_eq!(
        down.attempt_counts(),
        vec![Some("1".to_owned()), Some("2".to_owned()), Some("3".to_owned())],
        "x-envoy-attempt-count of each attempt"
    );
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "URX")], 1.0)
        .await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry", host, 2.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry_limit_exceeded", host, 1.0).await;
}

/// Scenario: no `retries` block (Istio's default policy: 2 retries on
/// connect-failure, to another host): two round-robin endpoints, one
/// refusing connections: all 30 requests are 200 from the good one, some
/// after a retry (`upstream_rq_retry` > 0), none flagged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_retry_policy_moves_connect_failures_to_another_endpoint() {
    let host = "halfdown.example.com";
    let good = programmable("good", Behaviour::Ok).await;
    let dead: std::net::SocketAddr = ([127, 0, 0, 1], closed_port()).into();
    let yaml = service("halfdown", host, &[dead, good.addr])
        + &destination_rule("halfdown", NS, host, Some("ROUND_ROBIN"), &[]);
    let mesh = Mesh::with(&yaml).await;

    let seen = count(&sequence(&mesh, &get(host, "/"), 30).await);
    assert_eq!(seen, only(&[(200, "good", 30)]), "connect failures must be retried");
    assert_eq!(good.hits(), 30);
    wait_stat(&mesh, "envoy_cluster_upstream_rq_retry", host, "> 0", |v| v > 0.0).await;
    mesh.wait_requests(&[("destination_service", host), ("response_code", "200"), ("response_flags", "-")], 30.0).await;
}

/// Scenario: every endpoint refuses connections and there is no `retries`
/// block: the default policy retries twice, then answers 503 with Envoy's
/// retried reset body and flags `UF,URX` (Envoy's flag order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_retry_policy_exhausted_on_connect_failures_is_503_uf_urx() {
    let host = "alldown.example.com";
    let dead1: std::net::SocketAddr = ([127, 0, 0, 1], closed_port()).into();
    let dead2: std::net::SocketAddr = ([127, 0, 0, 1], closed_port()).into();
    let yaml = service("alldown", host, &[dead1, dead2]);
    let mesh = Mesh::with(&yaml).await;

    let resp = mesh.get(host, "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure"
    );
    mesh.wait_requests(&[("destination_service", host), ("response_code", "503"), ("response_flags", "UF,URX")], 1.0)
        .await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry", host, 2.0).await;
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

/// Scenario: route `timeout: 0.3s` against an upstream that takes 2 s:
/// 504 `upstream request timeout` after about 0.3 s (well under 1 s), flag
/// `UT`, `upstream_rq_timeout` = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_is_504_ut() {
    let host = "slow.example.com";
    let slow = programmable("slow", Behaviour::Slow(Duration::from_secs(2))).await;
    let yaml = service("slow", host, &[slow.addr]) + &route_with("slow", host, "timeout: 0.3s\n");
    let mesh = Mesh::with(&yaml).await;

    let started = Instant::now();
    let resp = mesh.get(host, "/").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{}", resp.text());
    assert_eq!(resp.text(), "upstream request timeout");
    assert_eq!(resp.echo_name(), None);
    assert!(elapsed < Duration::from_secs(1), "the timeout must fire after 0.3 s, took {elapsed:?}");
    assert!(elapsed >= Duration::from_millis(280), "the timeout fired early, after {elapsed:?}");
    assert_eq!(slow.hits(), 1, "a route timeout is not retried");
    mesh.wait_requests(&[("destination_service", host), ("response_code", "504"), ("response_flags", "UT")], 1.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_timeout", host, 1.0).await;
}

/// Scenario: `retries {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}`
/// against an upstream whose first answer takes 2 s and later ones are
/// immediate: the first attempt times out and the retry succeeds, well
/// under 1 s; the retry carries `x-envoy-attempt-count: 2`;
/// `upstream_rq_per_try_timeout` = 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_is_retried_on_5xx() {
    let host = "pertry.example.com";
    let up = programmable("pertry", Behaviour::SlowFirst { n: 1, delay: Duration::from_secs(2) }).await;
    let yaml = service("pertry", host, &[up.addr])
        + &route_with("pertry", host, "retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: 5xx}\n");
    let mesh = Mesh::with(&yaml).await;

    let started = Instant::now();
    let resp = mesh.get(host, "/").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.text(), "pertry 2", "the second attempt answers");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(up.attempt_counts(), vec![Some("1".to_owned()), Some("2".to_owned())]);
    mesh.wait_requests(&[("destination_service", host), ("response_code", "200"), ("response_flags", "-")], 1.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_per_try_timeout", host, 1.0).await;
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry", host, 1.0).await;
}

/// Scenario: a per-try timeout is retried only when `retryOn` has `5xx`,
/// `gateway-error` or `reset`: with `retryOn: connect-failure` the first
/// slow attempt ends the request with 504 `upstream request timeout`, `UT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_timeout_is_not_retried_on_connect_failure_only() {
    let host = "pertry-cf.example.com";
    let up = programmable("pertry", Behaviour::SlowFirst { n: 1, delay: Duration::from_secs(2) }).await;
    let yaml = service("pertry-cf", host, &[up.addr])
        + &route_with("pertry-cf", host, "retries: {attempts: 2, perTryTimeout: 0.2s, retryOn: connect-failure}\n");
    let mesh = Mesh::with(&yaml).await;

    let started = Instant::now();
    let resp = mesh.get(host, "/").await;
    let elapsed = started.elapsed();
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{}", resp.text());
    assert_eq!(resp.text(), "upstream request timeout");
    assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    assert_eq!(up.hits(), 1, "the per-try timeout must not be retried");
    mesh.wait_requests(&[("destination_service", host), ("response_code", "504"), ("response_flags", "UT")], 1.0).await;
}

// ---------------------------------------------------------------------------
// Consistent hashing
// ---------------------------------------------------------------------------

/// Four echo endpoints `h1`..`h4` of `host` with the `loadBalancer`
/// policy `lb` (YAML under `loadBalancer:`).
async fn hashed(name: &str, host: &str, lb: &str) -> Mesh {
    let mut eps = Vec::new();
    for i in 1..=4 {
        eps.push(echo(&format!("h{i}")).await);
    }
    let policy = format!("loadBalancer:\n{}", indent(lb, 2));
    let yaml = service(name, host, &eps) + &destination_rule_with_policy(name, NS, host, &policy);
    Mesh::with(&yaml).await
}

/// Scenario: `consistentHash {httpHeaderName: x-user}` over 4 endpoints:
/// the 20 requests of each of 40 users all land on one endpoint, and the
/// 40 users are spread over all 4; requests without the header still get
/// served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_header_sticks_each_key_to_one_endpoint() {
    let host = "hash.example.com";
    let mesh = hashed("hash", host, "consistentHash: {httpHeaderName: x-user}\n").await;
    let mut used = BTreeSet::new();
    for user in 0..40 {
        let key = format!("user-{user}");
        let counts = mesh.tally(&get(host, "/").header("x-user", &key), 20, 2).await;
        assert_eq!(counts.len(), 1, "x-user {key} must stick to one endpoint: {counts:?}");
        let ((status, name), n) = counts.into_iter().next().expect("one entry");
        assert_eq!((status, n), (200, 20), "x-user {key}");
        used.insert(name);
    }
    assert_eq!(used.len(), 4, "40 keys must spread over all 4 endpoints, got {used:?}");
    let keyless = mesh.tally(&get(host, "/"), 20, 2).await;
    assert_eq!(keyless.iter().filter(|((s, _), _)| *s == 200).map(|(_, n)| n).sum::<usize>(), 20, "{keyless:?}");
}

/// The `name=value` pair of a `Set-Cookie` header.
fn cookie_pair(set_cookie: &str) -> &str {
    set_cookie.split(';').next().unwrap_or_default().trim()
}

/// Scenario: `consistentHash {httpCookie: {name: session, ttl: 60s}}`: a
/// request without the cookie gets `set-cookie: session=…; Max-Age=60`;
/// sending that cookie back lands every time on the endpoint that answered
/// the first request, without a new `set-cookie`. Explicit cookie values
/// stick too and spread over all endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_by_cookie_generates_the_cookie_and_sticks() {
    let host = "cookie.example.com";
    let mesh = hashed("cookie", host, "consistentHash:\n  httpCookie: {name: session, ttl: 60s}\n").await;

    let first = mesh.get(host, "/login").await;
    assert_eq!(first.status, StatusCode::OK);
    let set_cookie = first.header("set-cookie").expect("a generated session cookie").to_owned();
    let pair = cookie_pair(&set_cookie);
    assert!(pair.starts_with("session=") && pair.len() > "session=".len(), "set-cookie {set_cookie:?}");
    assert!(set_cookie.contains("Max-Age=60"), "the cookie's ttl: {set_cookie:?}");
    let home = first.echo_name().expect("x-echo-name");

    for i in 0..20 {
        let resp = mesh.send(&get(host, "/again").header("cookie", pair)).await;
        assert_eq!(resp.status, StatusCode::OK);
        assert_eq!(resp.echo_name().as_deref(), Some(home.as_str()), "request {i} with {pair:?}");
        assert!(resp.headers.get("set-cookie").is_none(), "request {i}: the cookie is present, none is generated");
    }

    let mut used = BTreeSet::new();
    for s in 0..40 {
        let cookie = format!("other=1; session=s-{s}");
        let counts = mesh.tally(&get(host, "/").header("cookie", &cookie), 5, 1).await;
        assert_eq!(counts.len(), 1, "cookie {cookie:?} must stick to one endpoint: {counts:?}");
        used.insert(counts.into_keys().next().expect("one entry").1);
    }
    assert_eq!(used.len(), 4, "40 session values must spread over all 4 endpoints, got {used:?}");
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

/// Scenario: `/clusters?format=json` lists the cluster `outbound|80||HOST`
/// with every endpoint: `address`, `health` (`ejected` for the ejected
/// one, `healthy` for the others), `ejections`, `ejection_time_left_ms`,
/// `active_requests`, `connections`; the text `/clusters` mentions
/// `ejected` on the ejected endpoint's lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_admin_page_shows_endpoint_health() {
    let host = "admin-eject.example.com";
    let (g1, g2, bad) = two_good_one_bad().await;
    let yaml = service("admin-eject", host, &[g1.addr, g2.addr, bad.addr])
        + &destination_rule_with_policy("admin-eject", NS, host, &outlier_policy(3, "60s"));
    let mesh = Mesh::with(&yaml).await;
    eject_bad(&mesh, host, &bad).await;
    let name = cluster_name(host, PORT);

    let (mesh_ref, name_ref) = (&mesh, &name);
    let endpoints = wait_for(
        "the ejection and no request in flight in /clusters?format=json",
        Duration::from_secs(5),
        || async move {
            let resp = mesh_ref.admin("/clusters?format=json").await;
            if resp.status != StatusCode::OK {
                return Err(format!("{} {}", resp.status, resp.text()));
            }
            let json: serde_json::Value =
                serde_json::from_slice(&resp.body).map_err(|e| format!("not JSON ({e}): {}", resp.text()))?;
            let cluster = json["clusters"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["name"] == name_ref.as_str()))
                .ok_or_else(|| format!("no cluster {name_ref}: {json}"))?;
            let endpoints = cluster["endpoints"].as_array().ok_or_else(|| format!("no endpoints: {cluster}"))?.clone();
            let settled = endpoints.iter().all(|e| e["active_requests"] == 0)
                && endpoints.iter().any(|e| e["health"] == "ejected");
            if settled {
                Ok(endpoints)
            } else {
                Err(cluster.to_string())
            }
        },
    )
    .await;

    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    let by_addr: BTreeMap<String, serde_json::Value> =
        endpoints.iter().map(|e| (e["address"].as_str().unwrap_or("?").to_owned(), e.clone())).collect();
    for up in [&g1, &g2, &bad] {
        let e = by_addr.get(&up.addr.to_string()).unwrap_or_else(|| panic!("no endpoint {}: {endpoints:?}", up.addr));
        assert_eq!(e["active_requests"].as_u64(), Some(0), "{} {e}", up.name());
        assert!(e["connections"].as_u64().is_some(), "{} connections: {e}", up.name());
        if up.name() == "bad" {
            assert_eq!(e["health"], "ejected", "{e}");
            assert_eq!(e["ejections"].as_u64(), Some(1), "{e}");
            let left = e["ejection_time_left_ms"].as_u64().unwrap_or_else(|| panic!("ejection_time_left_ms: {e}"));
            // 60 s from the ejection, plus at most one 1 s sweep interval.
            assert!(left > 0 && left <= 61_000, "ejection time left {left} ms of 60 s: {e}");
        } else {
            assert_eq!(e["health"], "healthy", "{} {e}", up.name());
            assert_eq!(e["ejections"].as_u64(), Some(0), "{} {e}", up.name());
            assert!(
                e["connections"].as_u64().unwrap_or(0) >= 1,
                "{} served keep-alive requests, so holds a connection: {e}",
                up.name()
            );
        }
    }

    let text = mesh.admin("/clusters").await.text();
    let bad_lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("{name}::{}::", bad.addr))).collect();
    assert!(!bad_lines.is_empty(), "no /clusters line for {}: {text}", bad.addr);
    assert!(bad_lines.iter().any(|l| l.contains("ejected")), "the ejected endpoint must show as ejected: {text}");
    // The existing text lines are kept.
    assert!(text.contains(&format!("{name}::{}::rq_active::0", g1.addr)), "{text}");
}

// ---------------------------------------------------------------------------
// Request bodies and retries

/// An upstream that reads each request body whole, answers the first
/// request of every pair 503 and the second 200, and echoes the body's
/// length and digest in `x-body`.
async fn flaky_body_upstream() -> (Upstream, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let seen = hits.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let body = req.into_body().collect().await.map(|c| c.to_bytes()).unwrap_or_default();
            let mut response = Response::new(empty());
            *response.status_mut() = if n % 2 == 1 { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
            let tag = format!("{} {:x}", body.len(), digest(&body));
            response.headers_mut().insert("x-body", HeaderValue::from_str(&tag).expect("header"));
            response
        }
    })
    .await;
    (up, hits)
}

/// Scenario: `retries {attempts: 2, retryOn: 5xx}` and POSTs whose first
/// attempt gets 503. A 64 KiB body with a content-length is kept and sent
/// again whole (the upstream sees the same length and digest on the retry,
/// the client gets 200); a 2 MiB body, over the 1 MiB replay limit, is
/// streamed and not retried (the client gets the upstream's 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_bodies_are_replayed_and_large_ones_are_not_retried() {
    let host = "replay.example.com";
    let (up, hits) = flaky_body_upstream().await;
    let yaml =
        service("replay", host, &[up.addr]) + &route_with("replay", host, "retries: {attempts: 2, retryOn: 5xx}\n");
    let mesh = Mesh::with(&yaml).await;
    let post = get(host, "/upload").method(http::Method::POST);

    let small = pattern(64 * 1024, 7);
    let resp = send(&mesh.client, post.build(mesh.addr, full(small.clone()))).await;
    assert_eq!(resp.status, StatusCode::OK, "the retry of a small body succeeds: {}", resp.text());
    assert_eq!(resp.header("x-body"), Some(format!("{} {:x}", small.len(), digest(&small)).as_str()));
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one retry");

    let large = pattern(2 * 1024 * 1024, 9);
    let resp = send(&mesh.client, post.build(mesh.addr, full(large.clone()))).await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "a large body is not retried");
    assert_eq!(resp.header("x-body"), Some(format!("{} {:x}", large.len(), digest(&large)).as_str()));
    assert_eq!(hits.load(Ordering::SeqCst), 3, "no retry for the large body");
    wait_stat_eq(&mesh, "envoy_cluster_upstream_rq_retry", host, 1.0).await;
}

/// Scenario: no VirtualService timeout, but the client sends
/// `x-envoy-upstream-rq-timeout-ms: 300` (a sidecar honours Envoy's client
/// headers, spec §1.11): a 2 s upstream gives 504 `UT` in under 1 s. The
/// upstream never sees the consumed header, and a request with a route
/// timeout carries `x-envoy-expected-rq-timeout-ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_timeout_header_is_honoured_and_not_forwarded() {
    let host = "client-timeout.example.com";
    let slow = programmable("slow", Behaviour::Slow(Duration::from_secs(2))).await;
    let mesh = Mesh::with(&service("client-timeout", host, &[slow.addr])).await;
    let started = Instant::now();
    let resp = mesh.send(&get(host, "/").header("x-envoy-upstream-rq-timeout-ms", "300")).await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT, "{}", resp.text());
    assert_eq!(resp.text(), "upstream request timeout");
    assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
    let heads = slow.heads();
    assert_eq!(heads.len(), 1);
    assert!(heads[0].get("x-envoy-upstream-rq-timeout-ms").is_none(), "consumed, not forwarded");
    assert_eq!(
        heads[0].get("x-envoy-expected-rq-timeout-ms").and_then(|v| v.to_str().ok()),
        Some("300"),
        "the upstream learns the timeout"
    );
}

/// Scenario: `timeout: 0.5s` and an upstream that sends its headers and a
/// first chunk at once, then stalls for 3 s: the route timeout covers the
/// body too (Envoy's does), so the client's response is cut off (a body
/// error, not a hang) well before the upstream would finish, and the
/// request is recorded as 200 with flag `UT`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_also_bounds_the_response_body() {
    let host = "slow-body.example.com";
    let up = upstream(|_req: Request<Incoming>| async move {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            let _ = tx.send(bytes::Bytes::from_static(b"first")).await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let _ = tx.send(bytes::Bytes::from_static(b"rest")).await;
        });
        Response::new(body)
    })
    .await;
    let yaml = service("slow-body", host, &[up.addr]) + &route_with("slow-body", host, "timeout: 0.5s\n");
    let mesh = Mesh::with(&yaml).await;
    let started = Instant::now();
    let outcome = try_send(&mesh.client, get(host, "/").build(mesh.addr, empty())).await;
    let elapsed = started.elapsed();
    let error = outcome.expect_err("the body must be cut off by the route timeout");
    assert!(error.contains("response body failed"), "{error}");
    assert!(elapsed < Duration::from_secs(2), "cut off after {elapsed:?}");
    mesh.wait_requests(&[("destination_service", host), ("response_code", "200"), ("response_flags", "UT")], 1.0).await;
}
