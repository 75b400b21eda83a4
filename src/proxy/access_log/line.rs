//! One access-log line: its values ([`Line`]), written as Envoy's text
//! format or Istio's JSON, and the small writers they use.

use super::*;

/// One line's values, whichever the format and protocol. Each field is
/// the Envoy command operator of its name; `None` prints `-` (text) or
/// `null` (JSON).
#[derive(Debug)]
pub(super) struct Line<'a> {
    /// `%START_TIME%`.
    pub(super) start_time: SystemTime,
    /// `%REQ(:METHOD)%`; `None` on TCP.
    pub(super) method: Option<&'a str>,
    /// `%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%`, query included.
    pub(super) path: Option<&'a str>,
    /// `%PROTOCOL%`: `HTTP/1.1`, `HTTP/2`; `None` on TCP.
    pub(super) protocol: Option<&'static str>,
    /// `%RESPONSE_CODE%`; 0 on TCP.
    pub(super) response_code: u16,
    /// `%RESPONSE_FLAGS%`: `-` or Envoy's short names.
    pub(super) response_flags: &'a str,
    /// `%RESPONSE_CODE_DETAILS%`: `via_upstream` or why meshd answered.
    pub(super) response_code_details: Option<&'a str>,
    /// `%UPSTREAM_TRANSPORT_FAILURE_REASON%`: a TLS handshake failure.
    pub(super) upstream_transport_failure_reason: Option<&'a str>,
    /// `%BYTES_RECEIVED%`: request body bytes (TCP: from the client).
    pub(super) bytes_received: u64,
    /// `%BYTES_SENT%`: response body bytes (TCP: to the client).
    pub(super) bytes_sent: u64,
    /// `%DURATION%`, in ms.
    pub(super) duration_ms: u64,
    /// `%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%`, in ms.
    pub(super) upstream_service_time: Option<u64>,
    /// `%REQ(X-FORWARDED-FOR)%`.
    pub(super) x_forwarded_for: Option<&'a [u8]>,
    /// `%REQ(USER-AGENT)%`.
    pub(super) user_agent: Option<&'a [u8]>,
    /// `%REQ(X-REQUEST-ID)%`.
    pub(super) request_id: Option<&'a [u8]>,
    /// `%REQ(:AUTHORITY)%`.
    pub(super) authority: Option<&'a [u8]>,
    /// `%UPSTREAM_HOST%`.
    pub(super) upstream_host: Option<SocketAddr>,
    /// `%UPSTREAM_CLUSTER_RAW%`.
    pub(super) upstream_cluster: Option<&'a str>,
    /// `%UPSTREAM_LOCAL_ADDRESS%`.
    pub(super) upstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_LOCAL_ADDRESS%`.
    pub(super) downstream_local_address: Option<SocketAddr>,
    /// `%DOWNSTREAM_REMOTE_ADDRESS%`.
    pub(super) downstream_remote_address: Option<SocketAddr>,
    /// `%REQUESTED_SERVER_NAME%`: the TLS SNI.
    pub(super) requested_server_name: Option<&'a str>,
    /// `%ROUTE_NAME%`.
    pub(super) route_name: Option<&'a str>,
}

// === impl Line ===

impl Line<'_> {
    pub(super) fn emit(&self, format: Format) {
        match format {
            Format::Off => {}
            Format::Text => writer::append(|out| self.write_text(out)),
            Format::Json => writer::append(|out| self.write_json(out)),
        }
    }

    /// Envoy's text format with Istio's format string, and a newline.
    /// Numbers, addresses and the time are written digit by digit:
    /// `core::fmt` took as many instructions as the rest of the line.
    pub(super) fn write_text(&self, out: &mut Vec<u8>) {
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
    pub(super) fn write_json(&self, out: &mut Vec<u8>) {
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
pub(super) struct JsonObject<'a> {
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
pub(super) fn push_u64(out: &mut Vec<u8>, n: u64) {
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
pub(super) fn push_2(out: &mut Vec<u8>, n: u8) {
    if n < 10 {
        out.push(b'0');
    }
    push_u64(out, n.into());
}

/// Appends `ip:port` (`[ip]:port` for IPv6, through `core::fmt`).
pub(super) fn push_addr(out: &mut Vec<u8>, addr: SocketAddr) {
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
pub(super) fn push_start_time(out: &mut Vec<u8>, time: SystemTime) {
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
pub(super) fn protocol(version: Version) -> &'static str {
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
pub(super) fn reply_details(
    flags: ResponseFlags,
    body: &[u8],
    headers: &HeaderMap,
) -> (Cow<'static, str>, Option<String>) {
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
