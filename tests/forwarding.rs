//! Forwarding over real sockets: headers the proxy adds and removes,
//! bodies streamed both ways (large ones too), HTTP/2 (h2c prior knowledge)
//! downstream, keep-alive reuse on both sides, and upstream failures
//! (503 `UF`, 503 `UC`, 502 `UPE`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Scenario: hop-by-hop headers (standard ones and those `Connection`
/// names) are removed in both directions; `x-forwarded-for` gets the client
/// address appended, `x-forwarded-proto` is set, `x-request-id` is kept or
/// generated (UUIDv4, distinct per request), `x-envoy-attempt-count: 1`
/// goes upstream and `x-envoy-upstream-service-time` comes back; `TE:
/// trailers` survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_and_hop_by_hop_headers_removed() {
    let (up, seen) = recording_upstream(&[
        ("connection", "x-up-secret"),
        ("x-up-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-connection", "keep-alive"),
        ("x-up-kept", "yes"),
    ])
    .await;
    let mesh = Mesh::with(&simple_service("hdr", "hdr.example.com", up.addr)).await;

    let resp = mesh
        .send(
            &get("hdr.example.com", "/hdr?q=1")
                .header("connection", "keep-alive, x-secret")
                .header("x-secret", "s")
                .header("keep-alive", "timeout=5")
                .header("proxy-connection", "keep-alive")
                .header("proxy-authorization", "Basic Zm9vOmJhcg==")
                .header("te", "gzip")
                .header("x-forwarded-for", "10.1.2.3")
                .header("x-forwarded-proto", "https")
                .header("x-request-id", "req-123")
                .header("x-kept", "yes"),
        )
        .await;
    assert_eq!(resp.status, StatusCode::OK);
    for gone in ["x-up-secret", "keep-alive", "proxy-connection"] {
        assert!(resp.headers.get(gone).is_none(), "response header {gone} must be removed: {:?}", resp.headers);
    }
    assert_eq!(resp.header("x-up-kept"), Some("yes"));
    let service_time = resp.header("x-envoy-upstream-service-time").expect("x-envoy-upstream-service-time");
    assert!(service_time.parse::<u64>().is_ok(), "service time {service_time:?} must be milliseconds");

    let first = seen.lock().unwrap()[0].clone();
    for gone in ["connection", "x-secret", "keep-alive", "proxy-connection", "proxy-authorization", "te"] {
        assert!(first.headers.get(gone).is_none(), "request header {gone} must be removed: {:?}", first.headers);
    }
    let h = |name: &str| first.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    assert_eq!(h("x-forwarded-for").as_deref(), Some("10.1.2.3, 127.0.0.1"));
    assert_eq!(h("x-forwarded-proto").as_deref(), Some("http"));
    assert_eq!(h("x-request-id").as_deref(), Some("req-123"));
    assert_eq!(h("x-envoy-attempt-count").as_deref(), Some("1"));
    assert_eq!(h("x-kept").as_deref(), Some("yes"));
    assert_eq!(h("host").as_deref(), Some("hdr.example.com"));
    assert_eq!(first.uri, "/hdr?q=1", "origin-form target upstream");
    assert_eq!(first.version, Version::HTTP_11);

    // No x-request-id: one is generated, a fresh UUIDv4 per request.
    mesh.send(&get("hdr.example.com", "/a")).await;
    mesh.send(&get("hdr.example.com", "/b").header("te", "trailers")).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let ids: Vec<String> = seen[1..]
        .iter()
        .map(|r| r.headers.get("x-request-id").expect("generated x-request-id").to_str().unwrap().to_owned())
        .collect();
    for id in &ids {
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("x-request-id {id:?} is not a UUID: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
    }
    assert_ne!(ids[0], ids[1]);
    assert_eq!(seen[1].headers.get("x-forwarded-for").map(|v| v.as_bytes()), Some(&b"127.0.0.1"[..]));
    assert_eq!(seen[2].headers.get("te").map(|v| v.as_bytes()), Some(&b"trailers"[..]));
}

/// Scenario: the upstream's status code and body pass through unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_status_and_body_pass_through() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v2"))).await;
    for status in [200u16, 201, 204, 404, 418, 500, 503] {
        let resp = mesh.get("reviews", &format!("/s?status={status}")).await;
        assert_eq!(resp.status.as_u16(), status);
        assert_eq!(resp.echo_name().as_deref(), Some("reviews-v2"), "status {status} must come from the upstream");
        if status != 204 {
            assert_eq!(resp.json()["path"], "/s");
        }
    }
    let head = mesh.send(&get("reviews", "/head").method(Method::HEAD)).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
}

/// Scenario: an absolute-form request target is forwarded in origin form.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absolute_form_request_is_forwarded_in_origin_form() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let raw = raw_exchange(
        mesh.addr,
        b"GET http://reviews.default.svc.cluster.local/abs?x=1 HTTP/1.1\r\nHost: reviews.default.svc.cluster.local\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(raw.starts_with("HTTP/1.1 200 OK\r\n"), "{raw}");
    assert!(raw.contains("x-echo-name: reviews-v1\r\n"), "{raw}");
    assert!(raw.contains(r#""path":"/abs""#), "{raw}");
}

/// Scenario: the request body is streamed: the upstream receives the first
/// chunk before the client has sent the rest; then 8 MiB more arrive
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_body_is_streamed_to_the_upstream() {
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let up = upstream(move |req: Request<Incoming>| {
        let arrived_tx = arrived_tx.clone();
        async move {
            let mut body = req.into_body();
            let mut all = Vec::new();
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.expect("request body frame").into_data() {
                    all.extend_from_slice(&data);
                    let _ = arrived_tx.send(all.len());
                }
            }
            Response::new(full(format!("{} {}", all.len(), digest(&all))))
        }
    })
    .await;
    let mesh = Mesh::with(&simple_service("sink", "sink.example.com", up.addr)).await;

    let (tx, body) = channel_body();
    let req = get("sink.example.com", "/upload").method(Method::POST).build(mesh.addr, body);
    let client = mesh.client.clone();
    let exchange = tokio::spawn(async move { send(&client, req).await });
    tx.send(Bytes::from_static(b"first")).await.expect("send first chunk");
    let got = tokio::time::timeout(Duration::from_secs(5), arrived.recv()).await.expect(
        "the upstream must receive the first chunk while the client is still sending (request body not streamed)",
    );
    assert_eq!(got, Some(5));
    let rest = pattern(8 << 20, 7);
    for chunk in rest.chunks(64 << 10) {
        tx.send(Bytes::copy_from_slice(chunk)).await.expect("send chunk");
    }
    drop(tx);
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("upload").expect("task");
    let mut all = b"first".to_vec();
    all.extend_from_slice(&rest);
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.text(), format!("{} {}", all.len(), digest(&all)));
}

/// Scenario: the response body is streamed: the client reads the first
/// chunk while the upstream still holds the rest; then 8 MiB more arrive
/// intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_body_is_streamed_to_the_client() {
    let (up, mut senders) = held_response_upstream().await;
    let mesh = Mesh::with(&simple_service("source", "source.example.com", up.addr)).await;

    let req = get("source.example.com", "/download").build(mesh.addr, empty());
    let response =
        tokio::time::timeout(REQUEST_TIMEOUT, mesh.client.request(req)).await.expect("headers").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let upstream_tx =
        tokio::time::timeout(REQUEST_TIMEOUT, senders.recv()).await.expect("upstream sender").expect("sender");
    let mut body = response.into_body();
    let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the client must get the first chunk while the upstream holds the rest (response body not streamed)")
        .expect("a frame")
        .expect("frame ok")
        .into_data()
        .expect("data");
    assert_eq!(&first[..], b"first");
    let rest = pattern(8 << 20, 11);
    let feeder = {
        let rest = rest.clone();
        tokio::spawn(async move {
            for chunk in rest.chunks(64 << 10) {
                upstream_tx.send(Bytes::copy_from_slice(chunk)).await.expect("send chunk");
            }
        })
    };
    let got =
        tokio::time::timeout(REQUEST_TIMEOUT, body.collect()).await.expect("rest of body").expect("body").to_bytes();
    feeder.await.expect("feeder");
    assert_eq!((got.len(), digest(&got)), (rest.len(), digest(&rest)));
}

/// Scenario: a 16 MiB request body goes to an upstream that streams it
/// back; the client gets exactly the same 16 MiB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_body_round_trip() {
    let up = echo_back_upstream().await;
    let mesh = Mesh::with(&simple_service("mirror", "mirror.example.com", up.addr)).await;
    let data = pattern(16 << 20, 3);
    let req = get("mirror.example.com", "/big").method(Method::PUT).build(mesh.addr, full(data.clone()));
    let resp = send(&mesh.client, req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo_name().as_deref(), Some("echo-back"));
    assert_eq!((resp.body.len(), digest(&resp.body)), (data.len(), digest(&data)));
}

/// An HTTP/2 prior-knowledge connection to the proxy.
async fn h2_connect(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await.expect("h2 handshake");
    tokio::spawn(conn);
    send
}

async fn h2_send(send: &mut hyper::client::conn::http2::SendRequest<TestBody>, req: Request<TestBody>) -> Resp {
    let exchange = async {
        let response = send.send_request(req).await.expect("h2 request");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("h2 body").to_bytes();
        Resp { status: parts.status, version: parts.version, headers: parts.headers, body }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("h2 exchange timed out")
}

/// Scenario: HTTP/2 with prior knowledge (h2c) downstream: routing by
/// `:authority` (port ignored), header matches, 20 concurrent streams on
/// one connection, the upstream getting `Host` from `:authority`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_downstream() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_demo_routes())).await;
    let send = h2_connect(mesh.addr).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let mut send = send.clone();
        tasks.spawn(async move {
            let mut req = Request::builder().uri(format!("http://reviews.default:9080/h2/{i}"));
            if i % 2 == 0 {
                req = req.header("end-user", "jason");
            }
            (i, h2_send(&mut send, req.body(empty()).expect("request")).await)
        });
    }
    let mut seen = 0;
    while let Some(done) = tasks.join_next().await {
        let (i, resp) = done.expect("stream task");
        assert_eq!(resp.status, StatusCode::OK, "stream {i}: {}", resp.text());
        assert_eq!(resp.version, Version::HTTP_2);
        let name = resp.echo_name().expect("x-echo-name");
        if i % 2 == 0 {
            assert_eq!(name, "reviews-v2", "stream {i}: jason goes to v2");
        } else {
            assert!(name == "reviews-v1" || name == "reviews-v2", "{name}");
        }
        let json = resp.json();
        assert_eq!(json["host"], "reviews.default:9080", "upstream Host from :authority");
        assert_eq!(json["path"], format!("/h2/{i}"));
        seen += 1;
    }
    assert_eq!(seen, 20);
    // One downstream connection carried all the streams.
    mesh.wait_metric("meshd_downstream_connections_active", &[], 1.0).await;
    let mut send = send;
    let unknown = h2_send(&mut send, Request::builder().uri("http://nowhere.example/").body(empty()).unwrap()).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}

/// Scenario: over h2c, a 4 MiB request body streams to an echo-back
/// upstream (HTTP/1.1) and returns intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_large_body_round_trip() {
    let up = echo_back_upstream().await;
    let mesh = Mesh::with(&simple_service("mirror", "mirror.example.com", up.addr)).await;
    let mut send = h2_connect(mesh.addr).await;
    let data = pattern(4 << 20, 5);
    let req =
        Request::builder().method(Method::POST).uri("http://mirror.example.com/big").body(full(data.clone())).unwrap();
    let resp = h2_send(&mut send, req).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!((resp.body.len(), digest(&resp.body)), (data.len(), digest(&data)));
}

/// Scenario: keep-alive on both sides: 50 sequential requests use one
/// downstream connection and one pooled upstream connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_reuses_connections_on_both_sides() {
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let mesh = Mesh::with(&simple_service("ka", "ka.example.com", up.addr)).await;
    // One downstream connection, 50 requests one after the other.
    let stream = tokio::net::TcpStream::connect(mesh.addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake::<_, TestBody>(TokioIo::new(stream)).await.expect("handshake");
    tokio::spawn(conn);
    for i in 0..50 {
        send.ready()
            .await
            .unwrap_or_else(|e| panic!("the proxy closed the keep-alive connection before request {i}: {e}"));
        let req = Request::builder().uri("/").header("host", "ka.example.com").body(empty()).expect("request");
        let resp =
            tokio::time::timeout(REQUEST_TIMEOUT, send.send_request(req)).await.expect("timeout").expect("request");
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        assert_eq!(&body[..], b"ok");
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the upstream connection must be pooled and reused"
    );
    mesh.wait_metric("meshd_downstream_connections_active", &[], 1.0).await;
    let clusters = mesh.admin("/clusters").await.text();
    assert!(clusters.contains(&format!("outbound|80||ka.example.com::{}::cx_idle::1", up.addr)), "{clusters}");
    assert!(clusters.contains(&format!("outbound|80||ka.example.com::{}::rq_active::0", up.addr)), "{clusters}");

    // Two requests on one raw connection: the second is answered too.
    let mut stream = tokio::net::TcpStream::connect(mesh.addr).await.expect("connect");
    stream.write_all(b"GET /1 HTTP/1.1\r\nHost: ka.example.com\r\n\r\nGET /2 HTTP/1.1\r\nHost: ka.example.com\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_string(&mut out)).await.expect("read").expect("read ok");
    assert_eq!(out.matches("HTTP/1.1 200 OK\r\n").count(), 2, "{out}");
}

/// Scenario: an endpoint nobody listens on: 503 with Envoy's reset body and
/// flag `UF`. Istio's default retry policy retries connect failures twice,
/// so the body says `retried and the latest` and the flags add `URX`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_503_uf() {
    let port = closed_port();
    let mesh = Mesh::with(&simple_service("down", "down.example.com", ([127, 0, 0, 1], port).into())).await;
    let resp = mesh.get("down.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.text(),
        "upstream connect error or disconnect/reset before headers. retried and the latest reset reason: connection failure"
    );
    mesh.wait_requests(
        &[("response_code", "503"), ("response_flags", "UF,URX"), ("destination_service", "down.example.com")],
        1.0,
    )
    .await;
}

/// A raw TCP upstream that reads a request head and then writes `reply`
/// (possibly nothing) and closes.
async fn raw_upstream(reply: &'static [u8]) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(reply).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// Scenario: the upstream closes the connection before answering: 503,
/// flag `UC`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_before_headers_is_503_uc() {
    let addr = raw_upstream(b"").await;
    let mesh = Mesh::with(&simple_service("closer", "closer.example.com", addr)).await;
    let resp = mesh.get("closer.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        resp.text(),
        "upstream connect error or disconnect/reset before headers. reset reason: connection termination"
    );
    mesh.wait_requests(&[("response_code", "503"), ("response_flags", "UC")], 1.0).await;
}

/// Scenario: the upstream answers something that is not HTTP: 502, flag
/// `UPE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_protocol_error_is_502_upe() {
    let addr = raw_upstream(b"this is not http\r\n\r\n").await;
    let mesh = Mesh::with(&simple_service("garbage", "garbage.example.com", addr)).await;
    let resp = mesh.get("garbage.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::BAD_GATEWAY, "{}", resp.text());
    assert_eq!(resp.text(), "upstream connect error or disconnect/reset before headers. reset reason: protocol error");
    mesh.wait_requests(&[("response_code", "502"), ("response_flags", "UPE")], 1.0).await;
}

/// Scenario: the client goes away in the middle of a streamed response:
/// the request is recorded with the upstream's status and flag `DC`, the
/// endpoint's in-flight count returns to 0, and the half-used upstream
/// connection is not pooled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_response_is_recorded_as_dc() {
    let (up, mut senders) = held_response_upstream().await;
    let mesh = Mesh::with(&simple_service("stream", "stream.example.com", up.addr)).await;

    let mut stream = tokio::net::TcpStream::connect(mesh.addr).await.expect("connect");
    stream.write_all(b"GET /s HTTP/1.1\r\nHost: stream.example.com\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("first") {
        let n = tokio::time::timeout(REQUEST_TIMEOUT, stream.read(&mut buf)).await.expect("read").expect("read ok");
        assert!(n > 0, "connection closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
    drop(stream);

    // Keep the upstream writing so the proxy notices the closed socket.
    let upstream_tx = senders.recv().await.expect("upstream sender");
    let labels = [("response_code", "200"), ("response_flags", "DC"), ("destination_service", "stream.example.com")];
    wait_for("the request recorded with flag DC", Duration::from_secs(5), || {
        let (upstream_tx, mesh, labels) = (upstream_tx.clone(), &mesh, &labels);
        async move {
            let _ = upstream_tx.try_send(Bytes::from(vec![b'x'; 16 << 10]));
            let m = mesh.metrics().await;
            if m.sum("istio_requests_total", labels) == 1.0 {
                Ok(())
            } else {
                Err(m.show("istio_requests_total"))
            }
        }
    })
    .await;
    let clusters = mesh.admin("/clusters").await.text();
    assert!(clusters.contains(&format!("::{}::rq_active::0", up.addr)), "{clusters}");
    assert!(
        clusters.contains(&format!("::{}::cx_idle::0", up.addr)),
        "a connection with an unfinished response must not be pooled: {clusters}"
    );
}

/// Scenario: `Expect: 100-continue`: the proxy answers `100 Continue`
/// itself, then streams the body; the upstream never sees `Expect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_by_the_proxy() {
    let (up, seen) = recording_upstream(&[]).await;
    let mesh = Mesh::with(&simple_service("expect", "expect.example.com", up.addr)).await;
    let mut stream = tokio::net::TcpStream::connect(mesh.addr).await.expect("connect");
    stream
        .write_all(b"POST /e HTTP/1.1\r\nHost: expect.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
            .await
            .expect("the proxy must answer 100 Continue before the body is sent")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 100 Continue\r\n"), "{}", String::from_utf8_lossy(&got));
    stream.write_all(b"hello").await.unwrap();
    let mut rest = String::new();
    tokio::time::timeout(REQUEST_TIMEOUT, stream.read_to_string(&mut rest)).await.expect("response").expect("read");
    let all = String::from_utf8_lossy(&got).into_owned() + &rest;
    assert!(all.contains("HTTP/1.1 200 OK\r\n") && all.ends_with("recorded"), "{all}");
    let seen = seen.lock().unwrap();
    assert_eq!(&seen[0].body[..], b"hello");
    assert!(seen[0].headers.get("expect").is_none(), "{:?}", seen[0].headers);
}

/// An upstream whose responses send `first` and then wait; the test gets
/// each response's body sender to finish (or drop) it.
async fn held_response_upstream() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<tokio::sync::mpsc::Sender<Bytes>>)
{
    let (senders_tx, senders) = tokio::sync::mpsc::unbounded_channel();
    let up = upstream(move |_req: Request<Incoming>| {
        let senders_tx = senders_tx.clone();
        async move {
            let (tx, body) = channel_body();
            tx.send(Bytes::from_static(b"first")).await.expect("first chunk");
            let _ = senders_tx.send(tx);
            Response::new(body)
        }
    })
    .await;
    (up, senders)
}
