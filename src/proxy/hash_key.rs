//! The consistent-hash key of a request (spec §2.3, `consistentHash`), as
//! Envoy's route hash policies compute it
//! (`source/common/http/hash_policy.cc`): xxHash64 (seed 0) of
//!
//! - `httpHeaderName`: the header's first value (`host` falls back to the
//!   URI authority, HTTP/2's `:authority`);
//! - `httpCookie`: the named cookie's value (surrounding double quotes
//!   removed). When the cookie is absent and a `ttl` is set, a new random
//!   value is generated and returned with the `Set-Cookie` header to add to
//!   the response, so the client's next requests carry it (Envoy derives
//!   the value from the connection's addresses; meshd draws it at random);
//! - `useSourceIp`: the downstream peer's IP address as text
//!   (`10.1.2.3`, `fd00::1`; IPv4-mapped IPv6 as IPv4);
//! - `httpQueryParameterName`: the first value of the parameter, exactly as
//!   sent (not percent-decoded).
//!
//! A request without the key gets [`RequestHash::None`]: it is balanced as
//! if there were no hash policy.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use http::header::{COOKIE, HOST};
use http::{HeaderValue, Request};

use crate::routing::HashKey;
use crate::upstream::hash::hash_bytes;

/// The outcome of hashing one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestHash {
    /// The request's key hashed.
    Hash(u64),
    /// The cookie is absent and `ttl` is set: the hash of a new random
    /// value, and the `Set-Cookie` header to add to the response.
    NewCookie { hash: u64, set_cookie: HeaderValue },
    /// No key in this request: balance normally.
    None,
}

// === impl RequestHash ===

impl RequestHash {
    /// The hash to look up, if any.
    pub fn hash(&self) -> Option<u64> {
        match self {
            RequestHash::Hash(hash) | RequestHash::NewCookie { hash, .. } => Some(*hash),
            RequestHash::None => None,
        }
    }
}

/// Computes the hash of `req` for `key`; `peer` is the downstream
/// connection's IP address.
pub fn request_hash<B>(key: &HashKey, req: &Request<B>, peer: IpAddr) -> RequestHash {
    match key {
        HashKey::Header(name) => match req.headers().get(name) {
            Some(value) => RequestHash::Hash(hash_bytes(value.as_bytes())),
            None if name == HOST => match req.uri().authority() {
                Some(authority) => RequestHash::Hash(hash_bytes(authority.as_str().as_bytes())),
                None => RequestHash::None,
            },
            None => RequestHash::None,
        },
        HashKey::Cookie { name, path, ttl } => match cookie(req, name) {
            Some(value) => RequestHash::Hash(hash_bytes(value)),
            None => match ttl {
                Some(ttl) => new_cookie(name, path.as_deref(), *ttl),
                None => RequestHash::None,
            },
        },
        HashKey::SourceIp => RequestHash::Hash(hash_ip(peer)),
        HashKey::QueryParameter(name) => match query_param(req.uri().query(), name) {
            Some(value) => RequestHash::Hash(hash_bytes(value)),
            None => RequestHash::None,
        },
    }
}

/// The value of the first cookie called `name` in the `Cookie` headers
/// (Envoy's `parseCookieValue`): pairs are `;`-separated, malformed pairs
/// (no `=`) skipped, a value in double quotes unquoted.
fn cookie<'r, B>(req: &'r Request<B>, name: &str) -> Option<&'r [u8]> {
    req.headers().get_all(COOKIE).iter().flat_map(|v| v.as_bytes().split(|b| *b == b';')).find_map(|pair| {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        let (key, value) = (parts.next()?.trim_ascii(), parts.next()?.trim_ascii());
        if key != name.as_bytes() {
            return None;
        }
        match value {
            [b'"', inner @ .., b'"'] => Some(inner),
            _ => Some(value),
        }
    })
}

/// A random cookie value, its hash and
/// `name=value; Max-Age=<secs>; Path=<path>; HttpOnly` (as Envoy's
/// `makeSetCookieValue`, which also quotes the value, stripped again on
/// parsing: no `Max-Age` for a ttl under one second, a session cookie; no
/// `Path` when none). `None` when the header cannot be formed
/// (a name or path with control characters; validation refuses those).
fn new_cookie(name: &str, path: Option<&str>, ttl: Duration) -> RequestHash {
    let value = format!("{:016x}", fastrand::u64(..));
    let mut header = format!("{name}={value}");
    if ttl.as_secs() > 0 {
        let _ = write!(header, "; Max-Age={}", ttl.as_secs());
    }
    if let Some(path) = path {
        header.push_str("; Path=");
        header.push_str(path);
    }
    header.push_str("; HttpOnly");
    match HeaderValue::try_from(header) {
        Ok(set_cookie) => RequestHash::NewCookie { hash: hash_bytes(value.as_bytes()), set_cookie },
        Err(_) => RequestHash::None,
    }
}

/// The hash of the address text, formatted on the stack.
fn hash_ip(ip: IpAddr) -> u64 {
    // The longest form, "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255", is 45 bytes.
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    let _ = std::io::Write::write_fmt(&mut cursor, format_args!("{}", ip.to_canonical()));
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    hash_bytes(buf.get(..len).unwrap_or_default())
}

/// The first value of the parameter called exactly `name` (Envoy's
/// `QueryParamsMulti::parseQueryString`, without decoding): `name` alone,
/// without `=`, has the empty value.
fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q [u8]> {
    query?.split('&').find_map(|param| match param.split_once('=') {
        Some((key, value)) => (key == name).then_some(value.as_bytes()),
        None => (param == name).then_some(&b""[..]),
    })
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use http::HeaderName;

    use super::*;

    const PEER: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3));

    fn req(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).expect("request")
    }

    fn header(name: &str) -> HashKey {
        HashKey::Header(HeaderName::from_bytes(name.as_bytes()).expect("header name"))
    }

    fn cookie_key(ttl: Option<Duration>, path: Option<&str>) -> HashKey {
        HashKey::Cookie { name: "session".into(), path: path.map(Into::into), ttl }
    }

    fn hashed(value: &str) -> RequestHash {
        RequestHash::Hash(hash_bytes(value.as_bytes()))
    }

    #[test]
    fn header_first_value() {
        let r = req("/", &[("x-user", "alice"), ("x-user", "bob")]);
        assert_eq!(request_hash(&header("x-user"), &r, PEER), hashed("alice"));
        assert_eq!(request_hash(&header("x-other"), &r, PEER), RequestHash::None);
        let empty = req("/", &[("x-user", "")]);
        assert_eq!(request_hash(&header("x-user"), &empty, PEER), hashed(""));
    }

    #[test]
    fn host_header_falls_back_to_authority() {
        let h2 = req("http://example.com:8080/", &[]);
        assert_eq!(request_hash(&header("host"), &h2, PEER), hashed("example.com:8080"));
        let h1 = req("/", &[("host", "example.com")]);
        assert_eq!(request_hash(&header("host"), &h1, PEER), hashed("example.com"));
    }

    #[test]
    fn cookie_among_several() {
        let key = cookie_key(None, None);
        let r =
            req("/", &[("cookie", "a=1; sessionx=no"), ("cookie", "b=2;session=abc; c=3"), ("cookie", "session=late")]);
        assert_eq!(request_hash(&key, &r, PEER), hashed("abc"));
        let quoted = req("/", &[("cookie", "junk; session=\"q1\"")]);
        assert_eq!(request_hash(&key, &quoted, PEER), hashed("q1"));
        let absent = req("/", &[("cookie", "a=1; session_id=2"), ("x-session", "session=3")]);
        assert_eq!(request_hash(&key, &absent, PEER), RequestHash::None);
    }

    #[test]
    fn cookie_generated_when_absent_with_ttl() {
        let key = cookie_key(Some(Duration::from_secs(3600)), Some("/api"));
        let RequestHash::NewCookie { hash, set_cookie } = request_hash(&key, &req("/", &[]), PEER) else {
            panic!("no cookie generated");
        };
        let text = set_cookie.to_str().expect("ascii");
        let (pair, attrs) = text.split_once("; ").expect("attributes");
        let value = pair.strip_prefix("session=").expect("name");
        assert_eq!(value.len(), 16);
        assert!(value.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(attrs, "Max-Age=3600; Path=/api; HttpOnly");
        assert_eq!(hash, hash_bytes(value.as_bytes()));
        // The client sends it back: the same hash.
        let back = req("/", &[("cookie", pair)]);
        assert_eq!(request_hash(&key, &back, PEER), RequestHash::Hash(hash));
    }

    #[test]
    fn session_cookie_without_path() {
        let key = cookie_key(Some(Duration::ZERO), None);
        let RequestHash::NewCookie { set_cookie, .. } = request_hash(&key, &req("/", &[]), PEER) else {
            panic!("no cookie generated");
        };
        let text = set_cookie.to_str().expect("ascii");
        assert!(text.starts_with("session=") && text.ends_with("; HttpOnly") && text.len() == 8 + 16 + 10, "{text}");
        let a = request_hash(&key, &req("/", &[]), PEER).hash();
        assert_ne!(a, request_hash(&key, &req("/", &[]), PEER).hash());
    }

    #[test]
    fn source_ip_text() {
        let r = req("/", &[]);
        assert_eq!(request_hash(&HashKey::SourceIp, &r, PEER), hashed("10.1.2.3"));
        let v6 = IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1));
        assert_eq!(request_hash(&HashKey::SourceIp, &r, v6), hashed("fd00::1"));
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(request_hash(&HashKey::SourceIp, &r, mapped), hashed("10.1.2.3"));
        let long = IpAddr::V6(Ipv6Addr::new(0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff, 0xffff));
        assert_eq!(request_hash(&HashKey::SourceIp, &r, long), hashed(&long.to_string()));
    }

    #[test]
    fn query_parameter_first_exact_value() {
        let key = HashKey::QueryParameter("user".into());
        let r = req("/p?username=x&user=a%20b&user=c", &[]);
        assert_eq!(request_hash(&key, &r, PEER), hashed("a%20b"));
        assert_eq!(request_hash(&key, &req("/p?flag&user", &[]), PEER), hashed(""));
        assert_eq!(request_hash(&key, &req("/p?User=a", &[]), PEER), RequestHash::None);
        assert_eq!(request_hash(&key, &req("/p", &[]), PEER), RequestHash::None);
    }
}
