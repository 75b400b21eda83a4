//! `workers > 1`: one runtime thread per worker, each with its own
//! `SO_REUSEPORT` sockets and its own upstream connection pools, over real
//! sockets.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// A proxy with two workers on `yaml`, ready.
async fn two_workers(yaml: &str) -> Mesh {
    let config = ConfigDir::with(yaml);
    let mut options = options(config.path());
    options.workers = 2;
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    mesh
}

/// Scenario: 32 requests, each on a fresh downstream connection, one after
/// the other. The kernel spreads the connections over both workers'
/// sockets (all 32 on one worker has odds of 2^-31), and each worker keeps
/// its own keep-alive connection to the upstream: the upstream accepts
/// exactly two connections. A shared pool would reuse one; a pool that
/// forgot its connections would open up to 32.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_the_connections_and_keep_a_pool_each() {
    let up = upstream(|_req| async { http::Response::new(full("ok")) }).await;
    let mesh = two_workers(&simple_service("api", "api.example.com", up.addr)).await;
    for i in 0..32 {
        let request = format!("GET /{i} HTTP/1.1\r\nHost: api.example.com\r\nConnection: close\r\n\r\n");
        let response = raw_exchange(mesh.addr, request.as_bytes()).await;
        assert!(response.starts_with("HTTP/1.1 200"), "request {i}: {response}");
        assert!(response.ends_with("ok"), "request {i}: {response}");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2, "one upstream connection per worker");
}

/// Scenario: shutdown with requests in flight on both workers: `/ready`
/// turns 503 at once, `wait()` returns once they have completed (well
/// before the 5 s drain timeout), and each request gets its 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_drain_their_requests_in_flight() {
    let (v1, v2) = reviews_upstreams().await;
    let mut mesh = two_workers(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let in_flight: Vec<_> = (0..8)
        .map(|i| {
            // A client each: a fresh connection, so both workers get some.
            let (http, req) = (client(), get("reviews", &format!("/{i}?delay_ms=600")).build(mesh.addr, empty()));
            tokio::spawn(async move { send(&http, req).await })
        })
        .collect();
    let (admin, http) = (mesh.admin, mesh.client.clone());
    let line = format!("outbound|9080|v1|{REVIEWS}::{v1}::rq_active::8");
    wait_clusters_line(&http, admin, "eight requests in flight", line).await;
    let server = mesh.server.take().expect("server");
    server.shutdown();
    let started = Instant::now();
    let ready = get_url(&http, admin, "/ready").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    tokio::time::timeout(Duration::from_secs(4), server.wait()).await.expect("wait() must return once drained");
    assert!(started.elapsed() < Duration::from_secs(3), "drained in {:?}", started.elapsed());
    for request in in_flight {
        let response = tokio::time::timeout(REQUEST_TIMEOUT, request).await.expect("response").expect("task");
        assert_eq!(response.status, StatusCode::OK);
    }
}
