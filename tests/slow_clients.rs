//! Slow clients (issue 8, scope 2): slowloris heads, idle keep-alive
//! connections (HTTP/1.1 and HTTP/2), connections that never send a byte
//! and request bodies that stall are closed by their timeout (the idle
//! timeout, or the request body timeout's 408 `SI`), counted in
//! `meshd_downstream_timeouts_total{kind}`, and leave nothing complete at
//! the upstream. Timeouts are set short through the options; waits are
//! conditions with deadlines.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "svc.example.com";

/// A mesh routing `HOST` to a recording upstream with the given request
/// headers and idle timeouts.
async fn mesh_with(headers: Duration, idle: Duration) -> (Mesh, Upstream, Arc<Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[]).await;
    let config = ConfigDir::with(&simple_service("svc", HOST, up.addr));
    let mut options = options(config.path());
    options.limits.request_headers_timeout = headers;
    options.limits.idle_timeout = idle;
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    (mesh, up, seen)
}

/// Reads until the server closes `stream`; panics past `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    assert!(read.is_ok(), "connection still open after {within:?}: read {:?}", String::from_utf8_lossy(&out));
    String::from_utf8_lossy(&out).into_owned()
}

async fn timeouts(mesh: &Mesh, kind: &str) -> f64 {
    mesh.metrics().await.sum("meshd_downstream_timeouts_total", &[("kind", kind)])
}

/// Scenario: slowloris: a head sent a byte every 50 ms is cut off by the
/// request headers timeout (400 ms) though bytes keep coming; nothing is
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_head_is_cut_off() {
    let (mesh, _up, seen) = mesh_with(Duration::from_millis(400), Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let start = Instant::now();
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}", "a".repeat(200));
    for byte in head.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        if start.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(start.elapsed() < Duration::from_secs(3), "closed after {:?}", start.elapsed());
    mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "request_headers")], 1.0).await;
    assert!(seen.lock().unwrap().is_empty());
}

/// Scenario: a connection that never sends a byte is closed by the
/// request headers timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connection_is_closed() {
    let (mesh, _up, seen) = mesh_with(Duration::from_millis(300), Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let reply = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert_eq!(reply, "");
    mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "request_headers")], 1.0).await;
    mesh.wait_metric("meshd_downstream_connections_active", &[], 0.0).await;
    assert!(seen.lock().unwrap().is_empty());
}

/// Scenario: an HTTP/1.1 keep-alive connection left idle after a response
/// is closed by the request headers timeout (hyper runs it while waiting
/// for the next head).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connection_is_closed() {
    let (mesh, _up, seen) = mesh_with(Duration::from_millis(300), Duration::from_secs(60)).await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    stream.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
    let reply = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "request_headers")], 1.0).await;
}

/// Scenario: a request body that stalls after 10 of 100 bytes: the idle
/// timeout (300 ms) closes the connection; the upstream never gets the
/// whole body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_cut_off() {
    let (mesh, _up, seen) = mesh_with(Duration::from_secs(60), Duration::from_millis(300)).await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789");
    stream.write_all(head.as_bytes()).await.expect("write");
    closed_within(&mut stream, Duration::from_secs(3)).await;
    mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "idle")], 1.0).await;
    mesh.wait_metric("meshd_downstream_connections_active", &[], 0.0).await;
    wait_until("the upstream request ended", Duration::from_secs(5), || async { seen.lock().unwrap().len() <= 1 })
        .await;
    assert!(seen.lock().unwrap().iter().all(|r| r.body.len() < 100), "{:?}", seen.lock().unwrap());
}

/// Scenario: an idle HTTP/2 connection (h2c) is closed by the idle
/// timeout; hyper's HTTP/2 server has none of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http2_connection_is_closed() {
    let (mesh, _up, seen) = mesh_with(Duration::from_secs(60), Duration::from_millis(300)).await;
    let stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(format!("http://{HOST}/")).body(empty()).expect("request");
    let resp = sender.send_request(req).await.expect("response");
    assert_eq!(resp.status(), 200);
    drop(resp);
    let ended = tokio::time::timeout(Duration::from_secs(3), conn).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection was not closed");
    assert_eq!(seen.lock().unwrap().len(), 1);
    assert!(timeouts(&mesh, "idle").await >= 1.0);
}

/// Scenario: a busy connection is not idle: 10 requests 100 ms apart on
/// one connection with a 300 ms idle timeout all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_connection_stays_open() {
    let (mesh, _up, seen) = mesh_with(Duration::from_secs(60), Duration::from_millis(300)).await;
    let addr: SocketAddr = mesh.addr;
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut buf = vec![0u8; 4096];
    for _ in 0..10 {
        stream.write_all(format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await.expect("write");
        let n =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await.expect("reply").expect("read");
        assert!(buf[..n].starts_with(b"HTTP/1.1 200 "), "{}", String::from_utf8_lossy(&buf[..n]));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 10);
    assert_eq!(timeouts(&mesh, "idle").await, 0.0);
}

/// A mesh routing `HOST` (with `extra` configuration) to a recording
/// upstream, with `--request-body-timeout 300ms`.
async fn mesh_with_body_timeout(extra: &str) -> (Mesh, Upstream, Arc<Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[]).await;
    let config = ConfigDir::with(&(simple_service("svc", HOST, up.addr) + extra));
    let mut options = options(config.path());
    options.limits.request_body_timeout = Duration::from_millis(300);
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    (mesh, up, seen)
}

/// Scenario: a request body stalls (10 of 100 declared bytes; or one
/// chunk of a chunked body) with `--request-body-timeout 300ms`: 408
/// `stream timeout` flagged `SI`, the connection closed, counted in
/// `meshd_downstream_timeouts_total{kind="request_body"}`; the upstream
/// never completes the request. With retries on the route
/// (`5xx,reset,connect-failure`; the declared body is then read whole
/// first, the chunked one copied as it streams) it is not retried: at most
/// one upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_is_408() {
    let retries = virtual_service(
        "svc",
        "default",
        &[HOST],
        &format!("- route:\n  - destination: {{host: {HOST}}}\n  retries: {{attempts: 2, retryOn: \"5xx,reset,connect-failure\"}}\n"),
    );
    let declared = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 100\r\n\r\n0123456789");
    let chunked = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n");
    for (extra, head) in [("", &declared), (retries.as_str(), &declared), (retries.as_str(), &chunked)] {
        let (mesh, up, seen) = mesh_with_body_timeout(extra).await;
        let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
        let start = Instant::now();
        stream.write_all(head.as_bytes()).await.expect("write");
        let reply = closed_within(&mut stream, Duration::from_secs(3)).await;
        let case = format!("retries {}, {head:?}", !extra.is_empty());
        assert!(reply.starts_with("HTTP/1.1 408 "), "{case}: {reply:?}");
        assert!(reply.ends_with("stream timeout"), "{case}: {reply:?}");
        assert!(start.elapsed() >= Duration::from_millis(300), "{case}: after {:?}", start.elapsed());
        mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "request_body")], 1.0).await;
        mesh.wait_requests(&[("response_code", "408"), ("response_flags", "SI")], 1.0).await;
        assert!(seen.lock().unwrap().iter().all(|r| !r.complete), "{case}: {:?}", seen.lock().unwrap());
        assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 1, "{case}: retried");
        assert_eq!(timeouts(&mesh, "idle").await, 0.0);
    }
}

/// Scenario: a slow but steady chunked body, a chunk every 100 ms for
/// 1 s, is not cut off by a 300 ms request body timeout: 200, and the
/// upstream gets it whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_request_body_passes() {
    let (mesh, _up, seen) = mesh_with_body_timeout("").await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut sent = Vec::new();
    for i in 0..10u8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let chunk = [b'a' + i; 10];
        stream.write_all(format!("a\r\n{}\r\n", String::from_utf8_lossy(&chunk)).as_bytes()).await.expect("chunk");
        sent.extend_from_slice(&chunk);
    }
    stream.write_all(b"0\r\n\r\n").await.expect("end");
    let reply = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:?}");
    let recorded = seen.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert!(recorded[0].complete && recorded[0].body == sent, "{recorded:?}");
    assert_eq!(timeouts(&mesh, "request_body").await, 0.0);
}

/// Scenario: the response has started (the upstream echoes the body back
/// as it comes) when the request body stalls: the 300 ms request body
/// timeout cuts the response short and closes the connection, flags the
/// request `SI` (not an upstream failure) and counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_request_body_cuts_a_started_response() {
    let up = echo_back_upstream().await;
    let config = ConfigDir::with(&simple_service("svc", HOST, up.addr));
    let mut options = options(config.path());
    options.limits.request_body_timeout = Duration::from_millis(300);
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    let mut stream = TcpStream::connect(mesh.addr).await.expect("connect");
    let head = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let reply = closed_within(&mut stream, Duration::from_secs(3)).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:?}");
    assert!(reply.contains("0123456789") && !reply.ends_with("0\r\n\r\n"), "not cut short: {reply:?}");
    mesh.wait_metric("meshd_downstream_timeouts_total", &[("kind", "request_body")], 1.0).await;
    mesh.wait_requests(&[("response_code", "200"), ("response_flags", "SI")], 1.0).await;
}
