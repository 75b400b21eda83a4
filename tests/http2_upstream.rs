//! HTTP/2 towards upstreams, over real sockets: which version each
//! cluster speaks (the port's protocol, `h2UpgradePolicy`,
//! `useClientProtocol`), and how streams share connections within
//! `maxConcurrentStreams` and `maxConnections`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{HeaderValue, Request, Response, Version};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};

/// An upstream (HTTP/1.1 and h2c) answering with the version it was
/// called with in `x-version`.
async fn version_upstream() -> Upstream {
    upstream_h1_h2(|req: Request<hyper::body::Incoming>| async move {
        let mut response = Response::new(empty());
        let version = HeaderValue::from_str(&format!("{:?}", req.version())).expect("version");
        response.headers_mut().insert("x-version", version);
        response
    })
    .await
}

/// A ServiceEntry `host` on port 80 with protocol `protocol` (none when
/// empty) and one endpoint, `addr`.
fn service(name: &str, host: &str, protocol: &str, addr: std::net::SocketAddr) -> String {
    let protocol = if protocol.is_empty() { String::new() } else { format!(", protocol: {protocol}") };
    object(
        "ServiceEntry",
        name,
        NS,
        &format!(
            "hosts: [{host}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nports: [{{number: 80, name: web{protocol}}}]\nendpoints: [{{address: 127.0.0.1, ports: {{web: {}}}}}]\n",
            addr.port()
        ),
    )
}

/// The version the upstream saw for `GET /` to `host`, sent over HTTP/1.1
/// or h2c.
async fn upstream_version(mesh: &Mesh, host: &str, h2: bool) -> String {
    let resp = if h2 {
        let stream = tokio::net::TcpStream::connect(mesh.addr).await.expect("connect");
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2");
        tokio::spawn(conn);
        let req = Request::get(format!("http://{host}/")).body(empty()).expect("request");
        let (parts, body) = send.send_request(req).await.expect("h2 request").into_parts();
        let body = body.collect().await.expect("h2 body").to_bytes();
        Resp { status: parts.status, version: parts.version, headers: parts.headers, body }
    } else {
        send(&mesh.client, get(host, "/").build(mesh.addr, empty())).await
    };
    assert_eq!(resp.status, 200, "{host}: {}", resp.text());
    resp.header("x-version").unwrap_or_default().to_owned()
}

/// Scenario: `HTTP2` and `GRPC` ports speak HTTP/2 whatever the client
/// spoke; an `HTTP` port speaks HTTP/1.1 unless its DestinationRule says
/// `h2UpgradePolicy: UPGRADE`; `useClientProtocol` and a port without
/// protocol follow the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_version_follows_the_port_and_the_destination_rule() {
    let up = version_upstream().await;
    let pool = |http: &str| format!("connectionPool:\n  http: {{{http}}}\n");
    let yaml = service("h1", "h1.example", "HTTP", up.addr)
        + &service("h2", "h2.example", "HTTP2", up.addr)
        + &service("grpc", "grpc.example", "GRPC", up.addr)
        + &service("upgrade", "upgrade.example", "HTTP", up.addr)
        + &service("client", "client.example", "HTTP", up.addr)
        + &service("sniffed", "sniffed.example", "", up.addr)
        + &destination_rule_with_policy("upgrade", NS, "upgrade.example", &pool("h2UpgradePolicy: UPGRADE"))
        + &destination_rule_with_policy("client", NS, "client.example", &pool("useClientProtocol: true"));
    let mesh = Mesh::with(&yaml).await;
    let (h1, h2) = ("HTTP/1.1", "HTTP/2.0");
    for (host, from_h1, from_h2) in [
        ("h1.example", h1, h1),
        ("h2.example", h2, h2),
        ("grpc.example", h2, h2),
        ("upgrade.example", h2, h2),
        ("client.example", h1, h2),
        ("sniffed.example", h1, h2),
    ] {
        assert_eq!(upstream_version(&mesh, host, false).await, from_h1, "{host} from an HTTP/1.1 client");
        assert_eq!(upstream_version(&mesh, host, true).await, from_h2, "{host} from an h2c client");
    }
}

/// An h2c upstream that counts requests in flight (and their peak), each
/// held until `in_flight_goal` are in flight at once or `hold` passes.
async fn holding_upstream(in_flight_goal: usize, hold: Duration) -> (Upstream, Arc<AtomicUsize>) {
    let in_flight = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    // Set once the goal was reached: every request held is let go.
    let reached = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (counter, top) = (in_flight.clone(), peak.clone());
    let up = upstream_h1_h2(move |_req| {
        let (counter, top, reached) = (counter.clone(), top.clone(), reached.clone());
        async move {
            let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
            top.fetch_max(now, Ordering::SeqCst);
            if now >= in_flight_goal {
                reached.store(true, Ordering::SeqCst);
            }
            let deadline = tokio::time::Instant::now() + hold;
            while !reached.load(Ordering::SeqCst) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            counter.fetch_sub(1, Ordering::SeqCst);
            Response::new(empty())
        }
    })
    .await;
    (up, peak)
}

/// Sends `n` concurrent `GET /` to `host` through `mesh`; returns their
/// statuses.
async fn concurrent(mesh: &Mesh, host: &str, n: usize) -> Vec<u16> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let (client, req) = (client(), get(host, "/").build(mesh.addr, empty()));
        tasks.spawn(async move { send(&client, req).await.status.as_u16() });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("request task"));
    }
    statuses
}

/// Scenario: with `maxConcurrentStreams: 2`, six requests in flight at
/// once take three HTTP/2 connections; with `maxConnections: 1` as well,
/// they share one connection, at most two at a time, the others pending
/// until a stream ends, and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_share_connections_up_to_max_concurrent_streams() {
    // Every request is held until all six are in flight: only enough
    // connections let that happen.
    let (wide, wide_peak) = holding_upstream(6, Duration::from_secs(5)).await;
    let (narrow, narrow_peak) = holding_upstream(usize::MAX, Duration::from_millis(100)).await;
    let yaml = service("wide", "wide.example", "HTTP2", wide.addr)
        + &service("narrow", "narrow.example", "HTTP2", narrow.addr)
        + &destination_rule_with_policy(
            "wide",
            NS,
            "wide.example",
            "connectionPool:\n  http: {maxConcurrentStreams: 2}\n",
        )
        + &destination_rule_with_policy(
            "narrow",
            NS,
            "narrow.example",
            "connectionPool:\n  tcp: {maxConnections: 1}\n  http: {maxConcurrentStreams: 2}\n",
        );
    let mesh = Mesh::with(&yaml).await;

    let statuses = concurrent(&mesh, "wide.example", 6).await;
    assert_eq!(statuses, [200; 6]);
    assert_eq!(wide_peak.load(Ordering::SeqCst), 6, "all six were in flight at once");
    assert_eq!(wide.connections.load(Ordering::SeqCst), 3, "two streams per connection");

    let statuses = concurrent(&mesh, "narrow.example", 6).await;
    assert_eq!(statuses, [200; 6]);
    assert_eq!(narrow.connections.load(Ordering::SeqCst), 1, "one connection");
    let peak = narrow_peak.load(Ordering::SeqCst);
    assert!((1..=2).contains(&peak), "at most two streams at once, saw {peak}");
}

/// Scenario: a client's `te: trailers` survives to an HTTP/2 upstream, and
/// the request arrives as HTTP/2 with `:authority` from `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_carry_the_authority_and_te_trailers() {
    let up = upstream_h1_h2(|req: Request<hyper::body::Incoming>| async move {
        let mut response = Response::new(empty());
        let seen = format!(
            "{:?} {} te={}",
            req.version(),
            req.uri().authority().map(|a| a.as_str()).unwrap_or("-"),
            req.headers().get("te").and_then(|v| v.to_str().ok()).unwrap_or("-")
        );
        response.headers_mut().insert("x-seen", HeaderValue::from_str(&seen).expect("header"));
        response
    })
    .await;
    let mesh = Mesh::with(&service("h2", "h2.example", "HTTP2", up.addr)).await;
    let resp = mesh.send(&get("h2.example", "/").header("te", "trailers")).await;
    assert_eq!(resp.header("x-seen"), Some("HTTP/2.0 h2.example te=trailers"));
    assert_eq!(resp.version, Version::HTTP_11, "the client still gets HTTP/1.1");
}

/// Scenario: `maxRequestsPerConnection: 2` retires an HTTP/2 connection
/// after two streams: four requests in a row take two connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_retire_after_max_requests() {
    let up = version_upstream().await;
    let yaml = service("h2", "h2.example", "HTTP2", up.addr)
        + &destination_rule_with_policy(
            "h2",
            NS,
            "h2.example",
            "connectionPool:\n  http: {maxRequestsPerConnection: 2}\n",
        );
    let mesh = Mesh::with(&yaml).await;
    for _ in 0..4 {
        assert_eq!(upstream_version(&mesh, "h2.example", false).await, "HTTP/2.0");
    }
    assert_eq!(up.connections.load(Ordering::SeqCst), 2);
}
