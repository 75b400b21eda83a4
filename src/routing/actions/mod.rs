//! What an HTTP rule does besides choosing weighted destinations, compiled
//! once per route: `redirect` and `directResponse` (answered by meshd),
//! and, around forwarding, `fault`, `corsPolicy`, `rewrite` and `headers`
//! (spec §1.7–§1.10, §1.13, §1.15).
//!
//! A plain route has none of these and carries no [`RouteExtras`], so the
//! request path pays one pointer check for them.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use http::header::HeaderValue;
use http::StatusCode;

mod cors;
mod fault;
mod headers;
mod redirect;
mod rewrite;

pub use cors::{Cors, CorsDecision};
pub use fault::{Abort, Fault, Injection};
pub use headers::HeaderOps;
pub use redirect::{Redirect, RedirectFrom};
pub use rewrite::PathRewrite;

use super::ClusterId;
use crate::config::resources::{Headers, HttpDirectResponse, HttpRoute, Percent, StringMatch};

/// A share of 100 % in parts per million (Istio's percentage resolution).
pub const MILLION: u32 = 1_000_000;

/// Whether a request falls in `share` (parts per million): always at 100 %,
/// never at 0, else when `roll` (uniform in `0..MILLION`) is below it.
pub fn sampled(share: u32, roll: impl FnOnce() -> u32) -> bool {
    share >= MILLION || (share > 0 && roll() < share)
}

/// Direct-response bodies above this are refused (istiod's 1 MiB limit).
pub const DIRECT_BODY_MAX: u64 = 1024 * 1024;

/// The route-level extras of a rule; `None` on a route without any.
#[derive(Debug, Default)]
pub struct RouteExtras {
    pub fault: Option<Fault>,
    pub cors: Option<Cors>,
    /// `mirror` / `mirrors` whose cluster exists, with their shares.
    pub mirrors: Vec<Mirror>,
    pub rewrite: Rewrite,
    /// `headers.request`, without `host` / `:authority` (in `rewrite`).
    pub request_headers: HeaderOps,
    /// `headers.response`: applied to proxied responses and to this rule's
    /// redirects and direct responses.
    pub response_headers: HeaderOps,
}

/// One mirror target: a cluster and the share of requests (parts per
/// million) copied to it.
#[derive(Debug, Clone, Copy)]
pub struct Mirror {
    pub cluster: ClusterId,
    pub share: u32,
}

/// `rewrite` of a rule, with the authority a `host` header operation asks
/// for folded in.
#[derive(Debug, Default)]
pub struct Rewrite {
    pub path: Option<PathRewrite>,
    pub authority: Option<HeaderValue>,
}

/// `route[].headers` of one weighted destination.
#[derive(Debug, Default)]
pub struct DestinationHeaders {
    pub request: HeaderOps,
    pub response: HeaderOps,
    /// A `host` set here; used only when the rule does not rewrite the
    /// authority itself.
    pub authority: Option<HeaderValue>,
}

/// A compiled `directResponse`.
#[derive(Debug, Clone)]
pub struct DirectResponse {
    pub status: StatusCode,
    pub body: Bytes,
}

/// Why a rule's action could not be compiled (validation refuses most of
/// these first; the compiler skips the rule with a warning).
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    #[error(transparent)]
    Header(#[from] headers::InvalidHeader),
    #[error(transparent)]
    Rewrite(#[from] rewrite::InvalidRewrite),
    #[error(transparent)]
    Redirect(#[from] redirect::InvalidRedirect),
    #[error("directResponse: {0}")]
    Direct(String),
}

// === impl RouteExtras ===

impl RouteExtras {
    /// The extras of `http` for its match block whose uri match is `uri`
    /// (mirrors are resolved by the caller, which knows the clusters).
    pub fn compile(http: &HttpRoute, uri: Option<&StringMatch>) -> Result<Self, ActionError> {
        let (request_headers, header_authority, response_headers) = header_blocks(http.headers.as_deref())?;
        let mut rewrite = Rewrite { path: None, authority: header_authority };
        if let Some(rw) = &http.rewrite {
            if let Some(re) = &rw.uri_regex_rewrite {
                rewrite.path = Some(PathRewrite::regex(&re.match_, &re.rewrite)?);
            } else if let Some(with) = rw.uri.as_deref().filter(|u| !u.is_empty()) {
                rewrite.path = Some(PathRewrite::replacing_match(uri, with));
            }
            if let Some(authority) = rw.authority.as_deref().filter(|a| !a.is_empty()) {
                let value = HeaderValue::from_str(authority)
                    .map_err(|_| headers::InvalidHeader(format!("rewrite.authority {authority}")))?;
                rewrite.authority = Some(value);
            }
        }
        let fault = http.fault.as_deref().and_then(Fault::compile);
        let cors = http.cors_policy.as_deref().map(Cors::compile).transpose()?;
        Ok(RouteExtras { fault, cors, mirrors: Vec::new(), rewrite, request_headers, response_headers })
    }

    /// Whether the rule has anything at all to do besides routing.
    pub fn has_any(&self) -> bool {
        self.fault.is_some()
            || !self.mirrors.is_empty()
            || self.cors.is_some()
            || self.rewrite.path.is_some()
            || self.rewrite.authority.is_some()
            || !self.request_headers.is_empty()
            || !self.response_headers.is_empty()
    }
}

// === impl DestinationHeaders ===

impl DestinationHeaders {
    /// `None` when `headers` holds no operation.
    pub fn compile(headers: Option<&Headers>) -> Result<Option<Arc<Self>>, ActionError> {
        let (request, authority, response) = header_blocks(headers)?;
        let none = request.is_empty() && response.is_empty() && authority.is_none();
        Ok((!none).then(|| Arc::new(DestinationHeaders { request, response, authority })))
    }
}

// === impl DirectResponse ===

impl DirectResponse {
    /// The status and body, a `file` body read now.
    pub fn compile(spec: &HttpDirectResponse) -> Result<Self, ActionError> {
        let status = u16::try_from(spec.status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ActionError::Direct(format!("status {} is not an HTTP status", spec.status)))?;
        let body = match &spec.body {
            None => Bytes::new(),
            Some(body) => match (&body.string, &body.bytes, &body.file) {
                (Some(s), _, _) => Bytes::from(s.clone()),
                (None, Some(b), _) => base64::engine::general_purpose::STANDARD
                    .decode(b.trim())
                    .map(Bytes::from)
                    .map_err(|e| ActionError::Direct(format!("body.bytes is not base64: {e}")))?,
                (None, None, Some(file)) => read_body_file(Path::new(file))?,
                (None, None, None) => Bytes::new(),
            },
        };
        Ok(DirectResponse { status, body })
    }
}

/// A direct-response body file, at most [`DIRECT_BODY_MAX`] bytes.
fn read_body_file(path: &Path) -> Result<Bytes, ActionError> {
    let unreadable = |e: std::io::Error| ActionError::Direct(format!("cannot read body.file {}: {e}", path.display()));
    let len = std::fs::metadata(path).map_err(unreadable)?.len();
    if len > DIRECT_BODY_MAX {
        return Err(ActionError::Direct(format!("body.file {} is {len} bytes, over 1MiB", path.display())));
    }
    std::fs::read(path).map(Bytes::from).map_err(unreadable)
}

/// The mirror destinations of `http` with their shares in parts per
/// million: `mirror` with `mirrorPercentage` (else the deprecated integer
/// `mirrorPercent`, else 100 %), or each of `mirrors` with its
/// `percentage` (else 100 %). A share of 0 never mirrors.
pub fn mirror_shares(http: &HttpRoute) -> Vec<(&crate::config::resources::Destination, u32)> {
    let ppm = |p: Option<&Percent>| p.map_or(MILLION, fault::ppm);
    let mut out = Vec::new();
    if let Some(dest) = &http.mirror {
        let share = match (&http.mirror_percentage, http.mirror_percent) {
            (Some(p), _) => ppm(Some(p)),
            (None, Some(percent)) => percent.min(100) * 10_000,
            (None, None) => MILLION,
        };
        out.push((dest, share));
    }
    for m in &http.mirrors {
        if let Some(dest) = &m.destination {
            out.push((dest, ppm(m.percentage.as_ref())));
        }
    }
    out.retain(|(_, share)| *share > 0);
    out
}

/// (request ops, request authority, response ops) of a `headers` block.
fn header_blocks(headers: Option<&Headers>) -> Result<(HeaderOps, Option<HeaderValue>, HeaderOps), ActionError> {
    let Some(headers) = headers else { return Ok(Default::default()) };
    let (request, authority) = match &headers.request {
        Some(ops) => HeaderOps::compile(ops)?,
        None => (HeaderOps::default(), None),
    };
    let response = match &headers.response {
        Some(ops) => HeaderOps::compile(ops)?.0,
        None => HeaderOps::default(),
    };
    Ok((request, authority, response))
}

/// The rule extras and destination headers that apply to one request, in
/// Envoy's order: with one destination the route's header operations run
/// first and the destination's after them; with several weighted
/// destinations the destination's (Envoy's weighted-cluster entry) run
/// first (spec §1.10).
#[derive(Debug, Clone, Default)]
pub struct Mutations {
    pub route: Option<Arc<RouteExtras>>,
    pub destination: Option<Arc<DestinationHeaders>>,
    /// Several weighted destinations: the destination's operations first.
    pub destination_first: bool,
    /// The `Origin` of a CORS request the rule's policy allows: the
    /// response gets its CORS headers.
    pub cors_origin: Option<HeaderValue>,
}

// === impl Mutations ===

impl Mutations {
    pub fn is_empty(&self) -> bool {
        self.route.is_none() && self.destination.is_none()
    }

    pub fn cors(&self) -> Option<&Cors> {
        self.route.as_ref()?.cors.as_ref()
    }

    pub fn fault(&self) -> Option<&Fault> {
        self.route.as_ref()?.fault.as_ref()
    }

    pub fn path_rewrite(&self) -> Option<&PathRewrite> {
        self.route.as_ref()?.rewrite.path.as_ref()
    }

    /// The rule's authority rewrite, else the destination's.
    pub fn authority(&self) -> Option<&HeaderValue> {
        let route = self.route.as_ref().and_then(|r| r.rewrite.authority.as_ref());
        route.or_else(|| self.destination.as_ref()?.authority.as_ref())
    }

    /// The request header operations, in order.
    pub fn apply_request(&self, headers: &mut http::HeaderMap) {
        let route = self.route.as_ref().map(|r| &r.request_headers);
        let destination = self.destination.as_ref().map(|d| &d.request);
        self.in_order(route, destination, headers);
    }

    /// The CORS headers of an allowed origin, then the response header
    /// operations, in order.
    pub fn apply_response(&self, headers: &mut http::HeaderMap) {
        if let (Some(cors), Some(origin)) = (self.cors(), &self.cors_origin) {
            cors.add_response_headers(origin, headers);
        }
        let route = self.route.as_ref().map(|r| &r.response_headers);
        let destination = self.destination.as_ref().map(|d| &d.response);
        self.in_order(route, destination, headers);
    }

    fn in_order(&self, route: Option<&HeaderOps>, destination: Option<&HeaderOps>, headers: &mut http::HeaderMap) {
        let (first, second) = if self.destination_first { (destination, route) } else { (route, destination) };
        for ops in [first, second].into_iter().flatten() {
            ops.apply(headers);
        }
    }
}
