//! Hot reload while serving: by file write, by the Kubernetes ConfigMap
//! `..data` symlink flip, by explicit request (the SIGHUP path); refused
//! configurations keep the previous one serving. Each reload under load
//! runs 4 clients back to back and requires zero failed requests, and
//! that every request started after the reload was applied sees the new
//! routing.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::{Response, StatusCode};

/// The reviews service in `services.yaml` and its routes (everything to
/// `subset`) in `routes.yaml`.
fn files(v1: std::net::SocketAddr, v2: std::net::SocketAddr, subset: &str) -> [(&'static str, String); 2] {
    [("services.yaml", reviews_service(v1, v2)), ("routes.yaml", reviews_all_to(subset))]
}

/// A ready proxy whose config directory holds [`files`] routing reviews to
/// v1.
async fn reviews_mesh() -> Mesh {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    for (name, yaml) in files(v1, v2, "v1") {
        config.write(name, &yaml);
    }
    let mesh = Mesh::start(config).await;
    mesh.wait_ready().await;
    mesh
}

/// Asserts the shots of a reload from v1 to v2 that was seen applied at
/// `applied`: no failure; v1 before; only v2 for requests started after.
fn assert_switched(shots: &[Shot], applied: Instant) {
    assert_no_failures(shots);
    let before: Vec<&Shot> = shots.iter().filter(|s| s.started < applied).collect();
    let after: Vec<&Shot> = shots.iter().filter(|s| s.started >= applied).collect();
    assert!(by_upstream(before.iter().copied()).contains_key("reviews-v1"), "v1 served before the reload");
    assert!(after.len() >= 200, "only {} requests after the reload", after.len());
    assert_eq!(
        by_upstream(after.iter().copied()).into_iter().collect::<Vec<_>>(),
        vec![("reviews-v2".to_owned(), after.len())],
        "every request started after the reload was applied must use the new routing"
    );
    for client in 0..4 {
        assert!(after.iter().any(|s| s.client == client), "client {client} sent nothing after the reload");
    }
}

/// Scenario: rewriting a config file in place while 4 clients send requests
/// continuously: zero failed requests, the new routing takes effect, and
/// `meshd_config_reloads_total{result="applied"}` counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_file_write_under_load_has_zero_failures() {
    let mesh = reviews_mesh().await;
    let load = Load::start(mesh.addr, get("reviews", "/reload"), 4);
    load.wait_more(200).await;

    mesh.config.write("routes.yaml", &reviews_all_to("v2"));
    mesh.wait_reloads("applied", 2.0).await;
    let applied = Instant::now();
    load.wait_more(400).await;
    let shots = load.stop().await;

    assert_switched(&shots, applied);
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "rejected")]), 0.0);
    assert_eq!(m.sum("meshd_config_version", &[]), 2.0);
}

/// Scenario: a ConfigMap volume update (new timestamped directory, `..data`
/// symlink renamed over atomically, old directory removed) while 4 clients
/// send requests continuously: zero failed requests, new routing applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_by_configmap_data_symlink_flip_under_load_has_zero_failures() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    let [(s_name, s_yaml), (r_name, r_yaml)] = files(v1, v2, "v1");
    let mut configmap = ConfigMapDir::new(config.path(), &[(s_name, &s_yaml), (r_name, &r_yaml)]);
    let mesh = Mesh::start(config).await;
    mesh.wait_ready().await;
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v1"));
    let load = Load::start(mesh.addr, get("reviews", "/flip"), 4);
    load.wait_more(200).await;

    let [(s_name, s_yaml), (r_name, r_yaml)] = files(v1, v2, "v2");
    configmap.update(&[(s_name, &s_yaml), (r_name, &r_yaml)]);
    mesh.wait_reloads("applied", 2.0).await;
    let applied = Instant::now();
    load.wait_more(400).await;
    let shots = load.stop().await;

    assert_switched(&shots, applied);
    // The dump shows the new generation's content.
    let dump = mesh.admin("/config_dump").await.json();
    assert_eq!(dump["version"], 2);
    assert_eq!(
        dump["config"]["virtualServices"][0]["spec"]["http"][0]["route"][0]["destination"]["subset"], "v2",
        "{dump:#}"
    );
    assert_eq!(mesh.metrics().await.sum("meshd_config_reloads_total", &[("result", "rejected")]), 0.0);
}

/// Scenario: an invalid YAML file, then a configuration Istio's validation
/// refuses (negative weight): both are rejected and counted
/// (`meshd_config_reloads_total{result="rejected"}`), the previous routing
/// keeps serving every request, `/ready` stays 200 and the version stays;
/// then a valid file applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_reload_keeps_serving_the_previous_configuration() {
    let mesh = reviews_mesh().await;
    let load = Load::start(mesh.addr, get("reviews", "/refused"), 4);
    load.wait_more(100).await;

    mesh.config.write(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: reviews\nspec: [\n",
    );
    mesh.wait_reloads("rejected", 1.0).await;
    load.wait_more(200).await;
    let negative = virtual_service(
        "reviews",
        NS,
        &["reviews"],
        "- route:\n  - destination: {host: reviews, subset: v1}\n    weight: 50\n  - destination: {host: reviews, subset: v2}\n    weight: -1\n",
    );
    mesh.config.write("routes.yaml", &negative);
    mesh.wait_reloads("rejected", 2.0).await;
    load.wait_more(200).await;

    let ready = mesh.admin("/ready").await;
    assert_eq!(
        (ready.status, ready.text()),
        (StatusCode::OK, "ready\n".to_owned()),
        "a refused reload must not unready"
    );
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "applied")]), 1.0);
    assert_eq!(m.sum("meshd_config_version", &[]), 1.0);
    assert_eq!(mesh.admin("/config_dump").await.json()["version"], 1);

    mesh.config.write("routes.yaml", &reviews_all_to("v2"));
    mesh.wait_reloads("applied", 2.0).await;
    let applied = Instant::now();
    load.wait_more(200).await;
    let shots = load.stop().await;
    assert_no_failures(&shots);
    let before: Vec<&Shot> = shots.iter().filter(|s| s.started < applied).collect();
    // Requests that finished before the good file was even written were
    // all served by the first configuration.
    assert!(before.len() >= 500, "{}", before.len());
    assert!(
        by_upstream(before.iter().copied()).get("reviews-v1").is_some_and(|n| *n >= 500),
        "{:?}",
        by_upstream(before.iter().copied())
    );
    let after = by_upstream(shots.iter().filter(|s| s.started >= applied));
    assert_eq!(after.keys().collect::<Vec<_>>(), vec!["reviews-v2"], "{after:?}");
}

/// Scenario: with file watching off, an explicit reload (what SIGHUP does)
/// applies a changed configuration; reloading identical content counts as
/// `unchanged` and keeps the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_reload_applies_changes_and_skips_identical_content() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    for (name, yaml) in files(v1, v2, "v1") {
        config.write(name, &yaml);
    }
    let mut options = options(config.path());
    options.watch = false;
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v1"));

    mesh.config.write("routes.yaml", &reviews_all_to("v2"));
    mesh.server().reload();
    mesh.wait_reloads("applied", 2.0).await;
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v2"));

    mesh.server().reload();
    mesh.wait_reloads("unchanged", 1.0).await;
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "applied")]), 2.0);
    assert_eq!(m.sum("meshd_config_version", &[]), 2.0);
    assert_eq!(mesh.admin("/config_dump").await.json()["version"], 2);
}

/// Scenario: an invalid first configuration: meshd starts, `/ready` is 503
/// and every request gets 404; writing a valid file makes it ready and
/// routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_first_configuration_waits_for_a_valid_one() {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    config.write("services.yaml", &reviews_service(v1, v2));
    config.write("routes.yaml", "kind: VirtualService\napiVersion: networking.istio.io/v1\nmetadata: {name: r}\nspec: {hosts: [reviews], http: [{timeout: soon}]}\n");
    let mesh = Mesh::start(config).await;
    let ready = mesh.admin("/ready").await;
    assert_eq!((ready.status, ready.text()), (StatusCode::SERVICE_UNAVAILABLE, "not ready\n".to_owned()));
    assert_eq!(mesh.get("reviews", "/").await.status, StatusCode::NOT_FOUND);
    assert_eq!(mesh.metrics().await.sum("meshd_config_reloads_total", &[("result", "rejected")]), 1.0);

    mesh.config.write("routes.yaml", &reviews_all_to("v2"));
    mesh.wait_ready().await;
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v2"));
    assert_eq!(mesh.admin("/config_dump").await.json()["version"], 1);
}

/// Scenario: a reload that removes a cluster while a slow request to it is
/// in flight: the request still completes with 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_request_survives_a_reload_that_removes_its_cluster() {
    let (v1, v2) = reviews_upstreams().await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let slow = {
        let (client, req) = (mesh.client.clone(), get("reviews", "/slow?delay_ms=1000").build(mesh.addr, empty()));
        tokio::spawn(async move { send(&client, req).await })
    };
    let admin = mesh.admin;
    wait_for("the slow request to be in flight", Duration::from_secs(5), || {
        let client = mesh.client.clone();
        async move {
            let clusters = get_url(&client, admin, "/clusters").await.text();
            if clusters.contains("|v1|reviews.default.svc.cluster.local::") && clusters.contains("::rq_active::1") {
                Ok(())
            } else {
                Err(clusters)
            }
        }
    })
    .await;
    // Remove the service altogether.
    mesh.config.write("reviews.yaml", &simple_service("other", "other.example.com", v2));
    mesh.wait_reloads("applied", 2.0).await;
    assert_eq!(mesh.get("reviews", "/").await.status, StatusCode::NOT_FOUND, "the new table no longer serves reviews");
    let resp = tokio::time::timeout(REQUEST_TIMEOUT, slow).await.expect("slow request").expect("task");
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"));
}

/// Scenario: a reload that adds a `resolution: DNS` service swaps only once
/// its name has resolved (clusters are warmed): the first request after the
/// reload is applied already reaches the upstream, not 503 `UH`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_dns_cluster_is_warm_when_the_reload_applies() {
    let (v1, v2) = reviews_upstreams().await;
    let dns_echo = echo("dns-new").await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    let dns = object(
        "ServiceEntry",
        "named",
        NS,
        &format!(
            "hosts: [named.example.com]\nresolution: DNS\nports:\n- {{number: 80, name: http}}\nendpoints:\n- {{address: localhost, ports: {{http: {}}}}}\n",
            dns_echo.port()
        ),
    );
    mesh.config.write("reviews.yaml", &(reviews_service(v1, v2) + &reviews_all_to("v1") + &dns));
    mesh.wait_reloads("applied", 2.0).await;
    let resp = mesh.get("named.example.com", "/").await;
    assert_eq!(resp.status, StatusCode::OK, "first request after the reload: {}", resp.text());
    assert_eq!(resp.echo_name().as_deref(), Some("dns-new"));
}

/// Scenario: a reload that moves a subset to another endpoint takes effect
/// for the very next request, although the old endpoint still has a pooled
/// keep-alive connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_change_takes_effect_on_the_next_request() {
    let (v1, v2) = reviews_upstreams().await;
    let moved = echo("reviews-v1-moved").await;
    let mesh = Mesh::with(&(reviews_service(v1, v2) + &reviews_all_to("v1"))).await;
    for _ in 0..3 {
        assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v1"));
    }
    mesh.config.write("reviews.yaml", &(reviews_service(moved, v2) + &reviews_all_to("v1")));
    mesh.wait_reloads("applied", 2.0).await;
    let counts = mesh.tally(&get("reviews", "/"), 50, 2).await;
    assert_eq!(counts.into_iter().collect::<Vec<_>>(), vec![((200, "reviews-v1-moved".to_owned()), 50)]);
}

/// Scenario: a reload that changes another service leaves an unchanged
/// cluster alone: its pooled upstream connection is reused after the swap
/// (the upstream accepts exactly one connection for all requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_cluster_keeps_its_connections_across_a_swap() {
    let up = upstream(|_req| async { Response::new(full("ok")) }).await;
    let other = echo("other").await;
    let config = ConfigDir::new();
    config.write("kept.yaml", &simple_service("kept", "kept.example.com", up.addr));
    config.write("other.yaml", &simple_service("other", "other.example.com", other));
    let mesh = Mesh::start(config).await;
    mesh.wait_ready().await;
    for _ in 0..5 {
        assert_eq!(mesh.get("kept.example.com", "/before").await.status, StatusCode::OK);
    }

    let moved = echo("moved").await;
    mesh.config.write("other.yaml", &simple_service("other", "other.example.com", moved));
    mesh.wait_reloads("applied", 2.0).await;
    assert_eq!(mesh.get("other.example.com", "/").await.echo_name().as_deref(), Some("moved"));
    for _ in 0..5 {
        assert_eq!(mesh.get("kept.example.com", "/after").await.status, StatusCode::OK);
    }
    assert_eq!(
        up.connections.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the kept cluster must reuse its connection"
    );
}
