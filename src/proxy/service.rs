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

use super::body::{BodyBytes, ProxyBody, RequestBytes};
use super::exchange::{self, Exchange};
use super::hash_key::{self, RequestHash};
use super::headers;
use super::local::LocalReply;
use super::{overrides, path, Proxy};
use crate::metrics::DestinationLabels;
use crate::routing::retry::RoutePolicy;
use crate::routing::{Action, ClusterRef, Lookup, RequestView};
use crate::snapshot::Snapshot;
use crate::upstream::RequestBody;

/// Per-connection facts the request path needs.
#[derive(Clone, Copy, Debug)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// `http` (or `https` on TLS listeners).
    pub scheme: &'static str,
}

/// A local reply instead of a route, with the destination its metrics are
/// recorded against (boxed: the error path is rare and the pair is large).
type Refusal = Box<(LocalReply, DestinationLabels)>;

/// Handles one request; never fails (errors become local replies).
pub async fn handle(proxy: Arc<Proxy>, downstream: Downstream, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    normalize_path(&mut req);
    // A guard, not an `Arc`: no reference count is touched, and it is
    // dropped before the first await.
    let snapshot = proxy.snapshot.load();
    let head_bytes = request_head_bytes(&req);
    let (index, route) = match route(&snapshot, &downstream, &req) {
        Ok(decision) => decision,
        Err(refusal) => {
            let (reply, destination) = *refusal;
            return reply.into_response(&proxy.metrics, &destination, start, head_bytes);
        }
    };
    let Some(cluster) = snapshot.clusters.get(index).cloned() else {
        let destination = DestinationLabels::for_service("unknown", "unknown", "unknown");
        return LocalReply::no_cluster().into_response(&proxy.metrics, &destination, start, head_bytes);
    };
    drop(snapshot);
    let hash =
        cluster.state().spec.policy.hash.as_ref().map(|h| hash_key::request_hash(&h.key, &req, downstream.peer.ip()));
    let (hash, set_cookie) = match hash {
        None | Some(RequestHash::None) => (None, None),
        Some(RequestHash::Hash(hash)) => (Some(hash), None),
        Some(RequestHash::NewCookie { hash, set_cookie }) => (Some(hash), Some(set_cookie)),
    };
    let grpc = is_grpc(&req);
    let route = overrides::apply(req.headers_mut(), &route).unwrap_or(route);
    let (upstream_req, request_bytes) = prepare(req, &downstream, head_bytes);
    let ex = Exchange { cluster, route, hash, set_cookie, start, request_bytes, grpc };
    exchange::run(ex, upstream_req).await
}

/// Finds the cluster for `req`, or the local reply to send instead (with
/// the destination its metrics are recorded against).
fn route(
    snapshot: &Snapshot,
    downstream: &Downstream,
    req: &Request<Incoming>,
) -> Result<(usize, Arc<RoutePolicy>), Refusal> {
    let Some(authority) = authority(req) else {
        let unknown = DestinationLabels::for_service("unknown", "unknown", "unknown");
        return Err(Box::new((LocalReply::bad_request("missing host header"), unknown)));
    };
    let view = RequestView {
        method: req.method(),
        scheme: downstream.scheme,
        authority,
        port: authority_port(authority).unwrap_or(if downstream.scheme == "https" { 443 } else { 80 }),
        path: req.uri().path(),
        query: req.uri().query(),
        headers: req.headers(),
    };
    let not_found = || {
        let host = host_only(authority);
        Box::new((LocalReply::no_route(), DestinationLabels::for_service(host, host, "unknown")))
    };
    let forward = match snapshot.table.find(&view) {
        Lookup::NoVirtualHost | Lookup::NoRoute(_) => return Err(not_found()),
        Lookup::Route(_, route) => match &route.action {
            Action::Forward(forward) => forward,
        },
    };
    match forward.pick(fastrand::u32(..)).map(|d| &d.cluster) {
        Some(ClusterRef::Known(id)) => Ok((id.0 as usize, forward.policy.clone())),
        Some(ClusterRef::Missing { service, .. }) => {
            let labels = DestinationLabels::for_service(&service.host, &service.name, &service.namespace);
            Err(Box::new((LocalReply::no_cluster(), labels)))
        }
        None => Err(not_found()),
    }
}

/// Turns the downstream request into the upstream one: origin-form URI,
/// HTTP/1.1, `Host` present, hop-by-hop headers removed, forwarding headers
/// set, body streamed.
fn prepare(req: Request<Incoming>, downstream: &Downstream, head_bytes: u64) -> (Request<RequestBody>, RequestBytes) {
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
    let (body, counted) = if body.is_end_stream() {
        (RequestBody::Empty, BodyBytes::Known(0))
    } else if let Some(len) = body.size_hint().exact() {
        (RequestBody::Streamed(body), BodyBytes::Known(len))
    } else {
        let count = Arc::new(AtomicU64::new(0));
        (RequestBody::Counted(body, count.clone()), BodyBytes::Counted(count))
    };
    (Request::from_parts(parts, body), RequestBytes { head: head_bytes, body: counted })
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

/// The port in an authority, if any (`[::1]:80`, `host:8080`).
fn authority_port(authority: &str) -> Option<u16> {
    let (host, port) = authority.rsplit_once(':')?;
    if host.contains(':') && !host.ends_with(']') {
        return None; // a bare IPv6 address
    }
    port.parse().ok()
}

fn host_only(authority: &str) -> &str {
    match authority_port(authority) {
        Some(_) => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        None => authority,
    }
}

/// Bytes of the request line and headers, as HTTP/1.1 would send them.
fn request_head_bytes<B>(req: &Request<B>) -> u64 {
    let target = req.uri().path_and_query().map_or(1, |p| p.as_str().len());
    (req.method().as_str().len() + target + 11) as u64 + headers::block_bytes(req.headers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_ports() {
        assert_eq!(authority_port("a:8080"), Some(8080));
        assert_eq!(authority_port("a"), None);
        assert_eq!(authority_port("[::1]:80"), Some(80));
        assert_eq!(authority_port("::1"), None);
        assert_eq!(host_only("a:8080"), "a");
        assert_eq!(host_only("a"), "a");
    }
}
