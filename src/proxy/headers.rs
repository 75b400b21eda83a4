//! Header rules of the request path: hop-by-hop removal (RFC 9110 §7.6.1),
//! the forwarding headers, and wire-size estimates for metrics.

use std::io::Write as _;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers removed in both directions, besides those the
/// `Connection` header names.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHORIZATION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::TRAILER,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_ENVOY_ATTEMPT_COUNT: HeaderName = HeaderName::from_static("x-envoy-attempt-count");
pub static X_ENVOY_UPSTREAM_SERVICE_TIME: HeaderName = HeaderName::from_static("x-envoy-upstream-service-time");

/// Removes hop-by-hop headers, including any listed in `Connection`.
/// `TE: trailers` survives on requests (gRPC needs it); other TE values go.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, request: bool) {
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
    for name in &HOP_BY_HOP {
        if headers.contains_key(name) {
            headers.remove(name);
        }
    }
    let keep_te = request && headers.get(header::TE).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !keep_te {
        headers.remove(header::TE);
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
    let mut buf = [0u8; 128];
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(existing) => {
            let mut value = Vec::with_capacity(existing.len() + 48);
            value.extend_from_slice(existing.as_bytes());
            value.extend_from_slice(b", ");
            let _ = write!(value, "{client}");
            HeaderValue::from_maybe_shared(bytes::Bytes::from(value))
        }
        None => {
            let mut cursor = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cursor, "{client}");
            let len = cursor.position() as usize;
            HeaderValue::from_bytes(&buf[..len])
        }
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

/// `x-envoy-upstream-service-time` for `ms`: a static value for the common
/// small numbers, so the usual response needs no allocation for it.
pub fn service_time(ms: u64) -> HeaderValue {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(ms as usize) {
        Some(text) => HeaderValue::from_static(text),
        None => HeaderValue::from(ms),
    }
}

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
    fn service_time_values() {
        assert_eq!(service_time(0), "0");
        assert_eq!(service_time(9), "9");
        assert_eq!(service_time(1234), "1234");
    }
}
