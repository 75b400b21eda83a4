//! TLS origination over real sockets, with certificates made in the test
//! (rcgen): a DestinationRule's `tls` makes meshd speak TLS to a TLS-only
//! upstream, checking its certificate against `caCertificates` and the
//! name (the service host, `sni`, or `subjectAltNames`), and presenting a
//! client certificate in `MUTUAL` mode.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use common::pki::Pki;
use common::*;
use http::StatusCode;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

/// An HTTPS upstream with the certificate `cert`/`key`, answering
/// `tls-ok`; with `client_ca` it requires a client certificate signed by it.
async fn https_upstream(cert: &str, key: &str, client_ca: Option<&str>) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(Path::new(cert)).unwrap().map(Result::unwrap).collect();
    let key = PrivateKeyDer::from_pem_file(key).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions().unwrap();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(Path::new(ca)).unwrap() {
                roots.add(cert.unwrap()).unwrap();
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let acceptor = TlsAcceptor::from(Arc::new(builder.with_single_cert(chain, key).unwrap()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else { return };
                let service =
                    service_fn(|_req| async { Ok::<_, std::convert::Infallible>(http::Response::new(full("tls-ok"))) });
                let _ = http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    addr
}

/// meshd with a `backend.example` service on `upstream` and the
/// DestinationRule `tls:` block `tls` (flow YAML).
async fn mesh_with_tls(upstream: SocketAddr, tls: &str) -> Mesh {
    let se = simple_service("backend", "backend.example", upstream);
    let dr =
        object("DestinationRule", "backend", NS, &format!("host: backend.example\ntrafficPolicy:\n  tls: {tls}\n"));
    Mesh::with(&(se + &dr)).await
}

/// Scenario: `SIMPLE` with `caCertificates` reaches an HTTPS upstream whose
/// certificate names the host; a certificate for another name, or a CA
/// meshd does not trust, fails the connect (503 `UF`) and nothing is sent
/// in plain text; `sni` and `subjectAltNames` choose the name checked;
/// `insecureSkipVerify` accepts any certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_tls_checks_the_certificate_and_its_name() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("backend", &["backend.example"]);
    let upstream = https_upstream(&cert, &key, None).await;
    let ca = pki.path("ca.pem");

    let mesh = mesh_with_tls(upstream, &format!("{{mode: SIMPLE, caCertificates: {ca}}}")).await;
    let resp = mesh.get("backend.example", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "tls-ok"));

    let (other_cert, other_key) = pki.leaf("other", &["other.example"]);
    let wrong_name = https_upstream(&other_cert, &other_key, None).await;
    let mesh = mesh_with_tls(wrong_name, &format!("{{mode: SIMPLE, caCertificates: {ca}}}")).await;
    let resp = mesh.get("backend.example", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "{}", resp.text());
    mesh.wait_requests(&[("response_code", "503"), ("response_flags", "UF,URX")], 1.0).await;

    let san = format!("{{mode: SIMPLE, caCertificates: {ca}, subjectAltNames: [other.example]}}");
    let resp = mesh_with_tls(wrong_name, &san).await.get("backend.example", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "subjectAltNames name the certificate: {}", resp.text());
    let sni = format!("{{mode: SIMPLE, caCertificates: {ca}, sni: other.example}}");
    let resp = mesh_with_tls(wrong_name, &sni).await.get("backend.example", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "sni names the certificate: {}", resp.text());

    let stranger = Pki::new();
    let (s_cert, s_key) = stranger.leaf("backend", &["backend.example"]);
    let untrusted = https_upstream(&s_cert, &s_key, None).await;
    let resp = mesh_with_tls(untrusted, &format!("{{mode: SIMPLE, caCertificates: {ca}}}"))
        .await
        .get("backend.example", "/")
        .await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "an untrusted CA: {}", resp.text());
    let skip = "{mode: SIMPLE, insecureSkipVerify: true}";
    let resp = mesh_with_tls(untrusted, skip).await.get("backend.example", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "insecureSkipVerify: {}", resp.text());
}

/// Scenario: `MUTUAL` presents the client certificate an upstream that
/// requires one accepts; `SIMPLE` (no client certificate) is refused by it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_presents_the_client_certificate() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("backend", &["backend.example"]);
    let ca = pki.path("ca.pem");
    let upstream = https_upstream(&cert, &key, Some(&ca)).await;
    let (client_cert, client_key) = pki.leaf("client", &["client.example"]);

    let mutual =
        format!("{{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {client_cert}, privateKey: {client_key}}}");
    let resp = mesh_with_tls(upstream, &mutual).await.get("backend.example", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "tls-ok"));

    let simple = format!("{{mode: SIMPLE, caCertificates: {ca}}}");
    let resp = mesh_with_tls(upstream, &simple).await.get("backend.example", "/").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE, "no client certificate: {}", resp.text());
}

/// Scenario: `ISTIO_MUTUAL` uses the mesh certificates from
/// `--mesh-cert-dir` (`cert-chain.pem`, `key.pem`, `root-cert.pem`): the
/// upstream requiring a client certificate from the mesh CA serves, and
/// its certificate is checked against the mesh root but not by name (mesh
/// certificates name identities, not hosts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn istio_mutual_uses_the_mesh_certificates() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("backend", &["workload.identity.example"]);
    let ca = pki.path("ca.pem");
    let upstream = https_upstream(&cert, &key, Some(&ca)).await;
    let (client_cert, client_key) = pki.leaf("client", &["client.identity.example"]);
    let mesh_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&client_cert, mesh_dir.path().join("cert-chain.pem")).unwrap();
    std::fs::copy(&client_key, mesh_dir.path().join("key.pem")).unwrap();
    std::fs::copy(&ca, mesh_dir.path().join("root-cert.pem")).unwrap();

    let se = simple_service("backend", "backend.example", upstream);
    let dr = object(
        "DestinationRule",
        "backend",
        NS,
        "host: backend.example\ntrafficPolicy:\n  tls: {mode: ISTIO_MUTUAL}\n",
    );
    let config = ConfigDir::with(&(se + &dr));
    let mut opts = options(config.path());
    opts.mesh_cert_dir = Some(mesh_dir.path().to_path_buf());
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    let resp = mesh.get("backend.example", "/").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "tls-ok"));
}
