//! `x-forwarded-client-cert` (XFCC) and `x-forwarded-proto` at Gateway
//! listeners over real sockets, with certificates made in the test: a
//! `MUTUAL` server replaces a client's forged XFCC with the element Envoy
//! builds from the client's certificate (By, Hash, Subject, URI, DNS);
//! `SIMPLE` and clear-text Gateway ports remove it; the mesh listener
//! leaves it alone.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::pki::{der_of, tls_connect, Pki};
use common::*;
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{CertificateParams, DistinguishedName, DnType, SanType};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// What a client sends to pass as someone else.
const FORGED: &str = "By=spiffe://cluster.local/ns/default/sa/victim;Hash=0000;URI=spiffe://evil";
/// The SPIFFE identity in the client's certificate.
const CLIENT_ID: &str = "spiffe://cluster.local/ns/default/sa/client";
/// The SPIFFE identity in the gateway's certificate (XFCC's `By`).
const GATEWAY_ID: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account";

/// meshd with a Gateway `front` holding `servers`, a VirtualService
/// routing `a.example` on it and `web` on the mesh listener to one
/// recording upstream.
async fn front(servers: &str) -> (Mesh, Arc<Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[]).await;
    let yaml = gateway_to_web(up.addr, servers, &["a.example"])
        + &virtual_service("web", NS, &["web"], "- route: [{destination: {host: web}}]\n");
    let mesh = Mesh::with(&yaml).await;
    (mesh, seen)
}

/// A client trusting `pki`'s CA that presents the certificate `cert`
/// (PEM file) with `key`, offering `alpn`.
fn client_with_cert(pki: &Pki, cert: &str, key: &str, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(Path::new(cert)).expect("read cert").map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("read key");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(&pki.path("ca.pem"))).expect("add CA");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// `GET https://a.example/` claiming to be `FORGED` and to have come over
/// plain HTTP.
fn forged_request() -> Request<TestBody> {
    Request::get("https://a.example/")
        .header("host", "a.example")
        .header("x-forwarded-client-cert", FORGED)
        .header("x-forwarded-proto", "http")
        .body(empty())
        .expect("request")
}

/// Lower-case hex SHA-256 of `der`, as XFCC's `Hash`.
fn sha256_hex(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der).as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The headers the upstream saw on its last request: XFCC (all its
/// values) and x-forwarded-proto.
fn last_seen(seen: &Mutex<Vec<Recorded>>) -> (Vec<String>, String) {
    let seen = seen.lock().expect("recorded requests");
    let last = seen.last().expect("a request reached the upstream");
    let xfcc = last.headers.get_all("x-forwarded-client-cert").iter().map(|v| v.to_str().expect("ASCII").to_owned());
    let proto = last.headers.get("x-forwarded-proto").map(|v| v.to_str().expect("ASCII").to_owned());
    (xfcc.collect(), proto.unwrap_or_default())
}

/// Scenario: through a `MUTUAL` server the upstream sees
/// `x-forwarded-proto: https` and, instead of the client's forged XFCC,
/// one element naming the gateway's URI SAN (`By`), the SHA-256 of the
/// client's certificate, its subject, URI SAN and DNS SAN; on every
/// request of a keep-alive HTTP/1.1 connection, and over h2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_gateway_replaces_xfcc_with_the_client_certificate() {
    let pki = Pki::new();
    let mut server = CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
    server.subject_alt_names.push(SanType::URI(GATEWAY_ID.try_into().expect("URI")));
    let (cert, key) = pki.leaf_with("gateway", server);
    let mut client = CertificateParams::new(vec!["client.example".to_owned()]).expect("params");
    client.subject_alt_names.push(SanType::URI(CLIENT_ID.try_into().expect("URI")));
    let mut subject = DistinguishedName::new();
    subject.push(DnType::OrganizationName, "meshd tests");
    subject.push(DnType::CommonName, "client");
    client.distinguished_name = subject;
    let (client_cert, client_key) = pki.leaf_with("client", client);
    let ca = pki.path("ca.pem");
    let port = closed_port();
    let (_mesh, seen) = front(&format!(
        "- port: {{number: {port}, name: https, protocol: HTTPS}}\n  hosts: [a.example]\n  tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}\n"
    ))
    .await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let expected = format!(
        "By={GATEWAY_ID};Hash={};Subject=\"CN=client,O=meshd tests\";URI={CLIENT_ID};DNS=client.example",
        sha256_hex(der_of(&client_cert).as_ref())
    );

    let h1 = client_with_cert(&pki, &client_cert, &client_key, b"http/1.1");
    let (tls, _, _) = wait_for("the HTTPS port", Duration::from_secs(5), || {
        let client = h1.clone();
        async move { tls_connect(addr, "a.example", client).await.map_err(|e| e.to_string()) }
    })
    .await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP/1.1");
    tokio::spawn(conn);
    for _ in 0..2 {
        // A keep-alive connection takes its next request once ready.
        send.ready().await.expect("connection ready");
        assert_eq!(send.send_request(forged_request()).await.expect("response").status(), StatusCode::OK);
        assert_eq!(last_seen(&seen), (vec![expected.clone()], "https".to_owned()));
    }

    let h2 = client_with_cert(&pki, &client_cert, &client_key, b"h2");
    let (tls, _, alpn) = tls_connect(addr, "a.example", h2).await.expect("TLS");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2");
    tokio::spawn(conn);
    let mut req = forged_request();
    req.headers_mut().remove("host");
    send.ready().await.expect("connection ready");
    assert_eq!(send.send_request(req).await.expect("response").status(), StatusCode::OK);
    assert_eq!(last_seen(&seen), (vec![expected], "https".to_owned()));
}

/// Scenario: a client's XFCC is removed on a `SIMPLE` HTTPS server and on
/// a clear-text Gateway port (nothing vouches for it there), and passes
/// untouched through the mesh listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_listeners_remove_or_keep_a_client_supplied_xfcc() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("a", &["a.example"]);
    let (https_port, http_port) = (closed_port(), closed_port());
    let (mesh, seen) = front(&format!(
        "- port: {{number: {https_port}, name: https, protocol: HTTPS}}\n  hosts: [a.example]\n  tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n- port: {{number: {http_port}, name: http, protocol: HTTP}}\n  hosts: [a.example]\n"
    ))
    .await;

    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let anonymous = pki.client(&[b"http/1.1"]);
    let (tls, _, _) = wait_for("the HTTPS port", Duration::from_secs(5), || {
        let client = anonymous.clone();
        async move { tls_connect(https, "a.example", client).await.map_err(|e| e.to_string()) }
    })
    .await;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.expect("HTTP/1.1");
    tokio::spawn(conn);
    send.ready().await.expect("connection ready");
    assert_eq!(send.send_request(forged_request()).await.expect("response").status(), StatusCode::OK);
    assert_eq!(last_seen(&seen), (vec![], "https".to_owned()), "SIMPLE: removed");

    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let forged = get("a.example", "/").header("x-forwarded-client-cert", FORGED);
    let resp = wait_for("the HTTP port", Duration::from_secs(5), || async {
        try_send(&client(), forged.build(http, empty())).await
    })
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(last_seen(&seen), (vec![], "http".to_owned()), "clear-text Gateway port: removed");

    let resp = mesh.send(&get("web", "/").header("x-forwarded-client-cert", FORGED)).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(last_seen(&seen), (vec![FORGED.to_owned()], "http".to_owned()), "mesh listener: untouched");
}
