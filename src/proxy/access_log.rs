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

/// One line's values, whichever the format and protocol. Each field is
/// the Envoy command operator of its name; `None` prints `-` (text) or
/// `null` (JSON).
#[derive(Debug)]
struct Line<'a> {
    /// `%START_TIME%`.
    start_time: SystemTime,
    /// `%REQ(:METHOD)%`; `None` on TCP.
    method: Option<&'a str>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`, query included.
    path: Option<&'a str>,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`; `None` on TCP.
    protocol: Option<&'static str>,
    /// `%RESPONSE_CODE%`; 0 on TCP.
    response_code: u16,
    /// `%RESPONSE_FLAGS%`: `-` or Envoy's short names.
    response_flags: &'a str,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream` or why meshd answered.
    response_code_details: Option<&'a str>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: a TLS handshake failure.
    upstream_transport_failure_reason: Option<&'a str>,
    /// `%BYTES_RECEIVED%`: request body bytes (TCP: from the client).
    bytes_received: u64,
    /// `%BYTES_SENT%`: response body bytes (TCP: to the client).
    bytes_sent: u64,
    /// `%DURATION%`, in ms.
    duration_ms: u64,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`, in ms.
    upstream_service_time: Option<u64>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    x_forwarded_for: Option<&'a [u8]>,
    /// `%REQ(USER-AGENT)%`.
    user_agent: Option<&'a [u8]>,
    /// `%REQ(X-REQUEST-ID)%`.
    request_id: Option<&'a [u8]>,
    /// `%REQ(:AUTHORITY)%`.
    authority: Option<&'a [u8]>,
    /// `%UPSTREAM_HOST%`.
    upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`.
    upstream_cluster: Option<&'a str>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`.
    downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%`: the TLS SNI.
    requested_server_name: Option<&'a str>,
    /// `%ROUTE_NAME%`.
    route_name: Option<&'a str>,
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

// === impl Line ===

impl Line<'_> {
    fn emit(&self, format: Format) {
        match format {
            Format::Off => {}
            Format::Text => writer::append(|out| self.write_text(out)),
            Format::Json => writer::append(|out| self.write_json(out)),
        }
    }

    /// Envoy's text format with Istio's format string, and a newline.
    /// Numbers, addresses and the time are written digit by digit:
    /// `core::fmt` took as many instructions as the rest of the line.
    fn write_text(&self, out: &mut Vec<u8>) {
        let text = |out: &mut Vec<u8>, value: Option<&[u8]>| match value {
            Some(value) if !value.is_empty() => out.extend_from_slice(value),
            _ => out.push(b'-'),
        };
        let str = |out: &mut Vec<u8>, value: Option<&str>| text(out, value.map(str::as_bytes));
        let addr = |out: &mut Vec<u8>, addr: Option<SocketAddr>| match addr {
            Some(addr) => push_addr(out, addr),
            None => out.push(b'-'),
        };
        out.push(b'[');
        push_start_time(out, self.start_time);
        out.extend_from_slice(b"] \"");
        str(out, self.method);
        out.push(b' ');
        str(out, self.path);
        out.push(b' ');
        str(out, self.protocol);
        out.extend_from_slice(b"\" ");
        push_u64(out, self.response_code.into());
        out.push(b' ');
        str(out, Some(self.response_flags));
        out.push(b' ');
        str(out, self.response_code_details);
        // %CONNECTION_TERMINATION_DETAILS%: never set by meshd.
        out.extend_from_slice(b" - \"");
        str(out, self.upstream_transport_failure_reason);
        out.extend_from_slice(b"\" ");
        for n in [self.bytes_received, self.bytes_sent, self.duration_ms] {
            push_u64(out, n);
            out.push(b' ');
        }
        match self.upstream_service_time {
            Some(ms) => push_u64(out, ms),
            None => out.push(b'-'),
        }
        for value in [self.x_forwarded_for, self.user_agent, self.request_id, self.authority] {
            out.extend_from_slice(b" \"");
            text(out, value);
            out.push(b'"');
        }
        out.extend_from_slice(b" \"");
        addr(out, self.upstream_host);
        out.extend_from_slice(b"\" ");
        str(out, self.upstream_cluster);
        for value in [self.upstream_local_address, self.downstream_local_address, self.downstream_remote_address] {
            out.push(b' ');
            addr(out, value);
        }
        out.push(b' ');
        str(out, self.requested_server_name);
        out.push(b' ');
        str(out, self.route_name);
        out.push(b'\n');
    }

    /// Istio's JSON keys, alphabetically (as Envoy prints a `json_format`
    /// struct), and a newline. Keys are literals and numbers digits;
    /// serde_json escapes the strings (a derived `Serialize` escaped every
    /// key of every line too, and cost twice the text format).
    fn write_json(&self, out: &mut Vec<u8>) {
        let mut json = JsonObject::new(out);
        json.text("authority", self.authority);
        json.number("bytes_received", self.bytes_received);
        json.number("bytes_sent", self.bytes_sent);
        json.str("connection_termination_details", None);
        json.addr("downstream_local_address", self.downstream_local_address);
        json.addr("downstream_remote_address", self.downstream_remote_address);
        json.number("duration", self.duration_ms);
        json.str("method", self.method);
        json.str("path", self.path);
        json.str("protocol", Some(self.protocol.unwrap_or("-")));
        json.text("request_id", self.request_id);
        json.str("requested_server_name", self.requested_server_name);
        json.number("response_code", self.response_code.into());
        json.str("response_code_details", self.response_code_details);
        json.str("response_flags", Some(self.response_flags));
        json.str("route_name", self.route_name);
        json.key("start_time");
        json.out.push(b'"');
        push_start_time(json.out, self.start_time);
        json.out.push(b'"');
        json.str("upstream_cluster", self.upstream_cluster);
        json.addr("upstream_host", self.upstream_host);
        json.addr("upstream_local_address", self.upstream_local_address);
        // A header value (`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`): a string.
        json.key("upstream_service_time");
        match self.upstream_service_time {
            Some(ms) => {
                json.out.push(b'"');
                push_u64(json.out, ms);
                json.out.push(b'"');
            }
            None => json.out.extend_from_slice(b"null"),
        }
        json.str("upstream_transport_failure_reason", self.upstream_transport_failure_reason);
        json.text("user_agent", self.user_agent);
        json.text("x_forwarded_for", self.x_forwarded_for);
        json.out.extend_from_slice(b"}\n");
    }
}

/// A JSON object being written: `"key":value` pairs, comma separated;
/// missing and empty values are `null`.
struct JsonObject<'a> {
    /// The line being written.
    out: &'a mut Vec<u8>,
    /// No key written yet (no comma before the next).
    first: bool,
}

// === impl JsonObject ===

impl<'a> JsonObject<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonObject { out, first: true }
    }

    /// `"key":` (keys are plain ASCII literals).
    fn key(&mut self, key: &str) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn str(&mut self, key: &str, value: Option<&str>) {
        self.key(key);
        match value.filter(|v| !v.is_empty()) {
            // Writing to a Vec cannot fail.
            Some(value) => {
                let _ = serde_json::to_writer(&mut *self.out, value);
            }
            None => self.out.extend_from_slice(b"null"),
        }
    }

    /// A header value: not UTF-8 bytes become U+FFFD.
    fn text(&mut self, key: &str, value: Option<&[u8]>) {
        let value = value.map(String::from_utf8_lossy);
        self.str(key, value.as_deref());
    }

    fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        push_u64(self.out, value);
    }

    fn addr(&mut self, key: &str, value: Option<SocketAddr>) {
        self.key(key);
        match value {
            Some(addr) => {
                self.out.push(b'"');
                push_addr(self.out, addr);
                self.out.push(b'"');
            }
            None => self.out.extend_from_slice(b"null"),
        }
    }
}

/// Appends `n` in decimal.
fn push_u64(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n;
    // At most 20 digits: `at` stays in bounds.
    while at > 0 {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends `n` in decimal with at least two digits.
fn push_2(out: &mut Vec<u8>, n: u8) {
    if n < 10 {
        out.push(b'0');
    }
    push_u64(out, n.into());
}

/// Appends `ip:port` (`[ip]:port` for IPv6, through `core::fmt`).
fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            let [a, b, c, d] = v4.ip().octets();
            for (i, octet) in [a, b, c, d].into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_u64(out, octet.into());
            }
            out.push(b':');
            push_u64(out, v4.port().into());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Appends `%START_TIME%`: `2024-01-01T12:00:00.000Z` (UTC); `-` for a
/// time `time` cannot represent.
fn push_start_time(out: &mut Vec<u8>, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let seconds = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    let Ok(utc) = time::OffsetDateTime::from_unix_timestamp(seconds) else {
        out.push(b'-');
        return;
    };
    let (year, month, day) = utc.to_calendar_date();
    let (hour, minute, second) = utc.to_hms();
    let millis = since_epoch.subsec_millis();
    match u64::try_from(year) {
        Ok(year) if year >= 1000 => push_u64(out, year),
        _ => {
            let _ = write!(out, "{year:04}");
        }
    }
    for (separator, n) in [(b'-', u8::from(month)), (b'-', day), (b'T', hour), (b':', minute), (b':', second)] {
        out.push(separator);
        push_2(out, n);
    }
    out.push(b'.');
    if millis < 100 {
        out.push(b'0');
    }
    if millis < 10 {
        out.push(b'0');
    }
    push_u64(out, millis.into());
    out.push(b'Z');
}

/// `%PROTOCOL%`.
fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "-",
    }
}

/// Envoy's `%RESPONSE_CODE_DETAILS%` for a reply meshd makes, and the
/// `%UPSTREAM_TRANSPORT_FAILURE_REASON%` its body names, if any.
///
/// An upstream reset's body is `… reset reason: REASON[, transport failure
/// reason: DETAIL]`; Envoy's details are then
/// `upstream_reset_before_response_started{REASON[,DETAIL]}` with spaces
/// made `_` (`StringUtil::replaceAllEmptySpace`).
fn reply_details(flags: ResponseFlags, body: &[u8], headers: &HeaderMap) -> (Cow<'static, str>, Option<String>) {
    const RESET: &str = "reset reason: ";
    const TRANSPORT: &str = ", transport failure reason: ";
    let body = String::from_utf8_lossy(body);
    if let Some(at) = body.find(RESET) {
        let reason = &body[at + RESET.len()..];
        let (reason, transport) = match reason.split_once(TRANSPORT) {
            Some((reason, transport)) => (reason, Some(transport.to_owned())),
            None => (reason, None),
        };
        let inner = match &transport {
            Some(transport) => format!("{reason},{transport}"),
            None => reason.to_owned(),
        };
        let details = format!("upstream_reset_before_response_started{{{}}}", inner.replace(' ', "_"));
        return (details.into(), transport);
    }
    let details: Cow<'static, str> = if flags.contains(ResponseFlags::NR) {
        "route_not_found".into()
    } else if flags.contains(ResponseFlags::NC) {
        "cluster_not_found".into()
    } else if flags.contains(ResponseFlags::UH) {
        "no_healthy_upstream".into()
    } else if flags.contains(ResponseFlags::UT) {
        "upstream_response_timeout".into()
    } else if flags.contains(ResponseFlags::FI) {
        "fault_filter_abort".into()
    } else if flags.contains(ResponseFlags::DPE) && !body.is_empty() {
        body.replace(' ', "_").into()
    } else if headers.contains_key(header::ACCESS_CONTROL_ALLOW_METHODS) {
        "cors_response".into()
    } else {
        "direct_response".into()
    };
    (details, None)
}

/// Where lines go: per-thread buffers, a flusher thread, stdout.
mod writer {
    use super::*;

    /// A buffer reaching this size is written out at once.
    pub(super) const FLUSH_SIZE: usize = 64 * 1024;
    /// How often the flusher writes every buffer out (Envoy's default
    /// `file_flush_interval`).
    const FLUSH_INTERVAL: Duration = Duration::from_secs(1);
    /// Full buffers waiting for the flusher before a request's thread
    /// writes its own (1 MiB).
    const QUEUE: usize = 16;

    /// One thread's lines not yet written. Locked by its thread for each
    /// line and by the flusher once a second: never contended on the
    /// request path.
    type Buffer = Arc<Mutex<Vec<u8>>>;

    /// What the flusher thread is sent.
    enum Message {
        /// A full buffer to write.
        Chunk(Vec<u8>),
        /// Write everything now, then answer.
        Flush(SyncSender<()>),
    }

    /// The buffers of every thread that logged, and the flusher's queue.
    struct Sink {
        buffers: Mutex<Vec<Buffer>>,
        /// `None` if the flusher thread could not start: lines are then
        /// written as they come.
        queue: Option<SyncSender<Message>>,
    }

    static SINK: OnceLock<Sink> = OnceLock::new();

    thread_local! {
        static PENDING: Buffer = register();
    }

    fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn sink() -> &'static Sink {
        SINK.get_or_init(|| {
            let (queue, chunks) = mpsc::sync_channel(QUEUE);
            let started =
                std::thread::Builder::new().name("meshd-access-log".into()).spawn(move || flusher(chunks)).is_ok();
            Sink { buffers: Mutex::new(Vec::new()), queue: started.then_some(queue) }
        })
    }

    fn register() -> Buffer {
        let buffer: Buffer = Arc::new(Mutex::new(Vec::with_capacity(FLUSH_SIZE)));
        lock(&sink().buffers).push(buffer.clone());
        buffer
    }

    /// Appends a line, formatted by `format`, to this thread's buffer.
    pub(super) fn append(format: impl FnOnce(&mut Vec<u8>)) {
        let mut format = Some(format);
        let buffered = PENDING.try_with(|pending| {
            let mut buffer = lock(pending);
            if let Some(format) = format.take() {
                format(&mut buffer);
            }
            if buffer.len() >= FLUSH_SIZE {
                let full = std::mem::replace(&mut *buffer, Vec::with_capacity(FLUSH_SIZE));
                // Handed off under the lock, so that the flusher, which
                // drains the queue before it takes a buffer, keeps this
                // thread's lines in order.
                hand_off(full);
            }
        });
        // The thread is exiting (its buffer is gone): write the line alone.
        if buffered.is_err() {
            if let Some(format) = format.take() {
                let mut line = Vec::new();
                format(&mut line);
                write_out(&line);
            }
        }
    }

    fn hand_off(chunk: Vec<u8>) {
        match &sink().queue {
            Some(queue) => match queue.try_send(Message::Chunk(chunk)) {
                Ok(()) => {}
                Err(TrySendError::Full(Message::Chunk(chunk)) | TrySendError::Disconnected(Message::Chunk(chunk))) => {
                    write_out(&chunk)
                }
                Err(_) => {}
            },
            None => write_out(&chunk),
        }
    }

    /// Writes every buffered line to stdout and returns once done (at
    /// most about a second): for shutdown.
    pub fn flush() {
        let Some(sink) = SINK.get() else { return };
        match &sink.queue {
            Some(queue) => {
                let (done, answer) = mpsc::sync_channel(1);
                if queue.send(Message::Flush(done)).is_ok() {
                    let _ = answer.recv_timeout(FLUSH_INTERVAL);
                }
            }
            None => {
                for buffer in lock(&sink.buffers).iter() {
                    let taken = std::mem::take(&mut *lock(buffer));
                    write_out(&taken);
                }
            }
        }
    }

    /// The flusher thread: writes full buffers as they come, and every
    /// buffer each [`FLUSH_INTERVAL`] or when asked.
    fn flusher(queue: Receiver<Message>) {
        let mut next = Instant::now() + FLUSH_INTERVAL;
        let mut spare = Vec::with_capacity(FLUSH_SIZE);
        let mut asked = Vec::new();
        loop {
            match queue.recv_timeout(next.saturating_duration_since(Instant::now())) {
                Ok(Message::Chunk(chunk)) => write_out(&chunk),
                Ok(Message::Flush(done)) => asked.push(done),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            if !asked.is_empty() || Instant::now() >= next {
                flush_buffers(&queue, &mut spare, &mut asked);
                next = Instant::now() + FLUSH_INTERVAL;
            }
            for done in asked.drain(..) {
                let _ = done.try_send(());
            }
        }
    }

    /// Writes out every thread's buffer, each after the full ones its
    /// thread queued before it (so a thread's lines stay in order).
    fn flush_buffers(queue: &Receiver<Message>, spare: &mut Vec<u8>, asked: &mut Vec<SyncSender<()>>) {
        let Some(sink) = SINK.get() else { return };
        let buffers = lock(&sink.buffers).clone();
        for buffer in &buffers {
            let mut queued = Vec::new();
            {
                let mut pending = lock(buffer);
                while let Ok(message) = queue.try_recv() {
                    match message {
                        Message::Chunk(chunk) => queued.push(chunk),
                        Message::Flush(done) => asked.push(done),
                    }
                }
                std::mem::swap(&mut *pending, spare);
            }
            for chunk in &queued {
                write_out(chunk);
            }
            write_out(spare);
            spare.clear();
        }
        drop(buffers);
        // Buffers of threads that have exited (only the list holds them),
        // now empty.
        lock(&sink.buffers).retain(|buffer| Arc::strong_count(buffer) > 1 || !lock(buffer).is_empty());
    }

    /// One write to stdout; errors (a closed pipe) are ignored, as a
    /// proxy must not stop for its log.
    fn write_out(bytes: &[u8]) {
        if !bytes.is_empty() {
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(bytes);
            let _ = stdout.flush();
        }
    }
}

pub use writer::flush;

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), port))
    }

    /// A proxied request with every field set.
    fn full_line<'a>(flags: &'a str) -> Line<'a> {
        Line {
            start_time: UNIX_EPOCH + Duration::from_millis(1_704_110_400_123),
            method: Some("GET"),
            path: Some("/reviews/1?x=1"),
            protocol: Some("HTTP/1.1"),
            response_code: 200,
            response_flags: flags,
            response_code_details: Some("via_upstream"),
            upstream_transport_failure_reason: None,
            bytes_received: 5,
            bytes_sent: 42,
            duration_ms: 7,
            upstream_service_time: Some(6),
            x_forwarded_for: None,
            user_agent: Some(b"curl/8.5.0"),
            request_id: Some(b"abc-123"),
            authority: Some(b"reviews:9080"),
            upstream_host: Some(addr(9080)),
            upstream_cluster: Some("outbound|9080|v1|reviews.default.svc.cluster.local"),
            upstream_local_address: None,
            downstream_local_address: Some(addr(15001)),
            downstream_remote_address: Some(addr(40000)),
            requested_server_name: None,
            route_name: Some("default"),
        }
    }

    fn text(line: &Line<'_>) -> String {
        let mut out = Vec::new();
        line.write_text(&mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn json(line: &Line<'_>) -> serde_json::Value {
        let mut out = Vec::new();
        line.write_json(&mut out);
        assert_eq!(out.last(), Some(&b'\n'));
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn start_time_is_utc_with_milliseconds() {
        let start_time = |ms| {
            let mut out = Vec::new();
            push_start_time(&mut out, UNIX_EPOCH + Duration::from_millis(ms));
            String::from_utf8(out).expect("utf-8")
        };
        assert_eq!(start_time(1_704_110_400_123), "2024-01-01T12:00:00.123Z");
        assert_eq!(start_time(1_709_251_199_007), "2024-02-29T23:59:59.007Z");
        assert_eq!(start_time(0), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn numbers_and_addresses_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 65_535, u64::MAX] {
            let mut out = Vec::new();
            push_u64(&mut out, n);
            assert_eq!(out, n.to_string().as_bytes());
        }
        for addr in ["10.0.0.1:80", "255.255.255.255:65535", "0.0.0.0:0", "[::1]:15001", "[fe80::1]:9080"] {
            let addr: SocketAddr = addr.parse().expect("address");
            let mut out = Vec::new();
            push_addr(&mut out, addr);
            assert_eq!(out, addr.to_string().as_bytes());
        }
    }

    #[test]
    fn text_follows_istio_format_string() {
        assert_eq!(
            text(&full_line("-")),
            "[2024-01-01T12:00:00.123Z] \"GET /reviews/1?x=1 HTTP/1.1\" 200 - via_upstream - \"-\" 5 42 7 6 \"-\" \
             \"curl/8.5.0\" \"abc-123\" \"reviews:9080\" \"10.0.0.1:9080\" \
             outbound|9080|v1|reviews.default.svc.cluster.local - 10.0.0.1:15001 10.0.0.1:40000 - default\n"
        );
    }

    #[test]
    fn text_prints_a_dash_for_missing_and_empty_values() {
        let line = Line {
            user_agent: Some(b""),
            request_id: None,
            upstream_host: None,
            upstream_cluster: None,
            upstream_service_time: None,
            route_name: None,
            response_code: 404,
            response_code_details: Some("route_not_found"),
            ..full_line("NR")
        };
        let text = text(&line);
        assert!(
            text.contains("\" 404 NR route_not_found - \"-\" 5 42 7 - \"-\" \"-\" \"-\" \"reviews:9080\" \"-\" - - ")
        );
        assert!(text.ends_with(" 10.0.0.1:40000 - -\n"), "{text}");
    }

    #[test]
    fn text_writes_values_as_they_are_inside_their_quotes() {
        // Envoy's text formatter escapes nothing: a quote stays a quote.
        let line = Line { user_agent: Some(br#"evil "agent""#), ..full_line("UF,URX") };
        let text = text(&line);
        assert!(text.contains(r#" "evil "agent"" "#), "{text}");
        assert!(text.contains("\" 200 UF,URX via_upstream "), "{text}");
    }

    #[test]
    fn tcp_lines_have_no_request_fields() {
        let line = Line {
            method: None,
            path: None,
            protocol: None,
            response_code: 0,
            response_code_details: None,
            upstream_service_time: None,
            user_agent: None,
            request_id: None,
            authority: None,
            route_name: None,
            ..full_line("-")
        };
        assert!(text(&line).starts_with("[2024-01-01T12:00:00.123Z] \"- - -\" 0 - - - \"-\" 5 42 7 - \"-\" \"-\""));
        let json = json(&line);
        assert_eq!(json["protocol"], "-");
        assert_eq!(json["response_code"], 0);
        assert!(json["method"].is_null());
    }

    #[test]
    fn json_has_istio_keys_typed_values_and_nulls() {
        let mut raw = Vec::new();
        full_line("-").write_json(&mut raw);
        let raw = String::from_utf8(raw).expect("utf-8");
        let json = json(&full_line("-"));
        let keys: Vec<&str> = json.as_object().expect("object").keys().map(String::as_str).collect();
        let positions: Vec<usize> =
            keys.iter().map(|k| raw.find(&format!("\"{k}\":")).expect("key in the line")).collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "keys in alphabetical order: {raw}");
        assert_eq!(
            keys,
            [
                "authority",
                "bytes_received",
                "bytes_sent",
                "connection_termination_details",
                "downstream_local_address",
                "downstream_remote_address",
                "duration",
                "method",
                "path",
                "protocol",
                "request_id",
                "requested_server_name",
                "response_code",
                "response_code_details",
                "response_flags",
                "route_name",
                "start_time",
                "upstream_cluster",
                "upstream_host",
                "upstream_local_address",
                "upstream_service_time",
                "upstream_transport_failure_reason",
                "user_agent",
                "x_forwarded_for",
            ]
        );
        assert_eq!(json["start_time"], "2024-01-01T12:00:00.123Z");
        assert_eq!(json["response_code"], 200);
        assert_eq!(json["bytes_received"], 5);
        assert_eq!(json["bytes_sent"], 42);
        assert_eq!(json["duration"], 7);
        assert_eq!(json["upstream_service_time"], "6");
        assert_eq!(json["response_flags"], "-");
        assert_eq!(json["upstream_host"], "10.0.0.1:9080");
        assert_eq!(json["downstream_remote_address"], "10.0.0.1:40000");
        assert_eq!(json["path"], "/reviews/1?x=1");
        assert!(json["x_forwarded_for"].is_null());
        assert!(json["requested_server_name"].is_null());
        assert!(json["connection_termination_details"].is_null());
    }

    #[test]
    fn json_escapes_quotes_backslashes_and_invalid_utf8() {
        let line = Line { user_agent: Some(b"a \"b\" \\c\t\xff"), ..full_line("-") };
        let json = json(&line);
        assert_eq!(json["user_agent"], "a \"b\" \\c\t\u{fffd}");
    }

    #[test]
    fn local_reply_details_follow_envoy() {
        let none = HeaderMap::new();
        let details = |flags, body: &str| reply_details(flags, body.as_bytes(), &none);
        assert_eq!(details(ResponseFlags::NR, "").0, "route_not_found");
        assert_eq!(details(ResponseFlags::NC, "").0, "cluster_not_found");
        assert_eq!(details(ResponseFlags::UH, "no healthy upstream").0, "no_healthy_upstream");
        assert_eq!(details(ResponseFlags::UT, "upstream request timeout").0, "upstream_response_timeout");
        assert_eq!(details(ResponseFlags::FI, "fault filter abort").0, "fault_filter_abort");
        assert_eq!(details(ResponseFlags::NONE, "").0, "direct_response");
        assert_eq!(details(ResponseFlags::DPE, "missing host header").0, "missing_host_header");
        let reset = LocalReply::upstream_reset(ResponseFlags::UF | ResponseFlags::URX, "connection failure", true);
        assert_eq!(
            reply_details(reset.flags, &reset.body, &none),
            (Cow::Borrowed("upstream_reset_before_response_started{connection_failure}"), None)
        );
        let overflow = LocalReply::overflow();
        assert_eq!(
            reply_details(overflow.flags, &overflow.body, &none).0,
            "upstream_reset_before_response_started{overflow}"
        );
        let tls = "upstream connect error or disconnect/reset before headers. reset reason: connection failure, \
                   transport failure reason: TLS error: bad certificate";
        assert_eq!(
            details(ResponseFlags::UF, tls),
            (
                Cow::Borrowed("upstream_reset_before_response_started{connection_failure,TLS_error:_bad_certificate}"),
                Some("TLS error: bad certificate".to_owned())
            )
        );
    }

    #[test]
    fn records_cost_nothing_when_off() {
        assert_eq!(std::mem::size_of::<Record>(), std::mem::size_of::<usize>());
        let req = Request::builder().uri("/").body(()).expect("request");
        let mut record = Record::begin(None, &req, 10);
        record.route(&Arc::from("r"));
        assert!(record.0.is_none());
        record.finish_local(404, ResponseFlags::NR, 10, 0, Duration::ZERO);
    }
}
