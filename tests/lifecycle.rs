//! The real binary as a child process: SIGTERM drains (an in-flight request
//! completes, `/ready` turns 503, the listener closes, exit code 0), SIGHUP
//! reloads, and `meshd validate` exit codes.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// Scenario: SIGTERM with a slow request in flight: `/ready` turns 503
/// `draining` and the listener stops accepting while the request is still
/// running; the request completes with 200; the process exits 0 soon after
/// (well before the 10 s drain timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_in_flight_request_and_exits_zero() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::with(&(reviews_service(v1, v2) + &reviews_all_to("v1")));
    let mut meshd = MeshdProcess::spawn(config.path(), &["--drain-timeout", "10s"]);
    let http = client();
    meshd.wait_ready(&http).await;
    let (addr, admin) = (meshd.addr, meshd.admin);

    // An idle keep-alive connection must not hold the drain up.
    let idle = client();
    assert_eq!(send(&idle, get("reviews", "/idle").build(addr, empty())).await.status, StatusCode::OK);
    let slow = {
        let (http, req) = (http.clone(), get("reviews", "/slow?delay_ms=1500").build(addr, empty()));
        tokio::spawn(async move { send(&http, req).await })
    };
    wait_for("the slow request to be in flight", Duration::from_secs(5), || {
        let http = http.clone();
        async move {
            let clusters = get_url(&http, admin, "/clusters").await.text();
            let active = format!("outbound|9080|v1|{REVIEWS}::{v1}::rq_active::1");
            if clusters.lines().any(|l| l == active) {
                Ok(())
            } else {
                Err(clusters)
            }
        }
    })
    .await;

    meshd.signal("TERM");
    let term = Instant::now();
    wait_for("/ready to answer 503 draining", Duration::from_secs(1), || {
        let http = http.clone();
        async move {
            let req = http::Request::builder().uri(format!("http://{admin}/ready")).body(empty()).unwrap();
            match try_send(&http, req).await {
                Ok(r) if r.status == StatusCode::SERVICE_UNAVAILABLE && r.text() == "draining\n" => Ok(()),
                Ok(r) => Err(format!("{} {:?}", r.status, r.text())),
                Err(e) => Err(e),
            }
        }
    })
    .await;
    wait_for("the proxy listener to refuse new connections", Duration::from_secs(1), || async move {
        match tokio::net::TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(!slow.is_finished(), "the slow request must still be in flight while draining");

    let resp = tokio::time::timeout(REQUEST_TIMEOUT, slow).await.expect("slow request").expect("task");
    assert_eq!(resp.status, StatusCode::OK, "the in-flight request completes: {}", resp.text());
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"));
    assert_eq!(resp.json()["path"], "/slow");

    let status = meshd.wait_exit(Duration::from_secs(8)).await;
    assert_eq!(status.code(), Some(0), "meshd must exit 0 after draining; log:\n{}", meshd.logs());
    let took = term.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "drain took {took:?}: it must end when the last request does, not at the timeout"
    );
}

/// An HTTP/2 prior-knowledge connection to `addr`.
async fn h2(addr: std::net::SocketAddr) -> hyper::client::conn::http2::SendRequest<TestBody> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let io = hyper_util::rt::TokioIo::new(stream);
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.expect("h2 handshake");
    tokio::spawn(conn);
    send
}

/// Scenario (in-process): `shutdown()` while an HTTP/2 stream and an
/// HTTP/1.1 request are in flight: both complete with 200, `/ready` says
/// `draining` meanwhile, and `wait()` returns once they are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_http1_and_http2_requests_in_flight() {
    let (v1, v2) = reviews_upstreams().await;
    let mut mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v2"))).await;
    let mut h2_conn = h2(mesh.addr).await;
    let h2_slow = tokio::spawn(async move {
        let req = http::Request::builder().uri("http://reviews/h2?delay_ms=800").body(empty()).unwrap();
        let resp = h2_conn.send_request(req).await.expect("h2 response");
        let status = resp.status();
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.expect("h2 body").to_bytes();
        (status, body)
    });
    let h1_slow = {
        let (http, req) = (mesh.client.clone(), get("reviews", "/h1?delay_ms=800").build(mesh.addr, empty()));
        tokio::spawn(async move { send(&http, req).await })
    };
    let admin = mesh.admin;
    let http = mesh.client.clone();
    let line = format!("outbound|9080|v2|{REVIEWS}::{v2}::rq_active::2");
    wait_clusters_line(&http, admin, "both requests in flight", line).await;
    let server = mesh.server.take().expect("server");
    server.shutdown();
    let started = Instant::now();
    let ready = get_url(&http, admin, "/ready").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::SERVICE_UNAVAILABLE, "draining\n".to_owned()));
    tokio::time::timeout(Duration::from_secs(4), server.wait()).await.expect("wait() must return once drained");
    assert!(started.elapsed() < Duration::from_secs(3), "drained in {:?}", started.elapsed());
    let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, h2_slow).await.expect("h2 stream").expect("task");
    assert_eq!(status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&body).contains(r#""path":"/h2""#));
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, h1_slow).await.expect("h1 request").expect("task");
    assert_eq!(resp.status, StatusCode::OK);
}

/// Scenario (in-process): a request longer than the drain timeout does not
/// hold shutdown up: `wait()` returns at about the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_timeout_bounds_shutdown() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::with(&(reviews_service(v1, v2) + &reviews_all_to("v1")));
    let mut options = options(config.path());
    options.drain_timeout = Duration::from_millis(300);
    let mut mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    let stuck = {
        let (http, req) = (mesh.client.clone(), get("reviews", "/stuck?delay_ms=5000").build(mesh.addr, empty()));
        tokio::spawn(async move { try_send(&http, req).await })
    };
    let (admin, http) = (mesh.admin, mesh.client.clone());
    wait_for("the request in flight", Duration::from_secs(5), || {
        let http = http.clone();
        async move {
            let clusters = get_url(&http, admin, "/clusters").await.text();
            if clusters.contains("::rq_active::1") {
                Ok(())
            } else {
                Err(clusters)
            }
        }
    })
    .await;
    let server = mesh.server.take().expect("server");
    let started = Instant::now();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(3), server.wait())
        .await
        .expect("wait() must return after the drain timeout");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "shutdown took {took:?} with a 300 ms drain timeout"
    );
    drop(stuck);
}

/// Scenario: with file watching off, SIGHUP reloads the configuration; a
/// later SIGTERM with nothing in flight exits 0 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_configuration() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::with(&(reviews_service(v1, v2) + &reviews_all_to("v1")));
    let mut meshd = MeshdProcess::spawn(config.path(), &["--no-watch"]);
    let http = client();
    meshd.wait_ready(&http).await;
    let addr = meshd.addr;
    assert_eq!(send(&http, get("reviews", "/").build(addr, empty())).await.echo_name().as_deref(), Some("reviews-v1"));

    config.write("reviews.yaml", &(reviews_service(v1, v2) + &reviews_all_to("v2")));
    meshd.signal("HUP");
    wait_for("routing to switch to v2 after SIGHUP", Duration::from_secs(5), || {
        let http = http.clone();
        async move {
            let resp = send(&http, get("reviews", "/").build(addr, empty())).await;
            match resp.echo_name().as_deref() {
                Some("reviews-v2") => Ok(()),
                other => Err(format!("{} {other:?}", resp.status)),
            }
        }
    })
    .await;
    let metrics = Prom::parse(&get_url(&http, meshd.admin, "/stats/prometheus").await.text());
    assert_eq!(metrics.sum("meshd_config_reloads_total", &[("result", "applied")]), 2.0);

    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", meshd.logs());
}

/// Scenario: `meshd run` re-executes itself once with glibc's mmap
/// threshold fixed (so freed large blocks return to the system), keeping
/// its PID, arguments and behaviour.
#[tokio::test]
async fn run_fixes_the_malloc_mmap_threshold_in_its_own_environment() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::with(&(reviews_service(v1, v2) + &reviews_all_to("v1")));
    let mut meshd = MeshdProcess::spawn(config.path(), &["--no-watch"]);
    let http = client();
    meshd.wait_ready(&http).await;
    let environ = std::fs::read(format!("/proc/{}/environ", meshd.pid())).expect("read environ");
    let vars: Vec<&[u8]> = environ.split(|b| *b == 0).collect();
    assert!(
        vars.contains(&&b"GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072"[..]),
        "the running process (same PID as spawned) has the tunable"
    );
    let resp = send(&http, get("reviews", "/").build(meshd.addr, empty())).await;
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"));
    meshd.signal("TERM");
    let status = meshd.wait_exit(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "log:\n{}", meshd.logs());
}

/// Scenario: `meshd validate` exits 0 on a valid configuration and 1 on an
/// invalid one, printing the problem with file, resource and field path.
#[test]
fn validate_command_exit_codes_and_messages() {
    let good = ConfigDir::with(
        &(reviews_service(([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into()) + &reviews_demo_routes()),
    );
    let out =
        Command::new(env!("CARGO_BIN_EXE_meshd")).arg("validate").arg(good.path()).output().expect("run validate");
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let bad = ConfigDir::with(&virtual_service(
        "bad",
        NS,
        &["reviews"],
        "- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 50\n  - destination: {host: reviews, subset: v2}\n    weight: -1\n",
    ));
    let out = Command::new(env!("CARGO_BIN_EXE_meshd")).arg("validate").arg(bad.path()).output().expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout: {stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("reviews.yaml: VirtualService default/bad: spec.http[0].route[1].weight")),
        "the problem names file, resource and field: {stdout}"
    );
}
