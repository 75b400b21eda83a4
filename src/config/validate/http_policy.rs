//! The policy fields of one `http[]` rule: spec items 15 (retries), 16
//! (timeout), 17 (fault) and 23 (CORS).

use super::fields::{self, one_of};
use super::{strings, Report};
use crate::config::resources::{
    CorsPolicy, FaultAbort, FaultDelay, HttpFaultInjection, HttpRetry, HttpRoute, Percent, GRPC_STATUS_NAMES,
};

/// `retryOn` tokens Envoy understands besides HTTP status codes.
const RETRY_ON: [&str; 16] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Methods CORS `allowMethods` may list.
const CORS_METHODS: [&str; 10] = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "CONNECT", "OPTIONS", "TRACE", "*"];

/// Checks retries, timeout, fault and CORS; `r` is rooted at the rule.
pub(super) fn check(r: &mut Report<'_>, rule: &HttpRoute) {
    if let Some(retries) = &rule.retries {
        self::retries(&mut r.at("retries"), retries);
    }
    if let Some(timeout) = &rule.timeout {
        fields::duration(r, "timeout", timeout);
    }
    if let Some(fault) = &rule.fault {
        self::fault(&mut r.at("fault"), fault);
    }
    if let Some(cors) = &rule.cors_policy {
        self::cors(&mut r.at("corsPolicy"), cors);
    }
}

/// Item 15; `r` is rooted at `retries`.
fn retries(r: &mut Report<'_>, retries: &HttpRetry) {
    if retries.attempts < 0 {
        r.error("attempts", "attempts cannot be negative");
    }
    let retry_on = retries.retry_on.as_deref().filter(|s| !s.is_empty());
    let tuned = retries.per_try_timeout.is_some() || retry_on.is_some() || retries.retry_remote_localities.is_some();
    if retries.attempts == 0 && tuned {
        r.error("", "http retry policy configured when attempts are set to 0 (disabled)");
    }
    if let Some(timeout) = &retries.per_try_timeout {
        fields::duration(r, "perTryTimeout", timeout);
    }
    if let Some(backoff) = &retries.backoff {
        fields::duration(r, "backoff", backoff);
    }
    // Tokens are not trimmed: "5xx, reset" is refused, as by Istio.
    for token in retry_on.into_iter().flat_map(|s| s.split(',')) {
        if !RETRY_ON.contains(&token) && !is_http_status(token) {
            r.error("retryOn", format!("{token:?} is not a valid retryOn policy"));
        }
    }
}

/// A status code with a standard reason phrase (what Go's
/// `http.StatusText` knows).
fn is_http_status(token: &str) -> bool {
    token
        .parse::<u16>()
        .ok()
        .and_then(|n| http::StatusCode::from_u16(n).ok())
        .is_some_and(|s| s.canonical_reason().is_some())
}

/// Item 17; `r` is rooted at `fault`.
fn fault(r: &mut Report<'_>, fault: &HttpFaultInjection) {
    if fault.abort.is_none() && fault.delay.is_none() {
        r.error("", "HTTP fault injection must have an abort and/or a delay");
    }
    if let Some(abort) = &fault.abort {
        self::abort(&mut r.at("abort"), abort);
    }
    if let Some(delay) = &fault.delay {
        self::delay(&mut r.at("delay"), delay);
    }
}

fn abort(r: &mut Report<'_>, abort: &FaultAbort) {
    fault_percentage(r, abort.percentage.as_ref());
    let kinds = [
        ("httpStatus", abort.http_status.is_some()),
        ("grpcStatus", abort.grpc_status.is_some()),
        ("http2Error", abort.http2_error.is_some()),
    ];
    one_of(r, "", &kinds);
    if !kinds.iter().any(|(_, set)| *set) {
        r.warning("", "abort configured, but error type not set");
    }
    if let Some(status) = abort.http_status.filter(|s| !(200..=600).contains(s)) {
        r.error("httpStatus", format!("HTTP status {status} is not in range 200..600"));
    }
    if let Some(status) = abort.grpc_status.as_deref().filter(|s| !GRPC_STATUS_NAMES.contains(s)) {
        r.error(
            "grpcStatus",
            format!("gRPC status {status:?} is not supported; expected a name such as NOT_FOUND or UNAVAILABLE"),
        );
    }
    if abort.http2_error.is_some() {
        r.error("http2Error", "HTTP/2 abort fault injection is not supported");
    }
}

fn delay(r: &mut Report<'_>, delay: &FaultDelay) {
    fault_percentage(r, delay.percentage.as_ref());
    one_of(
        r,
        "",
        &[("fixedDelay", delay.fixed_delay.is_some()), ("exponentialDelay", delay.exponential_delay.is_some())],
    );
    if let Some(fixed) = &delay.fixed_delay {
        fields::duration(r, "fixedDelay", fixed);
    }
    if delay.exponential_delay.is_some() {
        r.error("exponentialDelay", "exponentialDelay is not supported");
    }
}

/// Fault percentages: 0, or 0.0001..100 (Envoy's resolution is 1 ppm).
fn fault_percentage(r: &mut Report<'_>, percentage: Option<&Percent>) {
    let Some(value) = percentage.map(|p| p.value) else { return };
    if !(0.0..=100.0).contains(&value) || (value > 0.0 && value < 0.0001) {
        r.error("percentage.value", format!("percentage {value} is neither 0.0, nor in range [0.0001, 100.0]"));
    }
}

/// Item 23; `r` is rooted at `corsPolicy`.
fn cors(r: &mut Report<'_>, cors: &CorsPolicy) {
    for (i, origin) in cors.allow_origins.iter().enumerate() {
        let field = format!("allowOrigins[{i}]");
        let value = origin.as_ref().and_then(|m| m.exact.as_ref().or(m.prefix.as_ref()).or(m.regex.as_ref()));
        match (origin, value) {
            (Some(origin), Some(value)) if !value.is_empty() => strings::string_match(r, &field, origin, false),
            _ => r.error(&field, "empty origin matcher: set exact, prefix or regex"),
        }
    }
    for (i, method) in cors.allow_methods.iter().enumerate() {
        if !CORS_METHODS.contains(&method.as_str()) {
            r.error(&format!("allowMethods[{i}]"), format!("{method:?} is not a supported HTTP method"));
        }
    }
    for (list, names) in [("allowHeaders", &cors.allow_headers), ("exposeHeaders", &cors.expose_headers)] {
        for (i, name) in names.iter().enumerate() {
            r.check(&format!("{list}[{i}]"), strings::cors_header_name(name));
        }
    }
    if let Some(max_age) = &cors.max_age {
        fields::duration(r, "maxAge", max_age);
        if max_age.nanos % 1_000_000_000 != 0 {
            r.error("maxAge", "maxAge is accurate only to seconds precision");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn rule(fields: &str) -> Vec<crate::config::Problem> {
        let fields: String = fields.lines().map(|l| format!("  {l}\n")).collect();
        of("VirtualService", &format!("hosts: [a]\nhttp:\n- route:\n  - destination: {{host: a}}\n{fields}"))
    }

    // Item 15.
    #[test]
    fn retry_policies() {
        assert_error(&rule("retries: {attempts: -1}"), "spec.http[0].retries.attempts");
        assert_error(&rule("retries: {attempts: 0, perTryTimeout: 1s}"), "spec.http[0].retries");
        assert_error(&rule("retries: {attempts: 2, retryOn: \"5xx, reset\"}"), "spec.http[0].retries.retryOn");
        assert_error(&rule("retries: {attempts: 2, retryOn: bogus}"), "spec.http[0].retries.retryOn");
        assert_error(&rule("retries: {attempts: 2, perTryTimeout: 0.5ms}"), "spec.http[0].retries.perTryTimeout");
        assert_error(&rule("retries: {attempts: 2, backoff: 1500us}"), "spec.http[0].retries.backoff");
        assert_clean(&rule("retries: {attempts: 3, perTryTimeout: 2s, retryOn: \"gateway-error,503,unavailable\"}"));
        assert_clean(&rule("retries: {attempts: 0}"));
        assert!(is_http_status("503") && !is_http_status("599") && !is_http_status("5xx"));
    }

    // Item 16.
    #[test]
    fn timeouts() {
        assert_error(&rule("timeout: 0s"), "spec.http[0].timeout");
        assert_error(&rule("timeout: 1500us"), "spec.http[0].timeout");
        assert_clean(&rule("timeout: 1.5s"));
    }

    // Item 17.
    #[test]
    fn faults() {
        assert_error(&rule("fault: {}"), "spec.http[0].fault");
        assert_error(&rule("fault: {abort: {httpStatus: 700}}"), "spec.http[0].fault.abort.httpStatus");
        assert_error(&rule("fault: {abort: {grpcStatus: NOPE}}"), "spec.http[0].fault.abort.grpcStatus");
        assert_error(&rule("fault: {abort: {http2Error: x}}"), "spec.http[0].fault.abort.http2Error");
        assert_error(&rule("fault: {delay: {exponentialDelay: 1s}}"), "spec.http[0].fault.delay.exponentialDelay");
        assert_error(&rule("fault: {delay: {fixedDelay: 0s}}"), "spec.http[0].fault.delay.fixedDelay");
        assert_error(
            &rule("fault: {delay: {fixedDelay: 1s, percentage: {value: 101}}}"),
            "spec.http[0].fault.delay.percentage.value",
        );
        assert_error(
            &rule("fault: {abort: {httpStatus: 500, percentage: {value: 0.00001}}}"),
            "spec.http[0].fault.abort.percentage.value",
        );
        assert_warning(&rule("fault: {abort: {percentage: {value: 10}}}"), "spec.http[0].fault.abort");
        assert_clean(&rule(
            "fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 0.5}}, delay: {fixedDelay: 7s}}",
        ));
    }

    // Item 23.
    #[test]
    fn cors_policies() {
        assert_error(&rule("corsPolicy: {allowOrigins: [{exact: \"\"}]}"), "spec.http[0].corsPolicy.allowOrigins[0]");
        assert_error(
            &rule("corsPolicy: {allowOrigins: [{regex: \"(\"}]}"),
            "spec.http[0].corsPolicy.allowOrigins[0].regex",
        );
        assert_error(&rule("corsPolicy: {allowMethods: [FETCH]}"), "spec.http[0].corsPolicy.allowMethods[0]");
        assert_error(&rule("corsPolicy: {allowHeaders: [\"a b\"]}"), "spec.http[0].corsPolicy.allowHeaders[0]");
        assert_error(&rule("corsPolicy: {maxAge: 1500ms}"), "spec.http[0].corsPolicy.maxAge");
        let good = "corsPolicy: {allowOrigins: [{prefix: \"https://\"}], allowMethods: [GET, POST], allowHeaders: [\"*\"], maxAge: 24h}";
        assert_clean(&rule(good));
    }
}
