//! Upstream faults over real sockets (issue 8, scope 3): each gives
//! Envoy's status and response flag, frees what it held (the request in
//! flight, the connection), feeds outlier detection, and never leaves the
//! client waiting past its timeout.
//!
//! The faulty upstreams are raw TCP servers that misbehave on purpose:
//! refuse, reset mid-response, never answer, stall mid-body, answer with
//! garbage, or close a keep-alive connection right after answering.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What a raw upstream does with each connection once it has read a
/// request head.
#[derive(Clone, Copy)]
enum Misbehaviour {
    /// Headers and half the announced body, then a reset.
    ResetMidBody,
    /// Reads the request and never answers.
    Silent,
    /// Headers and half the body, then nothing (the connection stays open).
    StallMidBody,
    /// Bytes that are not HTTP.
    Garbage,
    /// A complete keep-alive response, then closes the connection.
    AnswerThenClose,
}

/// A raw upstream doing `what`; counts the connections it accepted.
async fn faulty(what: Misbehaviour) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(misbehave(stream, what));
        }
    });
    (addr, accepted)
}

async fn misbehave(mut stream: TcpStream, what: Misbehaviour) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let partial = b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789";
    match what {
        Misbehaviour::ResetMidBody => {
            let _ = stream.write_all(partial).await;
            let _ = stream.flush().await;
            // SO_LINGER 0: close with a reset.
            let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
            drop(stream);
        }
        Misbehaviour::Silent => {
            let _ = stream.read(&mut buf).await;
        }
        Misbehaviour::StallMidBody => {
            let _ = stream.write_all(partial).await;
            let _ = stream.read(&mut buf).await;
        }
        Misbehaviour::Garbage => {
            let _ = stream.write_all(b"\x00\x01garbage that is not HTTP\r\n\r\n").await;
            let _ = stream.read(&mut buf).await;
        }
        Misbehaviour::AnswerThenClose => {
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
            let _ = stream.flush().await;
            // No `connection: close`: meshd may try to reuse it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// meshd with `host` on `upstream`, the VirtualService `http` rule
/// (`retries`, `timeout`…) and the DestinationRule traffic policy `policy`.
async fn mesh_for(host: &str, upstream: std::net::SocketAddr, rule: &str, policy: Option<&str>) -> Mesh {
    let mut yaml = simple_service("faulty", host, upstream)
        + &virtual_service("faulty", NS, &[host], &format!("- route: [{{destination: {{host: {host}}}}}]\n{rule}"));
    if let Some(policy) = policy {
        yaml += &destination_rule_with_policy("faulty", NS, host, policy);
    }
    Mesh::with(&yaml).await
}

/// `response_flags` samples of `istio_requests_total` for `host`.
async fn flagged(mesh: &Mesh, host: &str, code: &str, flags: &str, n: f64) {
    mesh.wait_requests(&[("destination_service", host), ("response_code", code), ("response_flags", flags)], n).await;
}

/// Scenario: a refused connection is 503 `UF`, retried once by Istio's
/// default policy (`URX`), with Envoy's reset text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_is_503_uf_urx() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let mesh = mesh_for("refused.example", dead, "", None).await;
    let resp = mesh.get("refused.example", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(resp.text().contains("retried and the latest reset reason: connection failure"), "{}", resp.text());
    flagged(&mesh, "refused.example", "503", "UF,URX", 1.0).await;
}

/// Scenario: a reset after the headers ends the client's body with an
/// error (the status already sent), flag `UC`; the request is no longer in
/// flight and the connection is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_response_ends_the_body_with_uc() {
    let (addr, _) = faulty(Misbehaviour::ResetMidBody).await;
    let mesh = mesh_for("reset.example", addr, "", None).await;
    let response = mesh.client.request(get("reset.example", "/").build(mesh.addr, empty())).await.expect("headers");
    assert_eq!(response.status(), StatusCode::OK, "the headers were already on their way");
    assert!(response.into_body().collect().await.is_err(), "the body ends in an error, not silently short");
    flagged(&mesh, "reset.example", "200", "UC", 1.0).await;
    let line = format!("outbound|80||reset.example::{addr}::rq_active::0");
    wait_clusters_line(&mesh.client, mesh.admin, "the request no longer in flight", line).await;
    let line = format!("outbound|80||reset.example::{addr}::cx_active::0");
    wait_clusters_line(&mesh.client, mesh.admin, "the connection closed", line).await;
}

/// Scenario: an upstream that never answers gets 504 `UT` at the route
/// timeout, not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_is_504_ut_at_the_route_timeout() {
    let (addr, _) = faulty(Misbehaviour::Silent).await;
    let mesh = mesh_for("silent.example", addr, "  timeout: 300ms\n  retries: {attempts: 0}\n", None).await;
    let started = Instant::now();
    let resp = mesh.get("silent.example", "/").await;
    assert_eq!(resp.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(2), "answered at the timeout: {:?}", started.elapsed());
    flagged(&mesh, "silent.example", "504", "UT", 1.0).await;
    let line = format!("outbound|80||silent.example::{addr}::rq_active::0");
    wait_clusters_line(&mesh.client, mesh.admin, "the request no longer in flight", line).await;
}

/// Scenario: a body that stalls is cut at the route timeout (the stream is
/// reset, flag `UT`), so the client is not left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_body_is_cut_at_the_route_timeout() {
    let (addr, _) = faulty(Misbehaviour::StallMidBody).await;
    let mesh = mesh_for("stall.example", addr, "  timeout: 300ms\n", None).await;
    let started = Instant::now();
    let response = mesh.client.request(get("stall.example", "/").build(mesh.addr, empty())).await.expect("headers");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.into_body().collect().await.is_err(), "the stalled body is cut");
    assert!(started.elapsed() < Duration::from_secs(2), "cut at the timeout: {:?}", started.elapsed());
    flagged(&mesh, "stall.example", "200", "UT", 1.0).await;
}

/// Scenario: garbage instead of HTTP is 502 `UPE`, and counts as a gateway
/// error for outlier detection: with `consecutive5xxErrors: 1` the
/// endpoint is ejected and the next request finds no healthy upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_502_upe_and_feeds_outlier_detection() {
    let (addr, _) = faulty(Misbehaviour::Garbage).await;
    let policy =
        "outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 100}\n";
    let mesh = mesh_for("garbage.example", addr, "  retries: {attempts: 0}\n", Some(policy)).await;
    let resp = mesh.get("garbage.example", "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY);
    assert!(resp.text().contains("protocol error"), "{}", resp.text());
    flagged(&mesh, "garbage.example", "502", "UPE", 1.0).await;
    let line = format!("outbound|80||garbage.example::{addr}::health::ejected");
    wait_clusters_line(&mesh.client, mesh.admin, "the endpoint ejected", line).await;
    let resp = mesh.get("garbage.example", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    flagged(&mesh, "garbage.example", "503", "UH", 1.0).await;
}

/// Scenario: an upstream that closes each keep-alive connection right
/// after answering. A reused connection found dead at checkout is
/// replaced; one that dies after the request was written gives Envoy's
/// `503 UC` (`connection termination`), as Envoy does without retries;
/// with `retryOn: reset` every request succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_keep_alive_connections_are_uc_or_retried() {
    let (addr, accepted) = faulty(Misbehaviour::AnswerThenClose).await;
    let mesh = mesh_for("closing.example", addr, "  retries: {attempts: 0}\n", None).await;
    let mut failed = 0.0;
    for i in 0..20 {
        let resp = mesh.get("closing.example", "/").await;
        match resp.status {
            StatusCode::OK => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                assert!(resp.text().ends_with("reset reason: connection termination"), "{}", resp.text());
                failed += 1.0;
            }
            other => panic!("request {i}: {other}"),
        }
        if i % 2 == 0 {
            // Let the close land before the next request, so that both
            // cases occur: found dead at checkout, or dying on the write.
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    assert!(accepted.load(Ordering::SeqCst) >= 10, "a connection the upstream closed was reused");
    flagged(&mesh, "closing.example", "200", "-", 20.0 - failed).await;
    if failed > 0.0 {
        flagged(&mesh, "closing.example", "503", "UC", failed).await;
    }

    let retried = "  retries: {attempts: 2, retryOn: reset}\n";
    let yaml = simple_service("faulty", "closing.example", addr)
        + &virtual_service(
            "faulty",
            NS,
            &["closing.example"],
            &format!("- route: [{{destination: {{host: closing.example}}}}]\n{retried}"),
        );
    mesh.config.write("reviews.yaml", &yaml);
    mesh.wait_reloads("applied", 2.0).await;
    for i in 0..20 {
        let resp = mesh.get("closing.example", "/").await;
        assert_eq!(resp.status, StatusCode::OK, "request {i} with retryOn reset: {}", resp.text());
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}
