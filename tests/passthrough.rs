//! Gateway `TLS` passthrough and `TCP` servers over real sockets, with
//! certificates made in the test: two TLS upstreams, each with its own
//! certificate, behind one `PASSTHROUGH` port; a client's SNI chooses the
//! upstream, which terminates TLS itself (the client sees its
//! certificate); an SNI no route names is closed; a `TCP` port relays to a
//! plain TCP upstream; a Gateway port opens, changes kind and closes with
//! the configuration.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::pki::{der_of, tls_connect, Pki};
use common::*;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A TLS server presenting `cert`: on each connection it reads one chunk
/// and answers `NAME:` + that chunk, then closes.
async fn tls_upstream(name: &'static str, cert: &str, key: &str) -> SocketAddr {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(Path::new(cert)).expect("read cert").map(|c| c.expect("cert")).collect();
    let key = PrivateKeyDer::from_pem_file(Path::new(key)).expect("read key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TLS upstream");
    let addr = listener.local_addr().expect("TLS upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(stream).await else { return };
                let mut chunk = vec![0; 1024];
                let Ok(n) = tls.read(&mut chunk).await else { return };
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&chunk[..n]);
                let _ = tls.write_all(&reply).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

/// A ServiceEntry `name` (port `port`, protocol `protocol`) with the one
/// endpoint `addr`.
fn l4_service(name: &str, port: u16, protocol: &str, addr: SocketAddr) -> String {
    let lower = protocol.to_ascii_lowercase();
    service_entry(name, NS, &[name], port, &[ep(addr, &[("app", name)])])
        .replace("protocol: HTTP", &format!("protocol: {protocol}"))
        .replace("name: http", &format!("name: {lower}"))
        .replace("{http:", &format!("{{{lower}:"))
}

/// Connects with TLS, sending `sni`, through to an upstream of
/// [`tls_upstream`]: returns the certificate the client saw and the
/// upstream's answer to `hello`.
async fn tls_exchange(
    addr: SocketAddr,
    sni: &str,
    client: Arc<rustls::ClientConfig>,
) -> std::io::Result<(CertificateDer<'static>, String)> {
    let run = async {
        let (mut tls, leaf, _) = tls_connect(addr, sni, client).await?;
        tls.write_all(b"hello").await?;
        let mut answer = Vec::new();
        tls.read_to_end(&mut answer).await?;
        Ok((leaf, String::from_utf8_lossy(&answer).into_owned()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, run).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Sends `data` over plain TCP, half-closes, and reads the whole answer.
/// The certificates and upstreams of the passthrough tests.
struct Upstreams {
    pki: Pki,
    a_cert: String,
    b_cert: String,
    /// The ServiceEntries of the two TLS upstreams (`tls-a`, `tls-b`) and
    /// of the TCP one (`tcp-echo`).
    services: String,
}

async fn upstreams() -> Upstreams {
    let pki = Pki::new();
    let (a_cert, a_key) = pki.leaf("a", &["a.example.com"]);
    let (b_cert, b_key) = pki.leaf("b", &["b.example.com"]);
    let a = tls_upstream("A", &a_cert, &a_key).await;
    let b = tls_upstream("B", &b_cert, &b_key).await;
    let echo = tcp_upstream("echo").await;
    let services = l4_service("tls-a", 8443, "TLS", a)
        + &l4_service("tls-b", 8443, "TLS", b)
        + &l4_service("tcp-echo", 9000, "TCP", echo);
    Upstreams { pki, a_cert, b_cert, services }
}

/// A Gateway `edge` with a `PASSTHROUGH` server on `tls_port` for
/// `*.example.com` and, if given, a `TCP` server on `tcp_port`.
fn edge_gateway(tls_port: u16, tcp_port: Option<u16>) -> String {
    let mut servers = format!(
        "servers:\n- port: {{number: {tls_port}, name: tls, protocol: TLS}}\n  hosts: [\"*.example.com\"]\n  tls: {{mode: PASSTHROUGH}}\n"
    );
    if let Some(port) = tcp_port {
        servers.push_str(&format!("- port: {{number: {port}, name: tcp, protocol: TCP}}\n  hosts: [\"*\"]\n"));
    }
    object("Gateway", "edge", NS, &servers)
}

/// `a.example.com` to `tls-a`, `b.example.com` to `tls-b`, on `edge`.
fn sni_routes() -> String {
    object(
        "VirtualService",
        "by-sni",
        NS,
        "hosts: [a.example.com, b.example.com]\ngateways: [edge]\ntls:\n- match: [{sniHosts: [a.example.com]}]\n  route: [{destination: {host: tls-a}}]\n- match: [{sniHosts: [b.example.com]}]\n  route: [{destination: {host: tls-b, port: {number: 8443}}}]\n",
    )
}

/// Scenario: the SNI chooses the upstream and the client sees that
/// upstream's own certificate (meshd does not terminate); an SNI without
/// a route is closed and counted `NR`; the `TCP` port relays to its plain
/// TCP upstream; the TCP metrics count the passthrough connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_chooses_the_upstream_without_terminating_and_tcp_ports_relay() {
    let up = upstreams().await;
    let (tls_port, tcp_port) = (closed_port(), closed_port());
    let tcp_routes = object(
        "VirtualService",
        "echo",
        NS,
        "hosts: [\"*\"]\ngateways: [edge]\ntcp:\n- route: [{destination: {host: tcp-echo, port: {number: 9000}}}]\n",
    );
    let mesh =
        Mesh::with(&(up.services.clone() + &edge_gateway(tls_port, Some(tcp_port)) + &sni_routes() + &tcp_routes))
            .await;
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], tls_port));
    let client = up.pki.client(&[]);

    let (leaf, answer) = wait_for("the passthrough port", Duration::from_secs(5), || {
        let client = client.clone();
        async move { tls_exchange(tls_addr, "a.example.com", client).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!(leaf, der_of(&up.a_cert), "the client sees A's own certificate");
    assert_eq!(answer, "A:hello");
    let (leaf, answer) = tls_exchange(tls_addr, "b.example.com", client.clone()).await.expect("SNI b.example.com");
    assert_eq!(leaf, der_of(&up.b_cert), "the client sees B's own certificate");
    assert_eq!(answer, "B:hello");

    let refused = tls_exchange(tls_addr, "c.example.com", client.clone()).await;
    assert!(refused.is_err(), "an SNI without a route is closed, got {refused:?}");
    mesh.wait_metric("istio_tcp_connections_closed_total", &[("response_flags", "NR")], 1.0).await;
    let plain = tcp_exchange(tls_addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(plain.as_deref().map_or(true, str::is_empty), "bytes that are no ClientHello are closed, got {plain:?}");

    let tcp_addr = SocketAddr::from(([127, 0, 0, 1], tcp_port));
    assert_eq!(tcp_exchange(tcp_addr, b"ping").await.expect("TCP port"), "echo:ping");

    mesh.wait_metric("istio_tcp_connections_closed_total", &[("destination_service_name", "tls-a")], 1.0).await;
    let m = mesh.metrics().await;
    let a = [("destination_service_name", "tls-a"), ("request_protocol", "tcp"), ("response_flags", "-")];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &a), 1.0);
    assert!(m.sum("istio_tcp_received_bytes_total", &a) > 5.0, "the ClientHello and the request went upstream");
    mesh.wait_metric("istio_tcp_connections_closed_total", &[("destination_service_name", "tcp-echo")], 1.0).await;
}

/// Scenario: a Gateway port follows reloads (one reload each, no file
/// watching): it opens as a `TCP` port when a reload adds it, serves TLS
/// passthrough when the next turns it into a `PASSTHROUGH` server (its
/// old listener drained and a new one bound on the same port), and closes
/// when one removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_port_follows_reloads_and_changes_kind() {
    let up = upstreams().await;
    let port = closed_port();
    let config = ConfigDir::with(&up.services);
    let mut opts = options(config.path());
    opts.watch = false;
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(TcpStream::connect(addr).await.is_err(), "no Gateway, no port");
    let reloaded = &mesh;
    let reload = move |yaml: String, n: f64| {
        reloaded.config.write("reviews.yaml", &yaml);
        reloaded.server().reload();
        reloaded.wait_reloads("applied", n)
    };

    let tcp_gateway = object(
        "Gateway",
        "edge",
        NS,
        &format!("servers:\n- port: {{number: {port}, name: tcp, protocol: TCP}}\n  hosts: [\"*\"]\n"),
    );
    let tcp_routes = object(
        "VirtualService",
        "echo",
        NS,
        "hosts: [\"*\"]\ngateways: [edge]\ntcp:\n- route: [{destination: {host: tcp-echo}}]\n",
    );
    reload(up.services.clone() + &tcp_gateway + &tcp_routes, 2.0).await;
    let answer = wait_for("the TCP port to open", Duration::from_secs(5), || async {
        tcp_exchange(addr, b"ping").await.map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(answer, "echo:ping");

    reload(up.services.clone() + &edge_gateway(port, None) + &sni_routes(), 3.0).await;
    let client = up.pki.client(&[]);
    let (leaf, answer) = wait_for("the port to serve TLS passthrough", Duration::from_secs(5), || {
        let client = client.clone();
        async move { tls_exchange(addr, "b.example.com", client).await.map_err(|e| e.to_string()) }
    })
    .await;
    assert_eq!((leaf, answer.as_str()), (der_of(&up.b_cert), "B:hello"));

    reload(up.services.clone(), 4.0).await;
    wait_until("the port to close", Duration::from_secs(5), || async { TcpStream::connect(addr).await.is_err() }).await;
}
