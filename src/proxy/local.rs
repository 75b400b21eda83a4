//! Replies meshd makes itself (no route, no cluster, no healthy endpoint,
//! upstream failures), with Envoy's status, body and response flag, and
//! their metrics.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::access_log::Record;
use super::body::ProxyBody;
use super::flags::ResponseFlags;
use crate::metrics::{DestinationLabels, Metrics, RequestRecord};

/// A local reply before it is sent.
pub struct LocalReply {
    pub status: StatusCode,
    pub flags: ResponseFlags,
    pub body: Bytes,
    /// Adds `x-envoy-overloaded: true` (circuit-breaker overflow).
    pub overloaded: bool,
    /// Headers of the reply's own (`Location`, a rule's response header
    /// operations); each name here replaces the default of that name.
    /// Empty, and so not allocated, for most replies.
    pub headers: HeaderMap,
    /// The request is gRPC: the reply is sent as gRPC clients expect it
    /// (see [`LocalReply::into_grpc`]).
    pub grpc: bool,
}

const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Envoy's body prefix for upstream resets and connect failures.
const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. ";

// === impl LocalReply ===

impl LocalReply {
    /// 404 `NR`: no virtual host or no route matched (empty body).
    pub fn no_route() -> Self {
        LocalReply::new(StatusCode::NOT_FOUND, ResponseFlags::NR, "")
    }

    /// 503 `NC`: the route's cluster does not exist.
    pub fn no_cluster() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::NC, "")
    }

    /// 503 `UH`: the cluster has no healthy endpoint.
    pub fn no_healthy_upstream() -> Self {
        LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::UH, "no healthy upstream")
    }

    /// An upstream failure before response headers: 503 (502 for `UPE`),
    /// with Envoy's body (`retried and the latest` after retries).
    pub fn upstream_reset(flags: ResponseFlags, reason: &str, retried: bool) -> Self {
        let status =
            if flags.contains(ResponseFlags::UPE) { StatusCode::BAD_GATEWAY } else { StatusCode::SERVICE_UNAVAILABLE };
        let latest = if retried { "retried and the latest " } else { "" };
        LocalReply::new(status, flags, format!("{RESET_PREFIX}{latest}reset reason: {reason}"))
    }

    /// 503 `UO` with `x-envoy-overloaded: true`: a circuit breaker is open.
    pub fn overflow() -> Self {
        let body = "upstream connect error or disconnect/reset before headers. reset reason: overflow";
        LocalReply { overloaded: true, ..LocalReply::new(StatusCode::SERVICE_UNAVAILABLE, ResponseFlags::UO, body) }
    }

    /// 504 `UT`: the route (or per-try) timeout expired.
    pub fn timeout() -> Self {
        LocalReply::new(StatusCode::GATEWAY_TIMEOUT, ResponseFlags::UT, "upstream request timeout")
    }

    /// 400 for a request meshd cannot route at all (`DPE`).
    pub fn bad_request(why: &'static str) -> Self {
        LocalReply::new(StatusCode::BAD_REQUEST, ResponseFlags::DPE, why)
    }

    /// A reply a rule asks for (`redirect`, `directResponse`, a fault
    /// abort).
    pub fn new(status: StatusCode, flags: ResponseFlags, body: impl Into<Bytes>) -> Self {
        LocalReply { status, flags, body: body.into(), overloaded: false, headers: HeaderMap::new(), grpc: false }
    }

    /// Adds `Connection: close` when the client speaks HTTP/1 (`http1`):
    /// what else it sent on the connection is not to be trusted. (HTTP/2
    /// has no such header; its stream ends with the reply.)
    pub fn closing_http1(mut self, http1: bool) -> Self {
        if http1 {
            self.headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        self
    }

    /// Marks the reply as answering a gRPC request (when `grpc`).
    pub fn for_grpc(mut self, grpc: bool) -> Self {
        self.grpc = grpc;
        self
    }

    /// The reply as Envoy sends it to a gRPC client: a trailers-only
    /// response (HTTP 200) whose `grpc-status` maps the HTTP status
    /// (`Grpc::Utility::httpToGrpcStatus`) and whose `grpc-message` is the
    /// body. A reply that is gRPC already (a fault's `grpcStatus`) stays.
    fn into_grpc(mut self) -> Self {
        if self.headers.contains_key(GRPC_STATUS) {
            return self;
        }
        let code: u16 = match self.status.as_u16() {
            400 => 13,
            401 => 16,
            403 => 7,
            404 => 12,
            429 | 502 | 503 | 504 => 14,
            _ => 2,
        };
        self.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        self.headers.insert(GRPC_STATUS, HeaderValue::from(code));
        if let Ok(message) = HeaderValue::from_bytes(&self.body) {
            if !message.is_empty() {
                self.headers.insert(HeaderName::from_static("grpc-message"), message);
            }
        }
        self.status = StatusCode::OK;
        self.body = Bytes::new();
        self
    }

    /// Records the reply against `destination` (metrics and access log)
    /// and builds the response.
    pub fn into_response(
        self,
        metrics: &Metrics,
        destination: &DestinationLabels,
        start: Instant,
        request_bytes: u64,
        mut log: Record,
    ) -> Response<ProxyBody> {
        log.local_reply(&self);
        let this = if self.grpc { self.into_grpc() } else { self };
        this.build(metrics, destination, start, request_bytes, log)
    }

    fn build(
        self,
        metrics: &Metrics,
        destination: &DestinationLabels,
        start: Instant,
        request_bytes: u64,
        log: Record,
    ) -> Response<ProxyBody> {
        let body_len = self.body.len();
        let grpc = self.grpc.then(|| self.headers.get(GRPC_STATUS).and_then(|v| v.to_str().ok()?.parse().ok()));
        let flags = self.flags.as_str();
        let mut response = Response::new(ProxyBody::local(self.body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if body_len > 0 {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        if self.overloaded {
            headers.insert(super::headers::X_ENVOY_OVERLOADED.clone(), HeaderValue::from_static("true"));
        }
        if !self.headers.is_empty() {
            for name in self.headers.keys() {
                headers.remove(name);
            }
            headers.extend(self.headers);
        }
        let response_bytes = super::headers::STATUS_LINE_BYTES + super::headers::block_bytes(headers) + body_len as u64;
        let elapsed = start.elapsed();
        metrics.record(
            destination,
            &RequestRecord {
                status: self.status.as_u16(),
                grpc,
                flags: &flags,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_bytes,
                response_bytes,
            },
        );
        log.finish_local(self.status.as_u16(), self.flags, request_bytes, body_len as u64, elapsed);
        response
    }
}
