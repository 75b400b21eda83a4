//! Envoy's client headers that adjust a route's timeout and retries
//! (spec §1.11, §4.2). A sidecar is not an edge proxy, so Envoy honours
//! them from the application and strips them before forwarding
//! (`config/http/http_filters/router_filter`, "HTTP headers consumed"):
//!
//! | header | effect |
//! |---|---|
//! | `x-envoy-upstream-rq-timeout-ms` | replaces the route timeout; `0` disables it |
//! | `x-envoy-upstream-rq-per-try-timeout-ms` | per-attempt timeout |
//! | `x-envoy-max-retries` | number of retries (needs retry conditions) |
//! | `x-envoy-retry-on`, `x-envoy-retry-grpc-on` | conditions added to the route's |
//! | `x-envoy-retriable-status-codes` | status codes added to the route's |
//!
//! Values that do not parse are ignored, as Envoy ignores them. Requests
//! rarely carry any of these: one pass over the header names with a prefix
//! compare decides, and only then is a per-request policy built.

use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderMap, HeaderName};

use crate::routing::retry::{self, RetryOn, RetryPolicy, RoutePolicy};

static RQ_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-timeout-ms");
static PER_TRY_TIMEOUT: HeaderName = HeaderName::from_static("x-envoy-upstream-rq-per-try-timeout-ms");
static MAX_RETRIES: HeaderName = HeaderName::from_static("x-envoy-max-retries");
static RETRY_ON: HeaderName = HeaderName::from_static("x-envoy-retry-on");
static RETRY_GRPC_ON: HeaderName = HeaderName::from_static("x-envoy-retry-grpc-on");
static RETRIABLE_STATUS_CODES: HeaderName = HeaderName::from_static("x-envoy-retriable-status-codes");

/// The values of the headers a request carried.
#[derive(Default)]
struct Requested {
    timeout: Option<Duration>,
    per_try_timeout: Option<Duration>,
    max_retries: Option<u32>,
    retry_on: RetryOn,
    codes: Vec<u16>,
}

/// The route policy as the request's headers adjust it, removing those
/// headers; `None` when the request has none of them.
pub fn apply(headers: &mut HeaderMap, route: &RoutePolicy) -> Option<Arc<RoutePolicy>> {
    if !headers.keys().any(|name| name.as_str().starts_with("x-envoy-")) {
        return None;
    }
    let requested = Requested::take(headers)?;
    Some(Arc::new(requested.adjust(route)))
}

// === impl Requested ===

impl Requested {
    fn take(headers: &mut HeaderMap) -> Option<Self> {
        let mut found = false;
        let mut text = |name: &HeaderName| {
            let value = headers.remove(name)?;
            found = true;
            value.to_str().ok().map(|s| s.trim().to_owned())
        };
        let millis = |s: Option<String>| s.and_then(|s| s.parse::<u64>().ok()).map(Duration::from_millis);
        let timeout = millis(text(&RQ_TIMEOUT));
        let per_try_timeout = millis(text(&PER_TRY_TIMEOUT));
        let max_retries = text(&MAX_RETRIES).and_then(|s| s.parse().ok());
        let (mut retry_on, mut codes) = text(&RETRY_ON).map(|s| retry::parse_retry_on(&s)).unwrap_or_default();
        if let Some(grpc) = text(&RETRY_GRPC_ON) {
            retry_on = retry_on | retry::parse_retry_on(&grpc).0;
        }
        if let Some(list) = text(&RETRIABLE_STATUS_CODES) {
            codes.extend(list.split(',').filter_map(|c| c.trim().parse::<u16>().ok()));
        }
        found.then_some(Requested { timeout, per_try_timeout, max_retries, retry_on, codes })
    }

    fn adjust(self, route: &RoutePolicy) -> RoutePolicy {
        let mut policy = route.clone();
        if let Some(timeout) = self.timeout {
            policy.timeout = (!timeout.is_zero()).then_some(timeout);
        }
        let asks_retries = self.retry_on != RetryOn::default();
        let mut retry = match policy.retry.take() {
            Some(retry) => Some(retry),
            // Without a route policy, only retry conditions create one.
            None if asks_retries => Some(RetryPolicy { retry_on: RetryOn::default(), ..RetryPolicy::istio_default() }),
            None => None,
        };
        if let Some(retry) = retry.as_mut() {
            retry.retry_on = retry.retry_on | self.retry_on;
            for code in self.codes {
                if !retry.retriable_status_codes.contains(&code) {
                    retry.retriable_status_codes.push(code);
                }
            }
            if let Some(n) = self.max_retries {
                retry.num_retries = n;
            }
            if let Some(t) = self.per_try_timeout.filter(|t| !t.is_zero()) {
                retry.per_try_timeout = Some(t);
            }
        } else if let Some(t) = self.per_try_timeout.filter(|t| !t.is_zero()) {
            // A single attempt: its timeout bounds the request.
            policy.timeout = Some(policy.timeout.map_or(t, |route| route.min(t)));
        }
        policy.retry = retry.filter(|r| r.num_retries > 0);
        policy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(HeaderName::from_static(name), http::HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn requests_without_the_headers_keep_the_route_policy() {
        let mut h = headers(&[("x-envoy-attempt-count", "3"), ("accept", "*/*")]);
        assert!(apply(&mut h, &RoutePolicy::default()).is_none());
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn timeouts_and_retries_are_adjusted_and_the_headers_removed() {
        let mut h = headers(&[
            ("x-envoy-upstream-rq-timeout-ms", "250"),
            ("x-envoy-upstream-rq-per-try-timeout-ms", "100"),
            ("x-envoy-max-retries", "4"),
            ("x-envoy-retry-on", "5xx"),
            ("x-envoy-retriable-status-codes", "409, 418"),
        ]);
        let p = apply(&mut h, &RoutePolicy::default()).unwrap();
        assert!(h.is_empty(), "consumed headers are not forwarded");
        assert_eq!(p.timeout, Some(Duration::from_millis(250)));
        let r = p.retry.as_ref().unwrap();
        assert_eq!(r.num_retries, 4);
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(100)));
        assert!(r.retry_on.contains(RetryOn::FIVE_XX | RetryOn::CONNECT_FAILURE));
        assert_eq!(r.retriable_status_codes, vec![409, 418]);
    }

    #[test]
    fn zero_disables_the_route_timeout_and_max_retries_alone_needs_conditions() {
        let route = RoutePolicy { timeout: Some(Duration::from_secs(1)), retry: None };
        let mut h = headers(&[("x-envoy-upstream-rq-timeout-ms", "0"), ("x-envoy-max-retries", "3")]);
        let p = apply(&mut h, &route).unwrap();
        assert_eq!(p.timeout, None);
        assert!(p.retry.is_none(), "no conditions, no retries");
        let mut h = headers(&[("x-envoy-retry-grpc-on", "unavailable"), ("x-envoy-upstream-rq-timeout-ms", "x")]);
        let p = apply(&mut h, &route).unwrap();
        assert_eq!(p.timeout, Some(Duration::from_secs(1)), "a bad value is ignored");
        assert!(p.retry.as_ref().unwrap().retry_on.contains(RetryOn::GRPC_UNAVAILABLE));
    }
}
