//! The body type meshd sends upstream.
//!
//! The client's body comes as a [`DownstreamBody`]: when its guard stops it
//! (size limit, idle timeout; `crate::proxy::request_body`), it yields an
//! error like any failed body: hyper aborts the upstream request, and a
//! [`Tee`] gives up its copy, so the request is never sent again.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::proxy::request_body::{DownstreamBody, RequestBodyError};

/// A request body on its way upstream: the client's streamed body (never
/// buffered whole), optionally counted, or nothing.
pub enum RequestBody {
    Empty,
    /// Streamed as it arrives; its length is known from `content-length`.
    Streamed(DownstreamBody),
    /// Streamed, and its bytes counted for `istio_request_bytes` because
    /// the client did not announce a length.
    Counted(DownstreamBody, Arc<AtomicU64>),
    /// A body read whole and kept, sent again by retries.
    Replay(Option<Bytes>),
    /// Streamed and counted like `Counted`, a copy kept on the side (up to
    /// a limit) so that a retry can send it again once it has ended.
    Teed(DownstreamBody, Arc<Tee>),
}

/// The copy of a streamed request body a retry may send again: Envoy
/// streams the request upstream while buffering it for retries, and gives
/// up the retries when the buffer passes its limit.
pub struct Tee {
    /// The body's bytes so far (`istio_request_bytes`).
    pub count: Arc<AtomicU64>,
    /// The body so far; `None` once it passed `limit` or failed. Locked
    /// per frame by the one task sending the body, and once by a retry.
    copy: Mutex<Option<BytesMut>>,
    /// Set when the body has ended within the limit: the copy is whole.
    complete: AtomicBool,
    limit: u64,
}

// === impl RequestBody ===

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
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
            RequestBody::Teed(inner, tee) => {
                let polled = Pin::new(&mut *inner).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        tee.keep(frame);
                        // hyper stops polling a body that says it ended.
                        if inner.is_end_stream() {
                            tee.complete.store(true, Ordering::Release);
                        }
                    }
                    Poll::Ready(None) => tee.complete.store(true, Ordering::Release),
                    Poll::Ready(Some(Err(_))) => tee.give_up(),
                    Poll::Pending => {}
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Replay(body) => body.is_none(),
            RequestBody::Streamed(inner) | RequestBody::Counted(inner, _) | RequestBody::Teed(inner, _) => {
                inner.is_end_stream()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Replay(body) => SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Streamed(inner) | RequestBody::Counted(inner, _) | RequestBody::Teed(inner, _) => {
                inner.size_hint()
            }
        }
    }
}

// === impl Tee ===

impl Tee {
    /// A copy of a body counted in `count`, kept up to `limit` bytes.
    pub fn new(count: Arc<AtomicU64>, limit: u64) -> Arc<Tee> {
        let copy = Mutex::new(Some(BytesMut::new()));
        Arc::new(Tee { count, copy, complete: AtomicBool::new(false), limit })
    }

    /// Whether [`Tee::whole`] has the body.
    pub fn is_whole(&self) -> bool {
        self.complete.load(Ordering::Acquire) && self.copy.lock().unwrap_or_else(PoisonError::into_inner).is_some()
    }

    /// The whole body, once it has ended within the limit (without
    /// trailers); `None` before, or if it never will be whole.
    pub fn whole(&self) -> Option<Bytes> {
        if !self.complete.load(Ordering::Acquire) {
            return None;
        }
        let copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        copy.as_ref().map(|b| b.clone().freeze())
    }

    fn keep(&self, frame: &Frame<Bytes>) {
        let mut copy = self.copy.lock().unwrap_or_else(PoisonError::into_inner);
        match frame.data_ref() {
            Some(data) => {
                let total = self.count.fetch_add(data.len() as u64, Ordering::Relaxed) + data.len() as u64;
                match copy.as_mut() {
                    Some(buf) if total <= self.limit => buf.extend_from_slice(data),
                    _ => *copy = None,
                }
            }
            // Trailers are not kept: such a body is not sent again.
            None => *copy = None,
        }
    }

    fn give_up(&self) {
        *self.copy.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
