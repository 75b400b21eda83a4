//! The client's request body on its way upstream, held to
//! `--max-request-body` and `--request-body-timeout` while it streams.
//!
//! [`DownstreamBody`] wraps hyper's `Incoming` with a `Guard` when a rule
//! applies to it:
//!
//! - Size: a body of unannounced length (HTTP/1.1 chunked, HTTP/2 without
//!   `content-length`) counts its data bytes. The frame that takes the
//!   count past the limit is not passed on: the body yields an error in its
//!   place. A declared length was checked before routing
//!   ([`super::limits::check`]) and hyper holds the body to it, so such a
//!   body is not counted.
//! - Time: when the upstream side asks for a frame and the client has sent
//!   none, a timer is armed; a frame disarms it, the next wait re-arms it
//!   (`Sleep::reset`: one timer per request, made at the first wait, so a
//!   body that came whole with its head never makes one). When it fires
//!   first, the body yields an error. Time the upstream side spends not
//!   asking (flow control, a connect) is not held against the client.
//!
//! The error goes into the upstream client's request stream, and hyper
//! aborts the upstream request (HTTP/1.1: the connection is closed
//! mid-body; HTTP/2: the stream is reset): the upstream never receives a
//! complete request. How the send then fails differs (HTTP/1.1 returns
//! the body's error as its source; HTTP/2 reports only the reset), so the
//! guard also trips a [`BodyWatch`] it shares with the exchange. A failed
//! send with a tripped watch is the client's doing, not the upstream's:
//! the exchange answers it ([`Stopped::reply`]: 413 `DPE`, or 408 `SI` with
//! Envoy's `stream timeout`; `Connection: close` on HTTP/1, whose unread
//! rest cannot be trusted), records no outlier outcome and does not retry.
//! When the response had already started, its stream is cut and flagged
//! the same way (`ProxyBody`).
//!
//! Each stop is counted where it happens, once:
//! `meshd_downstream_requests_refused_total{reason="body_too_large"}` or
//! `meshd_downstream_timeouts_total{kind="request_body"}`.
//!
//! Cost: with no rule for a body (no limit for it, no timeout), no guard
//! and nothing allocated; otherwise one `Arc` (the watch) per request with
//! a body, and one boxed timer once the body has to be waited for.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

use super::flags::ResponseFlags;
use super::limits::{self, Limits, Refusal};
use super::local::LocalReply;
use crate::metrics::Metrics;

/// What request bodies are held to; one for the proxy, shared by every
/// guard.
pub struct BodyRules {
    /// `--max-request-body`, applied here to bodies of unannounced length.
    max: Option<u64>,
    /// `--request-body-timeout`; `None` when it is 0 (off).
    timeout: Option<Duration>,
    /// `meshd_downstream_requests_refused_total{reason="body_too_large"}`.
    too_large: IntCounter,
    /// `meshd_downstream_timeouts_total{kind="request_body"}`.
    timeouts: IntCounter,
}

/// The client's request body, guarded when a [`BodyRules`] rule applies.
pub struct DownstreamBody {
    inner: Incoming,
    /// `None` when no rule applies: the body passes through at no cost.
    guard: Option<Guard>,
}

/// The state of one guarded body.
struct Guard {
    /// The limits, and the counters a stop bumps.
    rules: Arc<BodyRules>,
    /// Tripped when the guard stops the body, for the exchange to see.
    watch: Arc<BodyWatch>,
    /// `rules.max` for a body of unannounced length, else `None`.
    max: Option<u64>,
    /// Data bytes passed so far, against `max`.
    seen: u64,
    /// The idle timer: made at the first wait for a frame, reset at each
    /// later one.
    timer: Option<Pin<Box<Sleep>>>,
    /// Whether `timer` is armed for the current wait (a frame disarms it).
    waiting: bool,
}

/// Why a body was stopped, if it was: tripped by its guard, read by the
/// exchange that answers for it. 0: running; else `Stopped as u8 + 1`.
#[derive(Debug, Default)]
pub struct BodyWatch(AtomicU8);

/// Why a guard stopped a request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error("request body too large")]
    TooLarge,
    #[error("request body timeout")]
    Timeout,
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// The client's connection or stream failed.
    #[error(transparent)]
    Downstream(#[from] hyper::Error),
    /// meshd stopped it.
    #[error(transparent)]
    Stopped(#[from] Stopped),
}

// === impl BodyRules ===

impl BodyRules {
    pub fn new(limits: &Limits, metrics: &Metrics) -> Arc<Self> {
        Arc::new(BodyRules {
            max: limits.max_request_body,
            timeout: limits::nonzero(limits.request_body_timeout),
            too_large: metrics.downstream_requests_refused.with_label_values(&[Refusal::BodyTooLarge.reason()]),
            timeouts: metrics.downstream_timeouts.with_label_values(&["request_body"]),
        })
    }

    /// `body` with a guard if a rule applies to it, and the watch its
    /// guard trips.
    pub fn guard(self: &Arc<Self>, body: Incoming) -> (DownstreamBody, Option<Arc<BodyWatch>>) {
        let max = self.max.filter(|_| body.size_hint().exact().is_none());
        if max.is_none() && self.timeout.is_none() {
            return (DownstreamBody { inner: body, guard: None }, None);
        }
        let watch = Arc::new(BodyWatch::default());
        let guard = Guard { rules: self.clone(), watch: watch.clone(), max, seen: 0, timer: None, waiting: false };
        (DownstreamBody { inner: body, guard: Some(guard) }, Some(watch))
    }
}

// === impl DownstreamBody ===

impl Body for DownstreamBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let Some(guard) = this.guard.as_mut() else {
            return Pin::new(&mut this.inner).poll_frame(cx).map_err(RequestBodyError::from);
        };
        if let Some(stopped) = guard.watch.stopped() {
            return Poll::Ready(Some(Err(stopped.into())));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                guard.waiting = false;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                guard.seen = guard.seen.saturating_add(len);
                if guard.max.is_some_and(|max| guard.seen > max) {
                    return Poll::Ready(Some(Err(guard.stop(Stopped::TooLarge).into())));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending if guard.timed_out(cx) => Poll::Ready(Some(Err(guard.stop(Stopped::Timeout).into()))),
            polled => polled.map_err(RequestBodyError::from),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

// === impl Guard ===

impl Guard {
    /// Arms the timer for this wait if it is not, and whether it has
    /// fired.
    fn timed_out(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(period) = self.rules.timeout else { return false };
        if !self.waiting {
            self.waiting = true;
            let deadline = Instant::now() + period;
            match self.timer.as_mut() {
                Some(timer) => timer.as_mut().reset(deadline),
                None => self.timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
            }
        }
        self.timer.as_mut().is_some_and(|timer| timer.as_mut().poll(cx).is_ready())
    }

    /// Trips the watch and counts the stop (once).
    fn stop(&self, why: Stopped) -> Stopped {
        if self.watch.trip(why) {
            match why {
                Stopped::TooLarge => self.rules.too_large.inc(),
                Stopped::Timeout => self.rules.timeouts.inc(),
            }
        }
        why
    }
}

// === impl BodyWatch ===

impl BodyWatch {
    /// Records `why`; false if the body was stopped already.
    fn trip(&self, why: Stopped) -> bool {
        self.0.compare_exchange(0, why as u8 + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Why the body was stopped, if it was.
    pub fn stopped(&self) -> Option<Stopped> {
        match self.0.load(Ordering::Acquire) {
            1 => Some(Stopped::TooLarge),
            2 => Some(Stopped::Timeout),
            _ => None,
        }
    }
}

// === impl Stopped ===

impl Stopped {
    /// The response flag of a request stopped this way.
    pub fn flags(self) -> ResponseFlags {
        match self {
            Stopped::TooLarge => ResponseFlags::DPE,
            Stopped::Timeout => ResponseFlags::SI,
        }
    }

    /// The local reply, as Envoy sends it: 413 like a declared length over
    /// the limit, or 408 `stream timeout` (stream idle timeout). HTTP/1
    /// replies close the connection: the rest of the body is unread.
    pub fn reply(self, http1: bool) -> LocalReply {
        match self {
            Stopped::TooLarge => Refusal::BodyTooLarge.reply(http1),
            Stopped::Timeout => {
                LocalReply::new(StatusCode::REQUEST_TIMEOUT, self.flags(), "stream timeout").closing_http1(http1)
            }
        }
    }
}
