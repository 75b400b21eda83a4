//! Hostile HTTP (issue 8, scope 1): request smuggling forms, malformed
//! heads and over-limit requests are refused with their status and never
//! reach the upstream; HTTP/2 abuse ends the connection;
//! `--max-connections` closes the connections over it.
//!
//! Each request goes as raw bytes over a fresh `TcpStream`; a recording
//! upstream counts what arrives. See `src/proxy/limits.rs` for which of
//! these hyper refuses and which meshd does.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "svc.example.com";

/// A mesh routing `HOST` to a recording upstream, with `options` changed
/// by `tune`.
async fn mesh_with(tune: impl FnOnce(&mut meshd::server::Options)) -> (Mesh, Upstream, Arc<Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[]).await;
    let config = ConfigDir::with(&simple_service("svc", HOST, up.addr));
    let mut options = options(config.path());
    tune(&mut options);
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    (mesh, up, seen)
}

/// Writes `bytes` and reads until the server closes; what was read and
/// `[open]` when it has not closed within 3 s.
async fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may refuse and close before everything is written.
    let _ = stream.write_all(bytes).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut out)).await;
    let mut text = String::from_utf8_lossy(&out).into_owned();
    if read.is_err() {
        text.push_str("[open]");
    }
    text
}

/// Sends each `(what, request)` and asserts `status` and that nothing
/// reached the upstream; then that a good request still does.
async fn refused(mesh: &Mesh, seen: &Mutex<Vec<Recorded>>, status: u16, cases: &[(&str, Vec<u8>)]) {
    for (what, request) in cases {
        let reply = exchange(mesh.addr, request).await;
        let want = format!("HTTP/1.1 {status} ");
        assert!(reply.starts_with(&want), "{what}: want {status}, got {reply:?}");
        assert!(!reply.ends_with("[open]"), "{what}: connection left open: {reply:?}");
        // Give a request that slipped through time to arrive.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let forwarded = seen.lock().unwrap().len();
        assert_eq!(forwarded, 0, "{what}: forwarded: {:?}", seen.lock().unwrap());
    }
    let ok =
        exchange(mesh.addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert_eq!(seen.lock().unwrap().len(), 1);
}

fn req(head: &str) -> Vec<u8> {
    head.replace("HOST", HOST).into_bytes()
}

/// Scenario: smuggling forms are refused with 400 and not forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_forms_are_refused_with_400() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let cases = [
        (
            "two content-lengths",
            req("POST / HTTP/1.1\r\nHost: HOST\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"),
        ),
        ("content-length list", req("POST / HTTP/1.1\r\nHost: HOST\r\nContent-Length: 3, 4\r\n\r\nabcd")),
        (
            "te chunked, identity",
            req("POST / HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "te xchunked",
            req("POST / HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "te vertical tab",
            req("POST / HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding:\x0bchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "te on HTTP/1.0",
            req("POST / HTTP/1.0\r\nHost: HOST\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        (
            "space before colon",
            req("POST / HTTP/1.1\r\nHost: HOST\r\nTransfer-Encoding : chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
        ),
        ("header name with space", req("GET / HTTP/1.1\r\nHost: HOST\r\nX Bad: 1\r\n\r\n")),
        ("NUL in value", req("GET / HTTP/1.1\r\nHost: HOST\r\nX-Bad: a\0b\r\n\r\n")),
        ("CR in value", req("GET / HTTP/1.1\r\nHost: HOST\r\nX-Bad: a\rb\r\n\r\n")),
        ("asterisk form GET", req("GET * HTTP/1.1\r\nHost: HOST\r\n\r\n")),
        ("absolute form vs Host", req("GET http://HOST/ HTTP/1.1\r\nHost: evil.example.com\r\n\r\n")),
        ("two Hosts", req("GET / HTTP/1.1\r\nHost: HOST\r\nHost: evil.example.com\r\n\r\n")),
        ("bad content-length", req("POST / HTTP/1.1\r\nHost: HOST\r\nContent-Length: -1\r\n\r\n")),
        ("bad header name char", req("GET / HTTP/1.1\r\nHost: HOST\r\nX(bad): 1\r\n\r\n")),
    ];
    refused(&mesh, &seen, 400, &cases).await;
}

/// Scenario: a bad chunk size ends the request before the body reaches
/// the upstream whole: the upstream never records a complete request, and
/// the connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_chunk_sizes_never_complete_upstream() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    for size in ["zz", "-1", "ffffffffffffffffff", " 3", "3\n"] {
        let request =
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nabc\r\n0\r\n\r\n");
        let reply = exchange(mesh.addr, request.as_bytes()).await;
        assert!(!reply.starts_with("HTTP/1.1 200 "), "chunk size {size:?}: {reply:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        let recorded = seen.lock().unwrap().clone();
        assert!(recorded.iter().all(|r| r.body.is_empty()), "chunk size {size:?}: {recorded:?}");
    }
}

/// Scenario: bare LF line ends. httparse accepts them (RFC 9112 §2.2
/// lets a recipient), and meshd forwards a request re-serialised with CRLF:
/// a header hidden behind a bare LF is a header for meshd and the upstream
/// alike, so nothing can be smuggled past either. One request arrives,
/// with the header the bare LF introduced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_heads_are_read_one_way() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let request =
        format!("GET / HTTP/1.1\nHost: {HOST}\nX-Hidden: 1\nConnection: close\n\nGET /second HTTP/1.1\r\n\r\n");
    let reply = exchange(mesh.addr, request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 200 "), "{reply}");
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recorded = seen.lock().unwrap().clone();
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].headers.get("x-hidden").map(|v| v.as_bytes()), Some(&b"1"[..]));
}

/// Scenario: Content-Length with Transfer-Encoding. hyper reads the body
/// as chunked, drops the length and closes the connection after the
/// response (RFC 9112 §6.3): the upstream sees one chunked request and no
/// `Content-Length`, and the bytes after it are never read as a second
/// request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_chunked_cannot_smuggle() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let smuggled = format!("GET /smuggled HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    let request = format!(
        "POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
    );
    let reply = exchange(mesh.addr, request.as_bytes()).await;
    assert_eq!(reply.matches("HTTP/1.1 ").count(), 1, "{reply}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    let recorded = seen.lock().unwrap().clone();
    assert!(recorded.iter().all(|r| r.uri.path() != "/smuggled"), "{recorded:?}");
    assert!(recorded.iter().all(|r| !r.headers.contains_key("content-length") || r.body.is_empty()), "{recorded:?}");
}

/// Scenario: oversized heads: 431 for too many headers or too many bytes
/// of headers, 414 for a long target; none forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_are_refused() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(61 * 1024));
    let cases = [
        ("101 headers", req(&format!("GET / HTTP/1.1\r\nHost: HOST\r\n{many}\r\n"))),
        ("61 KiB header", req(&format!("GET / HTTP/1.1\r\nHost: HOST\r\n{big}\r\n"))),
    ];
    refused(&mesh, &seen, 431, &cases).await;
    seen.lock().unwrap().clear();
    let long = format!("/{}", "a".repeat(meshd::proxy::limits::MAX_URI_BYTES));
    let cases = [("8 KiB target", req(&format!("GET {long} HTTP/1.1\r\nHost: HOST\r\n\r\n")))];
    refused(&mesh, &seen, 414, &cases).await;
}

/// Scenario: `--max-request-body 10`: a declared longer body is 413 and
/// not forwarded; 10 bytes pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_over_the_limit_is_413() {
    let (mesh, _up, seen) = mesh_with(|o| o.limits.max_request_body = Some(10)).await;
    let cases = [("11 bytes", req("POST / HTTP/1.1\r\nHost: HOST\r\nContent-Length: 11\r\n\r\n01234567890"))];
    refused(&mesh, &seen, 413, &cases).await;
    let ok = exchange(
        mesh.addr,
        format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nContent-Length: 10\r\nConnection: close\r\n\r\n0123456789")
            .as_bytes(),
    )
    .await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
}

/// Scenario: `--max-connections 2`: a third connection is accepted and
/// closed at once, counted; once one closes, a new one is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let (mesh, _up, seen) = mesh_with(|o| o.limits.max_connections = Some(2)).await;
    let first = TcpStream::connect(mesh.addr).await.expect("connect");
    let second = TcpStream::connect(mesh.addr).await.expect("connect");
    mesh.wait_metric("meshd_downstream_connections_active", &[], 2.0).await;
    let reply = exchange(mesh.addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes()).await;
    assert_eq!(reply, "", "the third connection is closed without a reply");
    mesh.wait_metric("meshd_downstream_connections_refused_total", &[], 1.0).await;
    assert!(seen.lock().unwrap().is_empty());
    drop((first, second));
    mesh.wait_metric("meshd_downstream_connections_active", &[], 0.0).await;
    let ok =
        exchange(mesh.addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
}
