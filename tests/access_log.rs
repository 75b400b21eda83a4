//! The access log of the real binary (`meshd run --access-log text|json`),
//! read from its stdout: a proxied request (200), one with no route (404
//! `NR`) and a TCP connection, field by field; lines still buffered at
//! SIGTERM are written before exit; `off` (the default) writes nothing.

mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use http::{Method, Response, StatusCode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::ChildStdout;

/// How long a line may take to appear (meshd flushes every second).
const LINE_DEADLINE: Duration = Duration::from_secs(5);
const RATINGS: &str = "ratings.default.svc.cluster.local";
const RATINGS_CLUSTER: &str = "outbound|80||ratings.default.svc.cluster.local";
/// What the upstream answers: 13 body bytes.
const ANSWER: &str = "hello ratings";

/// An HTTP upstream answering [`ANSWER`], and a TCP one answering `db:` and
/// what it read once the client half-closed.
async fn upstreams() -> (SocketAddr, SocketAddr) {
    let http = upstream(|_req| async { Response::new(full(ANSWER)) }).await;
    (http.addr, tcp_upstream("db").await)
}

/// `ratings` (HTTP, port 80) and `db` (TCP, port 5432), one endpoint each,
/// no VirtualService (their `default` routes).
fn config(http: SocketAddr, tcp: SocketAddr) -> ConfigDir {
    let db = service_entry("db", NS, &["db"], 5432, &[ep(tcp, &[])])
        .replace("protocol: HTTP", "protocol: TCP")
        .replace("name: http", "name: tcp")
        .replace("{http:", "{tcp:");
    ConfigDir::with(&(simple_service("ratings", RATINGS, http) + &db))
}

/// Starts meshd with `extra` arguments, its stdout piped; waits until ready.
async fn start(config: &ConfigDir, extra: &[&str]) -> (MeshdProcess, Lines<BufReader<ChildStdout>>) {
    let mut meshd = MeshdProcess::spawn_with_stdout(config.path(), extra, Stdio::piped());
    let stdout = meshd.child.stdout.take().expect("piped stdout");
    let stdout = ChildStdout::from_std(stdout).expect("async stdout");
    meshd.wait_ready(&client()).await;
    (meshd, BufReader::new(stdout).lines())
}

/// The proxied request: a 5-byte POST with a query, request id, user agent
/// and `x-forwarded-for`.
fn proxied_request(request_id: &str) -> Req {
    get(RATINGS, "/reviews/1?x=1")
        .method(Method::POST)
        .header("x-request-id", request_id)
        .header("user-agent", "access-log-test/1")
        .header("x-forwarded-for", "203.0.113.7")
}

/// Sends the proxied request and one with no route; checks the answers.
async fn send_both(addr: SocketAddr, proxied_id: &str, no_route_id: &str) {
    let http = client();
    let ok = send(&http, proxied_request(proxied_id).build(addr, full("12345"))).await;
    assert_eq!((ok.status, ok.text()), (StatusCode::OK, ANSWER.to_owned()));
    let req = get("nowhere.example", "/missing").header("x-request-id", no_route_id);
    assert_eq!(send(&http, req.build(addr, empty())).await.status, StatusCode::NOT_FOUND);
}

/// Reads lines until one contains each of `needles` (in any order), within
/// [`LINE_DEADLINE`]; returns them in `needles` order.
async fn lines_with(stdout: &mut Lines<BufReader<ChildStdout>>, needles: &[&str]) -> Vec<String> {
    let mut found: Vec<Option<String>> = vec![None; needles.len()];
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + LINE_DEADLINE;
    while found.iter().any(Option::is_none) {
        let line = match tokio::time::timeout_at(deadline, stdout.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => panic!("no access-log line with each of {needles:?} ({other:?}); lines seen: {seen:#?}"),
        };
        for (needle, slot) in needles.iter().zip(found.iter_mut()) {
            if slot.is_none() && line.contains(needle) {
                *slot = Some(line.clone());
            }
        }
        seen.push(line);
    }
    found.into_iter().flatten().collect()
}

/// The fields of a text line: `[…]`, `"…"` or space-separated words (the
/// test's values hold no quotes).
fn fields(line: &str) -> Vec<&str> {
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start_matches(' ');
        let (field, tail) = match rest.as_bytes().first() {
            None => return fields,
            Some(b'[') => rest[1..].split_once(']').expect("closing ]"),
            Some(b'"') => rest[1..].split_once('"').expect("closing quote"),
            Some(_) => rest.split_once(' ').unwrap_or((rest, "")),
        };
        fields.push(field);
        rest = tail;
    }
}

/// Checks `[%START_TIME%]`'s shape: `2024-01-01T12:00:00.000Z`.
fn assert_start_time(text: &str) {
    let shape: String = text.chars().map(|c| if c.is_ascii_digit() { 'd' } else { c }).collect();
    assert_eq!(shape, "dddd-dd-ddTdd:dd:dd.dddZ", "start time {text:?}");
}

/// Scenario: `--access-log text` writes Istio's default format: the
/// proxied POST with its path and query, 200, no flags, `via_upstream`,
/// body bytes both ways, the client's headers, the endpoint, cluster,
/// addresses and the `default` route; the unrouted GET with 404 `NR`
/// `route_not_found` and `-` for everything upstream; the TCP connection
/// with its byte counts and upstream addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_lines_follow_istio_default_format() {
    let (http, tcp) = upstreams().await;
    let config = config(http, tcp);
    let tcp_listen = free_addr();
    let tcp_arg = format!("tcp://{tcp_listen}=db");
    let (meshd, mut stdout) = start(&config, &["--access-log", "text", "--listen", &tcp_arg]).await;
    send_both(meshd.addr, "req-ok-1", "req-nr-2").await;
    let mut conn = TcpStream::connect(tcp_listen).await.expect("connect to the TCP listener");
    conn.write_all(b"ping").await.expect("write");
    conn.shutdown().await.expect("half-close");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("read the answer");
    assert_eq!(answer, "db:ping");

    let lines = lines_with(&mut stdout, &["req-ok-1", "req-nr-2", "\"- - -\""]).await;
    let listen = meshd.addr.to_string();

    let ok = fields(&lines[0]);
    assert_eq!(ok.len(), 22, "{ok:?}");
    assert_start_time(ok[0]);
    assert_eq!(
        ok[1..17],
        [
            "POST /reviews/1?x=1 HTTP/1.1",
            "200",
            "-",
            "via_upstream",
            "-",
            "-",
            "5",
            "13",
            ok[9],
            ok[10],
            "203.0.113.7",
            "access-log-test/1",
            "req-ok-1",
            RATINGS,
            &http.to_string(),
            RATINGS_CLUSTER,
        ],
        "{}",
        lines[0]
    );
    ok[9].parse::<u64>().expect("duration in ms");
    ok[10].parse::<u64>().expect("upstream service time in ms");
    assert_eq!(ok[17..], ["-", &listen, ok[19], "-", "default"], "{}", lines[0]);
    assert!(ok[19].starts_with("127.0.0.1:"), "downstream remote address {}", ok[19]);

    let nr = fields(&lines[1]);
    assert_eq!(nr.len(), 22, "{nr:?}");
    assert_start_time(nr[0]);
    assert_eq!(
        nr[1..],
        [
            "GET /missing HTTP/1.1",
            "404",
            "NR",
            "route_not_found",
            "-",
            "-",
            "0",
            "0",
            nr[9],
            "-",
            "-",
            "-",
            "req-nr-2",
            "nowhere.example",
            "-",
            "-",
            "-",
            &listen,
            nr[19],
            "-",
            "-",
        ],
        "{}",
        lines[1]
    );

    let tcp_line = fields(&lines[2]);
    assert_eq!(tcp_line.len(), 22, "{tcp_line:?}");
    assert_eq!(tcp_line[1..9], ["- - -", "0", "-", "-", "-", "-", "4", "7"], "{}", lines[2]);
    assert_eq!(tcp_line[15], tcp.to_string(), "{}", lines[2]);
    assert!(tcp_line[16].starts_with("outbound|5432||"), "{}", lines[2]);
    assert!(tcp_line[17].starts_with("127.0.0.1:"), "upstream local address: {}", lines[2]);
    assert_eq!(tcp_line[18], tcp_listen.to_string(), "{}", lines[2]);
}

/// Scenario: `--access-log json` writes one object a line with Istio's
/// keys, numbers for code, bytes and duration, `null` for what is missing,
/// a generated request id when the client sent none; SIGTERM right after
/// the requests still gets every line out before meshd exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_istio_keys_and_are_flushed_at_exit() {
    let (http, tcp) = upstreams().await;
    let config = config(http, tcp);
    let (mut meshd, mut stdout) = start(&config, &["--access-log", "json"]).await;
    send_both(meshd.addr, "req-ok-3", "req-nr-4").await;
    let anonymous = get(RATINGS, "/anonymous");
    assert_eq!(send(&client(), anonymous.build(meshd.addr, empty())).await.status, StatusCode::OK);
    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", meshd.logs());
    let mut lines = Vec::new();
    while let Some(line) = stdout.next_line().await.expect("read stdout") {
        lines.push(serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{e}: {line}")));
    }
    assert_eq!(lines.len(), 3, "{lines:#?}");
    let by_path = |path: &str| {
        lines.iter().find(|l| l["path"] == path).unwrap_or_else(|| panic!("no line for {path}: {lines:#?}"))
    };

    let ok = by_path("/reviews/1?x=1");
    assert_eq!(ok.as_object().expect("object").len(), 24, "{ok:#}");
    assert_eq!(ok["method"], "POST");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["response_code"], 200);
    assert_eq!(ok["response_flags"], "-");
    assert_eq!(ok["response_code_details"], "via_upstream");
    assert_eq!(ok["bytes_received"], 5);
    assert_eq!(ok["bytes_sent"], 13);
    assert!(ok["duration"].is_u64(), "{ok:#}");
    assert!(ok["upstream_service_time"].as_str().is_some_and(|t| t.parse::<u64>().is_ok()), "{ok:#}");
    assert_eq!(ok["x_forwarded_for"], "203.0.113.7");
    assert_eq!(ok["user_agent"], "access-log-test/1");
    assert_eq!(ok["request_id"], "req-ok-3");
    assert_eq!(ok["authority"], RATINGS);
    assert_eq!(ok["upstream_host"], http.to_string());
    assert_eq!(ok["upstream_cluster"], RATINGS_CLUSTER);
    assert_eq!(ok["downstream_local_address"], meshd.addr.to_string());
    assert!(ok["downstream_remote_address"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{ok:#}");
    assert_eq!(ok["route_name"], "default");
    assert_start_time(ok["start_time"].as_str().expect("start_time string"));
    for missing in ["upstream_local_address", "requested_server_name", "upstream_transport_failure_reason"] {
        assert!(ok[missing].is_null(), "{missing}: {ok:#}");
    }

    let nr = by_path("/missing");
    assert_eq!(nr["response_code"], 404);
    assert_eq!(nr["response_flags"], "NR");
    assert_eq!(nr["response_code_details"], "route_not_found");
    assert_eq!(nr["request_id"], "req-nr-4");
    assert_eq!(nr["authority"], "nowhere.example");
    assert_eq!((&nr["bytes_received"], &nr["bytes_sent"]), (&0.into(), &0.into()));
    for missing in ["upstream_host", "upstream_cluster", "upstream_service_time", "route_name", "user_agent"] {
        assert!(nr[missing].is_null(), "{missing}: {nr:#}");
    }

    // No x-request-id from the client: the one meshd generated.
    let generated = by_path("/anonymous")["request_id"].as_str().expect("a request id").to_owned();
    assert_eq!(generated.len(), 36, "a UUID: {generated}");
}

/// Scenario: without `--access-log`, nothing is written to stdout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_by_default_writes_nothing() {
    let (http, tcp) = upstreams().await;
    let config = config(http, tcp);
    let (mut meshd, mut stdout) = start(&config, &[]).await;
    send_both(meshd.addr, "req-ok-5", "req-nr-6").await;
    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", meshd.logs());
    assert_eq!(stdout.next_line().await.expect("read stdout"), None, "stdout must stay empty");
}
