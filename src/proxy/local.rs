//! Replies meshd makes itself (no route, no cluster, no healthy endpoint,
//! upstream failures), with Envoy's status, body and response flag, and
//! their metrics.

use std::borrow::Cow;

use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use tokio::time::Instant;

use super::body::ProxyBody;
use super::flags::ResponseFlags;
use crate::metrics::{DestinationLabels, Metrics, RequestRecord};

/// A local reply before it is sent.
pub struct LocalReply {
    pub status: StatusCode,
    pub flags: ResponseFlags,
    pub body: Cow<'static, str>,
}

/// Envoy's body prefix for upstream resets and connect failures.
const RESET_PREFIX: &str = "upstream connect error or disconnect/reset before headers. reset reason: ";

// === impl LocalReply ===

impl LocalReply {
    /// 404 `NR`: no virtual host or no route matched (empty body).
    pub fn no_route() -> Self {
        LocalReply { status: StatusCode::NOT_FOUND, flags: ResponseFlags::NR, body: "".into() }
    }

    /// 503 `NC`: the route's cluster does not exist.
    pub fn no_cluster() -> Self {
        LocalReply { status: StatusCode::SERVICE_UNAVAILABLE, flags: ResponseFlags::NC, body: "".into() }
    }

    /// 503 `UH`: the cluster has no healthy endpoint.
    pub fn no_healthy_upstream() -> Self {
        LocalReply {
            status: StatusCode::SERVICE_UNAVAILABLE,
            flags: ResponseFlags::UH,
            body: "no healthy upstream".into(),
        }
    }

    /// An upstream failure before response headers: 503 (502 for `UPE`).
    pub fn upstream_reset(flags: ResponseFlags, reason: &str) -> Self {
        let status =
            if flags.contains(ResponseFlags::UPE) { StatusCode::BAD_GATEWAY } else { StatusCode::SERVICE_UNAVAILABLE };
        LocalReply { status, flags, body: format!("{RESET_PREFIX}{reason}").into() }
    }

    /// 400 for a request meshd cannot route at all (`DPE`).
    pub fn bad_request(why: &'static str) -> Self {
        LocalReply { status: StatusCode::BAD_REQUEST, flags: ResponseFlags::DPE, body: why.into() }
    }

    /// Records the reply against `destination` and builds the response.
    pub fn into_response(
        self,
        metrics: &Metrics,
        destination: &DestinationLabels,
        start: Instant,
        request_bytes: u64,
    ) -> Response<ProxyBody> {
        let body_len = self.body.len();
        let flags = self.flags.as_str();
        let mut response = Response::new(ProxyBody::local(match self.body {
            Cow::Borrowed(s) => bytes::Bytes::from_static(s.as_bytes()),
            Cow::Owned(s) => bytes::Bytes::from(s),
        }));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        if body_len > 0 {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body_len));
        let response_bytes = super::headers::STATUS_LINE_BYTES + super::headers::block_bytes(headers) + body_len as u64;
        metrics.record(
            destination,
            &RequestRecord {
                status: self.status.as_u16(),
                flags: &flags,
                duration_ms: start.elapsed().as_secs_f64() * 1000.0,
                request_bytes,
                response_bytes,
            },
        );
        response
    }
}
