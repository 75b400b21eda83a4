//! gRPC through meshd end to end, with a tonic client and a tonic service
//! on real sockets: unary and server-streaming calls over h2c (a `GRPC`
//! ServiceEntry port) and over TLS (a `SIMPLE` Gateway in front, TLS
//! origination behind); trailers and non-OK statuses reach the client
//! intact; `retryOn: unavailable` retries a gRPC failure; metrics carry
//! `request_protocol="grpc"` and `grpc_response_status`.

mod common;

use std::sync::atomic::Ordering;

use common::grpc::{self, ask};
use common::pki::{server_config, Pki};
use common::*;
use tonic::Code;

const HOST: &str = "grpc.example.com";

/// A ServiceEntry for [`HOST`] with one `GRPC` port 80 on `upstream`.
fn grpc_service(upstream: std::net::SocketAddr) -> String {
    object(
        "ServiceEntry",
        "grpc",
        NS,
        &format!(
            "hosts: [{HOST}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nports: [{{number: 80, name: grpc, protocol: GRPC}}]\nendpoints: [{{address: 127.0.0.1, ports: {{grpc: {}}}, labels: {{app: echo}}}}]\n",
            upstream.port()
        ),
    )
}

/// Scenario: over h2c, a unary call and a server stream pass through,
/// reaching the service over HTTP/2 with the client's `:authority`; a
/// unary failure and a stream that fails after two messages reach the
/// client with their codes, messages and trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_passes_messages_trailers_and_statuses() {
    let upstream = grpc::serve(None, 0).await;
    let mesh = Mesh::with(&grpc_service(upstream.addr)).await;
    let mut client = grpc::client(mesh.addr, HOST, None).await;

    let reply = grpc::say(&mut client, ask("hello", 0, Code::Ok)).await.expect("unary call");
    assert_eq!(reply.message, "hello");
    assert_eq!(reply.authority, HOST, "the service sees the client's :authority");
    assert_eq!(reply.version, "HTTP/2.0", "a GRPC port is reached over HTTP/2");

    let (replies, end) = grpc::count(&mut client, ask("tick", 3, Code::Ok)).await;
    assert_eq!(replies.iter().map(|r| r.message.as_str()).collect::<Vec<_>>(), ["tick 0", "tick 1", "tick 2"]);
    assert!(end.is_ok(), "the stream ends OK: {end:?}");

    let failed = grpc::say(&mut client, ask("missing", 0, Code::NotFound)).await.expect_err("NOT_FOUND");
    assert_eq!(failed.code(), Code::NotFound);
    assert_eq!(failed.message(), "failed: missing");

    let (replies, end) = grpc::count(&mut client, ask("detail-42", 2, Code::ResourceExhausted)).await;
    assert_eq!(replies.len(), 2, "the messages before the failure arrive");
    let status = end.expect_err("the stream fails");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(status.message(), "stream failed");
    assert_eq!(status.metadata().get("x-detail").and_then(|v| v.to_str().ok()), Some("detail-42"), "trailers pass");

    let grpc_requests = |status: &'static str| {
        [("request_protocol", "grpc"), ("grpc_response_status", status), ("destination_service", HOST)]
    };
    mesh.wait_requests(&grpc_requests("0"), 2.0).await;
    mesh.wait_requests(&grpc_requests("5"), 1.0).await;
    mesh.wait_requests(&grpc_requests("8"), 1.0).await;
}

/// Scenario: TLS at both ends. The client speaks gRPC over TLS (ALPN h2)
/// to a `SIMPLE` Gateway; meshd originates TLS to a service that only
/// speaks HTTP/2 over TLS. Unary, streaming and a failing stream's
/// trailers all pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_gateway_and_tls_origination() {
    let pki = Pki::new();
    let (front_cert, front_key) = pki.leaf("front", &[HOST]);
    let (back_cert, back_key) = pki.leaf("back", &[HOST]);
    let upstream = grpc::serve(Some(server_config(&back_cert, &back_key, &[b"h2"])), 0).await;
    let port = closed_port();
    let ca = pki.path("ca.pem");
    let yaml = grpc_service(upstream.addr)
        + &object(
            "DestinationRule",
            "grpc",
            NS,
            &format!("host: {HOST}\ntrafficPolicy:\n  tls: {{mode: SIMPLE, caCertificates: {ca}}}\n"),
        )
        + &object(
            "Gateway",
            "front",
            NS,
            &format!(
                "servers:\n- port: {{number: {port}, name: https, protocol: HTTPS}}\n  hosts: [{HOST}]\n  tls: {{mode: SIMPLE, serverCertificate: {front_cert}, privateKey: {front_key}}}\n"
            ),
        )
        + &object(
            "VirtualService",
            "front",
            NS,
            &format!("hosts: [{HOST}]\ngateways: [front]\nhttp:\n- route: [{{destination: {{host: {HOST}}}}}]\n"),
        );
    let mesh = Mesh::with(&yaml).await;
    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let ca_pem = std::fs::read_to_string(&ca).expect("ca.pem");
    let mut client = grpc::client(gateway, HOST, Some(&ca_pem)).await;

    let reply = wait_for("the gateway's TLS port", std::time::Duration::from_secs(5), || {
        let mut client = client.clone();
        async move { grpc::say(&mut client, ask("secure", 0, Code::Ok)).await.map_err(|s| s.to_string()) }
    })
    .await;
    assert_eq!(reply.message, "secure");
    assert_eq!(reply.version, "HTTP/2.0");

    let (replies, end) = grpc::count(&mut client, ask("tls-detail", 2, Code::PermissionDenied)).await;
    assert_eq!(replies.len(), 2);
    let status = end.expect_err("the stream fails");
    assert_eq!(status.code(), Code::PermissionDenied);
    assert_eq!(status.metadata().get("x-detail").and_then(|v| v.to_str().ok()), Some("tls-detail"));
    mesh.wait_requests(&[("request_protocol", "grpc"), ("grpc_response_status", "7")], 1.0).await;
}

/// Scenario: `retryOn: unavailable` hides a service whose first call
/// fails with UNAVAILABLE (a trailers-only response): the client sees OK,
/// and the service saw two calls. With `retryOn: cancelled` it is not
/// retried. (The request body has no announced length: it is copied as it
/// streams.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_is_retried() {
    let upstream = grpc::serve(None, 1).await;
    let vs = |on: &str| {
        let http = format!("- route: [{{destination: {{host: {HOST}}}}}]\n  retries: {{attempts: 2, retryOn: {on}}}\n");
        virtual_service("grpc", NS, &[HOST], &http)
    };
    let mesh = Mesh::with(&(grpc_service(upstream.addr) + &vs("unavailable"))).await;
    let mut client = grpc::client(mesh.addr, HOST, None).await;
    let reply = grpc::say(&mut client, ask("again", 0, Code::Ok)).await.expect("retried to success");
    assert_eq!(reply.message, "again");
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 2);

    // Without the condition, UNAVAILABLE reaches the client.
    let upstream = grpc::serve(None, 1).await;
    mesh.config.write("reviews.yaml", &(grpc_service(upstream.addr) + &vs("cancelled")));
    mesh.wait_reloads("applied", 2.0).await;
    let failed = grpc::say(&mut client, ask("once", 0, Code::Ok)).await.expect_err("not retried");
    assert_eq!(failed.code(), Code::Unavailable);
    assert_eq!(upstream.calls.load(Ordering::SeqCst), 1);
}

/// Scenario: meshd's own error replies reach a gRPC client the way Envoy
/// sends them, as trailers-only responses: no route is UNIMPLEMENTED, a
/// refused connection is UNAVAILABLE with Envoy's reset text, and metrics
/// record `response_code="200"` with the gRPC status and the flag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_replies_to_grpc_clients_are_grpc_statuses() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let mesh = Mesh::with(&grpc_service(dead)).await;

    let mut nowhere = grpc::client(mesh.addr, "nowhere.example.com", None).await;
    let status = grpc::say(&mut nowhere, ask("x", 0, Code::Ok)).await.expect_err("no route");
    assert_eq!(status.code(), Code::Unimplemented);

    let mut client = grpc::client(mesh.addr, HOST, None).await;
    let status = grpc::say(&mut client, ask("x", 0, Code::Ok)).await.expect_err("connection refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(status.message().starts_with("upstream connect error"), "{}", status.message());
    let labels = [("response_code", "200"), ("grpc_response_status", "14"), ("response_flags", "UF,URX")];
    mesh.wait_requests(&labels, 1.0).await;
    mesh.wait_requests(&[("grpc_response_status", "12"), ("response_flags", "NR")], 1.0).await;
}
