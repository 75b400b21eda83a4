//! `mirror` / `mirrors` of an HTTP rule (spec §1.14): a copy of the
//! request the router forwards (its final headers, Host unchanged as
//! current istiod sets it) goes to each sampled mirror cluster,
//! fire-and-forget. The copy runs as its own task through the same router
//! ([`exchange::run`]) with the route's timeout and no retries; its
//! response is read and dropped, and its metrics are recorded against the
//! mirror's destination. The client never waits for it.
//!
//! A body is mirrored when its length is announced and at most
//! [`MIRROR_BODY_LIMIT`]: it is read whole first (it is small), and the
//! same bytes go to the upstream and to every mirror. A request with a
//! larger or unannounced body is forwarded without mirrors.

use std::sync::Arc;

use http::{Request, Response};
use http_body::Body;
use http_body_util::BodyExt;
use tokio::time::Instant;

use super::access_log::Record;
use super::body::{BodyBytes, ProxyBody, RequestBytes};
use super::exchange::{self, Exchange};
use super::flags::ResponseFlags;
use super::local::LocalReply;
use crate::routing::retry::RoutePolicy;
use crate::upstream::{Cluster, RequestBody};

/// Largest request body copied to mirrors (Envoy's default buffer limit is
/// larger; meshd keeps mirroring cheap).
pub const MIRROR_BODY_LIMIT: u64 = 64 * 1024;

/// Sends a copy of `req` to each of `mirrors`, and returns the request for
/// the upstream (its body read whole when it was copied). Fails only when
/// reading a body to copy fails (`client_http2`: how to answer then).
pub async fn send_copies(
    mirrors: Vec<Arc<Cluster>>,
    req: Request<RequestBody>,
    route: &RoutePolicy,
    head_bytes: u64,
    client_http2: bool,
) -> Result<Request<RequestBody>, LocalReply> {
    let (parts, body) = req.into_parts();
    let body = match body {
        RequestBody::Empty => None,
        RequestBody::Replay(bytes) => Some(bytes.unwrap_or_default()),
        RequestBody::Streamed(incoming) if incoming.size_hint().exact().is_some_and(|n| n <= MIRROR_BODY_LIMIT) => {
            Some(exchange::collect(incoming, !client_http2).await?)
        }
        other => return Ok(Request::from_parts(parts, other)),
    };
    let policy = Arc::new(RoutePolicy { timeout: route.timeout, retry: None });
    for cluster in mirrors {
        let mut copy = Request::new(body.clone().map_or(RequestBody::Empty, |b| RequestBody::Replay(Some(b))));
        *copy.method_mut() = parts.method.clone();
        *copy.uri_mut() = parts.uri.clone();
        *copy.version_mut() = parts.version;
        *copy.headers_mut() = parts.headers.clone();
        let len = body.as_ref().map_or(0, |b| b.len() as u64);
        let start = Instant::now();
        let ex = Exchange {
            cluster,
            route: policy.clone(),
            hash: None,
            set_cookie: None,
            start,
            timeout_from: start,
            request_bytes: RequestBytes { head: head_bytes, body: BodyBytes::Known(len) },
            body_watch: None,
            grpc: false,
            client_http2: false,
            flags: ResponseFlags::NONE,
            mutations: None,
            upgrade: None,
            // Envoy logs the request, not its shadows.
            log: Record::default(),
        };
        tokio::spawn(async move { drain(exchange::run(ex, copy).await).await });
    }
    let body = body.map_or(RequestBody::Empty, |b| RequestBody::Replay(Some(b)));
    Ok(Request::from_parts(parts, body))
}

/// Reads a mirror's response to its end (so its metrics are recorded and
/// its connection goes back to the pool) and drops it.
async fn drain(response: Response<ProxyBody>) {
    let mut body = response.into_body();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
}
