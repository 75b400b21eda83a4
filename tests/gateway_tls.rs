//! TLS termination on Gateway `HTTPS` servers over real sockets, with
//! certificates made in the test: two SNI names with two certificates
//! (one from files, one from `credentialName` under `--credentials-dir`),
//! HTTP/1.1 and h2 by ALPN, `x-forwarded-proto: https` upstream, a
//! certificate rotated on disk served to the next connection while an
//! open one keeps working, and `MUTUAL` refusing clients without a
//! certificate.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{der_of, tls_connect, Pki};
use common::*;
use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Sends `GET /` with `Host: host` over an open TLS stream (HTTP/1.1 or
/// h2) and returns the status.
async fn get_over<S>(stream: S, h2: bool, host: &str) -> StatusCode
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let req = Request::get(format!("https://{host}/")).header("host", host).body(empty()).unwrap();
    let io = TokioIo::new(stream);
    let status = if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await.unwrap();
        tokio::spawn(conn);
        let mut req = req;
        req.headers_mut().remove("host");
        send.ready().await.unwrap();
        send.send_request(req).await.unwrap().status()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.ready().await.unwrap();
        send.send_request(req).await.unwrap().status()
    };
    status
}

/// meshd with a Gateway `front` whose HTTPS port holds `servers`, a
/// VirtualService for `a.example` and `b.example` bound to it, and a
/// recording upstream.
async fn https_gateway(
    servers: &str,
    credentials: Option<&Path>,
) -> (Mesh, std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[]).await;
    let yaml = gateway_to_web(up.addr, servers, &["a.example", "b.example"]);
    let config = ConfigDir::with(&yaml);
    let mut opts = options(config.path());
    opts.credentials_dir = credentials.map(Path::to_path_buf);
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    (mesh, seen)
}

/// Scenario: two SNI names, two certificates; HTTP/1.1 and h2 by ALPN;
/// the upstream sees `x-forwarded-proto: https`; a certificate rotated on
/// disk is served to new connections (meshd notices, no reload asked for)
/// while an open connection keeps working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_and_rotation_reaches_new_connections() {
    let pki = Pki::new();
    let (a_cert, a_key) = pki.leaf("a", &["a.example"]);
    let (b_cert, b_key) = pki.leaf("b", &["b.example"]);
    let credentials = Pki::credentials_dir("b-cred", &b_cert, &b_key);
    let port = closed_port();
    let servers = format!(
        "- port: {{number: {port}, name: https-a, protocol: HTTPS}}\n  hosts: [a.example]\n  tls: {{mode: SIMPLE, serverCertificate: {a_cert}, privateKey: {a_key}}}\n- port: {{number: {port}, name: https-b, protocol: HTTPS}}\n  hosts: [b.example]\n  tls: {{mode: SIMPLE, credentialName: b-cred}}\n"
    );
    let (_mesh, seen) = https_gateway(&servers, Some(credentials.path())).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let client = pki.client(&[b"h2", b"http/1.1"]);
    let h1_client = pki.client(&[b"http/1.1"]);

    let (tls, leaf, _) = wait_for("the HTTPS port", Duration::from_secs(5), || {
        let client = h1_client.clone();
        async move { tls_connect(addr, "a.example", client).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(leaf, der_of(&a_cert), "SNI a.example gets a's certificate");
    assert_eq!(get_over(tls, false, "a.example").await, StatusCode::OK);
    let seen_proto = seen.lock().unwrap().last().map(|r| r.headers["x-forwarded-proto"].clone());
    assert_eq!(seen_proto.unwrap(), "https");

    let (tls, leaf, alpn) = tls_connect(addr, "b.example", client.clone()).await.unwrap();
    assert_eq!(leaf, der_of(&b_cert), "SNI b.example gets the credential's certificate");
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
    assert_eq!(get_over(tls, true, "b.example").await, StatusCode::OK);

    // An open connection, kept across the rotation.
    let (old_tls, _, _) = tls_connect(addr, "a.example", h1_client.clone()).await.unwrap();
    let (mut old, conn) = hyper::client::conn::http1::handshake(TokioIo::new(old_tls)).await.unwrap();
    tokio::spawn(conn);
    let rotated = Pki::new();
    let (new_cert, new_key) = rotated.leaf("a2", &["a.example"]);
    std::fs::copy(&new_cert, &a_cert).unwrap();
    std::fs::copy(&new_key, &a_key).unwrap();
    // No reload asked for: meshd notices the files changed.
    let rotated_client = rotated.client(&[b"http/1.1"]);
    let leaf = wait_for("the rotated certificate", Duration::from_secs(10), || {
        let client = rotated_client.clone();
        async move {
            match tls_connect(addr, "a.example", client).await {
                Ok((_, leaf, _)) => Ok(leaf),
                Err(e) => Err(e.to_string()),
            }
        }
    })
    .await;
    assert_eq!(leaf, der_of(&new_cert));
    let req = Request::get("https://a.example/").header("host", "a.example").body(empty()).unwrap();
    assert_eq!(old.send_request(req).await.unwrap().status(), StatusCode::OK, "the open connection still works");
}

/// Scenario: a `MUTUAL` server refuses a client without a certificate and
/// serves one with a certificate from its CA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("a", &["a.example"]);
    let (client_cert, client_key) = pki.leaf("client", &["client.example"]);
    let ca = pki.path("ca.pem");
    let port = closed_port();
    let servers = format!(
        "- port: {{number: {port}, name: https, protocol: HTTPS}}\n  hosts: [\"*\"]\n  tls: {{mode: MUTUAL, serverCertificate: {cert}, privateKey: {key}, caCertificates: {ca}}}\n"
    );
    let (_mesh, _) = https_gateway(&servers, None).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));

    let anonymous = pki.client(&[b"http/1.1"]);
    let refused = wait_for("the HTTPS port", Duration::from_secs(5), || {
        let client = anonymous.clone();
        async move {
            match tls_connect(addr, "a.example", client).await {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(e.to_string()),
                other => Ok(other.map(|_| ())),
            }
        }
    })
    .await;
    // TLS 1.3 reports a missing client certificate after the handshake:
    // either the handshake or the first request fails.
    if let Ok(()) = refused {
        let (tls, _, _) = tls_connect(addr, "a.example", anonymous).await.unwrap();
        let io = TokioIo::new(tls);
        let sent = async {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            let req = Request::get("https://a.example/").header("host", "a.example").body(empty()).unwrap();
            send.send_request(req).await
        };
        assert!(sent.await.is_err(), "a client without a certificate must not be served");
    }

    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(Path::new(&client_cert)).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(&client_key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der_of(&ca)).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let (tls, _, _) = tls_connect(addr, "a.example", Arc::new(config)).await.unwrap();
    assert_eq!(get_over(tls, false, "a.example").await, StatusCode::OK);
}
