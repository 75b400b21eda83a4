//! The copy of a request kept so that a retry can send it again (spec
//! §1.12): the head, and a body either read whole before the first attempt
//! (announced length up to [`REPLAY_LIMIT`]) or copied on the side while
//! the first attempt streams it (unannounced length, as gRPC sends:
//! usable once it has ended within the limit). Larger bodies are streamed
//! and retried only while unsent.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body;

use super::exchange::collect;
use super::local::LocalReply;
use crate::upstream::body::Tee;
use crate::upstream::RequestBody;

/// Request bodies up to this size are kept for retries (Envoy's default
/// connection buffer limit); larger or unannounced bodies are streamed and
/// retried only while unsent.
pub const REPLAY_LIMIT: u64 = 1024 * 1024;

/// A request head (and small body) kept to send again.
pub(super) struct Replay {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
    body: ReplayBody,
}

/// The body of a [`Replay`].
enum ReplayBody {
    /// Read whole before the first attempt (`None`: no body).
    Whole(Option<Bytes>),
    /// Copied as the first attempt streams it: usable once it has ended
    /// within the limit.
    Teed(Arc<Tee>),
}

// === impl Replay ===

impl Replay {
    /// `req` ready for its first attempt, and its replay copy when the body
    /// allows one: a body of announced length is read whole first (bounded
    /// by [`REPLAY_LIMIT`]); one of unannounced length is copied as it
    /// streams.
    pub(super) async fn keep(
        req: Request<RequestBody>,
        http1: bool,
    ) -> Result<(Request<RequestBody>, Option<Replay>), LocalReply> {
        let (parts, body) = req.into_parts();
        let (body, kept) = match body {
            RequestBody::Empty => (RequestBody::Empty, Some(ReplayBody::Whole(None))),
            RequestBody::Streamed(incoming) if incoming.size_hint().exact().is_some_and(|n| n <= REPLAY_LIMIT) => {
                let bytes = collect(incoming, http1).await?;
                (RequestBody::Replay(Some(bytes.clone())), Some(ReplayBody::Whole(Some(bytes))))
            }
            // Unannounced length (HTTP/2 and chunked clients: gRPC):
            // streamed at once (a bidirectional stream waits for answers
            // before it ends), a copy kept on the side for retries.
            RequestBody::Counted(incoming, count) => {
                let tee = Tee::new(count, REPLAY_LIMIT);
                (RequestBody::Teed(incoming, tee.clone()), Some(ReplayBody::Teed(tee)))
            }
            // Already read whole (a mirrored request's body).
            RequestBody::Replay(Some(bytes)) => {
                (RequestBody::Replay(Some(bytes.clone())), Some(ReplayBody::Whole(Some(bytes))))
            }
            other => (other, None),
        };
        let replay = kept.map(|body| Replay {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            version: parts.version,
            headers: parts.headers.clone(),
            body,
        });
        Ok((Request::from_parts(parts, body), replay))
    }

    /// Whether the body is there to send again.
    pub(super) fn available(&self) -> bool {
        match &self.body {
            ReplayBody::Whole(_) => true,
            ReplayBody::Teed(tee) => tee.is_whole(),
        }
    }

    /// A new request from the copy, or `None` when the body is not whole.
    pub(super) fn request(&self) -> Option<Request<RequestBody>> {
        let body = match &self.body {
            ReplayBody::Whole(body) => body.clone(),
            ReplayBody::Teed(tee) => Some(tee.whole()?),
        };
        let mut req = Request::new(RequestBody::Replay(body));
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}
