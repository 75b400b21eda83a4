//! Compiled HTTPMatchRequest (spec §1.5).
//!
//! Everything is prepared at compile time (regexes anchored and built,
//! header names parsed) so that [`RequestMatch::matches`] allocates only in
//! rare cases: a header sent several times (values joined with `,`), or a
//! `:path` pseudo-header condition on a request with a query string.
//!
//! Values are matched as bytes (regexes are `regex::bytes`), so header
//! values that are not UTF-8 still match the way Envoy matches them.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName};
use regex::bytes::Regex;

use super::RequestView;
use crate::config::resources::{HttpMatchRequest, StringMatch};

/// All conditions of one Istio HTTPMatchRequest, compiled.
#[derive(Debug, Clone)]
pub struct RequestMatch {
    uri: Option<StrMatch>,
    scheme: Option<StrMatch>,
    method: Option<StrMatch>,
    authority: Option<StrMatch>,
    headers: Box<[HeaderCond]>,
    without_headers: Box<[HeaderCond]>,
    query_params: Box<[QueryCond]>,
    port: Option<u16>,
}

/// A compiled `StringMatch`.
#[derive(Debug, Clone)]
enum StrMatch {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    /// `ignoreUriCase` variants; the pattern is stored lower-case.
    ExactNoCase(Box<[u8]>),
    PrefixNoCase(Box<[u8]>),
    /// Anchored `^(?:…)$`.
    Regex(Regex),
    /// `{}` (or `regex: "*"` for headers): the value only has to exist.
    Present,
}

#[derive(Debug, Clone)]
struct HeaderCond {
    key: HeaderKey,
    value: StrMatch,
}

/// A header to read: a real header, or a pseudo-header rebuilt from the
/// request view.
#[derive(Debug, Clone)]
enum HeaderKey {
    Name(HeaderName),
    Path,
    Method,
    Authority,
    Scheme,
}

#[derive(Debug, Clone)]
struct QueryCond {
    name: Box<str>,
    value: StrMatch,
}

// === impl RequestMatch ===

impl RequestMatch {
    /// Compiles the request-time conditions of `m` (the config-time ones —
    /// `gateways`, `sourceLabels`, `sourceNamespace` — are the caller's).
    /// Fails with a reason on an invalid regex or header name.
    pub(crate) fn compile(m: &HttpMatchRequest) -> Result<RequestMatch, String> {
        let uri = match &m.uri {
            Some(s) => StrMatch::compile_uri(s, m.ignore_uri_case).map_err(|e| format!("uri: {e}"))?,
            None => None,
        };
        let plain = |field: &str, s: &Option<StringMatch>| match s {
            Some(s) => StrMatch::compile(s, false).map_err(|e| format!("{field}: {e}")),
            None => Ok(None),
        };
        let mut headers = Vec::with_capacity(m.headers.len());
        for (name, sm) in &m.headers {
            headers.push(HeaderCond::compile(name, sm.as_ref()).map_err(|e| format!("headers.{name}: {e}"))?);
        }
        let mut without_headers = Vec::with_capacity(m.without_headers.len());
        for (name, sm) in &m.without_headers {
            let cond = HeaderCond::compile(name, sm.as_ref()).map_err(|e| format!("withoutHeaders.{name}: {e}"))?;
            without_headers.push(cond);
        }
        let mut query_params = Vec::with_capacity(m.query_params.len());
        for (name, sm) in &m.query_params {
            let value = match sm {
                Some(sm) => StrMatch::compile(sm, true).map_err(|e| format!("queryParams.{name}: {e}"))?,
                None => None,
            };
            query_params.push(QueryCond { name: name.as_str().into(), value: value.unwrap_or(StrMatch::Present) });
        }
        Ok(RequestMatch {
            uri,
            scheme: plain("scheme", &m.scheme)?,
            method: plain("method", &m.method)?,
            authority: plain("authority", &m.authority)?,
            headers: headers.into(),
            without_headers: without_headers.into(),
            query_params: query_params.into(),
            port: m.port.filter(|p| *p != 0).map(|p| u16::try_from(p).unwrap_or(0)),
        })
    }

    /// Whether every condition holds for `req`.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(port) = self.port {
            if port != req.port {
                return false;
            }
        }
        if let Some(uri) = &self.uri {
            if !uri.matches(req.path.as_bytes()) {
                return false;
            }
        }
        if let Some(m) = &self.method {
            if !m.matches(req.method.as_str().as_bytes()) {
                return false;
            }
        }
        if let Some(m) = &self.scheme {
            if !m.matches(req.scheme.as_bytes()) {
                return false;
            }
        }
        if let Some(m) = &self.authority {
            if !m.matches(req.authority.as_bytes()) {
                return false;
            }
        }
        for h in self.headers.iter() {
            let ok = match (&h.value, h.key.value(req)) {
                (_, None) => false,
                (StrMatch::Present, Some(_)) => true,
                (m, Some(v)) => m.matches(&v),
            };
            if !ok {
                return false;
            }
        }
        for h in self.without_headers.iter() {
            let excluded = match (&h.value, h.key.value(req)) {
                (StrMatch::Present, v) => v.is_some(),
                (m, None) => m.matches(b""),
                (m, Some(v)) => m.matches(&v),
            };
            if excluded {
                return false;
            }
        }
        for q in self.query_params.iter() {
            let ok = match (&q.value, query_value(req.query, &q.name)) {
                (_, None) => false,
                (StrMatch::Present, Some(_)) => true,
                (m, Some(v)) => m.matches(v.as_bytes()),
            };
            if !ok {
                return false;
            }
        }
        true
    }

    /// Whether no condition is set (such a block matches every request).
    pub(crate) fn is_empty(&self) -> bool {
        self.uri.is_none() && self.is_only_uri()
    }

    /// A catch-all for truncation (spec §1.4): no conditions, or only
    /// `uri.prefix: "/"` (or `""`) or `uri.regex: ".*"`.
    pub(crate) fn is_catch_all(&self) -> bool {
        let uri_all = match &self.uri {
            None => true,
            Some(StrMatch::Prefix(p) | StrMatch::PrefixNoCase(p)) => matches!(&**p, b"" | b"/"),
            Some(StrMatch::Regex(re)) => re.as_str() == "^(?:.*)$",
            Some(_) => false,
        };
        uri_all && self.is_only_uri()
    }

    fn is_only_uri(&self) -> bool {
        self.scheme.is_none()
            && self.method.is_none()
            && self.authority.is_none()
            && self.headers.is_empty()
            && self.without_headers.is_empty()
            && self.query_params.is_empty()
            && self.port.is_none()
    }
}

/// The raw value of the first `name` parameter of `query`: `Some("")` for
/// `?name` and `?name=`.
fn query_value<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

// === impl StrMatch ===

impl StrMatch {
    /// `None` for a `StringMatch` with nothing set (no condition). With
    /// `empty_is_presence`, `{}` becomes [`StrMatch::Present`] instead.
    fn compile(s: &StringMatch, empty_is_presence: bool) -> Result<Option<StrMatch>, String> {
        Ok(Some(if let Some(exact) = &s.exact {
            StrMatch::Exact(exact.as_bytes().into())
        } else if let Some(prefix) = &s.prefix {
            StrMatch::Prefix(prefix.as_bytes().into())
        } else if let Some(regex) = &s.regex {
            StrMatch::Regex(anchored(regex)?)
        } else if empty_is_presence {
            StrMatch::Present
        } else {
            return Ok(None);
        }))
    }

    fn compile_uri(s: &StringMatch, ignore_case: bool) -> Result<Option<StrMatch>, String> {
        let lower = |v: &str| v.to_ascii_lowercase().into_bytes().into_boxed_slice();
        Ok(match (&s.exact, &s.prefix) {
            (Some(exact), _) if ignore_case => Some(StrMatch::ExactNoCase(lower(exact))),
            (None, Some(prefix)) if ignore_case => Some(StrMatch::PrefixNoCase(lower(prefix))),
            _ => StrMatch::compile(s, false)?,
        })
    }

    #[inline]
    fn matches(&self, value: &[u8]) -> bool {
        match self {
            StrMatch::Exact(e) => value == &**e,
            StrMatch::Prefix(p) => value.starts_with(p),
            StrMatch::ExactNoCase(e) => value.eq_ignore_ascii_case(e),
            StrMatch::PrefixNoCase(p) => value.get(..p.len()).is_some_and(|head| head.eq_ignore_ascii_case(p)),
            StrMatch::Regex(re) => re.is_match(value),
            StrMatch::Present => true,
        }
    }
}

fn anchored(regex: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{regex})$")).map_err(|e| format!("invalid regex {regex:?}: {e}"))
}

// === impl HeaderCond ===

impl HeaderCond {
    fn compile(name: &str, sm: Option<&StringMatch>) -> Result<HeaderCond, String> {
        let key = match name {
            ":path" => HeaderKey::Path,
            ":method" => HeaderKey::Method,
            ":authority" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            _ => HeaderKey::Name(
                HeaderName::from_bytes(name.as_bytes()).map_err(|_| format!("invalid header name {name:?}"))?,
            ),
        };
        let value = match sm {
            // `regex: "*"` is Istio's other spelling of presence.
            Some(StringMatch { exact: None, prefix: None, regex: Some(r) }) if r == "*" => StrMatch::Present,
            Some(sm) => StrMatch::compile(sm, true)?.unwrap_or(StrMatch::Present),
            None => StrMatch::Present,
        };
        Ok(HeaderCond { key, value })
    }
}

impl HeaderKey {
    /// The header's value (several values joined with `,`), or `None` when
    /// the request lacks it.
    #[inline]
    fn value<'r>(&self, req: &RequestView<'r>) -> Option<Cow<'r, [u8]>> {
        match self {
            HeaderKey::Name(name) => header_value(req.headers, name),
            HeaderKey::Method => Some(Cow::Borrowed(req.method.as_str().as_bytes())),
            HeaderKey::Authority => Some(Cow::Borrowed(req.authority.as_bytes())),
            HeaderKey::Scheme => Some(Cow::Borrowed(req.scheme.as_bytes())),
            // `:path` includes the query string.
            HeaderKey::Path => Some(match req.query {
                None => Cow::Borrowed(req.path.as_bytes()),
                Some(q) => Cow::Owned([req.path.as_bytes(), b"?", q.as_bytes()].concat()),
            }),
        }
    }
}

fn header_value<'r>(headers: &'r HeaderMap, name: &HeaderName) -> Option<Cow<'r, [u8]>> {
    let mut values = headers.get_all(name).iter();
    let first = values.next()?;
    let Some(second) = values.next() else {
        return Some(Cow::Borrowed(first.as_bytes()));
    };
    let mut joined = Vec::with_capacity(first.len() + second.len() + 1);
    for v in [first, second].into_iter().chain(values) {
        if !joined.is_empty() {
            joined.push(b',');
        }
        joined.extend_from_slice(v.as_bytes());
    }
    Some(Cow::Owned(joined))
}

#[cfg(test)]
mod tests {
    use http::{HeaderValue, Method};

    use super::*;

    fn compile(yaml: &str) -> RequestMatch {
        let m: HttpMatchRequest = serde_yaml::from_str(yaml).unwrap();
        RequestMatch::compile(&m).unwrap()
    }

    struct Req {
        method: Method,
        authority: &'static str,
        port: u16,
        path: &'static str,
        query: Option<&'static str>,
        headers: HeaderMap,
    }

    fn req(path: &'static str) -> Req {
        Req { method: Method::GET, authority: "reviews:9080", port: 9080, path, query: None, headers: HeaderMap::new() }
    }

    impl Req {
        fn header(mut self, name: &'static str, value: &'static str) -> Self {
            self.headers.append(name, HeaderValue::from_static(value));
            self
        }
        fn query(mut self, q: &'static str) -> Self {
            self.query = Some(q);
            self
        }
        fn check(&self, m: &RequestMatch) -> bool {
            let view = RequestView {
                method: &self.method,
                scheme: "http",
                authority: self.authority,
                port: self.port,
                path: self.path,
                query: self.query,
                headers: &self.headers,
            };
            m.matches(&view)
        }
    }

    #[test]
    fn uri_exact_prefix_regex() {
        let exact = compile("uri: {exact: /productpage}");
        assert!(req("/productpage").check(&exact));
        assert!(!req("/productpage/").check(&exact));
        assert!(!req("/ProductPage").check(&exact));
        let prefix = compile("uri: {prefix: /api}");
        assert!(req("/api").check(&prefix));
        assert!(req("/apiv2/x").check(&prefix));
        assert!(!req("/ap").check(&prefix));
        let regex = compile("uri: {regex: '/v[0-9]+/.*'}");
        assert!(req("/v1/users").check(&regex));
        // Full match: no partial hits.
        assert!(!req("/x/v1/users").check(&regex));
        let alt = compile("uri: {regex: '/a|/b'}");
        assert!(req("/b").check(&alt));
        assert!(!req("/ab").check(&alt));
    }

    #[test]
    fn ignore_uri_case_applies_to_exact_and_prefix_only() {
        let exact = compile("uri: {exact: /Login}\nignoreUriCase: true");
        assert!(req("/LOGIN").check(&exact));
        assert!(req("/login").check(&exact));
        assert!(!req("/login2").check(&exact));
        let prefix = compile("uri: {prefix: /API}\nignoreUriCase: true");
        assert!(req("/api/v1").check(&prefix));
        assert!(!req("/ap").check(&prefix));
        let regex = compile("uri: {regex: /abc}\nignoreUriCase: true");
        assert!(!req("/ABC").check(&regex));
    }

    #[test]
    fn header_exact_and_presence() {
        let jason = compile("headers: {end-user: {exact: jason}}");
        assert!(req("/").header("end-user", "jason").check(&jason));
        assert!(!req("/").header("end-user", "Jason").check(&jason));
        assert!(!req("/").check(&jason));
        for presence in ["headers: {x-canary: {}}", "headers: {x-canary: {regex: '*'}}"] {
            let m = compile(presence);
            assert!(req("/").header("x-canary", "").check(&m), "{presence}");
            assert!(!req("/").check(&m), "{presence}");
        }
    }

    #[test]
    fn repeated_headers_are_joined_with_commas() {
        let m = compile("headers: {x-tag: {exact: 'a,b'}}");
        assert!(req("/").header("x-tag", "a").header("x-tag", "b").check(&m));
        assert!(!req("/").header("x-tag", "a").check(&m));
        let re = compile("headers: {x-tag: {regex: '.*,c'}}");
        assert!(req("/").header("x-tag", "a").header("x-tag", "b").header("x-tag", "c").check(&re));
    }

    #[test]
    fn without_headers_inverts() {
        let m = compile("withoutHeaders: {x-debug: {exact: '1'}}");
        assert!(req("/").check(&m));
        assert!(req("/").header("x-debug", "0").check(&m));
        assert!(!req("/").header("x-debug", "1").check(&m));
        let presence = compile("withoutHeaders: {x-debug: {}}");
        assert!(req("/").check(&presence));
        assert!(!req("/").header("x-debug", "0").check(&presence));
        // A missing header is the empty string for value matchers.
        let empty = compile("withoutHeaders: {x-debug: {exact: ''}}");
        assert!(!req("/").check(&empty));
        let prefix = compile("withoutHeaders: {x-debug: {prefix: ''}}");
        assert!(!req("/").check(&prefix));
    }

    #[test]
    fn query_params_use_first_raw_value() {
        let m = compile("queryParams: {v: {exact: '2'}}");
        assert!(req("/").query("a=1&v=2").check(&m));
        assert!(!req("/").query("v=1&v=2").check(&m));
        assert!(!req("/").check(&m));
        let raw = compile("queryParams: {q: {exact: 'a%20b'}}");
        assert!(req("/").query("q=a%20b").check(&raw));
        let empty = compile("queryParams: {debug: {exact: ''}}");
        assert!(req("/").query("debug").check(&empty));
        assert!(req("/").query("x=1&debug=").check(&empty));
        assert!(!req("/").query("debug=1").check(&empty));
        let presence = compile("queryParams: {debug: {}}");
        assert!(req("/").query("debug=1").check(&presence));
        assert!(!req("/").query("debugging=1").check(&presence));
        let regex = compile("queryParams: {id: {regex: '[0-9]+'}}");
        assert!(req("/").query("id=42").check(&regex));
        assert!(!req("/").query("id=42x").check(&regex));
    }

    #[test]
    fn method_scheme_authority_port() {
        let m = compile("method: {exact: GET}\nscheme: {exact: http}\nauthority: {prefix: reviews}\nport: 9080");
        assert!(req("/").check(&m));
        let mut post = req("/");
        post.method = Method::POST;
        assert!(!post.check(&m));
        let mut other_port = req("/");
        other_port.port = 80;
        assert!(!other_port.check(&m));
        // Authority is matched as sent, port included.
        let exact = compile("authority: {exact: reviews}");
        assert!(!req("/").check(&exact));
    }

    #[test]
    fn pseudo_headers() {
        let path = compile("headers: {':path': {exact: '/a?b=1'}}");
        assert!(req("/a").query("b=1").check(&path));
        assert!(!req("/a").check(&path));
        let method = compile("headers: {':method': {exact: GET}}");
        assert!(req("/").check(&method));
    }

    #[test]
    fn catch_all_detection() {
        assert!(compile("uri: {prefix: /}").is_catch_all());
        assert!(compile("uri: {regex: '.*'}").is_catch_all());
        assert!(compile("name: x").is_catch_all());
        assert!(compile("name: x").is_empty());
        assert!(!compile("uri: {prefix: /}").is_empty());
        assert!(!compile("uri: {prefix: /}\nheaders: {a: {}}").is_catch_all());
        assert!(!compile("uri: {prefix: /a}").is_catch_all());
        assert!(!compile("port: 80").is_catch_all());
    }

    #[test]
    fn invalid_regex_is_an_error_not_a_panic() {
        let m: HttpMatchRequest = serde_yaml::from_str("uri: {regex: '(('}").unwrap();
        assert!(RequestMatch::compile(&m).is_err());
        let h: HttpMatchRequest = serde_yaml::from_str("headers: {'bad header': {exact: a}}").unwrap();
        assert!(RequestMatch::compile(&h).is_err());
    }
}
