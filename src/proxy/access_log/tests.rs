use super::line::*;
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
    assert!(text.contains("\" 404 NR route_not_found - \"-\" 5 42 7 - \"-\" \"-\" \"-\" \"reviews:9080\" \"-\" - - "));
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
    let positions: Vec<usize> = keys.iter().map(|k| raw.find(&format!("\"{k}\":")).expect("key in the line")).collect();
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
