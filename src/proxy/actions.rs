//! A rule's actions on the request path: the replies meshd makes for
//! `redirect`, `directResponse`, CORS preflights and fault aborts, and the
//! request rewrite
//! (path, authority, header operations) before forwarding. What each does
//! is compiled in [`crate::routing::actions`]; this applies it.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, StatusCode, Uri};

use super::flags::ResponseFlags;
use super::local::LocalReply;
use std::sync::OnceLock;

use crate::config::resources::{HttpRedirect, RedirectPortSelection};
use crate::routing::actions::{Abort, DirectResponse, Mutations, Redirect, RedirectFrom, RouteExtras};
use crate::routing::RequestView;

/// Where Envoy keeps the path a rewrite replaced.
static X_ENVOY_ORIGINAL_PATH: HeaderName = HeaderName::from_static("x-envoy-original-path");

/// Body of a fault abort (Envoy's fault filter).
const ABORT_BODY: &str = "fault filter abort";

/// The redirect for a request, with the rule's response header operations.
pub fn redirect_reply(redirect: &Redirect, view: &RequestView<'_>, extras: Option<&RouteExtras>) -> LocalReply {
    let from = RedirectFrom {
        scheme: view.scheme,
        authority: view.authority,
        port: view.port,
        path: view.path,
        query: view.query,
    };
    let mut reply = LocalReply::new(redirect.status, ResponseFlags::NONE, "");
    if let Ok(location) = HeaderValue::from_str(&redirect.location(&from)) {
        reply.headers.insert(header::LOCATION, location);
    }
    with_response_headers(reply, extras)
}

/// A Gateway server's `httpsRedirect`: 301 to the same host (without its
/// port), path and query over `https`.
pub fn https_redirect(view: &RequestView<'_>) -> LocalReply {
    static TO_HTTPS: OnceLock<Option<Redirect>> = OnceLock::new();
    let redirect = TO_HTTPS.get_or_init(|| {
        let spec = HttpRedirect {
            scheme: Some("https".into()),
            derive_port: Some(RedirectPortSelection::FromProtocolDefault),
            ..HttpRedirect::default()
        };
        Redirect::compile(&spec, None).ok()
    });
    match redirect {
        Some(redirect) => redirect_reply(redirect, view, None),
        None => LocalReply::no_route(),
    }
}

/// The direct response of a rule, with its response header operations.
pub fn direct_reply(direct: &DirectResponse, extras: Option<&RouteExtras>) -> LocalReply {
    with_response_headers(LocalReply::new(direct.status, ResponseFlags::NONE, direct.body.clone()), extras)
}

/// meshd's answer to a CORS preflight: 200 with `headers` (none for an
/// origin the policy ignores).
pub fn preflight_reply(headers: HeaderMap) -> LocalReply {
    let mut reply = LocalReply::new(StatusCode::OK, ResponseFlags::NONE, "");
    reply.headers = headers;
    reply
}

/// A fault abort: the status with `fault filter abort`, or a gRPC
/// trailers-only response (HTTP 200, `grpc-status`), flag `FI`.
pub fn fault_abort(abort: Abort) -> LocalReply {
    match abort {
        Abort::Http(status) => LocalReply::new(status, ResponseFlags::FI, ABORT_BODY),
        Abort::Grpc(code) => {
            let mut reply = LocalReply::new(StatusCode::OK, ResponseFlags::FI, "");
            reply.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            reply.headers.insert(HeaderName::from_static("grpc-status"), HeaderValue::from(u16::from(code)));
            reply.headers.insert(HeaderName::from_static("grpc-message"), HeaderValue::from_static(ABORT_BODY));
            reply
        }
    }
}

/// Applies the rule's path and authority rewrite and the request header
/// operations to a request about to be forwarded.
pub fn rewrite<B>(req: &mut Request<B>, mutations: &Mutations) {
    if let Some(path) = mutations.path_rewrite() {
        let original = req.uri().path_and_query().map(|p| p.as_str().to_owned());
        let mut target = path.apply(req.uri().path());
        if let Some(query) = req.uri().query() {
            target.push('?');
            target.push_str(query);
        }
        let mut parts = req.uri().clone().into_parts();
        if let Ok(path) = PathAndQuery::try_from(target) {
            parts.path_and_query = Some(path);
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
                if let Some(original) = original.and_then(|o| HeaderValue::from_str(&o).ok()) {
                    req.headers_mut().insert(X_ENVOY_ORIGINAL_PATH.clone(), original);
                }
            }
        }
    }
    mutations.apply_request(req.headers_mut());
    if let Some(authority) = mutations.authority() {
        req.headers_mut().insert(header::HOST, authority.clone());
        if req.uri().authority().is_some() {
            // HTTP/2 or absolute-form: the upstream request is origin-form
            // with `Host`, so the URI's authority is dropped here.
            if let Some(path) = req.uri().path_and_query().cloned() {
                *req.uri_mut() = Uri::from(path);
            }
        }
    }
}

fn with_response_headers(mut reply: LocalReply, extras: Option<&RouteExtras>) -> LocalReply {
    if let Some(extras) = extras {
        extras.response_headers.apply(&mut reply.headers);
    }
    reply
}
