//! `corsPolicy` of an HTTP rule (spec §1.15), as Envoy's CORS filter
//! applies it to the rule's forwarded requests (redirects and direct
//! responses bypass it, as in Envoy).
//!
//! - A request without `Origin` is not a CORS request: nothing changes.
//! - A preflight (`OPTIONS` with `Origin` and
//!   `Access-Control-Request-Method`) from an allowed origin is answered by
//!   meshd: 200 with the allow headers and `max-age`. From any other
//!   origin it is forwarded (`unmatchedPreflights: FORWARD`, the default),
//!   or answered 200 without CORS headers (`IGNORE`).
//! - Any other request from an allowed origin is forwarded, and its
//!   response gets `access-control-allow-origin` (the origin, echoed),
//!   `-allow-credentials` and `-expose-headers`.
//!
//! An origin matcher that matches `*` allows every origin (Envoy's rule).

use http::header::{self, HeaderMap, HeaderValue};
use http::Method;
use regex::Regex;

use super::rewrite::InvalidRewrite;
use crate::config::resources::{CorsPolicy, StringMatch, UnmatchedPreflights};

/// A compiled CORS policy.
#[derive(Debug, Clone)]
pub struct Cors {
    origins: Vec<Origin>,
    allow_methods: Option<HeaderValue>,
    allow_headers: Option<HeaderValue>,
    expose_headers: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    allow_credentials: bool,
    /// Preflights from origins not allowed go upstream.
    forward_unmatched: bool,
}

#[derive(Debug, Clone)]
enum Origin {
    Any,
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(Regex),
}

/// What the policy says about one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsDecision {
    /// Not a CORS request, or one from an origin not allowed: forward as is.
    Forward,
    /// Forward, and add the CORS headers for this origin to the response.
    Allowed(HeaderValue),
    /// Answer a preflight with 200 and these headers (none for an ignored
    /// preflight).
    Preflight(HeaderMap),
}

// === impl Cors ===

impl Cors {
    pub fn compile(policy: &CorsPolicy) -> Result<Self, InvalidRewrite> {
        let mut origins: Vec<Origin> = policy.allow_origin.iter().map(|o| Origin::Exact(o.as_str().into())).collect();
        for matcher in policy.allow_origins.iter().flatten() {
            origins.push(Origin::compile(matcher)?);
        }
        let origins = origins.into_iter().map(|o| if o.matches("*") { Origin::Any } else { o }).collect();
        let list = |items: &[String]| HeaderValue::from_str(&items.join(",")).ok().filter(|_| !items.is_empty());
        let max_age = policy.max_age.map(|age| HeaderValue::from((age.nanos / 1_000_000_000) as u64));
        Ok(Cors {
            origins,
            allow_methods: list(&policy.allow_methods),
            allow_headers: list(&policy.allow_headers),
            expose_headers: list(&policy.expose_headers),
            max_age,
            allow_credentials: policy.allow_credentials == Some(true),
            forward_unmatched: policy.unmatched_preflights != Some(UnmatchedPreflights::Ignore),
        })
    }

    /// What to do with a request of `method` with `headers`.
    pub fn decide(&self, method: &Method, headers: &HeaderMap) -> CorsDecision {
        let Some(origin) = headers.get(header::ORIGIN) else { return CorsDecision::Forward };
        let allowed = origin.to_str().is_ok_and(|o| self.origins.iter().any(|m| m.matches(o)));
        let preflight = *method == Method::OPTIONS && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (false, true) => CorsDecision::Allowed(origin.clone()),
            (false, false) => CorsDecision::Forward,
            (true, true) => CorsDecision::Preflight(self.preflight_headers(origin)),
            (true, false) if self.forward_unmatched => CorsDecision::Forward,
            (true, false) => CorsDecision::Preflight(HeaderMap::new()),
        }
    }

    /// The headers of a forwarded response to an allowed origin.
    pub fn add_response_headers(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        if let Some(expose) = &self.expose_headers {
            headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
        }
    }

    fn preflight_headers(&self, origin: &HeaderValue) -> HeaderMap {
        let mut out = HeaderMap::new();
        out.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.allow_credentials {
            out.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        }
        let optional = [
            (header::ACCESS_CONTROL_ALLOW_METHODS, &self.allow_methods),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, &self.allow_headers),
            (header::ACCESS_CONTROL_MAX_AGE, &self.max_age),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                out.insert(name, value.clone());
            }
        }
        out
    }
}

// === impl Origin ===

impl Origin {
    fn compile(m: &StringMatch) -> Result<Self, InvalidRewrite> {
        Ok(match (&m.exact, &m.prefix, &m.regex) {
            (Some(exact), _, _) => Origin::Exact(exact.as_str().into()),
            (None, Some(prefix), _) => Origin::Prefix(prefix.as_str().into()),
            (None, None, Some(regex)) => Origin::Regex(
                Regex::new(&format!("^(?:{regex})$")).map_err(|e| InvalidRewrite::new(format!("allowOrigins: {e}")))?,
            ),
            (None, None, None) => Origin::Exact("".into()),
        })
    }

    fn matches(&self, origin: &str) -> bool {
        match self {
            Origin::Any => true,
            Origin::Exact(exact) => origin == &**exact,
            Origin::Prefix(prefix) => origin.starts_with(&**prefix),
            Origin::Regex(regex) => regex.is_match(origin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(json: &str) -> Cors {
        Cors::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::HeaderName::from_static(k), HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn preflights_and_requests() {
        let c = cors(
            r#"{"allowOrigins": [{"exact": "https://a.example"}, {"regex": "https://.*\\.b\\.example"}], "allowMethods": ["GET", "POST"], "allowHeaders": ["x-a"], "exposeHeaders": ["x-e"], "maxAge": "24h", "allowCredentials": true}"#,
        );
        let pre = headers(&[("origin", "https://x.b.example"), ("access-control-request-method", "POST")]);
        let CorsDecision::Preflight(h) = c.decide(&Method::OPTIONS, &pre) else { panic!("a preflight") };
        assert_eq!(h["access-control-allow-origin"], "https://x.b.example");
        assert_eq!(h["access-control-allow-methods"], "GET,POST");
        assert_eq!(h["access-control-allow-headers"], "x-a");
        assert_eq!(h["access-control-max-age"], "86400");
        assert_eq!(h["access-control-allow-credentials"], "true");
        let other = headers(&[("origin", "https://evil.example"), ("access-control-request-method", "POST")]);
        assert_eq!(c.decide(&Method::OPTIONS, &other), CorsDecision::Forward);
        let get = headers(&[("origin", "https://a.example")]);
        assert_eq!(c.decide(&Method::GET, &get), CorsDecision::Allowed(HeaderValue::from_static("https://a.example")));
        assert_eq!(c.decide(&Method::GET, &HeaderMap::new()), CorsDecision::Forward);
    }

    #[test]
    fn ignore_and_wildcard() {
        let c = cors(r#"{"allowOrigin": ["https://a.example"], "unmatchedPreflights": "IGNORE"}"#);
        let other = headers(&[("origin", "https://evil.example"), ("access-control-request-method", "GET")]);
        assert_eq!(c.decide(&Method::OPTIONS, &other), CorsDecision::Preflight(HeaderMap::new()));
        let any = cors(r#"{"allowOrigins": [{"exact": "*"}]}"#);
        let get = headers(&[("origin", "https://whoever.example")]);
        assert!(matches!(any.decide(&Method::GET, &get), CorsDecision::Allowed(_)));
    }
}
