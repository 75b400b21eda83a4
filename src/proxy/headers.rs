//! Header rules of the request path: hop-by-hop removal (RFC 9110 §7.6.1),
//! the forwarding headers, and wire-size estimates for metrics.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers removed in both directions, besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    header::TE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_EXPECTED_RQ_TIMEOUT_MS: HeaderName = HeaderName::from_static("x-envoy-expected-rq-timeout-ms");
pub static X_ENVOY_OVERLOADED: HeaderName = HeaderName::from_static("x-envoy-overloaded");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// Removes hop-by-hop headers, including any listed in `Connection`.
/// `TE: trailers` survives on requests (gRPC needs it); other TE values go.
///
/// Messages rarely carry any of these, so one pass over the (few) header
/// names decides whether there is anything to do; only then are names
/// looked up and removed.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
    let found = headers.keys().any(|name| HOP_BY_HOP.contains(name) || (request && name == header::EXPECT));
    if !found {
        return;
    }
    if let Some(connection) = headers.get(header::CONNECTION) {
        let named: Vec<HeaderName> = connection
            .to_str()
            .unwrap_or_default()
            .split(',')
            .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    let keep_te = request && headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in &HOP_BY_HOP {
        if !(keep_te && name == header::TE) {
            headers.remove(name);
        }
    }
    if request {
        // meshd answers `Expect: 100-continue` itself (hyper sends the 100
        // when the body is first read); the upstream must not wait for one.
        headers.remove(header::EXPECT);
    }
}

/// Sets the headers a proxy adds to a forwarded request: appends the
/// client address to `x-forwarded-for`, sets `x-forwarded-proto`, keeps or
/// generates `x-request-id`, and sets `x-envoy-attempt-count: 1`.
pub fn set_forwarding(headers: &mut HeaderMap, client: IpAddr, scheme: &'static str) {
    let mut buf = [0u8; 64];
    let ip = ip_text(client, &mut buf);
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut value = Vec::with_capacity(existing.len() + 2 + ip.len());
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
            value.extend_from_slice(ip);
            HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        }
        None => HeaderValue::from_bytes(ip),
    };
    if let Ok(xff) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), xff);
    }
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(scheme));
    if !headers.contains_key(&X_REQUEST_ID) {
        // A version-4 UUID from the thread-local fast generator: request
        // ids need uniqueness, not unpredictability.
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let random = fastrand::u128(..).to_le_bytes();
        let id = uuid::Builder::from_random_bytes(random).into_uuid().hyphenated().encode_lower(&mut buf);
        if let Ok(value) = HeaderValue::from_str(id) {
            headers.insert(X_REQUEST_ID.clone(), value);
        }
    }
    headers.insert(X_ENVOY_ATTEMPT_COUNT.clone(), HeaderValue::from_static("1"));
}

/// The text form of `ip` in `buf`. IPv4 (the common case) is written
/// directly; going through `fmt` costs several times more per request.
fn ip_text(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let (h, t, o) = (octet / 100, octet / 10 % 10, octet % 10);
                if h > 0 {
                    buf[len] = b'0' + h;
                    len += 1;
                }
                if h > 0 || t > 0 {
                    buf[len] = b'0' + t;
                    len += 1;
                }
                buf[len] = b'0' + o;
                len += 1;
            }
            &buf[..len]
        }
        IpAddr::V6(_) => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{ip}");
            let len = cursor.position() as usize;
            &buf[..len]
        }
    }
}

/// `x-envoy-upstream-service-time` for `ms`: a static value for the common
/// small numbers, so the usual response needs no allocation for it.
pub fn service_time(ms: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(ms as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(ms),
    }
}

/// Bytes of an HTTP/1.1 status line such as `HTTP/1.1 200 OK\r\n`, for
/// `istio_response_bytes` (the reason phrase varies; this is the common one).
pub const STATUS_LINE_BYTES: u64 = 17;

/// Bytes a header block takes on the wire in HTTP/1.1 (`name: value\r\n`
/// per field, plus the blank line).
pub fn block_bytes(headers: &HeaderMap) -> u64 {
    headers.iter().map(|(n, v)| (n.as_str().len() + v.len() + 4) as u64).sum::<u64>() + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_named_and_standard_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h, true);
        assert!(h.get("x-secret").is_none() && h.get("keep-alive").is_none());
        assert!(h.get(header::CONNECTION).is_none());
        assert_eq!(h.get(header::TE).unwrap(), "trailers");
        assert!(h.get("x-kept").is_some());
    }

    #[test]
    fn appends_forwarded_for_and_keeps_request_id() {
        let mut h = HeaderMap::new();
        h.insert(&X_FORWARDED_FOR, HeaderValue::from_static("10.0.0.1"));
        h.insert(&X_REQUEST_ID, HeaderValue::from_static("abc"));
        set_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "10.0.0.1, 127.0.0.1");
        assert_eq!(h.get(&X_REQUEST_ID).unwrap(), "abc");
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, "127.0.0.1".parse().unwrap(), "http");
        let id = h.get(&X_REQUEST_ID).unwrap().to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36);
        assert_eq!(uuid::Uuid::parse_str(&id).unwrap().get_version_num(), 4, "{id}");
        set_forwarding(&mut h, "::1".parse().unwrap(), "http");
        assert_eq!(h.get(&X_FORWARDED_FOR).unwrap(), "127.0.0.1, ::1");
    }

    #[test]
    fn ip_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "255.255.255.255", "1.100.9.99", "::1", "fe80::1:2"] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(std::str::from_utf8(ip_text(ip, &mut buf)).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn service_time_values() {
        assert_eq!(service_time(0), "0");
        assert_eq!(service_time(9), "9");
        assert_eq!(service_time(1234), "1234");
    }
}
