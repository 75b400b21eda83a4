//! The body type meshd sends upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

/// A request body on its way upstream: the client's streamed body (never
/// buffered whole), optionally counted, or nothing.
pub enum RequestBody {
    Empty,
    /// Streamed as it arrives; its length is known from `content-length`.
    Streamed(Incoming),
    /// Streamed, and its bytes counted for `istio_request_bytes` because
    /// the client did not announce a length.
    Counted(Incoming, Arc<AtomicU64>),
    /// A body read whole and kept, sent again by retries.
    Replay(Option<Bytes>),
}

// === impl RequestBody ===

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Replay(body) => Poll::Ready(body.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Streamed(inner) => Pin::new(inner).poll_frame(cx),
            RequestBody::Counted(inner, count) => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Ok(frame))) = &polled {
                    if let Some(data) = frame.data_ref() {
                        count.fetch_add(data.len() as u64, Ordering::Relaxed);
                    }
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Replay(body) => body.is_none(),
            RequestBody::Streamed(inner) | RequestBody::Counted(inner, _) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Replay(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Streamed(inner) | RequestBody::Counted(inner, _) => inner.size_hint(),
        }
    }
}
