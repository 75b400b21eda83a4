//! Shared harness of the integration tests: real upstreams on loopback
//! sockets, configuration directories, the proxy in-process (or the real
//! binary as a child process), HTTP clients, Prometheus text parsing and
//! deadline-bounded waiting.
//!
//! Every test file does `mod common;` and uses what it needs, so some
//! helpers are unused in some test binaries.
#![allow(dead_code)]

pub mod grpc;
pub mod pki;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{HeaderMap, HeaderName, HeaderValue, HOST};
use http::{Method, Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use meshd::server::{Options, RunningServer};
use tokio::net::TcpListener;

/// The proxy's namespace in every test.
pub const NS: &str = "default";
/// The FQDN of the `reviews` service of the demo configuration.
pub const REVIEWS: &str = "reviews.default.svc.cluster.local";
/// Upper bound for one HTTP exchange in a test.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every test client and custom upstream.
pub type TestBody = BoxBody<Bytes, BoxError>;
pub type HttpClient = Client<HttpConnector, TestBody>;

// ---------------------------------------------------------------------------
// Waiting with a deadline
// ---------------------------------------------------------------------------

/// Polls `check` every 10 ms until it returns `Ok`, and returns its value;
/// after `timeout`, fails the test with `what` and the last `Err` (a
/// description of the state seen).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last state: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// [`wait_for`] for a plain condition.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, || {
        let fut = check();
        async move {
            if fut.await {
                Ok(())
            } else {
                Err("condition false".to_owned())
            }
        }
    })
    .await
}

// ---------------------------------------------------------------------------
// Bodies
// ---------------------------------------------------------------------------

pub fn full(data: impl Into<Bytes>) -> TestBody {
    Full::new(data.into()).map_err(|never: Infallible| match never {}).boxed()
}

pub fn empty() -> TestBody {
    Empty::<Bytes>::new().map_err(|never: Infallible| match never {}).boxed()
}

/// A body fed chunk by chunk through a channel; it ends when the sender is
/// dropped. Its length is unknown, so HTTP/1.1 sends it chunked.
pub struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// A streaming body and the sender that feeds it.
pub fn channel_body() -> (tokio::sync::mpsc::Sender<Bytes>, TestBody) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    (tx, ChannelBody(rx).boxed())
}

/// An upstream's `Incoming` body, passed on as a [`TestBody`].
pub fn incoming(body: Incoming) -> TestBody {
    body.map_err(|e| -> BoxError { Box::new(e) }).boxed()
}

/// Deterministic pseudo-random bytes (so corruption or reordering shows).
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------
// Upstreams
// ---------------------------------------------------------------------------

/// Starts `meshd::echo::serve` on a fresh loopback port, answering as `name`.
pub async fn echo(name: &str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo upstream");
    let addr = listener.local_addr().expect("echo address");
    let name = name.to_owned();
    tokio::spawn(async move { meshd::echo::serve(listener, &name).await });
    addr
}

/// A loopback port nothing listens on (bound, read, released).
pub fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    listener.local_addr().expect("probe address").port()
}

/// A free loopback address for a child process to bind.
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], closed_port()))
}

/// A custom upstream (plain hyper HTTP/1.1 server) that counts the
/// connections it accepted.
pub struct Upstream {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

/// Starts an HTTP/1.1 upstream answering every request with `handler`.
pub async fn upstream<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_speaking(handler, false).await
}

/// Starts an upstream speaking HTTP/1.1 and h2c (told apart by the
/// connection preface), answering every request with `handler`.
pub async fn upstream_h1_h2<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    upstream_speaking(handler, true).await
}

async fn upstream_speaking<F, Fut>(handler: F, h2c: bool) -> Upstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<TestBody>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind custom upstream");
    let addr = listener.local_addr().expect("upstream address");
    let connections = Arc::new(AtomicUsize::new(0));
    let handler = Arc::new(handler);
    let accepted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            accepted.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            let service = service_fn(move |req| {
                let fut = handler(req);
                async move { Ok::<_, Infallible>(fut.await) }
            });
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let _ = if h2c {
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new().serve_connection(io, service).await.map_err(Into::into)
                };
            });
        }
    });
    Upstream { addr, connections }
}

/// An upstream that answers every request with the request's own body,
/// streamed back frame by frame as it arrives.
pub async fn echo_back_upstream() -> Upstream {
    upstream(|req: Request<Incoming>| async move {
        let mut response = Response::new(incoming(req.into_body()));
        response.headers_mut().insert("x-echo-name", HeaderValue::from_static("echo-back"));
        response
    })
    .await
}

/// FNV-1a of `bytes`, to compare large bodies in messages cheaply.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

/// What a recording upstream received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: Method,
    pub uri: http::Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    /// The body as far as it came (empty when it failed).
    pub body: Bytes,
    /// Whether the body arrived whole (false: it ended with an error, the
    /// request never completed).
    pub complete: bool,
}

/// An upstream that stores every request (head and whole body) and answers
/// 200 `recorded` with the response headers in `extra`.
pub async fn recording_upstream(extra: &[(&'static str, &'static str)]) -> (Upstream, Arc<Mutex<Vec<Recorded>>>) {
    recording(extra, false).await
}

/// [`recording_upstream`] speaking HTTP/1.1 and h2c.
pub async fn recording_upstream_h1_h2() -> (Upstream, Arc<Mutex<Vec<Recorded>>>) {
    recording(&[], true).await
}

async fn recording(extra: &[(&'static str, &'static str)], h2c: bool) -> (Upstream, Arc<Mutex<Vec<Recorded>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let store = seen.clone();
    let extra: Vec<(&'static str, &'static str)> = extra.to_vec();
    let handler = move |req: Request<Incoming>| {
        let store = store.clone();
        let extra = extra.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body.collect().await.map(|c| c.to_bytes());
            let complete = body.is_ok();
            store.lock().unwrap().push(Recorded {
                method: parts.method,
                uri: parts.uri,
                version: parts.version,
                headers: parts.headers,
                body: body.unwrap_or_default(),
                complete,
            });
            let mut response = Response::new(full("recorded"));
            for (name, value) in extra {
                response.headers_mut().append(HeaderName::from_static(name), HeaderValue::from_static(value));
            }
            response
        }
    };
    let up = upstream_speaking(handler, h2c).await;
    (up, seen)
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// A temporary configuration directory.
pub struct ConfigDir {
    pub dir: tempfile::TempDir,
}

impl ConfigDir {
    pub fn new() -> Self {
        ConfigDir { dir: tempfile::tempdir().expect("create a config directory") }
    }

    /// A directory holding `reviews.yaml` with `yaml`.
    pub fn with(yaml: &str) -> Self {
        let dir = ConfigDir::new();
        dir.write("reviews.yaml", yaml);
        dir
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `name` in place (truncate and write), as `echo > file` does.
    pub fn write(&self, name: &str, yaml: &str) {
        std::fs::write(self.file(name), yaml).unwrap_or_else(|e| panic!("write {name}: {e}"));
    }
}

/// Indents every line of `text` by `n` spaces.
pub fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().map(|l| if l.is_empty() { "\n".to_owned() } else { format!("{pad}{l}\n") }).collect()
}

/// One Istio object as a YAML document (starting with `---`). `spec` is
/// written without indentation.
pub fn object(kind: &str, name: &str, namespace: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.istio.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\nspec:\n{}",
        indent(spec, 2)
    )
}

/// A static endpoint: address and labels.
#[derive(Clone, Debug)]
pub struct Ep {
    pub addr: SocketAddr,
    pub labels: Vec<(String, String)>,
}

pub fn ep(addr: SocketAddr, labels: &[(&str, &str)]) -> Ep {
    Ep { addr, labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }
}

fn labels_yaml(labels: &[(String, String)]) -> String {
    let items: Vec<String> = labels.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    format!("{{{}}}", items.join(", "))
}

/// A `resolution: STATIC` ServiceEntry with one HTTP port `port` named
/// `http`; each endpoint maps `http` to its own port.
pub fn service_entry(name: &str, namespace: &str, hosts: &[&str], port: u16, endpoints: &[Ep]) -> String {
    let mut spec = format!(
        "hosts: [{}]\nlocation: MESH_INTERNAL\nresolution: STATIC\nports:\n- {{number: {port}, name: http, protocol: HTTP}}\n",
        hosts.join(", ")
    );
    if !endpoints.is_empty() {
        spec.push_str("endpoints:\n");
        for e in endpoints {
            spec.push_str(&format!(
                "- {{address: {}, ports: {{http: {}}}, labels: {}}}\n",
                e.addr.ip(),
                e.addr.port(),
                labels_yaml(&e.labels)
            ));
        }
    }
    object("ServiceEntry", name, namespace, &spec)
}

/// A ServiceEntry `name` for `host` (port 80) with the single endpoint
/// `addr`.
pub fn simple_service(name: &str, host: &str, addr: SocketAddr) -> String {
    service_entry(name, NS, &[host], 80, &[ep(addr, &[("app", name)])])
}

/// The service `web` (endpoint `web`), the Gateway `front` with `servers`
/// (YAML list items, unindented) and a VirtualService bound to it routing
/// `hosts` to `web`.
pub fn gateway_to_web(web: SocketAddr, servers: &str, hosts: &[&str]) -> String {
    simple_service("web", "web", web)
        + &object("Gateway", "front", NS, &format!("servers:\n{servers}"))
        + &object(
            "VirtualService",
            "front",
            NS,
            &format!(
                "hosts: [{}]\ngateways: [front]\nhttp:\n- route: [{{destination: {{host: web}}}}]\n",
                hosts.join(", ")
            ),
        )
}

/// A DestinationRule for `host` with an optional `loadBalancer.simple` and
/// subsets `(name, [(label, value)])`.
pub fn destination_rule(
    name: &str,
    namespace: &str,
    host: &str,
    lb: Option<&str>,
    subsets: &[(&str, &[(&str, &str)])],
) -> String {
    let mut spec = format!("host: {host}\n");
    if let Some(lb) = lb {
        spec.push_str(&format!("trafficPolicy:\n  loadBalancer:\n    simple: {lb}\n"));
    }
    if !subsets.is_empty() {
        spec.push_str("subsets:\n");
        for (subset, labels) in subsets {
            let labels: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            spec.push_str(&format!("- {{name: {subset}, labels: {}}}\n", labels_yaml(&labels)));
        }
    }
    object("DestinationRule", name, namespace, &spec)
}

/// A VirtualService for `hosts` with the `http:` list `http` (YAML written
/// without indentation, starting with `- `).
pub fn virtual_service(name: &str, namespace: &str, hosts: &[&str], http: &str) -> String {
    object("VirtualService", name, namespace, &format!("hosts: [{}]\nhttp:\n{}", hosts.join(", "), http))
}

/// The demo's `reviews` service (port 9080, VIP 240.0.0.10) with a v1 and
/// a v2 endpoint, and its DestinationRule with subsets v1, v2 and v3 (v3
/// selects no endpoint).
pub fn reviews_service(v1: SocketAddr, v2: SocketAddr) -> String {
    let se = service_entry(
        "reviews",
        NS,
        &["reviews.default.svc.cluster.local"],
        9080,
        &[ep(v1, &[("app", "reviews"), ("version", "v1")]), ep(v2, &[("app", "reviews"), ("version", "v2")])],
    )
    .replace("location: MESH_INTERNAL\n", "location: MESH_INTERNAL\n  addresses: [240.0.0.10]\n");
    let dr = destination_rule(
        "reviews",
        NS,
        "reviews",
        Some("ROUND_ROBIN"),
        &[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")]), ("v3", &[("version", "v3")])],
    );
    se + &dr
}

/// A `reviews` VirtualService sending everything to `subset`.
pub fn reviews_all_to(subset: &str) -> String {
    virtual_service(
        "reviews",
        NS,
        &["reviews"],
        &format!("- name: all\n  route:\n  - destination: {{host: reviews, subset: {subset}}}\n"),
    )
}

/// The demo's routing: `end-user: jason` → v2, everyone else 80 % v1 and
/// 20 % v2.
pub fn reviews_demo_routes() -> String {
    virtual_service(
        "reviews",
        NS,
        &["reviews"],
        "- name: jason\n  match:\n  - headers:\n      end-user:\n        exact: jason\n  route:\n  - destination: {host: reviews, subset: v2}\n- name: split\n  route:\n  - destination: {host: reviews, subset: v1}\n    weight: 80\n  - destination: {host: reviews, subset: v2}\n    weight: 20\n",
    )
}

/// Two echo upstreams named `reviews-v1` and `reviews-v2`.
pub async fn reviews_upstreams() -> (SocketAddr, SocketAddr) {
    (echo("reviews-v1").await, echo("reviews-v2").await)
}

// ---------------------------------------------------------------------------
// Clients
// ---------------------------------------------------------------------------

/// A keep-alive HTTP/1.1 client.
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A buffered response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `x-echo-name` of an echo upstream's answer.
    pub fn echo_name(&self) -> Option<String> {
        self.headers.get("x-echo-name").and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request to build: method, Host, path and extra headers.
#[derive(Clone, Debug)]
pub struct Req {
    pub method: Method,
    pub host: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

pub fn get(host: &str, path: &str) -> Req {
    Req { method: Method::GET, host: host.to_owned(), path: path.to_owned(), headers: Vec::new() }
}

impl Req {
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The request for a server at `addr`, with `body`.
    pub fn build(&self, addr: SocketAddr, body: TestBody) -> Request<TestBody> {
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(format!("http://{addr}{}", self.path))
            .body(body)
            .expect("valid request");
        let headers = req.headers_mut();
        headers.insert(HOST, HeaderValue::from_str(&self.host).expect("valid Host"));
        for (name, value) in &self.headers {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                HeaderValue::from_str(value).expect("header value"),
            );
        }
        req
    }
}

/// Sends `req` and reads the whole response, within [`REQUEST_TIMEOUT`].
pub async fn try_send(client: &HttpClient, req: Request<TestBody>) -> Result<Resp, String> {
    let exchange = async {
        let response = client.request(req).await.map_err(|e| format!("request failed: {e:?}"))?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| format!("response body failed: {e:?}"))?.to_bytes();
        Ok(Resp { status: parts.status, version: parts.version, headers: parts.headers, body })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.map_err(|_| "request timed out".to_owned())?
}

/// Sends `req` and reads the whole response; fails the test on a transport
/// error.
pub async fn send(client: &HttpClient, req: Request<TestBody>) -> Resp {
    let what = format!("{} {} (Host {:?})", req.method(), req.uri(), req.headers().get(HOST));
    try_send(client, req).await.unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// `GET http://addr{path}` (for admin pages).
pub async fn get_url(client: &HttpClient, addr: SocketAddr, path: &str) -> Resp {
    let req = Request::builder().uri(format!("http://{addr}{path}")).body(empty()).expect("valid request");
    send(client, req).await
}

/// Waits (5 s at most) until the admin page `/clusters` at `admin` has the
/// line `line`, e.g. `outbound|9080|v1|HOST::ADDR::rq_active::2`.
pub async fn wait_clusters_line(client: &HttpClient, admin: SocketAddr, what: &str, line: String) {
    wait_for(what, Duration::from_secs(5), || {
        let (client, line) = (client.clone(), line.clone());
        async move {
            let clusters = get_url(&client, admin, "/clusters").await.text();
            if clusters.lines().any(|l| l == line) {
                Ok(())
            } else {
                Err(clusters)
            }
        }
    })
    .await;
}

/// Sends a raw HTTP/1.1 exchange over a fresh TCP connection and returns
/// everything read until the server closes (send `Connection: close`).
pub async fn raw_exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(bytes).await.expect("write request");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read response");
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange).await.expect("raw exchange timed out")
}

// ---------------------------------------------------------------------------
// The proxy in-process
// ---------------------------------------------------------------------------

/// A running proxy on loopback ports with its configuration directory and
/// a keep-alive client.
pub struct Mesh {
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub config: ConfigDir,
    pub client: HttpClient,
}

/// The options of an in-process proxy on `config`.
pub fn options(config: &Path) -> Options {
    Options {
        config: vec![config.to_path_buf()],
        listen: vec!["127.0.0.1:0".parse().expect("addr")],
        admin: "127.0.0.1:0".parse().expect("addr"),
        namespace: NS.into(),
        drain_timeout: Duration::from_secs(5),
        watch: true,
        workers: 1,
        tcp: Vec::new(),
        gateway_bind: std::net::Ipv4Addr::LOCALHOST.into(),
        credentials_dir: None,
        mesh_cert_dir: None,
        sidecar: Default::default(),
        access_log: meshd::proxy::access_log::Format::Off,
        limits: Default::default(),
        admin_allow_mutations: false,
    }
}

impl Mesh {
    /// Starts a proxy on `config` (file watching on).
    pub async fn start(config: ConfigDir) -> Mesh {
        let options = options(config.path());
        Mesh::start_with(config, options).await
    }

    pub async fn start_with(config: ConfigDir, options: Options) -> Mesh {
        let server = RunningServer::start(options).await.expect("start meshd");
        let addr = server.listen_addrs[0];
        let admin = server.admin_addr;
        Mesh { server: Some(server), addr, admin, config, client: client() }
    }

    /// Starts a proxy on a new directory holding `reviews.yaml` = `yaml`,
    /// and waits until it is ready.
    pub async fn with(yaml: &str) -> Mesh {
        let mesh = Mesh::start(ConfigDir::with(yaml)).await;
        mesh.wait_ready().await;
        mesh
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().expect("server running")
    }

    /// Sends `req` through the proxy with an empty body.
    pub async fn send(&self, req: &Req) -> Resp {
        send(&self.client, req.build(self.addr, empty())).await
    }

    /// `GET path` with `Host: host` through the proxy.
    pub async fn get(&self, host: &str, path: &str) -> Resp {
        self.send(&get(host, path)).await
    }

    /// `GET path` on the admin port.
    pub async fn admin(&self, path: &str) -> Resp {
        get_url(&self.client, self.admin, path).await
    }

    pub async fn metrics(&self) -> Prom {
        let resp = self.admin("/stats/prometheus").await;
        assert_eq!(resp.status, StatusCode::OK, "/stats/prometheus");
        Prom::parse(&resp.text())
    }

    pub async fn wait_ready(&self) {
        let client = self.client.clone();
        let admin = self.admin;
        wait_for("/ready to answer 200", Duration::from_secs(10), || {
            let client = client.clone();
            async move {
                let resp = get_url(&client, admin, "/ready").await;
                if resp.status == StatusCode::OK {
                    Ok(())
                } else {
                    Err(format!("{} {}", resp.status, resp.text()))
                }
            }
        })
        .await
    }

    /// Waits until `meshd_config_reloads_total{result}` reaches `n`, and
    /// fails if it goes beyond.
    pub async fn wait_reloads(&self, result: &str, n: f64) {
        let what = format!("meshd_config_reloads_total{{result={result:?}}} == {n}");
        wait_for(&what, Duration::from_secs(10), || async move {
            let seen = self.metrics().await.sum("meshd_config_reloads_total", &[("result", result)]);
            if seen > n {
                panic!("meshd_config_reloads_total{{result={result:?}}} is {seen}, expected {n}");
            }
            if seen == n {
                Ok(())
            } else {
                Err(format!("{seen}"))
            }
        })
        .await
    }

    /// Waits until the samples of metric `name` with `labels` sum to
    /// exactly `n` (metrics are recorded when a response ends, which can be
    /// just after the client has read it).
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], n: f64) {
        wait_for(&format!("{name}{labels:?} == {n}"), Duration::from_secs(5), || async move {
            let m = self.metrics().await;
            let seen = m.sum(name, labels);
            if seen == n {
                Ok(())
            } else {
                Err(format!("{seen}; samples:\n{}", m.show(name)))
            }
        })
        .await;
    }

    /// [`Mesh::wait_metric`] for `istio_requests_total`.
    pub async fn wait_requests(&self, labels: &[(&str, &str)], n: f64) {
        self.wait_metric("istio_requests_total", labels, n).await;
    }

    /// Sends `n` requests like `req` from `concurrency` parallel clients and
    /// counts responses by `(status, x-echo-name or "-")`.
    pub async fn tally(&self, req: &Req, n: usize, concurrency: usize) -> BTreeMap<(u16, String), usize> {
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..concurrency {
            let share = n / concurrency + usize::from(worker < n % concurrency);
            let (client, addr, req) = (client(), self.addr, req.clone());
            tasks.spawn(async move {
                let mut counts = BTreeMap::new();
                for _ in 0..share {
                    let resp = send(&client, req.build(addr, empty())).await;
                    *counts
                        .entry((resp.status.as_u16(), resp.echo_name().unwrap_or_else(|| "-".into())))
                        .or_insert(0) += 1;
                }
                counts
            });
        }
        let mut total = BTreeMap::new();
        while let Some(counts) = tasks.join_next().await {
            for (key, n) in counts.expect("client task") {
                *total.entry(key).or_insert(0) += n;
            }
        }
        total
    }
}

/// Label set of `istio_requests_total` for a response from the reviews
/// service (the labels the acceptance criteria name).
pub fn reviews_labels<'a>(version: &'a str, code: &'a str, flags: &'a str) -> Vec<(&'static str, &'a str)> {
    vec![
        ("reporter", "source"),
        ("destination_service", REVIEWS),
        ("destination_service_name", "reviews"),
        ("destination_service_namespace", NS),
        ("destination_version", version),
        ("destination_app", if version == "unknown" { "unknown" } else { "reviews" }),
        ("response_code", code),
        ("response_flags", flags),
        ("request_protocol", "http"),
    ]
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------

/// One sample of the Prometheus text format.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed `/stats/prometheus` page.
#[derive(Clone, Debug)]
pub struct Prom {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Prom {
    pub fn parse(text: &str) -> Prom {
        let samples = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| parse_sample(l).unwrap_or_else(|| panic!("unparsable metrics line: {l}")))
            .collect();
        Prom { samples, text: text.to_owned() }
    }

    /// Sum of the samples of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The samples of `name` matching `labels`, one per line, for messages.
    pub fn show(&self, name: &str) -> String {
        self.samples.iter().filter(|s| s.name == name).map(|s| format!("{:?} {}\n", s.labels, s.value)).collect()
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name_end, rest) = match line.find(['{', ' ']) {
        Some(i) => (i, &line[i..]),
        None => return None,
    };
    let name = line[..name_end].to_owned();
    let mut labels = BTreeMap::new();
    let rest = if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            inner = inner.trim_start_matches(',');
            if let Some(after) = inner.strip_prefix('}') {
                break after;
            }
            let eq = inner.find('=')?;
            let key = inner[..eq].trim().to_owned();
            let mut chars = inner[eq + 1..].char_indices();
            if chars.next()?.1 != '"' {
                return None;
            }
            let mut value = String::new();
            let mut end = None;
            let mut escaped = false;
            for (i, c) in chars {
                match (escaped, c) {
                    (true, 'n') => {
                        value.push('\n');
                        escaped = false;
                    }
                    (true, c) => {
                        value.push(c);
                        escaped = false;
                    }
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(eq + 1 + i + 1);
                        break;
                    }
                    (false, c) => value.push(c),
                }
            }
            labels.insert(key, value);
            inner = &inner[end?..];
        }
    } else {
        rest
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample { name, labels, value })
}

// ---------------------------------------------------------------------------
// The binary as a child process
// ---------------------------------------------------------------------------

/// `meshd run` as a child process on fixed free ports.
pub struct MeshdProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    log: tempfile::NamedTempFile,
}

impl MeshdProcess {
    /// Runs `meshd run --config <config> --listen … --admin … <extra>`.
    pub fn spawn(config: &Path, extra: &[&str]) -> MeshdProcess {
        MeshdProcess::spawn_with_stdout(config, extra, Stdio::null())
    }

    /// [`MeshdProcess::spawn`] with stdout going to `stdout`
    /// (`Stdio::piped()` to read the access log from `child.stdout`).
    pub fn spawn_with_stdout(config: &Path, extra: &[&str], stdout: Stdio) -> MeshdProcess {
        let (addr, admin) = (free_addr(), free_addr());
        let log = tempfile::NamedTempFile::new().expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_meshd"))
            .arg("run")
            .arg("--config")
            .arg(config)
            .args(["--listen", &addr.to_string(), "--admin", &admin.to_string(), "--namespace", NS])
            .args(extra)
            .env_remove("MESHD_CONFIG")
            .env("MESHD_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log.reopen().expect("log file handle"))
            .spawn()
            .expect("spawn meshd");
        MeshdProcess { child, addr, admin, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` (`TERM`, `HUP`) with `kill -<signal> <pid>`.
    pub fn signal(&self, signal: &str) {
        let status =
            Command::new("kill").arg(format!("-{signal}")).arg(self.pid().to_string()).status().expect("run kill");
        assert!(status.success(), "kill -{signal} {} failed: {status}", self.pid());
    }

    /// Whether the process has exited (and how).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Waits (polling, at most `timeout`) for the process to exit.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("meshd did not exit within {timeout:?}; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// What the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }

    /// Waits until `/ready` answers 200.
    pub async fn wait_ready(&mut self, client: &HttpClient) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let req = Request::builder().uri(format!("http://{}/ready", self.admin)).body(empty()).expect("request");
            if let Ok(resp) = try_send(client, req).await {
                if resp.status == StatusCode::OK {
                    return;
                }
            }
            if let Some(status) = self.try_exit() {
                panic!("meshd exited early ({status}); log:\n{}", self.logs());
            }
            if Instant::now() >= deadline {
                panic!("meshd not ready within 15s; log:\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for MeshdProcess {
    fn drop(&mut self) {
        // Only our own child, by its handle.
        if self.try_exit().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// Continuous load
// ---------------------------------------------------------------------------

/// One request of a [`Load`]: when it started and its outcome (the echo
/// name of a 200, else a description of the failure).
#[derive(Clone, Debug)]
pub struct Shot {
    pub client: usize,
    pub started: Instant,
    pub outcome: Result<String, String>,
}

/// Clients sending requests back to back, each on its own keep-alive
/// connection, until stopped.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    completed: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<Vec<Shot>>>,
}

impl Load {
    /// Starts `clients` clients sending `req` to the proxy at `addr`.
    pub fn start(addr: SocketAddr, req: Req, clients: usize) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let completed = Arc::new(AtomicUsize::new(0));
        let tasks = (0..clients)
            .map(|index| {
                let (stop, completed, req, http) = (stop.clone(), completed.clone(), req.clone(), client());
                tokio::spawn(async move {
                    let mut shots = Vec::new();
                    while !stop.load(Ordering::SeqCst) {
                        let started = Instant::now();
                        let outcome = match try_send(&http, req.build(addr, empty())).await {
                            Ok(resp) if resp.status == StatusCode::OK => {
                                Ok(resp.echo_name().unwrap_or_else(|| "(no x-echo-name)".into()))
                            }
                            Ok(resp) => Err(format!("status {} body {:?}", resp.status, resp.text())),
                            Err(e) => Err(e),
                        };
                        shots.push(Shot { client: index, started, outcome });
                        completed.fetch_add(1, Ordering::SeqCst);
                    }
                    shots
                })
            })
            .collect();
        Load { stop, completed, tasks }
    }

    /// Requests completed so far, all clients together.
    pub fn completed(&self) -> usize {
        self.completed.load(Ordering::SeqCst)
    }

    /// Waits until `n` more requests have completed.
    pub async fn wait_more(&self, n: usize) {
        let target = self.completed() + n;
        let completed = self.completed.clone();
        wait_until(&format!("{n} more requests under load"), Duration::from_secs(10), || {
            let completed = completed.clone();
            async move { completed.load(Ordering::SeqCst) >= target }
        })
        .await;
    }

    /// Stops the clients and returns every shot, in start order.
    pub async fn stop(self) -> Vec<Shot> {
        self.stop.store(true, Ordering::SeqCst);
        let mut shots = Vec::new();
        for task in self.tasks {
            shots.extend(task.await.expect("load client"));
        }
        shots.sort_by_key(|s| s.started);
        shots
    }
}

/// Asserts that no shot failed.
pub fn assert_no_failures(shots: &[Shot]) {
    let failures: Vec<&Shot> = shots.iter().filter(|s| s.outcome.is_err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed under load; first ones: {:#?}",
        failures.len(),
        shots.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Counts shots by upstream name.
pub fn by_upstream<'a>(shots: impl IntoIterator<Item = &'a Shot>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for shot in shots {
        let key = match &shot.outcome {
            Ok(name) => name.clone(),
            Err(e) => format!("error: {e}"),
        };
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

// ---------------------------------------------------------------------------
// Kubernetes ConfigMap volumes
// ---------------------------------------------------------------------------

/// A directory laid out as the kubelet mounts a ConfigMap: the files live
/// in a timestamped `..<ts>/` directory, `..data` points at it, and each
/// key is a symlink `key -> ..data/key`. An update writes a new timestamped
/// directory, points a temporary symlink at it, renames that over `..data`
/// (atomic), then removes the old directory.
pub struct ConfigMapDir {
    root: PathBuf,
    generation: usize,
    current: Option<PathBuf>,
}

impl ConfigMapDir {
    /// Lays out `files` as a ConfigMap volume in the (empty) directory `root`.
    pub fn new(root: &Path, files: &[(&str, &str)]) -> ConfigMapDir {
        let mut map = ConfigMapDir { root: root.to_path_buf(), generation: 0, current: None };
        map.update(files);
        for (name, _) in files {
            std::os::unix::fs::symlink(format!("..data/{name}"), root.join(name)).expect("key symlink");
        }
        map
    }

    /// Publishes a new version of the files with the `..data` flip.
    pub fn update(&mut self, files: &[(&str, &str)]) {
        self.generation += 1;
        let stamp = format!("..2026_01_01_00_00_{:02}.{:09}", self.generation, self.generation);
        let version_dir = self.root.join(&stamp);
        std::fs::create_dir(&version_dir).expect("version dir");
        for (name, content) in files {
            std::fs::write(version_dir.join(name), content).expect("write key");
        }
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&stamp, &tmp).expect("..data_tmp symlink");
        std::fs::rename(&tmp, self.root.join("..data")).expect("rename ..data_tmp over ..data");
        if let Some(old) = self.current.replace(version_dir) {
            std::fs::remove_dir_all(old).expect("remove the old version");
        }
    }
}

// ---------------------------------------------------------------------------
// Programmable upstreams (resilience tests)
// ---------------------------------------------------------------------------

/// What a [`Programmable`] upstream does with each request. Requests are
/// numbered from 1 in arrival order.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// 200 at once.
    Ok,
    /// Every request answers `status` at once.
    Status(u16),
    /// Request number `n` answers `status` when `n` is a multiple of
    /// `every`, else 200 (`every: 2` fails the 2nd, 4th, …).
    FailEvery { every: usize, status: u16 },
    /// Holds every request for `delay`, then answers 200.
    Slow(Duration),
    /// Holds the first `n` requests for `delay` each; later ones answer 200
    /// at once.
    SlowFirst { n: usize, delay: Duration },
}

/// The shared state of a [`Programmable`] upstream.
struct ProgrammableState {
    name: String,
    behaviour: Mutex<Behaviour>,
    hits: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    heads: Mutex<Vec<HeaderMap>>,
}

/// Counts a request in flight until dropped (the proxy may reset the
/// connection and so drop the handler before it finishes).
struct InFlight(Arc<ProgrammableState>);

impl InFlight {
    fn enter(state: &Arc<ProgrammableState>) -> InFlight {
        let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(state.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A hyper HTTP/1.1 upstream whose behaviour can be changed while it runs
/// ([`Programmable::set`]). Every response carries `x-echo-name: <name>`
/// (so [`Mesh::tally`] and [`Resp::echo_name`] see who answered, errors
/// included) and `x-hit: <request number>`; the body is `<name> <n>`. It
/// records every request head, the number of requests, and the current and
/// highest number of requests in flight at once.
pub struct Programmable {
    pub addr: SocketAddr,
    /// Connections accepted.
    pub connections: Arc<AtomicUsize>,
    state: Arc<ProgrammableState>,
}

/// Starts a [`Programmable`] upstream named `name` doing `behaviour`.
pub async fn programmable(name: &str, behaviour: Behaviour) -> Programmable {
    let state = Arc::new(ProgrammableState {
        name: name.to_owned(),
        behaviour: Mutex::new(behaviour),
        hits: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        heads: Mutex::new(Vec::new()),
    });
    let shared = state.clone();
    let up = upstream(move |req: Request<Incoming>| {
        let state = shared.clone();
        async move {
            let _in_flight = InFlight::enter(&state);
            let n = state.hits.fetch_add(1, Ordering::SeqCst) + 1;
            state.heads.lock().unwrap().push(req.headers().clone());
            let behaviour = state.behaviour.lock().unwrap().clone();
            let status = match behaviour {
                Behaviour::Ok => 200,
                Behaviour::Status(status) => status,
                Behaviour::FailEvery { every, status } => {
                    if n % every.max(1) == 0 {
                        status
                    } else {
                        200
                    }
                }
                Behaviour::Slow(delay) => {
                    tokio::time::sleep(delay).await;
                    200
                }
                Behaviour::SlowFirst { n: slow, delay } => {
                    if n <= slow {
                        tokio::time::sleep(delay).await;
                    }
                    200
                }
            };
            let mut response = Response::new(full(format!("{} {n}", state.name)));
            *response.status_mut() = StatusCode::from_u16(status).expect("valid status");
            let headers = response.headers_mut();
            headers.insert("x-echo-name", HeaderValue::from_str(&state.name).expect("name as header value"));
            headers.insert("x-hit", HeaderValue::from(n));
            response
        }
    })
    .await;
    Programmable { addr: up.addr, connections: up.connections, state }
}

impl Programmable {
    pub fn name(&self) -> &str {
        &self.state.name
    }

    /// Changes what the following requests get.
    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().unwrap() = behaviour;
    }

    /// Requests received so far.
    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::SeqCst)
    }

    /// The highest number of requests handled at once so far.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    /// The heads of the requests received, in arrival order.
    pub fn heads(&self) -> Vec<HeaderMap> {
        self.state.heads.lock().unwrap().clone()
    }

    /// The `x-envoy-attempt-count` of each request received, in arrival
    /// order (`None` when absent).
    pub fn attempt_counts(&self) -> Vec<Option<String>> {
        self.heads()
            .iter()
            .map(|h| h.get("x-envoy-attempt-count").and_then(|v| v.to_str().ok()).map(str::to_owned))
            .collect()
    }
}

/// A DestinationRule for `host` whose `trafficPolicy` is `policy` (YAML
/// written without indentation).
pub fn destination_rule_with_policy(name: &str, namespace: &str, host: &str, policy: &str) -> String {
    object("DestinationRule", name, namespace, &format!("host: {host}\ntrafficPolicy:\n{}", indent(policy, 2)))
}

/// The Envoy cluster name of a ServiceEntry host's port without subset,
/// as the `cluster_name` label and `/clusters` show it.
pub fn cluster_name(host: &str, port: u16) -> String {
    format!("outbound|{port}||{host}")
}

/// Connects to `addr`, sends `data`, half-closes and reads the whole
/// answer; an error when the connection fails or the exchange outlasts
/// `REQUEST_TIMEOUT` (`TimedOut`).
pub async fn tcp_exchange(addr: SocketAddr, data: &[u8]) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let run = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await?;
        stream.write_all(data).await?;
        stream.shutdown().await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    tokio::time::timeout(REQUEST_TIMEOUT, run).await.unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// A TCP upstream that reads until the client half-closes, then answers
/// `NAME:` + what it read and closes.
pub async fn tcp_upstream(name: &'static str) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind TCP upstream");
    let addr = listener.local_addr().expect("TCP upstream address");
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            tokio::spawn(async move {
                let mut data = Vec::new();
                if stream.read_to_end(&mut data).await.is_ok() {
                    let mut reply = format!("{name}:").into_bytes();
                    reply.extend_from_slice(&data);
                    let _ = stream.write_all(&reply).await;
                }
            });
        }
    });
    addr
}
