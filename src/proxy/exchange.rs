//! One request's trip upstream, as Envoy's router filter makes it: the
//! cluster's request slot (circuit breaking), attempts over picked
//! endpoints, retries with backoff, per-try and route timeouts, and what
//! each result tells outlier detection.
//!
//! ```text
//! try_request (max_requests) ─▶ attempt n: pick (avoiding tried hosts)
//!   ─▶ forward::send (pool: idle, pending, connect) ─▶ response headers
//!   ─▶ retriable? ── yes, budget left ─▶ backoff ─▶ attempt n+1
//!                └─ no ─▶ stream the response back
//! ```
//!
//! Futures of the rare paths (replay buffering, timeouts, backoff) are
//! boxed so that the common path's state machine stays small: hyper keeps
//! it in every connection and moves it once per request. Each box is made
//! in a `let` of its own: a temporary of the statement that awaits would
//! stay in the state machine for the whole await, box or no box (measured:
//! this future went from 7.9 KB to 3.3 KB, the whole request future from
//! ~8.6 KB to ~4 KB).
//!
//! Retry rules (spec §1.12): a retry needs the request again, either handed
//! back unsent (connect failures; a reused connection found dead) or
//! rebuilt from a replay copy, kept only when the policy can retry after
//! sending and the body is at most [`REPLAY_LIMIT`](super::replay::REPLAY_LIMIT) bytes (a body of
//! unannounced length, as gRPC sends, is copied while it streams and is
//! replayable once it has ended); it needs a slot
//! in the cluster's `max_retries` (else the failure is returned with `UO`).
//! Retries exhausted on a retriable result return it with `URX`. The route
//! timeout covers every attempt up to the response headers (504 `UT`) and
//! then the response body (the stream is reset, `UT`);
//! the per-try timeout bounds one attempt and is retried only with `5xx`,
//! `gateway-error` or `reset`.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http::{HeaderMap, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::time::Instant;

use super::access_log::Record;
use super::body::{Completion, ProxyBody, RequestBytes};
use super::flags::ResponseFlags;
use super::forward::{self, ForwardError};
use super::headers;
use super::local::LocalReply;
use super::replay::Replay;
use super::request_body::{BodyWatch, DownstreamBody, RequestBodyError};
use super::upgrade::{self, Upgrade};
use crate::routing::actions::Mutations;
use crate::routing::retry::{Failure, RetryPolicy, RoutePolicy};
use crate::upstream::outlier::Outcome;
use crate::upstream::resources::{RequestSlot, RetrySlot};
use crate::upstream::stats::RouterStats;
use crate::upstream::{ActiveRequest, Cluster, Endpoint, Lease, RequestBody};

/// What the request path hands over once a cluster is chosen.
pub struct Exchange {
    pub cluster: Arc<Cluster>,
    pub route: Arc<RoutePolicy>,
    /// The consistent-hash key of the request, when the cluster hashes.
    pub hash: Option<u64>,
    /// `Set-Cookie` for a generated hash cookie.
    pub set_cookie: Option<HeaderValue>,
    pub start: Instant,
    /// When the route timeout starts: `start`, or the end of an injected
    /// delay (the fault filter runs before the router).
    pub timeout_from: Instant,
    pub request_bytes: RequestBytes,
    /// Tripped when the request body's guard stops it (size limit, idle
    /// timeout): a failure is then the client's, answered for the body.
    /// `None` for unguarded bodies.
    pub body_watch: Option<Arc<BodyWatch>>,
    /// `content-type: application/grpc*` (gRPC retry conditions apply,
    /// and metrics report `request_protocol="grpc"`).
    pub grpc: bool,
    /// The client spoke HTTP/2 (`useClientProtocol` clusters follow it).
    pub client_http2: bool,
    /// Flags set before the router ran (`DI`), added to the result's.
    pub flags: ResponseFlags,
    /// The rule's and destination's response header operations.
    pub mutations: Option<Box<Mutations>>,
    /// The client's `Upgrade` (WebSocket…), tunnelled if the upstream
    /// answers 101.
    pub upgrade: Option<Box<Upgrade>>,
    /// The request's access-log record (empty when the log is off).
    pub log: Record,
}

/// The attempts of one exchange; outlives the attempt future so a route
/// timeout can still see which endpoint was in flight.
struct Attempts {
    /// The request to send next: the first one, or one handed back unsent.
    next: Option<Request<RequestBody>>,
    /// A copy to rebuild the request from, when it may be replayed.
    replay: Option<Replay>,
    /// Hosts already tried, avoided by retries (`previous_hosts`).
    tried: Vec<Arc<Endpoint>>,
    /// The endpoint of the attempt in flight.
    current: Option<Arc<Endpoint>>,
    /// Attempts started so far (1 for the first).
    attempt: u32,
    /// Holds the `max_retries` slot of the retry in flight.
    retry_slot: Option<RetrySlot>,
}

/// How an exchange ended. Lives on the stack for one move, so the size
/// difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum Finished {
    Proxied { response: Response<Incoming>, conn: Lease, active: ActiveRequest, flags: ResponseFlags },
    Local { reply: LocalReply, endpoint: Option<Arc<Endpoint>> },
}

/// What to do after a retriable result.
enum Next {
    Retry,
    /// No retry left: return the result with `URX`.
    Exhausted,
    /// `max_retries` reached: return the result with `UO`.
    Overflow,
    /// The request cannot be sent again (body streamed): return as is.
    NotReplayable,
}

/// Runs the exchange and builds the downstream response.
pub async fn run(mut ex: Exchange, req: Request<RequestBody>) -> Response<ProxyBody> {
    let Some(slot) = ex.cluster.resources().try_request() else {
        return local(&mut ex, LocalReply::overflow(), None);
    };
    let mut req = req;
    if let Some(ms) = expected_timeout_ms(&ex.route) {
        req.headers_mut().insert(headers::X_ENVOY_EXPECTED_RQ_TIMEOUT_MS.clone(), HeaderValue::from(ms));
    }
    let mut attempts = Attempts::new(req);
    if let Some(retry) = &ex.route.retry {
        if retry.needs_replay(ex.grpc) {
            let keep = Box::pin(attempts.keep_replay(!ex.client_http2));
            if let Err(reply) = keep.await {
                return local(&mut ex, reply, None);
            }
        }
    }
    let finished = match ex.route.timeout {
        None => attempts.run(&ex).await,
        Some(timeout) => {
            let timed = Box::pin(tokio::time::timeout_at(ex.timeout_from + timeout, attempts.run(&ex)));
            match timed.await {
                Ok(finished) => finished,
                Err(_) => {
                    RouterStats::inc(&ex.cluster.router_stats().timeout);
                    if let Some(endpoint) = &attempts.current {
                        ex.cluster.record(endpoint, Outcome::Timeout);
                    }
                    Finished::Local { reply: LocalReply::timeout(), endpoint: attempts.current.take() }
                }
            }
        }
    };
    match finished {
        Finished::Proxied { response, conn, active, flags } => {
            let flags = flags | ex.flags;
            proxied(ex, response, conn, active, flags, slot)
        }
        Finished::Local { reply, endpoint } => local(&mut ex, reply, endpoint.as_ref()),
    }
}

/// Records a local reply against the endpoint tried last (or the cluster's
/// service) and builds it.
fn local(ex: &mut Exchange, mut reply: LocalReply, endpoint: Option<&Arc<Endpoint>>) -> Response<ProxyBody> {
    let bytes = ex.request_bytes.total();
    reply.flags |= ex.flags;
    reply.grpc = ex.grpc;
    let mut log = std::mem::take(&mut ex.log);
    match endpoint {
        Some(e) => {
            log.upstream_host(e.addr);
            reply.into_response(&e.registry, e.metrics.labels(), ex.start, bytes, log)
        }
        None => {
            let labels = ex.cluster.service_labels();
            reply.into_response(ex.cluster.metrics(), &labels, ex.start, bytes, log)
        }
    }
}

/// The downstream response for an upstream one: hop-by-hop headers
/// removed, `x-envoy-upstream-service-time` added, the body streamed
/// through with the bookkeeping at its end.
fn proxied(
    ex: Exchange,
    response: Response<Incoming>,
    conn: Lease,
    active: ActiveRequest,
    flags: ResponseFlags,
    slot: RequestSlot,
) -> Response<ProxyBody> {
    let mut response = response;
    let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    let upgraded = match (switched, ex.upgrade) {
        (true, Some(upgrade)) => Some((upgrade.downstream, hyper::upgrade::on(&mut response))),
        _ => None,
    };
    let (mut parts, inner) = response.into_parts();
    let protocol = parts.headers.get(http::header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut parts.headers, false);
    // After a 101 the connection is never reused: it is the tunnel's, or
    // (a 101 nobody asked for) it is closed.
    let conn = match (upgraded, conn) {
        (Some((downstream, upstream)), Lease::Http1(conn)) => {
            if let Some(protocol) = protocol {
                upgrade::restore_headers(&mut parts.headers, protocol);
            }
            upgrade::tunnel(downstream, upstream, conn);
            None
        }
        (_, conn) => (!switched).then_some(conn),
    };
    let service_ms = ex.start.elapsed().as_millis() as u64;
    parts.headers.insert(headers::X_ENVOY_UPSTREAM_SERVICE_TIME.clone(), headers::service_time(service_ms));
    if let Some(cookie) = ex.set_cookie {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    if let Some(mutations) = &ex.mutations {
        mutations.apply_response(&mut parts.headers);
    }
    let head_bytes = headers::STATUS_LINE_BYTES + headers::block_bytes(&parts.headers);
    let mut log = ex.log;
    log.proxied(service_ms, head_bytes);
    let done = Completion {
        status: parts.status.as_u16(),
        grpc: ex.grpc.then(|| grpc_status(&parts.headers)),
        response_bytes: head_bytes,
        active,
        conn,
        start: ex.start,
        flags,
        request_bytes: ex.request_bytes,
        body_watch: ex.body_watch,
        slot: Some(slot),
        log,
    };
    let deadline = ex.route.timeout.map(|t| Box::pin(tokio::time::sleep_until(ex.timeout_from + t)));
    Response::from_parts(parts, ProxyBody::Upstream { inner, done: Some(done), deadline })
}

// === impl Attempts ===

impl Attempts {
    fn new(req: Request<RequestBody>) -> Self {
        Attempts { next: Some(req), replay: None, tried: Vec::new(), current: None, attempt: 0, retry_slot: None }
    }

    /// Keeps a replay copy of the request when it can be sent again
    /// ([`Replay::keep`]).
    async fn keep_replay(&mut self, http1: bool) -> Result<(), LocalReply> {
        let Some(req) = self.next.take() else { return Ok(()) };
        let (req, replay) = Replay::keep(req, http1).await?;
        if replay.is_some() {
            self.replay = replay;
        }
        self.next = Some(req);
        Ok(())
    }

    fn can_send_again(&self) -> bool {
        self.next.is_some() || self.replay.as_ref().is_some_and(Replay::available)
    }

    /// The request for attempt `self.attempt`.
    fn request(&mut self) -> Option<Request<RequestBody>> {
        let mut req = match self.next.take() {
            Some(req) => req,
            None => self.replay.as_ref()?.request()?,
        };
        if self.attempt > 1 {
            req.headers_mut().insert(headers::X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from(self.attempt));
        }
        Some(req)
    }

    async fn run(&mut self, ex: &Exchange) -> Finished {
        let retry = ex.route.retry.as_ref();
        loop {
            self.attempt += 1;
            let Some(req) = self.request() else {
                // Unreachable in practice: retries are only decided when a
                // request is available.
                return Finished::Local { reply: LocalReply::no_healthy_upstream(), endpoint: self.current.take() };
            };
            let Some(pick) = ex.cluster.pick(ex.hash, &self.tried) else {
                return Finished::Local { reply: LocalReply::no_healthy_upstream(), endpoint: self.current.take() };
            };
            let endpoint = pick.endpoint;
            self.current = Some(endpoint.clone());
            let active = endpoint.clone().start();
            let target = || forward::Target {
                pool: endpoint.pool(),
                resources: ex.cluster.resources(),
                settings: &pick.pool,
                connect_timeout: pick.connect_timeout,
                tls: pick.tls.as_deref(),
                // An upgrade needs HTTP/1.1 (no extended CONNECT upstream).
                http2: pick.pool.protocol.http2(ex.client_http2) && ex.upgrade.is_none(),
            };
            let send = |req| forward::send(target(), req);
            let per_try = retry.and_then(|r| r.per_try_timeout);
            let sent = match per_try {
                None => Ok(send(req).await),
                Some(t) => {
                    let timed = Box::pin(tokio::time::timeout(t, send(req)));
                    timed.await
                }
            };
            let failure = match sent {
                Ok(Ok((response, conn))) => {
                    let status = response.status().as_u16();
                    let grpc_status = grpc_status(response.headers());
                    ex.cluster.record(&endpoint, Outcome::Response(outlier_status(status, grpc_status)));
                    let overloaded = response.headers().contains_key(&headers::X_ENVOY_OVERLOADED);
                    let retriable = retry.is_some_and(|r| r.retry_on_response(status, grpc_status, overloaded));
                    let flags = match retriable {
                        false => {
                            if self.attempt > 1 {
                                RouterStats::inc(&ex.cluster.router_stats().retry_success);
                            }
                            ResponseFlags::NONE
                        }
                        true => match self.next_step(ex, retry, &endpoint) {
                            Next::Retry => {
                                drop((response, conn, active));
                                self.backoff(retry).await;
                                continue;
                            }
                            Next::Exhausted => ResponseFlags::URX,
                            Next::Overflow => ResponseFlags::UO,
                            Next::NotReplayable => ResponseFlags::NONE,
                        },
                    };
                    return Finished::Proxied { response, conn, active, flags };
                }
                Ok(Err(failed)) => {
                    // The client's body was stopped: not the upstream's
                    // failure (no outlier outcome, no retry).
                    if let Some(stopped) = ex.body_watch.as_ref().and_then(|w| w.stopped()) {
                        return Finished::Local { reply: stopped.reply(!ex.client_http2), endpoint: Some(endpoint) };
                    }
                    if let Some(unsent) = failed.unsent {
                        self.next = Some(unsent);
                    }
                    failed.error
                }
                Err(_elapsed) => {
                    RouterStats::inc(&ex.cluster.router_stats().per_try_timeout);
                    ForwardError::PerTryTimeout
                }
            };
            let Some((outcome, kind)) = failure.outlier_and_retry() else {
                // Overflow: not counted by outlier detection, not retried.
                return Finished::Local { reply: LocalReply::overflow(), endpoint: Some(endpoint) };
            };
            ex.cluster.record(&endpoint, outcome);
            tracing::debug!(
                cluster = %ex.cluster.name(), attempt = self.attempt, endpoint = %endpoint.addr,
                tried = ?self.tried.iter().map(|e| e.addr).collect::<Vec<_>>(), error = %failure,
                "upstream attempt failed"
            );
            let mut reply = failure.reply(self.attempt > 1);
            if retry.is_some_and(|r| r.retry_on_failure(kind)) {
                match self.next_step(ex, retry, &endpoint) {
                    Next::Retry => {
                        self.backoff(retry).await;
                        continue;
                    }
                    Next::Exhausted => reply.flags |= ResponseFlags::URX,
                    Next::Overflow => reply.flags |= ResponseFlags::UO,
                    Next::NotReplayable => {}
                }
            }
            return Finished::Local { reply, endpoint: Some(endpoint) };
        }
    }

    /// Decides whether a retriable result is retried, taking a retry slot.
    fn next_step(&mut self, ex: &Exchange, retry: Option<&RetryPolicy>, endpoint: &Arc<Endpoint>) -> Next {
        let Some(retry) = retry else { return Next::NotReplayable };
        if self.attempt > retry.num_retries {
            RouterStats::inc(&ex.cluster.router_stats().retry_limit_exceeded);
            return Next::Exhausted;
        }
        if !self.can_send_again() {
            return Next::NotReplayable;
        }
        let Some(slot) = ex.cluster.resources().try_retry() else { return Next::Overflow };
        self.retry_slot = Some(slot);
        RouterStats::inc(&ex.cluster.router_stats().retry);
        if retry.previous_hosts && ex.hash.is_none() {
            self.tried.push(endpoint.clone());
        }
        Next::Retry
    }

    async fn backoff(&self, retry: Option<&RetryPolicy>) {
        if let Some(retry) = retry {
            let wait = retry.backoff(self.attempt);
            if !wait.is_zero() {
                let sleep = Box::pin(tokio::time::sleep(wait));
                sleep.await;
            }
        }
    }
}

// === impl ForwardError ===

impl ForwardError {
    /// What the failure tells outlier detection and the retry policy;
    /// `None` for overflow, which neither counts nor retries.
    fn outlier_and_retry(&self) -> Option<(Outcome, Failure)> {
        Some(match self {
            ForwardError::Overflow => return None,
            ForwardError::Connect(e) if e.is_timeout() => (Outcome::Timeout, Failure::ConnectFailure),
            ForwardError::Connect(_) => (Outcome::ConnectFailure, Failure::ConnectFailure),
            ForwardError::Exchange(_) => (Outcome::Reset, Failure::Reset),
            ForwardError::PerTryTimeout => (Outcome::Timeout, Failure::PerTryTimeout),
        })
    }

    fn reply(&self, retried: bool) -> LocalReply {
        match self {
            ForwardError::PerTryTimeout => LocalReply::timeout(),
            other => {
                let (flags, reason) = other.classify();
                LocalReply::upstream_reset(flags, reason, retried)
            }
        }
    }
}

/// `x-envoy-expected-rq-timeout-ms`: the per-try timeout, else the route
/// timeout, when there is one (Envoy sets it only then).
fn expected_timeout_ms(route: &RoutePolicy) -> Option<u64> {
    let per_try = route.retry.as_ref().and_then(|r| r.per_try_timeout);
    let t = per_try.or(route.timeout)?;
    Some(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1))
}

/// Reads a request body whole (it is known to be small); the reply when
/// it fails (`http1`: the client speaks HTTP/1).
pub(super) async fn collect(body: DownstreamBody, http1: bool) -> Result<Bytes, LocalReply> {
    match body.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(RequestBodyError::Stopped(stopped)) => Err(stopped.reply(http1)),
        Err(RequestBodyError::Downstream(_)) => Err(LocalReply::bad_request("request body ended early")),
    }
}

/// `grpc-status` from response headers (a trailers-only gRPC response)
/// or trailers.
pub(super) fn grpc_status(headers: &HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

/// The status outlier detection sees: gRPC statuses map to HTTP as Envoy's
/// `Grpc::Utility::grpcToHttpStatus` does.
fn outlier_status(status: u16, grpc_status: Option<u32>) -> u16 {
    match grpc_status {
        None | Some(0) => status,
        Some(1) => 499,
        Some(3 | 9 | 11) => 400,
        Some(4) => 504,
        Some(5) => 404,
        Some(6 | 10) => 409,
        Some(7) => 403,
        Some(8) => 429,
        Some(12) => 501,
        Some(14) => 503,
        Some(16) => 401,
        Some(_) => 500,
    }
}
