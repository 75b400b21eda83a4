//! The connection-level blocks of a DestinationRule traffic policy (top
//! level, port level and subsets alike): spec items 32 (outlierDetection),
//! 33 (connectionPool) and 36 (client tls).

use super::fields::{self, is_set};
use super::Report;
use crate::config::resources::{
    ClientTlsMode, ClientTlsSettings, ConnectionPoolSettings, H2UpgradePolicy, OutlierDetection,
};

/// The Kubernetes ConfigMap credential scheme.
const CONFIGMAP: &str = "configmap://";

/// Item 32; `r` is rooted at `outlierDetection`.
pub(super) fn outlier_detection(r: &mut Report<'_>, outlier: &OutlierDetection) {
    for (field, value) in
        [("maxEjectionPercent", outlier.max_ejection_percent), ("minHealthPercent", outlier.min_health_percent)]
    {
        if let Some(value) = value {
            fields::percent(r, field, value as f64);
        }
    }
    for (field, value) in [("interval", &outlier.interval), ("baseEjectionTime", &outlier.base_ejection_time)] {
        if let Some(value) = value {
            fields::duration(r, field, value);
        }
    }
    if outlier.consecutive_local_origin_failures.unwrap_or(0) > 0
        && outlier.split_external_local_origin_errors != Some(true)
    {
        r.error(
            "consecutiveLocalOriginFailures",
            "consecutiveLocalOriginFailures is specified, but splitExternalLocalOriginErrors is not true",
        );
    }
    for (i, code) in outlier.outlier_detection_http_error_codes.iter().enumerate() {
        if !(100..=599).contains(code) {
            r.error(
                &format!("outlierDetectionHttpErrorCodes[{i}]"),
                format!("HTTP status {code} is not in range 100..599"),
            );
        }
    }
    if outlier.consecutive_errors.unwrap_or(0) != 0 {
        r.warning(
            "consecutiveErrors",
            "consecutiveErrors is deprecated and ignored; use consecutive5xxErrors or consecutiveGatewayErrors",
        );
    }
}

/// Item 33; `r` is rooted at `connectionPool`.
pub(super) fn connection_pool(r: &mut Report<'_>, pool: &ConnectionPoolSettings) {
    if pool.tcp.is_none() && pool.http.is_none() {
        r.error("", "connection pool must have at least one of tcp or http");
    }
    if let Some(http) = &pool.http {
        let mut r = r.at("http");
        let counts = [
            ("http1MaxPendingRequests", http.http1_max_pending_requests),
            ("http2MaxRequests", http.http2_max_requests),
            ("maxRequestsPerConnection", http.max_requests_per_connection),
            ("maxRetries", http.max_retries),
            ("maxConcurrentStreams", http.max_concurrent_streams),
        ];
        for (field, value) in counts {
            fields::non_negative(&mut r, field, value);
        }
        if let Some(idle) = &http.idle_timeout {
            fields::duration(&mut r, "idleTimeout", idle);
        }
        if http.h2_upgrade_policy == Some(H2UpgradePolicy::Upgrade) && http.use_client_protocol == Some(true) {
            r.error("useClientProtocol", "useClientProtocol must not be true when h2UpgradePolicy is UPGRADE");
        }
        if let Some(keepalive) = &http.http2_keep_alive {
            for (field, value) in [("interval", &keepalive.interval), ("timeout", &keepalive.timeout)] {
                match value {
                    None => {
                        r.error(&format!("http2KeepAlive.{field}"), "http2KeepAlive needs both interval and timeout")
                    }
                    Some(value) => fields::duration(&mut r, &format!("http2KeepAlive.{field}"), value),
                }
            }
        }
    }
    if let Some(tcp) = &pool.tcp {
        let mut r = r.at("tcp");
        fields::non_negative(&mut r, "maxConnections", tcp.max_connections);
        let durations = [
            ("connectTimeout", tcp.connect_timeout.as_ref()),
            ("maxConnectionDuration", tcp.max_connection_duration.as_ref()),
            // 0s disables the idle timeout.
            ("idleTimeout", tcp.idle_timeout.as_ref().filter(|d| !d.is_zero())),
            ("tcpKeepalive.time", tcp.tcp_keepalive.as_ref().and_then(|k| k.time.as_ref())),
            ("tcpKeepalive.interval", tcp.tcp_keepalive.as_ref().and_then(|k| k.interval.as_ref())),
        ];
        for (field, value) in durations {
            if let Some(value) = value {
                fields::duration(&mut r, field, value);
            }
        }
    }
}

/// Item 36; `r` is rooted at `tls`.
pub(super) fn client_tls(r: &mut Report<'_>, namespace: &str, tls: &ClientTlsSettings) {
    let mode = tls.mode.unwrap_or(ClientTlsMode::Disable);
    let credential = is_set(&tls.credential_name);
    let ca = is_set(&tls.ca_certificates);
    if let Some(name) = tls.credential_name.as_deref().and_then(|c| c.strip_prefix(CONFIGMAP)) {
        match name.split('/').collect::<Vec<_>>().as_slice() {
            [ns, _] if *ns != namespace => r.error(
                "credentialName",
                format!("invalid configmap:// credentialName: namespace must match the configuration namespace {namespace:?}"),
            ),
            [_] | [_, _] => {}
            _ => r.error("credentialName", "invalid configmap:// credentialName: expected configmap://[namespace/]name"),
        }
    }
    if tls.insecure_skip_verify == Some(true) {
        let sans = !tls.subject_alt_names.is_empty();
        match mode {
            ClientTlsMode::Simple if ca || credential || sans => r.error(
                "insecureSkipVerify",
                "cannot specify caCertificates, credentialName or subjectAltNames when insecureSkipVerify is true",
            ),
            ClientTlsMode::Mutual if ca || sans => r.error(
                "insecureSkipVerify",
                "cannot specify caCertificates or subjectAltNames when insecureSkipVerify is true",
            ),
            _ => {}
        }
    }
    let files = is_set(&tls.client_certificate) || ca || is_set(&tls.private_key) || is_set(&tls.ca_crl);
    if matches!(mode, ClientTlsMode::Simple | ClientTlsMode::Mutual) && credential {
        // Certificates come from the credential.
        if files {
            r.error(
                "credentialName",
                "cannot specify client certificates, CA certificate or CA CRL if credentialName is set",
            );
        }
    } else if mode == ClientTlsMode::Mutual {
        if !is_set(&tls.client_certificate) {
            r.error("clientCertificate", "client certificate required for mutual tls");
        }
        if !is_set(&tls.private_key) {
            r.error("privateKey", "private key required for mutual tls");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;

    // Item 32.
    #[test]
    fn outlier_detection() {
        let p = policy("{outlierDetection: {maxEjectionPercent: 101, minHealthPercent: -1, interval: 0s, baseEjectionTime: 100us}}");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.maxEjectionPercent");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.minHealthPercent");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.interval");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.baseEjectionTime");
        let p = policy("{outlierDetection: {consecutiveLocalOriginFailures: 3}}");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.consecutiveLocalOriginFailures");
        let p = policy("{outlierDetection: {outlierDetectionHttpErrorCodes: [503, 600]}}");
        assert_error(&p, "spec.trafficPolicy.outlierDetection.outlierDetectionHttpErrorCodes[1]");
        let p = policy("{outlierDetection: {consecutiveErrors: 5}}");
        assert_warning(&p, "spec.trafficPolicy.outlierDetection.consecutiveErrors");
        assert_no_error(&p);
        assert_clean(&policy("{outlierDetection: {consecutive5xxErrors: 3, interval: 5s, maxEjectionPercent: 100}}"));
    }

    // Item 33.
    #[test]
    fn connection_pool() {
        let p = policy("{connectionPool: {tcp: {maxConnections: -1, connectTimeout: 0s, idleTimeout: 0.5ms}, http: {maxRetries: -2, h2UpgradePolicy: UPGRADE, useClientProtocol: true, http2KeepAlive: {interval: 10s}}}}");
        assert_error(&p, "spec.trafficPolicy.connectionPool.tcp.maxConnections");
        assert_error(&p, "spec.trafficPolicy.connectionPool.tcp.connectTimeout");
        assert_error(&p, "spec.trafficPolicy.connectionPool.tcp.idleTimeout");
        assert_error(&p, "spec.trafficPolicy.connectionPool.http.maxRetries");
        assert_error(&p, "spec.trafficPolicy.connectionPool.http.useClientProtocol");
        assert_error(&p, "spec.trafficPolicy.connectionPool.http.http2KeepAlive.timeout");
        assert_clean(&policy(
            "{connectionPool: {tcp: {maxConnections: 1, idleTimeout: 0s}, http: {http1MaxPendingRequests: 1}}}",
        ));
    }

    // Item 36.
    #[test]
    fn client_tls() {
        let p = policy("{tls: {mode: MUTUAL}}");
        assert_error(&p, "spec.trafficPolicy.tls.clientCertificate");
        assert_error(&p, "spec.trafficPolicy.tls.privateKey");
        let p = policy("{tls: {mode: SIMPLE, credentialName: c, caCertificates: /ca.pem}}");
        assert_error(&p, "spec.trafficPolicy.tls.credentialName");
        let p = policy("{tls: {mode: SIMPLE, insecureSkipVerify: true, subjectAltNames: [a]}}");
        assert_error(&p, "spec.trafficPolicy.tls.insecureSkipVerify");
        let p = policy("{tls: {mode: SIMPLE, credentialName: \"configmap://other/ca\"}}");
        assert_error(&p, "spec.trafficPolicy.tls.credentialName");
        assert_clean(&policy("{tls: {mode: SIMPLE, credentialName: \"configmap://default/ca\"}}"));
        assert_clean(&policy("{tls: {mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem}}"));
        assert_clean(&policy("{tls: {mode: ISTIO_MUTUAL}}"));
    }
}
