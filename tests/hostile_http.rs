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
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "svc.example.com";

/// A mesh routing `HOST` to a recording upstream, with `options` changed
/// by `tune`.
async fn mesh_with(tune: impl FnOnce(&mut meshd::server::Options)) -> (Mesh, Upstream, Arc<Mutex<Vec<Recorded>>>) {
    mesh_on("", false, tune).await
}

/// [`mesh_with`], with `extra` configuration for `HOST` and an upstream
/// that also speaks h2c when `h2c`.
async fn mesh_on(
    extra: &str,
    h2c: bool,
    tune: impl FnOnce(&mut meshd::server::Options),
) -> (Mesh, Upstream, Arc<Mutex<Vec<Recorded>>>) {
    let (up, seen) = if h2c { recording_upstream_h1_h2().await } else { recording_upstream(&[]).await };
    let config = ConfigDir::with(&(simple_service("svc", HOST, up.addr) + extra));
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

/// A chunked HTTP/1.1 POST to `HOST` of `chunks`, then the last chunk.
fn chunked(chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for chunk in chunks {
        out.extend(format!("{:x}\r\n", chunk.len()).into_bytes());
        out.extend_from_slice(chunk);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

/// Scenario: `--max-request-body 1024` and chunked bodies (no declared
/// length): 2,000 bytes are 413 `DPE` and the connection closes, counted
/// by reason; the upstream never completes a request. With retries on the
/// route (`5xx,reset,connect-failure`) the 413 is not retried: at most one
/// upstream connection. 1,000 bytes in two chunks pass whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_over_the_limit_is_413() {
    let retries = virtual_service(
        "svc",
        NS,
        &[HOST],
        &format!("- route:\n  - destination: {{host: {HOST}}}\n  retries: {{attempts: 2, retryOn: \"5xx,reset,connect-failure\"}}\n"),
    );
    for extra in ["", retries.as_str()] {
        let (mesh, up, seen) = mesh_on(extra, false, |o| o.limits.max_request_body = Some(1024)).await;
        let big = pattern(2000, 1);
        let reply = exchange(mesh.addr, &chunked(&[&big[..600], &big[600..]])).await;
        assert!(reply.starts_with("HTTP/1.1 413 "), "retries {}: {reply:?}", !extra.is_empty());
        assert!(reply.ends_with("request body too large"), "{reply:?}");
        mesh.wait_metric("meshd_downstream_requests_refused_total", &[("reason", "body_too_large")], 1.0).await;
        mesh.wait_requests(&[("response_code", "413"), ("response_flags", "DPE")], 1.0).await;
        assert!(seen.lock().unwrap().iter().all(|r| !r.complete), "{:?}", seen.lock().unwrap());
        assert!(up.connections.load(std::sync::atomic::Ordering::SeqCst) <= 1, "retried");
        let small = pattern(1000, 2);
        let reply = exchange(mesh.addr, &chunked(&[&small[..500], &small[500..]])).await;
        assert!(reply.starts_with("HTTP/1.1 200 "), "{reply:?}");
        let last = seen.lock().unwrap().last().cloned().expect("the small body arrived");
        assert!(last.complete && last.body == small, "{last:?}");
    }
}

/// POSTs `chunks` to `HOST` over h2c (prior knowledge) as a body of
/// unannounced length, then ends it or (`!end`) leaves it open; the
/// response status and body.
async fn h2_post(addr: SocketAddr, chunks: Vec<Vec<u8>>, end: bool) -> (u16, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let (tx, body) = channel_body();
    let feeding = tokio::spawn(async move {
        for chunk in chunks {
            if tx.send(chunk.into()).await.is_err() {
                return;
            }
        }
        if !end {
            std::future::pending::<()>().await;
        }
    });
    let req = http::Request::post(format!("http://{HOST}/")).body(body).expect("request");
    let resp =
        tokio::time::timeout(REQUEST_TIMEOUT, sender.send_request(req)).await.expect("in time").expect("response");
    let status = resp.status().as_u16();
    let body = http_body_util::BodyExt::collect(resp.into_body()).await.map(|c| c.to_bytes()).unwrap_or_default();
    feeding.abort();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Scenario: HTTP/2 without `content-length`, `--max-request-body 1024`:
/// 1,200 bytes in two DATA frames (the stream left open) are 413 and the
/// upstream never completes a request, whether meshd speaks HTTP/1.1
/// (connection closed mid-body) or HTTP/2 (stream reset) to it; 1,000
/// bytes pass whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_body_over_the_limit_is_413() {
    let upgrade =
        destination_rule_with_policy("svc", NS, HOST, "connectionPool:\n  http: {h2UpgradePolicy: UPGRADE}\n");
    for extra in ["", upgrade.as_str()] {
        let (mesh, _up, seen) = mesh_on(extra, true, |o| o.limits.max_request_body = Some(1024)).await;
        let big = pattern(1200, 3);
        let (status, body) = h2_post(mesh.addr, vec![big[..600].to_vec(), big[600..].to_vec()], false).await;
        assert_eq!((status, body.as_str()), (413, "request body too large"), "upstream h2: {}", !extra.is_empty());
        mesh.wait_metric("meshd_downstream_requests_refused_total", &[("reason", "body_too_large")], 1.0).await;
        assert!(seen.lock().unwrap().iter().all(|r| !r.complete), "{:?}", seen.lock().unwrap());
        let small = pattern(1000, 4);
        let (status, _) = h2_post(mesh.addr, vec![small[..500].to_vec(), small[500..].to_vec()], true).await;
        assert_eq!(status, 200);
        let last = seen.lock().unwrap().last().cloned().expect("the small body arrived");
        assert!(last.complete && last.body == small, "{last:?}");
        let want = if extra.is_empty() { http::Version::HTTP_11 } else { http::Version::HTTP_2 };
        assert_eq!(last.version, want);
    }
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

// ---------------------------------------------------------------------------
// HTTP/2 (h2c prior knowledge), written frame by frame
// ---------------------------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK: a header literal, not indexed, with a literal name (both < 127
/// bytes).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00, name.len() as u8];
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
    out
}

/// HPACK: `GET / http` and `:authority: HOST`.
fn get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x84, 0x01, HOST.len() as u8];
    block.extend_from_slice(HOST.as_bytes());
    block
}

/// The frames the server sends until it closes (or `within` passes):
/// `(type, flags, stream, payload)`, and whether it closed.
async fn frames_until_close(stream: &mut TcpStream, within: Duration) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
    let mut raw = Vec::new();
    let closed = tokio::time::timeout(within, stream.read_to_end(&mut raw)).await.is_ok();
    let mut frames = Vec::new();
    let mut at = 0;
    while raw.len() >= at + 9 {
        let len = (usize::from(raw[at]) << 16) | (usize::from(raw[at + 1]) << 8) | usize::from(raw[at + 2]);
        let id = u32::from_be_bytes([raw[at + 5], raw[at + 6], raw[at + 7], raw[at + 8]]) & 0x7fff_ffff;
        let end = (at + 9 + len).min(raw.len());
        frames.push((raw[at + 3], raw[at + 4], id, raw[at + 9..end].to_vec()));
        at = end;
    }
    (frames, closed)
}

async fn h2_connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.expect("preface");
    stream
}

/// Scenario: HTTP/2 `host` disagreeing with `:authority` is 400 and not
/// forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_host_disagreeing_with_authority_is_400() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let mut stream = h2_connect(mesh.addr).await;
    let mut block = get_block();
    block.extend(literal("host", "evil.example.com"));
    let mut out = frame(HEADERS, END_STREAM | END_HEADERS, 1, &block);
    out.extend(frame(GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]));
    stream.write_all(&out).await.expect("write");
    let (frames, _) = frames_until_close(&mut stream, Duration::from_secs(3)).await;
    let response = frames.iter().find(|f| f.0 == HEADERS && f.2 == 1).expect("a response on stream 1");
    // HPACK static index 12 is `:status: 400`.
    assert_eq!(response.3.first(), Some(&0x8c), "{frames:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().is_empty());
}

/// Scenario: rapid reset (CVE-2023-44487): 1,000 streams opened and reset
/// at once end in GOAWAY `ENHANCE_YOUR_CALM` and a closed connection;
/// most never reach the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_ends_the_connection() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let mut stream = h2_connect(mesh.addr).await;
    let block = get_block();
    let mut out = Vec::new();
    for i in 0..1000u32 {
        let id = 2 * i + 1;
        out.extend(frame(HEADERS, END_STREAM | END_HEADERS, id, &block));
        out.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let _ = stream.write_all(&out).await;
    let (frames, closed) = frames_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the connection stayed open");
    let goaway = frames.iter().find(|f| f.0 == GOAWAY).expect("a GOAWAY");
    assert_eq!(goaway.3.get(4..8), Some(&0xbu32.to_be_bytes()[..]), "ENHANCE_YOUR_CALM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let forwarded = seen.lock().unwrap().len();
    assert!(forwarded < 200, "{forwarded} of 1000 reset streams forwarded");
}

/// Scenario: CONTINUATION flood (CVE-2024-27316 family): a header block
/// that never ends, past the 60 KiB header list limit, ends the connection
/// and forwards nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_ends_the_connection() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let mut stream = h2_connect(mesh.addr).await;
    let mut out = frame(HEADERS, END_STREAM, 1, &get_block());
    let filler = literal("x-flood", &"a".repeat(100));
    for _ in 0..3000 {
        out.extend(frame(CONTINUATION, 0, 1, &filler));
    }
    let _ = stream.write_all(&out).await;
    let (frames, closed) = frames_until_close(&mut stream, Duration::from_secs(5)).await;
    assert!(closed, "the connection stayed open; frames: {:?}", frames.iter().map(|f| f.0).collect::<Vec<_>>());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().is_empty());
}

/// Scenario: SETTINGS flood: 20,000 SETTINGS frames from a client that
/// reads no ACKs. h2 answers one at a time and stops reading while the ACK
/// cannot be written, so the flood costs a bounded buffer; meshd keeps
/// serving other connections promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_settings_flood_stays_bounded() {
    let (mesh, _up, seen) = mesh_with(|_| {}).await;
    let mut stream = h2_connect(mesh.addr).await;
    let one = frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let flood: Vec<u8> = one.iter().copied().cycle().take(one.len() * 20_000).collect();
    let writer = tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.write_all(&flood)).await;
        stream
    });
    let start = Instant::now();
    let ok =
        exchange(mesh.addr, format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n").as_bytes()).await;
    assert!(ok.starts_with("HTTP/1.1 200 "), "{ok}");
    assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
    assert_eq!(seen.lock().unwrap().len(), 1);
    drop(writer.await);
}
