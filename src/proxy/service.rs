//! The per-request path: route, pick, forward, stream back.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::access_log::{ConnectionInfo, Record};
use super::actions::{direct_reply, fault_abort, https_redirect, preflight_reply, redirect_reply, rewrite};
use super::body::{BodyBytes, ProxyBody, RequestBytes};
use super::capture::Captured;
use super::exchange::{self, Exchange};
use super::hash_key::{self, RequestHash};
use super::headers;
use super::local::LocalReply;
use super::request_body::BodyWatch;
use super::xfcc::ForwardClientCert;
use super::{limits, mirror, overrides, path, upgrade, Proxy, ResponseFlags};
use crate::config::host;
use crate::metrics::DestinationLabels;
use crate::routing::actions::{sampled, CorsDecision, Mirror, Mutations, MILLION};
use crate::routing::retry::RoutePolicy;
use crate::routing::{Action, ClusterRef, Lookup, RequestView};
use crate::snapshot::Snapshot;
use crate::upstream::{Cluster, RequestBody};

/// Per-connection facts the request path needs.
#[derive(Clone, Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// `http` (or `https` on TLS listeners).
    pub scheme: &'static str,
    /// The Gateway port whose routes apply; `None` on the mesh listeners.
    pub gateway: Option<u16>,
    /// What happens to `x-forwarded-client-cert`, decided at the handshake.
    pub client_cert: ForwardClientCert,
    /// What the connection's access-log lines share; `None` when the
    /// access log is off.
    pub access_log: Option<Arc<ConnectionInfo>>,
    /// Set on connections the sidecar listeners captured.
    pub capture: Option<Arc<Captured>>,
}

/// A local reply instead of a route, with the destination its metrics are
/// recorded against (boxed: the error path is rare and the pair is large).
type Refusal = Box<(LocalReply, DestinationLabels)>;

/// What routing chose for a request that is forwarded.
struct Chosen {
    cluster: Target,
    policy: Arc<RoutePolicy>,
    /// The rule's fault, rewrite and header operations; `None` on plain
    /// routes.
    mutations: Option<Box<Mutations>>,
    /// The mirror clusters sampled for this request (empty, and not
    /// allocated, on most routes).
    mirrors: Vec<Arc<Cluster>>,
}

/// The cluster a request is forwarded to.
enum Target {
    /// Index of a cluster in the snapshot.
    Index(usize),
    /// A cluster outside the configuration (sidecar capture's passthrough
    /// and inbound clusters).
    Cluster(Arc<Cluster>),
}

/// Handles one request; never fails (errors become local replies).
pub async fn handle(proxy: Arc<Proxy>, downstream: Downstream, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    normalize_path(&mut req);
    // A guard, not an `Arc`: no reference count is touched, and it is
    // dropped before the first await.
    let snapshot = proxy.snapshot.load();
    let head_bytes = request_head_bytes(&req);
    let grpc = is_grpc(&req);
    let mut log = Record::begin(downstream.access_log.as_ref(), &req, head_bytes);
    if let Some(refusal) = limits::check(&req, &proxy.limits) {
        let http1 = req.version() != Version::HTTP_2;
        return refuse(refusal, http1, &proxy, start, head_bytes, log);
    }
    let Chosen { cluster: target, policy, mutations, mirrors } =
        match route(&snapshot, &downstream, &req, &proxy, &mut log) {
            Ok(chosen) => chosen,
            Err(refusal) => {
                let (reply, destination) = *refusal;
                // Errors (flagged) are sent the gRPC way; redirects and direct
                // responses are not, as in Envoy.
                let grpc = grpc && !reply.flags.is_empty();
                return reply.for_grpc(grpc).into_response(&proxy.metrics, &destination, start, head_bytes, log);
            }
        };
    let cluster = match target {
        Target::Index(index) => snapshot.clusters.get(index).cloned(),
        Target::Cluster(cluster) => Some(cluster),
    };
    let Some(cluster) = cluster else {
        let destination = DestinationLabels::for_service("unknown", "unknown", "unknown");
        let reply = LocalReply::no_cluster().for_grpc(grpc);
        return reply.into_response(&proxy.metrics, &destination, start, head_bytes, log);
    };
    drop(snapshot);
    log.cluster(cluster.name());
    let (mut flags, mut timeout_from) = (ResponseFlags::NONE, start);
    if let Some(fault) = mutations.as_deref().and_then(Mutations::fault) {
        let injection = fault.sample(|| fastrand::u32(..MILLION));
        if let Some(delay) = injection.delay {
            // Boxed in a statement of its own: rare, and kept out of the
            // request future's common state.
            let sleep = Box::pin(tokio::time::sleep(delay));
            sleep.await;
            flags |= ResponseFlags::DI;
            timeout_from = Instant::now();
        }
        if let Some(abort) = injection.abort {
            let mut reply = fault_abort(abort).for_grpc(grpc);
            reply.flags |= flags;
            let labels = cluster.service_labels();
            return reply.into_response(cluster.metrics(), &labels, start, head_bytes, log);
        }
    }
    let hash =
        cluster.state().spec.policy.hash.as_ref().map(|h| hash_key::request_hash(&h.key, &req, downstream.peer.ip()));
    let (hash, set_cookie) = match hash {
        None | Some(RequestHash::None) => (None, None),
        Some(RequestHash::Hash(hash)) => (Some(hash), None),
        Some(RequestHash::NewCookie { hash, set_cookie }) => (Some(hash), Some(set_cookie)),
    };
    let client_http2 = req.version() == Version::HTTP_2;
    let upgrade = upgrade::requested(&mut req);
    let route = overrides::apply(req.headers_mut(), &policy).unwrap_or(policy);
    if let Some(mutations) = &mutations {
        rewrite(&mut req, mutations);
    }
    let (mut upstream_req, request_bytes, body_watch) = prepare(req, &downstream, head_bytes, &proxy);
    log.forwarded(upstream_req.headers());
    if let Some(upgrade) = &upgrade {
        upgrade::restore_headers(upstream_req.headers_mut(), upgrade.protocol.clone());
    }
    // An upgrade is not mirrored: its connection is the client's alone.
    if !mirrors.is_empty() && upgrade.is_none() {
        let copies = Box::pin(mirror::send_copies(mirrors, upstream_req, &route, head_bytes, client_http2));
        upstream_req = match copies.await {
            Ok(req) => req,
            Err(reply) => {
                let reply = reply.for_grpc(grpc);
                return reply.into_response(cluster.metrics(), &cluster.service_labels(), start, head_bytes, log);
            }
        };
    }
    let ex = Exchange {
        cluster,
        route,
        hash,
        set_cookie,
        start,
        timeout_from,
        request_bytes,
        body_watch,
        grpc,
        client_http2,
        flags,
        mutations,
        upgrade,
        log,
    };
    exchange::run(ex, upstream_req).await
}

/// The local reply to a request [`limits::check`] refused
/// ([`limits::Refusal::reply`]), counted by reason.
#[cold]
fn refuse(
    refusal: limits::Refusal,
    http1: bool,
    proxy: &Proxy,
    start: Instant,
    head_bytes: u64,
    log: Record,
) -> Response<ProxyBody> {
    proxy.metrics.downstream_requests_refused.with_label_values(&[refusal.reason()]).inc();
    let reply = refusal.reply(http1);
    let destination = DestinationLabels::for_service("unknown", "unknown", "unknown");
    reply.into_response(&proxy.metrics, &destination, start, head_bytes, log)
}

/// Finds the cluster for `req`, or the local reply to send instead (with
/// the destination its metrics are recorded against); notes the route
/// matched in `log`.
fn route(
    snapshot: &Snapshot,
    downstream: &Downstream,
    req: &Request<Incoming>,
    proxy: &Proxy,
    log: &mut Record,
) -> Result<Chosen, Refusal> {
    if let Some(captured) = &downstream.capture {
        if let Some(app) = captured.app() {
            return Ok(Chosen::to(app.clone(), captured.policy.clone()));
        }
    }
    let Some(authority) = authority(req) else {
        let unknown = DestinationLabels::for_service("unknown", "unknown", "unknown");
        return Err(Box::new((LocalReply::bad_request("missing host header"), unknown)));
    };
    let scheme_port = if downstream.scheme == "https" { 443 } else { 80 };
    let port = match &downstream.capture {
        Some(captured) => captured.original.port(),
        None => host::split_port(authority).1.unwrap_or(scheme_port),
    };
    let view = RequestView {
        method: req.method(),
        scheme: downstream.scheme,
        authority,
        port,
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let local = |reply: LocalReply| {
        let (host, _) = host::split_port(authority);
        Box::new((reply, DestinationLabels::for_service(host, host, "unknown")))
    };
    let table = match downstream.gateway {
        None => &snapshot.table,
        Some(port) => match snapshot.gateway(port) {
            Some(gateway) if gateway.https_redirect => return Err(local(https_redirect(&view))),
            Some(gateway) => &gateway.table,
            None => return Err(local(LocalReply::no_route())),
        },
    };
    let lookup = match (table.find(&view), &downstream.capture) {
        // Captured traffic finds only the hosts of its port's route table.
        (Lookup::Route(vhost, _) | Lookup::NoRoute(vhost), Some(_)) if !vhost.serves_port(port) => {
            Lookup::NoVirtualHost
        }
        (lookup, _) => lookup,
    };
    let route = match lookup {
        Lookup::NoVirtualHost => match &downstream.capture {
            Some(captured) => {
                let (host, _) = host::split_port(authority);
                return match captured.unmatched(host, &proxy.metrics) {
                    Ok(cluster) => Ok(Chosen::to(cluster, captured.policy.clone())),
                    Err((reply, labels)) => Err(Box::new((reply, labels))),
                };
            }
            None => return Err(local(LocalReply::no_route())),
        },
        Lookup::NoRoute(_) => return Err(local(LocalReply::no_route())),
        Lookup::Route(_, route) => route,
    };
    log.route(&route.name);
    let forward = match &route.action {
        Action::Forward(forward) => forward,
        Action::Redirect(redirect) => return Err(local(redirect_reply(redirect, &view, route.extras.as_deref()))),
        Action::Direct(direct) => return Err(local(direct_reply(direct, route.extras.as_deref()))),
    };
    let mut cors_origin = None;
    if let Some(cors) = route.extras.as_ref().and_then(|e| e.cors.as_ref()) {
        match cors.decide(req.method(), req.headers()) {
            CorsDecision::Forward => {}
            CorsDecision::Allowed(origin) => cors_origin = Some(origin),
            CorsDecision::Preflight(headers) => return Err(local(preflight_reply(headers))),
        }
    }
    let Some(picked) = forward.pick(fastrand::u32(..)) else { return Err(local(LocalReply::no_route())) };
    match &picked.cluster {
        ClusterRef::Known(id) => {
            let mutations = Mutations {
                route: route.extras.clone(),
                destination: picked.headers.clone(),
                destination_first: forward.destinations.len() > 1,
                cors_origin,
            };
            let mutations = (!mutations.is_empty()).then(|| Box::new(mutations));
            let mirrors = route.extras.as_ref().map(|e| sample_mirrors(snapshot, &e.mirrors)).unwrap_or_default();
            Ok(Chosen { cluster: Target::Index(id.0 as usize), policy: forward.policy.clone(), mutations, mirrors })
        }
        ClusterRef::Missing { service, .. } => {
            let labels = DestinationLabels::for_service(&service.host, &service.name, &service.namespace);
            Err(Box::new((LocalReply::no_cluster(), labels)))
        }
    }
}

// === impl Chosen ===

impl Chosen {
    /// Every request to `cluster` with `policy`, nothing else applied.
    fn to(cluster: Arc<Cluster>, policy: Arc<RoutePolicy>) -> Self {
        Chosen { cluster: Target::Cluster(cluster), policy, mutations: None, mirrors: Vec::new() }
    }
}

/// The live clusters of the mirrors this request is copied to.
fn sample_mirrors(snapshot: &Snapshot, mirrors: &[Mirror]) -> Vec<Arc<Cluster>> {
    mirrors
        .iter()
        .filter(|m| sampled(m.share, || fastrand::u32(..MILLION)))
        .filter_map(|m| snapshot.clusters.get(m.cluster.0 as usize).cloned())
        .collect()
}

/// Turns the downstream request into the upstream one: origin-form URI,
/// HTTP/1.1, `Host` present, hop-by-hop headers removed, forwarding headers
/// set, body streamed (guarded by `proxy.body_rules`; the watch its guard
/// trips is returned, when it has one).
fn prepare(
    req: Request<Incoming>,
    downstream: &Downstream,
    head_bytes: u64,
    proxy: &Proxy,
) -> (Request<RequestBody>, RequestBytes, Option<Arc<BodyWatch>>) {
    let (mut parts, body) = req.into_parts();
    if !parts.headers.contains_key(header::HOST) {
        if let Some(value) = parts.uri.authority().and_then(|a| HeaderValue::from_str(a.as_str()).ok()) {
            parts.headers.insert(header::HOST, value);
        }
    }
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(path);
    }
    parts.version = Version::HTTP_11;
    headers::strip_hop_by_hop(&mut parts.headers, true);
    headers::set_forwarding(&mut parts.headers, downstream.peer.ip(), downstream.scheme);
    downstream.client_cert.apply(&mut parts.headers);
    if body.is_end_stream() {
        let bytes = RequestBytes { head: head_bytes, body: BodyBytes::Known(0) };
        return (Request::from_parts(parts, RequestBody::Empty), bytes, None);
    }
    let declared = body.size_hint().exact();
    let (body, watch) = proxy.body_rules.guard(body);
    let (body, counted) = match declared {
        Some(len) => (RequestBody::Streamed(body), BodyBytes::Known(len)),
        None => {
            let count = Arc::new(AtomicU64::new(0));
            (RequestBody::Counted(body, count.clone()), BodyBytes::Counted(count))
        }
    };
    (Request::from_parts(parts, body), RequestBytes { head: head_bytes, body: counted }, watch)
}

/// Replaces the path with its normalised form when it has dot segments, so
/// routing and the upstream see the same, canonical path.
fn normalize_path<B>(req: &mut Request<B>) {
    let Some(normal) = path::normalize(req.uri().path()) else { return };
    let target = match req.uri().query() {
        Some(query) => format!("{normal}?{query}"),
        None => normal,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = PathAndQuery::try_from(target).ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// Whether the request is gRPC (`content-type: application/grpc*`).
fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The request's authority: `:authority` (HTTP/2, absolute-form) or `Host`.
fn authority<B>(req: &Request<B>) -> Option<&str> {
    req.uri()
        .authority()
        .map(|a| a.as_str())
        .or_else(|| req.headers().get(header::HOST).and_then(|v| v.to_str().ok()))
        .filter(|a| !a.is_empty())
}

/// Bytes of the request line and headers, as HTTP/1.1 would send them.
fn request_head_bytes<B>(req: &Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    (req.method().as_str().len() + target + 11) as u64 + headers::block_bytes(req.headers())
}
