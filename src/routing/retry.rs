//! What an HTTPRoute says about time and retries (spec §1.11, §1.12),
//! compiled once per reload into a [`RoutePolicy`], and the pure decisions
//! the request path asks of it: retry this response? this failure? how long
//! to back off? must the request body be kept for a replay?
//!
//! # Mapping
//!
//! This follows Istio's `retry.ConvertPolicy`
//! (`pilot/pkg/networking/core/route/retry/retry.go`):
//!
//! - `retries` omitted: the built-in default, 2 retries on
//!   `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes`
//!   (no codes listed, so the last token is inert), previous hosts avoided.
//! - `attempts <= 0`: no retry policy at all.
//! - `attempts: N`: N retries; the other fields start from the default.
//! - `retryOn`: a comma list. Tokens that are HTTP status codes become
//!   retriable status codes and imply `retriable-status-codes`; the others
//!   are Envoy's `x-envoy-retry-on` / `x-envoy-retry-grpc-on` conditions.
//!   Unknown tokens are ignored (validation refuses them).
//! - `perTryTimeout`, `backoff` (base interval, default 25 ms, capped at
//!   10 × base) and `retryIgnorePreviousHosts` (default true) as given.
//!
//! The decisions follow Envoy's router (`RetryStateImpl`; documented under
//! `config/http/http_filters/router_filter`, `x-envoy-retry-on`): `5xx`,
//! `gateway-error` and `reset` retry every failure without a response
//! (connect failures, resets, refused streams, per-try timeouts); a
//! response with `x-envoy-overloaded` is never retried.

use std::fmt;
use std::ops::BitOr;
use std::time::Duration;

use crate::config::resources::{HttpRetry, HttpRoute};

/// Retries of the built-in default policy.
pub const DEFAULT_NUM_RETRIES: u32 = 2;

/// `retry_back_off.base_interval` unless `backoff` is set.
pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);

/// Envoy's default `max_interval` is this many base intervals.
pub const MAX_BACKOFF_FACTOR: u32 = 10;

/// Envoy `host_selection_retry_max_attempts` set by Istio alongside the
/// `previous_hosts` predicate: picks tried to find a host not used before.
pub const HOST_SELECTION_RETRY_MAX_ATTEMPTS: u32 = 5;

/// What an HTTPRoute says about time and retries, compiled once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Whole-request timeout covering all attempts; `None` = no timeout
    /// (Istio's default).
    pub timeout: Option<Duration>,
    /// `None` when retries are disabled (`attempts: 0`).
    pub retry: Option<RetryPolicy>,
}

/// Envoy's route `retry_policy` as Istio builds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (> 0).
    pub num_retries: u32,
    pub retry_on: RetryOn,
    /// The numeric tokens of `retryOn`.
    pub retriable_status_codes: Vec<u16>,
    /// `None` = each attempt is bounded only by the route timeout.
    pub per_try_timeout: Option<Duration>,
    pub backoff_base: Duration,
    /// Whether retries avoid hosts already tried (`previous_hosts`).
    pub previous_hosts: bool,
}

/// A set of `retryOn` conditions.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RetryOn(u32);

/// A failed attempt that produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection: refused, unreachable, connect timeout. The request
    /// was not sent.
    ConnectFailure,
    /// The connection was reset or closed after connecting, before the
    /// response headers.
    Reset,
    /// HTTP/2 `REFUSED_STREAM`.
    RefusedStream,
    /// `perTryTimeout` expired before the response headers.
    PerTryTimeout,
}

/// Envoy's condition names, in Envoy's order, for parsing and display.
macro_rules! conditions {
    ($($(#[$doc:meta])* $flag:ident = $bit:literal, $name:literal;)*) => {
        impl RetryOn {
            $($(#[$doc])* pub const $flag: Self = Self(1 << $bit);)*
        }
        const TOKENS: &[(&str, RetryOn)] = &[$(($name, RetryOn::$flag)),*];
    };
}

conditions! {
    FIVE_XX = 0, "5xx";
    GATEWAY_ERROR = 1, "gateway-error";
    RESET = 2, "reset";
    RESET_BEFORE_REQUEST = 3, "reset-before-request";
    CONNECT_FAILURE = 4, "connect-failure";
    REFUSED_STREAM = 5, "refused-stream";
    /// 409 only.
    RETRIABLE_4XX = 6, "retriable-4xx";
    RETRIABLE_STATUS_CODES = 7, "retriable-status-codes";
    /// Inert: Istio configures no retriable headers.
    RETRIABLE_HEADERS = 8, "retriable-headers";
    /// Inert: would need the response's `x-envoy-ratelimited`.
    ENVOY_RATELIMITED = 9, "envoy-ratelimited";
    /// Inert: meshd does not speak HTTP/3 upstream.
    HTTP3_POST_CONNECT_FAILURE = 10, "http3-post-connect-failure";
    GRPC_CANCELLED = 11, "cancelled";
    GRPC_DEADLINE_EXCEEDED = 12, "deadline-exceeded";
    GRPC_RESOURCE_EXHAUSTED = 13, "resource-exhausted";
    GRPC_INTERNAL = 14, "internal";
    GRPC_UNAVAILABLE = 15, "unavailable";
}

/// gRPC conditions and the `grpc-status` each one retries.
const GRPC_CODES: [(RetryOn, u32); 5] = [
    (RetryOn::GRPC_CANCELLED, 1),
    (RetryOn::GRPC_DEADLINE_EXCEEDED, 4),
    (RetryOn::GRPC_RESOURCE_EXHAUSTED, 8),
    (RetryOn::GRPC_INTERNAL, 13),
    (RetryOn::GRPC_UNAVAILABLE, 14),
];

// === impl RoutePolicy ===

impl RoutePolicy {
    pub fn from_istio(http: &HttpRoute) -> Self {
        let retry = match &http.retries {
            None => Some(RetryPolicy::istio_default()),
            Some(retries) => RetryPolicy::from_istio(retries),
        };
        RoutePolicy { timeout: nonzero(http.timeout.as_ref()), retry }
    }
}

/// Istio's default: no timeout, the built-in default retry policy.
impl Default for RoutePolicy {
    fn default() -> Self {
        RoutePolicy { timeout: None, retry: Some(RetryPolicy::istio_default()) }
    }
}

// === impl RetryPolicy ===

impl RetryPolicy {
    pub fn istio_default() -> Self {
        RetryPolicy {
            num_retries: DEFAULT_NUM_RETRIES,
            retry_on: RetryOn::CONNECT_FAILURE
                | RetryOn::REFUSED_STREAM
                | RetryOn::GRPC_UNAVAILABLE
                | RetryOn::GRPC_CANCELLED
                | RetryOn::RETRIABLE_STATUS_CODES,
            retriable_status_codes: Vec::new(),
            per_try_timeout: None,
            backoff_base: DEFAULT_BACKOFF_BASE,
            previous_hosts: true,
        }
    }

    /// An explicit `retries` block; `None` when `attempts <= 0`.
    pub fn from_istio(retries: &HttpRetry) -> Option<Self> {
        if retries.attempts <= 0 {
            return None;
        }
        let mut policy = RetryPolicy::istio_default();
        policy.num_retries = u32::try_from(retries.attempts).unwrap_or(u32::MAX);
        if let Some(list) = retries.retry_on.as_deref().filter(|s| !s.is_empty()) {
            (policy.retry_on, policy.retriable_status_codes) = parse_retry_on(list);
        }
        policy.per_try_timeout = nonzero(retries.per_try_timeout.as_ref());
        if let Some(base) = nonzero(retries.backoff.as_ref()) {
            policy.backoff_base = base;
        }
        if retries.retry_ignore_previous_hosts == Some(false) {
            policy.previous_hosts = false;
        }
        Some(policy)
    }

    /// Should a response with this status (and `grpc-status` from its
    /// headers, if any) be retried? Never when it carries
    /// `x-envoy-overloaded`.
    pub fn retry_on_response(&self, status: u16, grpc_status: Option<u32>, overloaded: bool) -> bool {
        if overloaded {
            return false;
        }
        let on = self.retry_on;
        (on.contains(RetryOn::FIVE_XX) && (500..=599).contains(&status))
            || (on.contains(RetryOn::GATEWAY_ERROR) && (502..=504).contains(&status))
            || (on.contains(RetryOn::RETRIABLE_4XX) && status == 409)
            || (on.contains(RetryOn::RETRIABLE_STATUS_CODES) && self.retriable_status_codes.contains(&status))
            || grpc_status.is_some_and(|g| GRPC_CODES.iter().any(|&(flag, code)| code == g && on.contains(flag)))
    }

    /// Should a failure without a response be retried?
    pub fn retry_on_failure(&self, failure: Failure) -> bool {
        let on = self.retry_on;
        // Envoy counts every reset as a 5xx (it becomes a 503 or 504).
        if on.intersects(RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET) {
            return true;
        }
        match failure {
            // The request never left, so `reset-before-request` applies too.
            Failure::ConnectFailure => on.intersects(RetryOn::CONNECT_FAILURE | RetryOn::RESET_BEFORE_REQUEST),
            Failure::RefusedStream => on.contains(RetryOn::REFUSED_STREAM),
            Failure::Reset | Failure::PerTryTimeout => false,
        }
    }

    /// Full-jitter backoff before retry `retry` (1-based), drawn with
    /// `fastrand`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_with(retry, fastrand::u64(..))
    }

    /// Uniform in `[0, backoff_cap(retry))` for a uniform `draw`.
    pub fn backoff_with(&self, retry: u32, draw: u64) -> Duration {
        let cap = self.backoff_cap(retry).as_nanos();
        if cap == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(u64::try_from(u128::from(draw) % cap).unwrap_or(u64::MAX))
    }

    /// `min(base · 2^(retry−1), 10 · base)`.
    pub fn backoff_cap(&self, retry: u32) -> Duration {
        let max = self.backoff_base.saturating_mul(MAX_BACKOFF_FACTOR);
        let doublings = retry.saturating_sub(1).min(31);
        self.backoff_base.saturating_mul(1 << doublings).min(max)
    }

    /// Whether the policy can retry after the request was sent (responses,
    /// resets, per-try timeouts), so that the request body must be kept for
    /// a replay. gRPC conditions count only when `grpc`. `refused-stream`
    /// does not: upstream connections are HTTP/1.1, which has no streams
    /// to refuse, so the default policy never buffers a body.
    pub fn needs_replay(&self, grpc: bool) -> bool {
        let mut after_sent = RetryOn::FIVE_XX | RetryOn::GATEWAY_ERROR | RetryOn::RESET | RetryOn::RETRIABLE_4XX;
        if !self.retriable_status_codes.is_empty() {
            after_sent = after_sent | RetryOn::RETRIABLE_STATUS_CODES;
        }
        if grpc {
            after_sent = after_sent | RetryOn::GRPC;
        }
        self.num_retries > 0 && self.retry_on.intersects(after_sent)
    }
}

/// Splits `retryOn` like Istio's `parseRetryOn`: trimmed, empty tokens
/// skipped, HTTP status codes apart.
pub fn parse_retry_on(list: &str) -> (RetryOn, Vec<u16>) {
    let mut on = RetryOn::default();
    let mut codes = Vec::new();
    for token in list.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if let Some(code) = http_status(token) {
            if !codes.contains(&code) {
                codes.push(code);
            }
        } else if let Some(flag) = RetryOn::from_token(token) {
            on = on | flag;
        }
    }
    if !codes.is_empty() {
        on = on | RetryOn::RETRIABLE_STATUS_CODES;
    }
    (on, codes)
}

/// A status code with a standard reason phrase, as validation checks it
/// (Go's `http.StatusText`).
fn http_status(token: &str) -> Option<u16> {
    let code = token.parse::<u16>().ok()?;
    http::StatusCode::from_u16(code).ok()?.canonical_reason()?;
    Some(code)
}

fn nonzero(d: Option<&crate::config::resources::Duration>) -> Option<Duration> {
    d.filter(|d| !d.is_zero()).map(|d| d.as_std())
}

// === impl RetryOn ===

impl RetryOn {
    /// Every gRPC condition.
    pub const GRPC: Self = Self(0b11111 << 11);

    /// Whether every condition of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any condition of `other` is set.
    pub const fn intersects(self, other: Self) -> bool {
        self.0 & other.0 != 0
    }

    /// An Envoy condition name (`5xx`, `unavailable`…).
    pub fn from_token(token: &str) -> Option<Self> {
        TOKENS.iter().find(|(name, _)| *name == token).map(|&(_, flag)| flag)
    }
}

impl BitOr for RetryOn {
    type Output = Self;

    fn bitor(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }
}

/// Envoy's comma list, e.g. `connect-failure,refused-stream`.
impl fmt::Display for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = TOKENS.iter().filter(|(_, flag)| self.contains(*flag)).map(|(name, _)| name);
        if let Some(first) = names.next() {
            f.write_str(first)?;
        }
        names.try_for_each(|name| write!(f, ",{name}"))
    }
}

impl fmt::Debug for RetryOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RetryOn({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Failure::*;

    const FAILURES: [Failure; 4] = [ConnectFailure, Reset, RefusedStream, PerTryTimeout];

    fn policy(yaml: &str) -> RoutePolicy {
        RoutePolicy::from_istio(&serde_yaml::from_str::<HttpRoute>(yaml).expect("HTTPRoute YAML"))
    }

    fn retry(retry_on: &str) -> RetryPolicy {
        policy(&format!("retries: {{attempts: 3, retryOn: {retry_on:?}}}")).retry.expect("retry policy")
    }

    #[test]
    fn default_policy() {
        let p = policy("route: [{destination: {host: a}}]");
        assert_eq!(p, RoutePolicy::default());
        assert_eq!(p.timeout, None);
        let r = p.retry.expect("default retries");
        assert_eq!((r.num_retries, r.backoff_base, r.per_try_timeout), (2, Duration::from_millis(25), None));
        let on = "connect-failure,refused-stream,retriable-status-codes,cancelled,unavailable";
        assert_eq!(r.retry_on.to_string(), on);
        assert!(r.retriable_status_codes.is_empty() && r.previous_hosts);
        // No codes listed: `retriable-status-codes` is inert.
        assert!(!r.retry_on_response(503, None, false) && !r.retry_on_response(200, Some(4), false));
        assert!(r.retry_on_response(200, Some(14), false) && r.retry_on_response(200, Some(1), false));
        assert!(r.retry_on_failure(ConnectFailure) && r.retry_on_failure(RefusedStream));
        assert!(!r.retry_on_failure(Reset) && !r.retry_on_failure(PerTryTimeout));
    }

    #[test]
    fn attempts_zero_disables() {
        for yaml in ["retries: {attempts: 0}", "retries: {attempts: -2}", "retries: {}"] {
            assert_eq!(policy(yaml).retry, None, "{yaml}");
        }
    }

    #[test]
    fn fields_override_defaults() {
        let yaml = "timeout: 3s\nretries: {attempts: 5, perTryTimeout: 500ms, backoff: 100ms, retryIgnorePreviousHosts: false}";
        let p = policy(yaml);
        assert_eq!(p.timeout, Some(Duration::from_secs(3)));
        let r = p.retry.expect("retries");
        assert_eq!((r.num_retries, r.retry_on), (5, RetryPolicy::istio_default().retry_on));
        assert_eq!(r.per_try_timeout, Some(Duration::from_millis(500)));
        assert_eq!(r.backoff_base, Duration::from_millis(100));
        assert!(!r.previous_hosts);
    }

    #[test]
    fn numeric_codes() {
        let r = retry("gateway-error, 503,409,,599,bogus, 503");
        assert_eq!(r.retriable_status_codes, [503, 409]);
        assert_eq!(r.retry_on, RetryOn::GATEWAY_ERROR | RetryOn::RETRIABLE_STATUS_CODES);
        assert!(r.retry_on_response(409, None, false) && r.retry_on_response(503, None, false));
        assert!(!r.retry_on_response(500, None, false) && !r.retry_on_response(404, None, false));
        assert!(retry("500").retry_on_response(500, None, false));
        assert_eq!(retry("unavailable, 5xx,reset").retry_on.to_string(), "5xx,reset,unavailable");
        assert!(TOKENS.iter().all(|&(name, flag)| RetryOn::from_token(name) == Some(flag)));
    }

    #[test]
    fn response_conditions() {
        let cases: [(&str, &[u16], &[u16]); 5] = [
            ("5xx", &[500, 502, 503, 504, 599], &[200, 404, 409, 499]),
            ("gateway-error", &[502, 503, 504], &[500, 501, 505, 409]),
            ("retriable-4xx", &[409], &[400, 404, 429, 503]),
            ("reset,connect-failure,refused-stream,reset-before-request", &[], &[409, 500, 503]),
            ("retriable-headers,envoy-ratelimited,http3-post-connect-failure", &[], &[429, 503]),
        ];
        for (on, yes, no) in cases {
            let r = retry(on);
            assert!(yes.iter().all(|&s| r.retry_on_response(s, None, false)), "{on}");
            assert!(!no.iter().any(|&s| r.retry_on_response(s, None, false)), "{on}");
        }
        for (flag, code) in GRPC_CODES {
            let r = retry(&flag.to_string());
            assert!(r.retry_on_response(200, Some(code), false), "{flag}");
            assert!(!r.retry_on_response(200, Some(2), false) && !r.retry_on_response(200, None, false), "{flag}");
        }
        assert!(!retry("5xx").retry_on_response(200, Some(14), false));
    }

    #[test]
    fn failure_conditions() {
        let cases: [(&str, &[Failure]); 9] = [
            ("5xx", &FAILURES),
            ("gateway-error", &FAILURES),
            ("reset", &FAILURES),
            ("connect-failure", &[ConnectFailure]),
            ("reset-before-request", &[ConnectFailure]),
            ("refused-stream", &[RefusedStream]),
            ("retriable-4xx,503", &[]),
            ("unavailable,cancelled,internal", &[]),
            ("retriable-headers,envoy-ratelimited,http3-post-connect-failure", &[]),
        ];
        for (on, yes) in cases {
            let r = retry(on);
            for f in FAILURES {
                assert_eq!(r.retry_on_failure(f), yes.contains(&f), "{on} on {f:?}");
            }
        }
    }

    #[test]
    fn per_try_timeout_only_with_5xx_gateway_error_or_reset() {
        for on in ["5xx", "gateway-error", "reset", "reset,503"] {
            assert!(retry(on).retry_on_failure(PerTryTimeout), "{on}");
        }
        for on in ["connect-failure,refused-stream,unavailable", "retriable-4xx", "504", "reset-before-request"] {
            assert!(!retry(on).retry_on_failure(PerTryTimeout), "{on}");
        }
    }

    #[test]
    fn overloaded_never_retried() {
        let r = retry("5xx,gateway-error,retriable-4xx,503,unavailable");
        assert!(r.retry_on_response(503, None, false));
        assert!(![503, 502, 409, 500, 200].iter().any(|&s| r.retry_on_response(s, Some(14), true)));
    }

    #[test]
    fn backoff_bounds() {
        let r = RetryPolicy::istio_default();
        let caps = [25, 25, 50, 100, 200, 250, 250].map(Duration::from_millis);
        assert!((0..).zip(caps).all(|(n, cap)| r.backoff_cap(n) == cap));
        assert_eq!(r.backoff_cap(u32::MAX), Duration::from_millis(250));
        for n in [1, 2, 3, 4, 5, 9, 40] {
            let cap = r.backoff_cap(n);
            assert!((0..2_000).map(|_| r.backoff(n)).all(|d| d < cap), "retry {n}");
        }
        assert_eq!(r.backoff_with(5, 0), Duration::ZERO);
        assert!(r.backoff_with(5, u64::MAX) < Duration::from_millis(250));
        let max = (0..5_000).map(|_| r.backoff(5)).max().unwrap_or_default();
        assert!(max > Duration::from_millis(200), "{max:?}");
        let zero = RetryPolicy { backoff_base: Duration::ZERO, ..RetryPolicy::istio_default() };
        assert_eq!(zero.backoff(3), Duration::ZERO);
    }

    #[test]
    fn needs_replay() {
        // Upstream HTTP/1.1 has no refused streams: the default keeps no copy.
        assert!(!RetryPolicy::istio_default().needs_replay(false));
        assert!(!retry("refused-stream").needs_replay(false));
        assert!(!retry("connect-failure,reset-before-request,retriable-status-codes").needs_replay(false));
        assert!(!retry("connect-failure,unavailable").needs_replay(false));
        assert!(retry("connect-failure,unavailable").needs_replay(true));
        for on in ["5xx", "gateway-error", "reset", "retriable-4xx", "503"] {
            assert!(retry(on).needs_replay(false), "{on}");
        }
    }
}
