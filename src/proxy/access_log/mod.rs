//! The access log: one line per HTTP request and one per TCP connection,
//! on stdout, as an Istio sidecar's Envoy writes it (`meshConfig.accessLogFile:
//! /dev/stdout`).
//!
//! `--access-log text` is Envoy's text format with the format string Istio
//! configures (`EnvoyTextLogFormat` in Istio's `telemetry_logging.go`):
//!
//! ```text
//! [%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%"
//! %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS%
//! "%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION%
//! %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%"
//! "%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW%
//! %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS%
//! %REQUESTED_SERVER_NAME% %ROUTE_NAME%
//! ```
//!
//! on one line. A value that is not there prints `-`, as Envoy prints it;
//! values are written as they are, quotes included (Envoy's text formatter
//! escapes nothing). `--access-log json` is Istio's `accessLogEncoding:
//! JSON` (`EnvoyJSONLogFormatIstio`): one object per line with the keys
//! `authority`, `bytes_received`, `bytes_sent`,
//! `connection_termination_details`, `downstream_local_address`,
//! `downstream_remote_address`, `duration`, `method`, `path`, `protocol`,
//! `request_id`, `requested_server_name`, `response_code`,
//! `response_code_details`, `response_flags`, `route_name`, `start_time`,
//! `upstream_cluster`, `upstream_host`, `upstream_local_address`,
//! `upstream_service_time`, `upstream_transport_failure_reason`,
//! `user_agent`, `x_forwarded_for`; as Envoy renders a `json_format`,
//! response code, byte counts and duration are numbers, a missing value is
//! `null`, the rest are strings (escaped by serde_json).
//!
//! Field by field (Envoy's command operators):
//! - `START_TIME`: when the request (connection) started, UTC, ms.
//! - `BYTES_RECEIVED` / `BYTES_SENT`: request / response **body** bytes
//!   (metrics count the head too); on TCP, the bytes of each direction.
//! - `DURATION`: start to last byte out, in ms.
//! - `RESPONSE_CODE_DETAILS`: `via_upstream` for a proxied response;
//!   Envoy's code for meshd's own replies (`route_not_found`,
//!   `cluster_not_found`, `no_healthy_upstream`,
//!   `upstream_response_timeout`, `fault_filter_abort`, `direct_response`,
//!   `upstream_reset_before_response_started{connection_failure}`…).
//! - `X-ENVOY-ORIGINAL-PATH?:PATH`: the path as the client sent it (after
//!   dot-segment normalisation, before any rewrite), query included.
//! - `X-REQUEST-ID`: the client's, or the one meshd generated for the
//!   upstream request.
//! - `UPSTREAM_LOCAL_ADDRESS`: on TCP connections only (the HTTP pools do
//!   not keep their sockets' local addresses); `-` on HTTP lines.
//!
//! Cost. With `off`, nothing is made: a connection's
//! [`ConnectionInfo`] is `None`, so a request's [`Record`] is a null
//! pointer that every step checks and skips. With logging on, a request
//! allocates its record once (a few header values, reference counted),
//! and its line is formatted straight into a buffer of the thread that
//! served it: no lock shared between threads on the request path, no
//! system call. A background thread writes the buffers to stdout every
//! second (Envoy's default `file_flush_interval`), and a buffer that
//! reaches 64 KiB is handed to it at once (written by the request's own
//! thread if the hand-off queue is full: a slow stdout slows the proxy
//! rather than losing lines or growing without bound).

use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{self, HeaderMap, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Request, Version};

use super::flags::ResponseFlags;
use super::headers::{X_FORWARDED_FOR, X_REQUEST_ID};
use super::local::LocalReply;

mod line;
mod writer;

use line::*;
pub use writer::flush;

/// What `--access-log` selects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    /// No access log (the default).
    #[default]
    Off,
    /// Envoy's text format, with Istio's format string.
    Text,
    /// One JSON object a line, with Istio's keys.
    Json,
}

/// What every line of one downstream connection repeats. Made at accept,
/// only when logging is on.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// `Text` or `Json`.
    format: Format,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`: the address the client connected to.
    local: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`: the client's address and port.
    remote: SocketAddr,
    /// `%REQUESTED_SERVER_NAME%`: the TLS SNI, on TLS listeners.
    server_name: Option<Box<str>>,
}

/// One HTTP request's access-log record: `None`, and free, when logging is
/// off. Made at request start; filled in as the request goes; written by
/// [`Record::finish_proxied`] or [`Record::finish_local`] where the
/// request's metrics are recorded.
#[derive(Debug, Default)]
pub struct Record(Option<Box<Entry>>);

/// What a [`Record`] holds while its request runs.
#[derive(Debug)]
struct Entry {
    /// The connection's addresses, SNI and format.
    connection: Arc<ConnectionInfo>,
    /// `%START_TIME%`.
    start_time: SystemTime,
    /// `%REQ(:METHOD)%`.
    method: Method,
    /// `:path`, query included, as received.
    path: Option<PathAndQuery>,
    /// `%PROTOCOL%`.
    version: Version,
    /// `%REQ(X-FORWARDED-FOR)%`, as received.
    x_forwarded_for: Option<HeaderValue>,
    /// `%REQ(USER-AGENT)%`.
    user_agent: Option<HeaderValue>,
    /// `%REQ(X-REQUEST-ID)%`: the client's, else the one generated for
    /// the upstream request.
    request_id: Option<HeaderValue>,
    /// `:authority` (HTTP/2, absolute-form) or `Host`.
    authority: Option<HeaderValue>,
    /// Request line and headers, taken off the wire bytes for
    /// `%BYTES_RECEIVED%`.
    request_head_bytes: u64,
    /// `%ROUTE_NAME%`, once a route matched.
    route_name: Option<Arc<str>>,
    /// `%UPSTREAM_CLUSTER_RAW%`, once the cluster is known.
    upstream_cluster: Option<Arc<str>>,
    /// `%UPSTREAM_HOST%`: the endpoint of the last attempt.
    upstream_host: Option<SocketAddr>,
    /// `x-envoy-upstream-service-time` of a proxied response.
    upstream_service_time: Option<u64>,
    /// Status line and headers of a proxied response, taken off its wire
    /// bytes for `%BYTES_SENT%`.
    response_head_bytes: u64,
    /// `%RESPONSE_CODE_DETAILS%` of a local reply (`via_upstream` when
    /// `None`).
    details: Option<Cow<'static, str>>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` (a TLS handshake failure).
    transport_failure: Option<String>,
}

/// One TCP connection's access-log record (`None` when logging is off).
#[derive(Debug, Default)]
pub struct TcpRecord(Option<Box<TcpEntry>>);

/// What a [`TcpRecord`] holds while its connection is relayed.
#[derive(Debug)]
struct TcpEntry {
    /// `Text` or `Json`.
    format: Format,
    /// `%START_TIME%`: when the connection was accepted.
    start_time: SystemTime,
    /// The same instant, for `%DURATION%`.
    started: Instant,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`.
    local: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    remote: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`, once routed.
    upstream_cluster: Option<Arc<str>>,
    /// `%UPSTREAM_HOST%`, once an endpoint is picked.
    upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`, once connected.
    upstream_local: Option<SocketAddr>,
}

// === impl Format ===

impl Format {
    /// The per-connection part of the log for a connection from `remote`
    /// accepted on `stream`; `None` when logging is off (no system call).
    #[inline]
    pub fn connection(self, stream: &tokio::net::TcpStream, remote: SocketAddr) -> Option<Arc<ConnectionInfo>> {
        match self {
            Format::Off => None,
            format => {
                Some(Arc::new(ConnectionInfo { format, local: stream.local_addr().ok(), remote, server_name: None }))
            }
        }
    }

    /// The record of a TCP connection accepted on `client`.
    #[inline]
    pub fn tcp(self, client: &tokio::net::TcpStream) -> TcpRecord {
        match self {
            Format::Off => TcpRecord(None),
            format => TcpRecord(Some(Box::new(TcpEntry {
                format,
                start_time: SystemTime::now(),
                started: Instant::now(),
                local: client.local_addr().ok(),
                remote: client.peer_addr().ok(),
                upstream_cluster: None,
                upstream_host: None,
                upstream_local: None,
            }))),
        }
    }
}

// === impl ConnectionInfo ===

impl ConnectionInfo {
    /// The same connection, with the SNI the client sent.
    pub fn with_server_name(&self, server_name: Option<&str>) -> Arc<ConnectionInfo> {
        Arc::new(ConnectionInfo {
            format: self.format,
            local: self.local,
            remote: self.remote,
            server_name: server_name.map(Box::from),
        })
    }
}

// === impl Record ===

impl Record {
    /// The record of `req`, when its connection logs; `head_bytes` is the
    /// size of its request line and headers.
    #[inline]
    pub fn begin<B>(connection: Option<&Arc<ConnectionInfo>>, req: &Request<B>, head_bytes: u64) -> Record {
        match connection {
            None => Record(None),
            Some(connection) => Record(Some(Entry::begin(connection, req, head_bytes))),
        }
    }

    /// The route that matched (`%ROUTE_NAME%`).
    #[inline]
    pub fn route(&mut self, name: &Arc<str>) {
        if let Some(entry) = &mut self.0 {
            entry.route_name = Some(name.clone());
        }
    }

    /// The cluster the request goes to (`%UPSTREAM_CLUSTER_RAW%`).
    #[inline]
    pub fn cluster(&mut self, name: &Arc<str>) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_cluster = Some(name.clone());
        }
    }

    /// The request as it goes upstream: its `x-request-id` when the client
    /// sent none (meshd generated it).
    #[inline]
    pub fn forwarded(&mut self, headers: &HeaderMap) {
        if let Some(entry) = &mut self.0 {
            if entry.request_id.is_none() {
                entry.request_id = headers.get(&X_REQUEST_ID).cloned();
            }
        }
    }

    /// The endpoint of the last attempt (`%UPSTREAM_HOST%`).
    #[inline]
    pub fn upstream_host(&mut self, addr: SocketAddr) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_host = Some(addr);
        }
    }

    /// A proxied response's `x-envoy-upstream-service-time` and the size of
    /// its status line and headers.
    #[inline]
    pub fn proxied(&mut self, service_ms: u64, head_bytes: u64) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_service_time = Some(service_ms);
            entry.response_head_bytes = head_bytes;
        }
    }

    /// Notes why meshd answers itself (`%RESPONSE_CODE_DETAILS%`); called
    /// before the reply is turned into gRPC, which moves its body.
    #[inline]
    pub fn local_reply(&mut self, reply: &LocalReply) {
        if let Some(entry) = &mut self.0 {
            let (details, transport) = reply_details(reply.flags, &reply.body, &reply.headers);
            entry.details = Some(details);
            entry.transport_failure = transport;
        }
    }

    /// Writes the line of a proxied response at its end: `request_bytes`
    /// and `response_bytes` are wire sizes (head and body).
    #[inline]
    pub fn finish_proxied(
        self,
        status: u16,
        flags: ResponseFlags,
        request_bytes: u64,
        response_bytes: u64,
        upstream: SocketAddr,
        elapsed: Duration,
    ) {
        if let Some(mut entry) = self.0 {
            entry.upstream_host = Some(upstream);
            let sent = response_bytes.saturating_sub(entry.response_head_bytes);
            entry.write(status, flags, request_bytes, sent, elapsed);
        }
    }

    /// Writes the line of a local reply whose body is `body_bytes` long.
    #[inline]
    pub fn finish_local(
        self,
        status: u16,
        flags: ResponseFlags,
        request_bytes: u64,
        body_bytes: u64,
        elapsed: Duration,
    ) {
        if let Some(entry) = self.0 {
            entry.write(status, flags, request_bytes, body_bytes, elapsed);
        }
    }
}

// === impl Entry ===

impl Entry {
    #[inline(never)]
    fn begin<B>(connection: &Arc<ConnectionInfo>, req: &Request<B>, head_bytes: u64) -> Box<Entry> {
        let headers = req.headers();
        let authority = match req.uri().authority() {
            Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
            None => headers.get(header::HOST).cloned(),
        };
        Box::new(Entry {
            connection: connection.clone(),
            start_time: SystemTime::now(),
            method: req.method().clone(),
            path: req.uri().path_and_query().cloned(),
            version: req.version(),
            x_forwarded_for: headers.get(&X_FORWARDED_FOR).cloned(),
            user_agent: headers.get(header::USER_AGENT).cloned(),
            request_id: headers.get(&X_REQUEST_ID).cloned(),
            authority,
            request_head_bytes: head_bytes,
            route_name: None,
            upstream_cluster: None,
            upstream_host: None,
            upstream_service_time: None,
            response_head_bytes: 0,
            details: None,
            transport_failure: None,
        })
    }

    /// Formats the line into this thread's buffer; `body_sent` is the
    /// response's body bytes.
    #[inline(never)]
    fn write(&self, status: u16, flags: ResponseFlags, request_bytes: u64, body_sent: u64, elapsed: Duration) {
        let flags = flags.as_str();
        let line = Line {
            start_time: self.start_time,
            method: Some(self.method.as_str()),
            path: Some(self.path.as_ref().map_or("/", PathAndQuery::as_str)),
            protocol: Some(protocol(self.version)),
            response_code: status,
            response_flags: &flags,
            response_code_details: Some(self.details.as_deref().unwrap_or("via_upstream")),
            upstream_transport_failure_reason: self.transport_failure.as_deref(),
            bytes_received: request_bytes.saturating_sub(self.request_head_bytes),
            bytes_sent: body_sent,
            duration_ms: elapsed.as_millis() as u64,
            upstream_service_time: self.upstream_service_time,
            x_forwarded_for: self.x_forwarded_for.as_ref().map(HeaderValue::as_bytes),
            user_agent: self.user_agent.as_ref().map(HeaderValue::as_bytes),
            request_id: self.request_id.as_ref().map(HeaderValue::as_bytes),
            authority: self.authority.as_ref().map(HeaderValue::as_bytes),
            upstream_host: self.upstream_host,
            upstream_cluster: self.upstream_cluster.as_deref(),
            upstream_local_address: None,
            downstream_local_address: self.connection.local,
            downstream_remote_address: Some(self.connection.remote),
            requested_server_name: self.connection.server_name.as_deref(),
            route_name: self.route_name.as_deref(),
        };
        line.emit(self.connection.format);
    }
}

// === impl TcpRecord ===

impl TcpRecord {
    /// The cluster the connection goes to.
    #[inline]
    pub fn cluster(&mut self, name: &Arc<str>) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_cluster = Some(name.clone());
        }
    }

    /// The endpoint picked (`%UPSTREAM_HOST%`).
    #[inline]
    pub fn upstream_host(&mut self, addr: SocketAddr) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_host = Some(addr);
        }
    }

    /// The upstream connection, once open (`%UPSTREAM_LOCAL_ADDRESS%`).
    #[inline]
    pub fn connected(&mut self, upstream: &tokio::net::TcpStream) {
        if let Some(entry) = &mut self.0 {
            entry.upstream_local = upstream.local_addr().ok();
        }
    }

    /// Writes the connection's line: `received` from the client, `sent` to
    /// it.
    #[inline]
    pub fn finish(self, flags: &str, received: u64, sent: u64) {
        if let Some(entry) = self.0 {
            entry.write(flags, received, sent);
        }
    }
}

// === impl TcpEntry ===

impl TcpEntry {
    #[inline(never)]
    fn write(&self, flags: &str, received: u64, sent: u64) {
        let line = Line {
            start_time: self.start_time,
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_flags: flags,
            response_code_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: received,
            bytes_sent: sent,
            duration_ms: self.started.elapsed().as_millis() as u64,
            upstream_service_time: None,
            x_forwarded_for: None,
            user_agent: None,
            request_id: None,
            authority: None,
            upstream_host: self.upstream_host,
            upstream_cluster: self.upstream_cluster.as_deref(),
            upstream_local_address: self.upstream_local,
            downstream_local_address: self.local,
            downstream_remote_address: self.remote,
            requested_server_name: None,
            route_name: None,
        };
        line.emit(self.format);
    }
}

#[cfg(test)]
mod tests;
