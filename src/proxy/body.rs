//! The response body meshd sends downstream, and the bookkeeping that runs
//! when it ends.
//!
//! A proxied response streams the upstream body through unchanged. When the
//! last frame has passed (or the body is dropped), [`Completion`] returns
//! the upstream connection to its pool (only if the exchange completed),
//! ends the endpoint's in-flight count, and records the request's metrics
//! with its final size and duration.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::access_log::Record;
use super::flags::ResponseFlags;
use super::request_body::{BodyWatch, Stopped};
use crate::metrics::RequestRecord;
use crate::upstream::{ActiveRequest, Lease, RequestSlot};

/// The downstream response body. `Upstream` is not boxed: it is every
/// proxied response, and a box would cost each an allocation.
#[allow(clippy::large_enum_variant)]
pub enum ProxyBody {
    /// A proxied upstream body; `done` runs once at its end. With a route
    /// timeout, `deadline` bounds the body too (Envoy's timeout covers the
    /// whole response): when it passes first, the stream is reset (`UT`).
    Upstream { inner: Incoming, done: Option<Completion>, deadline: Option<Pin<Box<Sleep>>> },
    /// A locally generated reply (already recorded).
    Local(Option<Bytes>),
}

/// Why a proxied body ended early.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error(transparent)]
    Upstream(#[from] hyper::Error),
    #[error("upstream request timeout")]
    Timeout,
}

/// What to do when a proxied exchange ends.
pub struct Completion {
    /// Keeps the endpoint's in-flight count until the body ends.
    pub active: ActiveRequest,
    /// The upstream connection (returned to the pool on a clean end) or
    /// HTTP/2 stream.
    pub conn: Option<Lease>,
    pub start: Instant,
    pub status: u16,
    /// For a gRPC request, its `grpc-status`: from the response headers,
    /// then from the trailers as they pass. `None` for other requests.
    pub grpc: Option<Option<u32>>,
    pub flags: ResponseFlags,
    pub request_bytes: RequestBytes,
    /// The request body's watch: when its guard stopped the body, the
    /// response is cut with the guard's flag rather than `UC`.
    pub body_watch: Option<Arc<BodyWatch>>,
    /// Response head bytes, then body bytes as they pass.
    pub response_bytes: u64,
    /// The cluster's `max_requests` slot, held until the body ends.
    pub slot: Option<RequestSlot>,
    /// The request's access-log record, written at the end.
    pub log: Record,
}

/// `istio_request_bytes`: the head plus the body length, announced or
/// counted as it streams.
pub struct RequestBytes {
    pub head: u64,
    pub body: BodyBytes,
}

pub enum BodyBytes {
    Known(u64),
    Counted(Arc<AtomicU64>),
}

// === impl ProxyBody ===

impl ProxyBody {
    pub fn local(body: impl Into<Bytes>) -> Self {
        let body = body.into();
        ProxyBody::Local((!body.is_empty()).then_some(body))
    }

    pub fn empty() -> Self {
        ProxyBody::Local(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            ProxyBody::Local(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Upstream { inner, done, deadline } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if polled.is_pending() && deadline.as_mut().is_some_and(|d| d.as_mut().poll(cx).is_ready()) {
                    if let Some(mut done) = done.take() {
                        done.flags |= ResponseFlags::UT;
                        done.finish(false);
                    }
                    return Poll::Ready(Some(Err(BodyError::Timeout)));
                }
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Some(done) = done.as_mut() {
                            if let Some(data) = frame.data_ref() {
                                done.response_bytes += data.len() as u64;
                            } else if let (Some(trailers), Some(grpc)) = (frame.trailers_ref(), done.grpc.as_mut()) {
                                *grpc = super::exchange::grpc_status(trailers).or(*grpc);
                            }
                        }
                    }
                    Poll::Ready(None) => {
                        if let Some(done) = done.take() {
                            done.finish(true);
                        }
                    }
                    Poll::Ready(Some(Err(_))) => {
                        if let Some(mut done) = done.take() {
                            let stopped = done.body_watch.as_ref().and_then(|w| w.stopped());
                            done.flags |= stopped.map_or(ResponseFlags::UC, Stopped::flags);
                            done.finish(false);
                        }
                    }
                    Poll::Pending => {}
                }
                polled.map_err(BodyError::from)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Local(body) => body.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Local(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let ProxyBody::Upstream { inner, done, .. } = self {
            if let Some(mut done) = done.take() {
                // Bodies with nothing to read (HEAD, 204, 304, length 0)
                // are never polled; they completed all the same.
                let complete = inner.is_end_stream();
                if !complete {
                    done.flags |= ResponseFlags::DC;
                }
                done.finish(complete);
            }
        }
    }
}

// === impl Completion ===

impl Completion {
    fn finish(mut self, complete: bool) {
        let endpoint = self.active.endpoint();
        if let Some(conn) = self.conn.take() {
            endpoint.pool().release(conn, complete);
        }
        let flags = self.flags.as_str();
        let elapsed = self.start.elapsed();
        let request_bytes = self.request_bytes.total();
        endpoint.metrics.record(
            &endpoint.registry,
            &RequestRecord {
                status: self.status,
                grpc: self.grpc,
                flags: &flags,
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                request_bytes,
                response_bytes: self.response_bytes,
            },
        );
        self.log.finish_proxied(self.status, self.flags, request_bytes, self.response_bytes, endpoint.addr, elapsed);
    }
}

// === impl RequestBytes ===

impl RequestBytes {
    pub fn total(&self) -> u64 {
        self.head
            + match &self.body {
                BodyBytes::Known(n) => *n,
                BodyBytes::Counted(n) => n.load(Ordering::Relaxed),
            }
    }
}
