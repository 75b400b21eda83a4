//! Istio's TCP metrics (spec §5.1): `istio_tcp_connections_opened_total`,
//! `istio_tcp_connections_closed_total`, `istio_tcp_sent_bytes_total`
//! (towards the client) and `istio_tcp_received_bytes_total` (from the
//! client), with Istio's TCP label set: the HTTP one without
//! `response_code` and `grpc_response_status`, `request_protocol="tcp"`.
//!
//! Handles are resolved once per connection, at open and at close; TCP
//! connections are few next to requests, so no cache is kept.

use prometheus::{IntCounterVec, Opts, Registry};

use super::labels::{self, DestinationLabels, SourceLabels};

/// The four TCP families.
pub struct TcpMetrics {
    opened: IntCounterVec,
    closed: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
}

/// How one proxied connection ended.
pub struct TcpClose<'a> {
    /// Envoy's `%RESPONSE_FLAGS%` (`-` when none).
    pub flags: &'a str,
    /// Bytes sent to the client.
    pub sent: u64,
    /// Bytes received from the client.
    pub received: u64,
}

// === impl TcpMetrics ===

impl TcpMetrics {
    pub(super) fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let family = |name: &str, help: &str| -> Result<IntCounterVec, prometheus::Error> {
            let family = IntCounterVec::new(Opts::new(name, help), &labels::TCP_LABELS)?;
            registry.register(Box::new(family.clone()))?;
            Ok(family)
        };
        Ok(TcpMetrics {
            opened: family("istio_tcp_connections_opened_total", "TCP connections opened")?,
            closed: family("istio_tcp_connections_closed_total", "TCP connections closed")?,
            sent: family("istio_tcp_sent_bytes_total", "Bytes sent to the client over TCP")?,
            received: family("istio_tcp_received_bytes_total", "Bytes received from the client over TCP")?,
        })
    }

    /// Counts a connection opened to `destination`.
    pub(super) fn opened(&self, source: &SourceLabels, destination: &DestinationLabels) {
        self.opened.with_label_values(&labels::tcp_values(source, destination, "-")).inc();
    }

    /// Counts a connection to `destination` closed, and its bytes.
    pub(super) fn closed(&self, source: &SourceLabels, destination: &DestinationLabels, close: &TcpClose<'_>) {
        let values = labels::tcp_values(source, destination, close.flags);
        self.closed.with_label_values(&values).inc();
        self.sent.with_label_values(&values).inc_by(close.sent);
        self.received.with_label_values(&values).inc_by(close.received);
    }
}
