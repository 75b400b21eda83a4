//! `redirect` of an HTTP rule (spec §1.7): a `Location` built from the
//! request and the rule, no upstream call.
//!
//! - Scheme: `scheme`, else the request's.
//! - Host: `authority`, else the request's Host without its port.
//! - Port: `port`; `derivePort: FROM_PROTOCOL_DEFAULT` none;
//!   `FROM_REQUEST_PORT` the port the client addressed. Without either,
//!   none when `authority` is set, else the request Host's own port. A
//!   port that is the scheme's default (80 for http, 443 for https) is
//!   never written.
//! - Path: `uri` replaces it, `prefixRewrite` replaces the matched prefix
//!   ([`PathRewrite`]); the query string is kept unless the new path has
//!   one of its own.

use std::fmt::Write;

use http::StatusCode;

use super::rewrite::PathRewrite;
use crate::config::host;
use crate::config::resources::{HttpRedirect, RedirectPortSelection, StringMatch};

/// A compiled redirect.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// 301 unless `redirectCode` says otherwise.
    pub status: StatusCode,
    scheme: Option<Box<str>>,
    authority: Option<Box<str>>,
    port: PortChoice,
    path: Option<PathRewrite>,
}

#[derive(Debug, Clone, Copy)]
enum PortChoice {
    /// Neither `port` nor `derivePort`.
    Unset,
    Explicit(u16),
    ProtocolDefault,
    RequestPort,
}

/// The request facts a `Location` is built from.
#[derive(Debug, Clone, Copy)]
pub struct RedirectFrom<'a> {
    pub scheme: &'a str,
    /// Host / `:authority` as sent.
    pub authority: &'a str,
    /// The port the client addressed (Host port, else the scheme's default).
    pub port: u16,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// A redirect code validation should have refused.
#[derive(Debug, thiserror::Error)]
#[error("redirect code {0} is not supported")]
pub struct InvalidRedirect(u32);

// === impl Redirect ===

impl Redirect {
    /// Compiles `redirect` for a route whose uri match is `uri`.
    pub fn compile(redirect: &HttpRedirect, uri: Option<&StringMatch>) -> Result<Self, InvalidRedirect> {
        let status = match redirect.redirect_code.unwrap_or(0) {
            0 | 301 => StatusCode::MOVED_PERMANENTLY,
            code @ (302 | 303 | 307 | 308) => StatusCode::from_u16(code as u16).map_err(|_| InvalidRedirect(code))?,
            code => return Err(InvalidRedirect(code)),
        };
        let port = match (redirect.port.filter(|p| *p != 0), redirect.derive_port) {
            (Some(p), _) => PortChoice::Explicit(u16::try_from(p).unwrap_or(u16::MAX)),
            (None, Some(RedirectPortSelection::FromProtocolDefault)) => PortChoice::ProtocolDefault,
            (None, Some(RedirectPortSelection::FromRequestPort)) => PortChoice::RequestPort,
            (None, None) => PortChoice::Unset,
        };
        let nonempty = |s: &Option<String>| s.as_deref().filter(|s| !s.is_empty()).map(Box::from);
        let path = match (nonempty(&redirect.uri), nonempty(&redirect.prefix_rewrite)) {
            (Some(uri), _) => Some(PathRewrite::Whole(uri)),
            (None, Some(prefix)) => Some(PathRewrite::replacing_match(uri, &prefix)),
            (None, None) => None,
        };
        Ok(Redirect {
            status,
            scheme: nonempty(&redirect.scheme),
            authority: nonempty(&redirect.authority),
            port,
            path,
        })
    }

    /// The `Location` for a request.
    pub fn location(&self, from: &RedirectFrom<'_>) -> String {
        let scheme = self.scheme.as_deref().unwrap_or(from.scheme);
        let (request_host, request_port) = host::split_port(from.authority);
        let host = self.authority.as_deref().unwrap_or(request_host);
        let port = match self.port {
            PortChoice::Explicit(p) => Some(p),
            PortChoice::ProtocolDefault => None,
            PortChoice::RequestPort => Some(from.port),
            PortChoice::Unset if self.authority.is_some() => None,
            PortChoice::Unset => request_port,
        };
        let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
        let path = self.path.as_ref().map_or_else(|| from.path.to_owned(), |rw| rw.apply(from.path));
        let mut out = format!("{scheme}://{host}");
        if let Some(port) = port {
            let _ = write!(out, ":{port}");
        }
        out.push_str(&path);
        if let (Some(query), false) = (from.query, path.contains('?')) {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redirect(json: &str, uri: Option<&StringMatch>) -> Redirect {
        let spec: HttpRedirect = serde_json::from_str(json).unwrap();
        Redirect::compile(&spec, uri).unwrap()
    }

    fn from<'a>(authority: &'a str, path: &'a str, query: Option<&'a str>) -> RedirectFrom<'a> {
        RedirectFrom { scheme: "http", authority, port: 8080, path, query }
    }

    #[test]
    fn uri_authority_scheme_and_ports() {
        let r = redirect(r#"{"uri": "/new", "authority": "b.example"}"#, None);
        assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
        assert_eq!(r.location(&from("a:8080", "/old", Some("x=1"))), "http://b.example/new?x=1");
        let r = redirect(r#"{"uri": "/new?y=2"}"#, None);
        assert_eq!(r.location(&from("a:8080", "/old", Some("x=1"))), "http://a:8080/new?y=2");
        let r = redirect(r#"{"scheme": "https", "redirectCode": 308}"#, None);
        assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
        assert_eq!(r.location(&from("a", "/p", None)), "https://a/p");
        let r = redirect(r#"{"authority": "b", "derivePort": "FROM_REQUEST_PORT"}"#, None);
        assert_eq!(r.location(&from("a:8080", "/p", None)), "http://b:8080/p");
        let r = redirect(r#"{"authority": "b", "port": 80}"#, None);
        assert_eq!(r.location(&from("a:8080", "/p", None)), "http://b/p");
        let r = redirect(r#"{"scheme": "https", "derivePort": "FROM_PROTOCOL_DEFAULT"}"#, None);
        assert_eq!(r.location(&from("[::1]:8080", "/p", None)), "https://[::1]/p");
    }

    #[test]
    fn prefix_rewrite_replaces_the_matched_prefix() {
        let uri = StringMatch { prefix: Some("/foo".into()), ..StringMatch::default() };
        let r = redirect(r#"{"prefixRewrite": "/bar", "redirectCode": 302}"#, Some(&uri));
        assert_eq!(r.location(&from("a", "/foo/baz", None)), "http://a/bar/baz");
    }
}
