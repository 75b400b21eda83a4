//! A rule's actions over real sockets: `rewrite` (prefix, exact, regex,
//! authority), `redirect`, `directResponse`, `headers` at route and
//! destination level, and `fault` (delay and abort, with their flags and
//! percentages). Each test checks the status and headers the client sees
//! and what the upstream received, if anything.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

/// A `web` service (host `web`, port 80) on a recording upstream, routed
/// by the `http:` list `http`.
async fn web(http: &str) -> (Mesh, std::sync::Arc<std::sync::Mutex<Vec<Recorded>>>) {
    let (up, seen) = recording_upstream(&[("x-upstream", "yes"), ("x-drop-me", "1")]).await;
    let yaml = simple_service("web", "web", up.addr) + &virtual_service("web", NS, &["web"], http);
    (Mesh::with(&yaml).await, seen)
}

fn last(seen: &std::sync::Mutex<Vec<Recorded>>) -> Recorded {
    seen.lock().unwrap().last().cloned().expect("the upstream saw a request")
}

/// Scenario (scope 1): `rewrite.uri` replaces the matched prefix (query
/// kept, `x-envoy-original-path` set), the whole path of an exact match,
/// and every regex match with capture groups; `rewrite.authority` sets the
/// Host the upstream sees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_prefix_exact_regex_and_authority() {
    let http = "- match: [{uri: {prefix: /old}}]\n  rewrite: {uri: /new, authority: inside.example}\n  route: [{destination: {host: web}}]\n- match: [{uri: {exact: /exact}}]\n  rewrite: {uri: /whole}\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /service}}]\n  rewrite: {uriRegexRewrite: {match: \"^/service/([^/]+)(/.*)$\", rewrite: \"\\\\2/instance/\\\\1\"}}\n  route: [{destination: {host: web}}]\n- route: [{destination: {host: web}}]\n";
    let (mesh, seen) = web(http).await;

    let resp = mesh.get("web", "/old/page?q=1").await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let got = last(&seen);
    assert_eq!(got.uri.path_and_query().unwrap().as_str(), "/new/page?q=1");
    assert_eq!(got.headers["host"], "inside.example");
    assert_eq!(got.headers["x-envoy-original-path"], "/old/page?q=1");

    mesh.get("web", "/exact").await;
    assert_eq!(last(&seen).uri.path(), "/whole");
    assert_eq!(last(&seen).headers["host"], "web", "no authority rewrite on this rule");

    mesh.get("web", "/service/foo/v1/api").await;
    assert_eq!(last(&seen).uri.path(), "/v1/api/instance/foo");

    mesh.get("web", "/plain").await;
    let got = last(&seen);
    assert_eq!(got.uri.path(), "/plain");
    assert!(got.headers.get("x-envoy-original-path").is_none());
}

/// Scenario (scope 2): a redirect answers without calling the upstream:
/// 301 by default, the code asked for, `Location` from uri, authority,
/// scheme, port and the request's query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_builds_location_and_never_reaches_the_upstream() {
    let http = "- match: [{uri: {exact: /moved}}]\n  redirect: {uri: /here, authority: other.example}\n- match: [{uri: {prefix: /v1}}]\n  redirect: {prefixRewrite: /v2, redirectCode: 308, scheme: https, derivePort: FROM_REQUEST_PORT}\n- match: [{uri: {prefix: /port}}]\n  redirect: {port: 8443, scheme: https}\n  headers: {response: {set: {x-redirected: \"yes\"}}}\n- route: [{destination: {host: web}}]\n";
    let (mesh, seen) = web(http).await;

    let resp = mesh.get("web", "/moved?a=b").await;
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.header("location"), Some("http://other.example/here?a=b"));
    assert!(resp.body.is_empty());

    let resp = mesh.get("web:8080", "/v1/items").await;
    assert_eq!(resp.status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(resp.header("location"), Some("https://web:8080/v2/items"));

    let resp = mesh.get("web", "/port").await;
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.header("location"), Some("https://web:8443/port"));
    assert_eq!(resp.header("x-redirected"), Some("yes"), "response header operations apply to redirects");

    assert!(seen.lock().unwrap().is_empty(), "a redirect must not reach the upstream");
    mesh.wait_requests(&[("response_code", "301"), ("response_flags", "-")], 2.0).await;
}

/// Scenario (scope 3): direct responses with a string, base64 bytes and a
/// file read at load time; the rule's response headers set the type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_response_string_bytes_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("maintenance.html");
    std::fs::write(&file, "<h1>down for maintenance</h1>").unwrap();
    let http = format!(
        "- match: [{{uri: {{exact: /teapot}}}}]\n  directResponse: {{status: 418, body: {{string: \"short and stout\"}}}}\n- match: [{{uri: {{exact: /bytes}}}}]\n  directResponse: {{status: 200, body: {{bytes: aGVsbG8=}}}}\n- match: [{{uri: {{exact: /file}}}}]\n  directResponse: {{status: 503, body: {{file: {}}}}}\n  headers: {{response: {{set: {{content-type: text/html}}}}}}\n- match: [{{uri: {{exact: /empty}}}}]\n  directResponse: {{status: 204}}\n- route: [{{destination: {{host: web}}}}]\n",
        file.display()
    );
    let (mesh, seen) = web(&http).await;

    let resp = mesh.get("web", "/teapot").await;
    assert_eq!(resp.status.as_u16(), 418);
    assert_eq!(resp.text(), "short and stout");
    assert_eq!(resp.header("content-type"), Some("text/plain"));

    let resp = mesh.get("web", "/bytes").await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "hello"));

    let resp = mesh.get("web", "/file").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text(), "<h1>down for maintenance</h1>");
    assert_eq!(resp.header("content-type"), Some("text/html"));

    let resp = mesh.get("web", "/empty").await;
    assert_eq!(resp.status, StatusCode::NO_CONTENT);
    assert!(resp.body.is_empty());
    assert!(seen.lock().unwrap().is_empty(), "a direct response must not reach the upstream");
}

/// Scenario (scope 4): request and response `set`/`add`/`remove` at route
/// and destination level; with one destination the destination's `set`
/// wins, and a `host` set is an authority rewrite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_operations_at_route_and_destination_level() {
    let http = "- headers:\n    request:\n      set: {x-route: r, x-both: route, host: renamed.example}\n      add: {x-multi: \"2\"}\n      remove: [x-secret]\n    response:\n      set: {x-resp: route}\n      add: {x-resp-added: a}\n      remove: [x-drop-me]\n  route:\n  - destination: {host: web}\n    headers:\n      request: {set: {x-both: destination, x-dest: d}}\n      response: {set: {x-resp: destination}}\n";
    let (mesh, seen) = web(http).await;
    let resp = mesh.send(&get("web", "/h").header("x-secret", "s").header("x-multi", "1")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("x-upstream"), Some("yes"));
    assert!(resp.headers.get("x-drop-me").is_none(), "response remove");
    assert_eq!(resp.header("x-resp"), Some("destination"), "one destination: its set runs last");
    assert_eq!(resp.header("x-resp-added"), Some("a"));

    let got = last(&seen);
    assert!(got.headers.get("x-secret").is_none(), "request remove");
    assert_eq!(got.headers["x-route"], "r");
    assert_eq!(got.headers["x-both"], "destination");
    assert_eq!(got.headers["x-dest"], "d");
    let multi: Vec<_> = got.headers.get_all("x-multi").iter().map(|v| v.to_str().unwrap().to_owned()).collect();
    assert_eq!(multi, ["1", "2"], "add appends");
    assert_eq!(got.headers["host"], "renamed.example");
}

/// Scenario (scope 5): an abort at 100 % answers its status with `fault
/// filter abort` and flag `FI` without calling the upstream; a delay at
/// 100 % holds the request and flags `DI`; a fault without percentage
/// never fires.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_abort_and_delay_with_flags() {
    let http = "- match: [{uri: {prefix: /abort}}]\n  fault: {abort: {httpStatus: 503, percentage: {value: 100}}}\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /delay}}]\n  fault: {delay: {fixedDelay: 400ms, percentage: {value: 100}}}\n  timeout: 300ms\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /never}}]\n  fault: {abort: {httpStatus: 500}}\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /grpc}}]\n  fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}\n  route: [{destination: {host: web}}]\n";
    let (mesh, seen) = web(http).await;

    let resp = mesh.get("web", "/abort").await;
    assert_eq!(resp.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.text(), "fault filter abort");
    assert!(seen.lock().unwrap().is_empty(), "an aborted request must not reach the upstream");
    mesh.wait_requests(&[("response_code", "503"), ("response_flags", "FI"), ("destination_service_name", "web")], 1.0)
        .await;

    let started = Instant::now();
    let resp = mesh.get("web", "/delay").await;
    let took = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK, "the delay does not count against the 300 ms route timeout");
    assert!(took >= Duration::from_millis(400), "delayed only {took:?}");
    mesh.wait_requests(&[("response_code", "200"), ("response_flags", "DI")], 1.0).await;

    let resp = mesh.get("web", "/never").await;
    assert_eq!(resp.status, StatusCode::OK, "no percentage: never aborted");

    let resp = mesh.get("web", "/grpc").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("grpc-status"), Some("14"));
    assert_eq!(seen.lock().unwrap().len(), 2, "only /delay and /never reached the upstream");
}

/// Scenario (scope 5): abort and delay percentages hold within ±5 % over
/// 1,000 requests, sampled independently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_percentages_within_5_percent_over_1000_requests() {
    let echo = echo("web").await;
    let http = "- fault: {abort: {httpStatus: 500, percentage: {value: 30}}, delay: {fixedDelay: 1ms, percentage: {value: 50}}}\n  route: [{destination: {host: web}}]\n";
    let yaml = simple_service("web", "web", echo) + &virtual_service("web", NS, &["web"], http);
    let mesh = Mesh::with(&yaml).await;
    let counts = mesh.tally(&get("web", "/p"), 1000, 8).await;
    let aborted = counts.get(&(500, "-".into())).copied().unwrap_or(0);
    let passed = counts.get(&(200, "web".into())).copied().unwrap_or(0);
    assert_eq!(aborted + passed, 1000, "{counts:?}");
    assert!((250..=350).contains(&aborted), "aborted {aborted} of 1000 (expected 300 ± 50)");
    mesh.wait_requests(&[("destination_service_name", "web")], 1000.0).await;
    let m = mesh.metrics().await;
    let delayed = m.sum("istio_requests_total", &[("response_flags", "DI")])
        + m.sum("istio_requests_total", &[("response_flags", "DI,FI")]);
    assert!(
        (450.0..=550.0).contains(&delayed),
        "delayed {delayed} of 1000 (expected 500 ± 50):\n{}",
        m.show("istio_requests_total")
    );
}

/// Scenario (scope 7): a preflight from an allowed origin is answered by
/// meshd with the policy's headers; one from another origin is forwarded
/// (`unmatchedPreflights` default); an actual request from an allowed
/// origin gets the CORS response headers, from another origin none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_answered_and_response_headers_added() {
    let http = "- corsPolicy:\n    allowOrigins: [{exact: \"https://app.example\"}, {prefix: \"https://dev-\"}]\n    allowMethods: [GET, POST]\n    allowHeaders: [x-token]\n    exposeHeaders: [x-upstream]\n    maxAge: 1h\n    allowCredentials: true\n  route: [{destination: {host: web}}]\n";
    let (mesh, seen) = web(http).await;
    let preflight = get("web", "/api")
        .method(http::Method::OPTIONS)
        .header("origin", "https://dev-42.example")
        .header("access-control-request-method", "POST");
    let resp = mesh.send(&preflight).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://dev-42.example"));
    assert_eq!(resp.header("access-control-allow-methods"), Some("GET,POST"));
    assert_eq!(resp.header("access-control-allow-headers"), Some("x-token"));
    assert_eq!(resp.header("access-control-max-age"), Some("3600"));
    assert_eq!(resp.header("access-control-allow-credentials"), Some("true"));
    assert!(seen.lock().unwrap().is_empty(), "an allowed preflight is answered by the proxy");

    let other = get("web", "/api")
        .method(http::Method::OPTIONS)
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST");
    let resp = mesh.send(&other).await;
    assert_eq!(resp.header("x-upstream"), Some("yes"), "an unmatched preflight is forwarded");
    assert!(resp.headers.get("access-control-allow-origin").is_none());

    let resp = mesh.send(&get("web", "/api").header("origin", "https://app.example")).await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.header("access-control-allow-origin"), Some("https://app.example"));
    assert_eq!(resp.header("access-control-expose-headers"), Some("x-upstream"));
    let resp = mesh.send(&get("web", "/api").header("origin", "https://evil.example")).await;
    assert!(resp.headers.get("access-control-allow-origin").is_none());
    assert_eq!(seen.lock().unwrap().len(), 3);
}

/// Scenario (scope 6): `mirror` sends a copy (same path, headers and body,
/// Host unchanged) to the mirror service, whose response is dropped and
/// which shows in metrics as its own destination; `mirrorPercentage`
/// samples within ±5 % over 1,000 requests; a mirror that hangs or is
/// down never changes the main response nor makes it wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_copies_requests_fire_and_forget() {
    let (main, main_seen) = recording_upstream(&[]).await;
    let (shadow, shadow_seen) = recording_upstream(&[]).await;
    let hang = upstream(|_req| async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        http::Response::new(full("late"))
    })
    .await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], closed_port()));
    let http = "- match: [{uri: {prefix: /copy}}]\n  mirror: {host: shadow}\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /half}}]\n  mirrors: [{destination: {host: shadow}, percentage: {value: 50}}]\n  route: [{destination: {host: web}}]\n- match: [{uri: {prefix: /slow}}]\n  mirrors: [{destination: {host: hang}}, {destination: {host: dead}}]\n  route: [{destination: {host: web}}]\n- route: [{destination: {host: web}}]\n";
    let yaml = simple_service("web", "web", main.addr)
        + &simple_service("shadow", "shadow", shadow.addr)
        + &simple_service("hang", "hang", hang.addr)
        + &simple_service("dead", "dead", dead)
        + &virtual_service("web", NS, &["web"], http);
    let mesh = Mesh::with(&yaml).await;

    let req = get("web", "/copy/1?x=y").method(http::Method::POST).header("x-trace", "t1");
    let resp = send(&mesh.client, req.build(mesh.addr, full("payload"))).await;
    assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "recorded"));
    wait_until("the mirror got its copy", Duration::from_secs(5), || async { shadow_seen.lock().unwrap().len() == 1 })
        .await;
    let copy = last(&shadow_seen);
    assert_eq!(copy.method, http::Method::POST);
    assert_eq!(copy.uri.path_and_query().unwrap().as_str(), "/copy/1?x=y");
    assert_eq!(copy.headers["host"], "web", "Host unchanged, as current istiod sets it");
    assert_eq!(copy.headers["x-trace"], "t1");
    assert_eq!(&copy.body[..], b"payload");
    assert_eq!(&last(&main_seen).body[..], b"payload", "the upstream still gets the body");
    mesh.wait_requests(&[("destination_service_name", "shadow"), ("response_code", "200")], 1.0).await;

    let counts = mesh.tally(&get("web", "/half"), 1000, 8).await;
    assert_eq!(counts.get(&(200, "-".into())).copied(), Some(1000), "{counts:?}");
    mesh.wait_requests(&[("destination_service_name", "web")], 1001.0).await;
    // The copies are fire-and-forget: some may still be on their way once
    // every main response is in. Wait until they stop arriving.
    let mut settled = (0, 0);
    wait_until("the mirror copies settle", Duration::from_secs(5), || {
        let now = shadow_seen.lock().unwrap().len();
        let stable = now == settled.0;
        settled = (now, if stable { settled.1 + 1 } else { 0 });
        async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            stable && settled.1 >= 3
        }
    })
    .await;
    let mirrored = shadow_seen.lock().unwrap().len() - 1;
    // Binomial(1000, 0.5): ± 70 is 4.4 standard deviations.
    assert!((430..=570).contains(&mirrored), "mirrored {mirrored} of 1000 (expected 500 ± 70)");

    // The same upstream with and without a hanging and a dead mirror,
    // requests interleaved so both see the same machine: the medians stay
    // within a few milliseconds.
    let (mut plain, mut mirrored) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        for (path, times) in [("/plain", &mut plain), ("/slow", &mut mirrored)] {
            let started = Instant::now();
            let resp = mesh.get("web", path).await;
            assert_eq!((resp.status, resp.text().as_str()), (StatusCode::OK, "recorded"), "{path}");
            times.push(started.elapsed());
        }
    }
    plain.sort();
    mirrored.sort();
    let (plain, mirrored) = (plain[7], mirrored[7]);
    assert!(
        mirrored < plain + Duration::from_millis(10),
        "mirrors that hang or are down must not delay the request: median {mirrored:?} against {plain:?}"
    );
}

/// Scenario (scope 8): a root VirtualService delegates `/api` to a
/// delegate VirtualService (no hosts) in another namespace; the delegate's
/// routes apply under the root's match, inherit the root's header
/// operations, and a delegate route outside the root's match never
/// applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegate_routes_merge_under_the_root_rule() {
    let (v1, v2) = reviews_upstreams().await;
    let root = "- name: api\n  match: [{uri: {prefix: /api}}]\n  headers: {response: {set: {x-root: \"yes\"}}}\n  delegate: {name: reviews-api, namespace: team}\n- route: [{destination: {host: reviews, subset: v1}}]\n";
    let child = object(
        "VirtualService",
        "reviews-api",
        "team",
        "http:\n- name: v2\n  match: [{uri: {prefix: /api/v2}}]\n  route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]\n- name: stray\n  match: [{uri: {prefix: /elsewhere}}]\n  route: [{destination: {host: reviews.default.svc.cluster.local, subset: v2}}]\n",
    );
    let yaml = reviews_service(v1, v2) + &virtual_service("reviews", NS, &["reviews"], root) + &child;
    let mesh = Mesh::with(&yaml).await;
    let resp = mesh.get("reviews", "/api/v2/items").await;
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v2"));
    assert_eq!(resp.header("x-root"), Some("yes"), "the root rule's headers are inherited");
    let resp = mesh.get("reviews", "/api/v1/items").await;
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"), "no delegate route matches: the next root rule");
    assert!(resp.headers.get("x-root").is_none());
    let resp = mesh.get("reviews", "/elsewhere").await;
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"), "a delegate route outside /api never applies");
}

/// Scenario (scope 10): `meshd validate` refuses what Istio refuses in
/// these fields, one line per problem naming the resource and the field:
/// redirect with route, rewrite with redirect, a bad rewrite regex, a
/// fault percentage over 100, mirror and mirrors together, a delegate rule
/// that also routes, a direct response body file that does not exist.
#[test]
fn validate_refuses_bad_rule_actions_naming_each_field() {
    let http = "- name: both\n  redirect: {uri: /a}\n  route: [{destination: {host: web}}]\n- name: rewrite-and-redirect\n  redirect: {uri: /a}\n  rewrite: {uri: /b}\n- name: bad-regex\n  rewrite: {uriRegexRewrite: {match: \"(\", rewrite: x}}\n  route: [{destination: {host: web}}]\n- name: percent\n  fault: {abort: {httpStatus: 500, percentage: {value: 150}}}\n  route: [{destination: {host: web}}]\n- name: mirrors\n  mirror: {host: web}\n  mirrors: [{destination: {host: web}}]\n  route: [{destination: {host: web}}]\n- name: delegate\n  delegate: {name: other}\n  route: [{destination: {host: web}}]\n- name: file\n  directResponse: {status: 200, body: {file: /nonexistent/meshd/body.txt}}\n";
    let dir = ConfigDir::with(
        &(simple_service("web", "web", "127.0.0.1:1".parse().unwrap()) + &virtual_service("web", NS, &["web"], http)),
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("validate")
        .arg(dir.path())
        .output()
        .expect("run meshd validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    for field in [
        "spec.http[0]",
        "spec.http[1]",
        "spec.http[2].rewrite.uriRegexRewrite.match",
        "spec.http[3].fault.abort.percentage.value",
        "spec.http[4]",
        "spec.http[5].route",
        "spec.http[6].directResponse.body.file",
    ] {
        let prefix = format!("VirtualService default/web: {field}: ");
        assert!(stdout.lines().any(|l| l.contains(&prefix)), "no problem at {field}:\n{stdout}");
    }
}
