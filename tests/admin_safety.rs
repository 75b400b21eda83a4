//! Admin and identity safety: the admin API binds loopback by default,
//! changes nothing unless `--admin-allow-mutations` is given (then
//! `POST /reload` and `POST /drain` act as SIGHUP and SIGTERM do),
//! `/config_dump` shows key file paths and never key material, and
//! world-readable private key files are warned about by name.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use common::pki::Pki;
use common::*;
use http::{Method, Request, StatusCode};

async fn post(mesh: &Mesh, path: &str) -> Resp {
    let req =
        Request::builder().method(Method::POST).uri(format!("http://{}{path}", mesh.admin)).body(empty()).unwrap();
    send(&mesh.client, req).await
}

/// meshd on a directory routing reviews to v1, file watching off (so only
/// an explicit reload applies a change), mutations as given.
async fn reviews_mesh(allow_mutations: bool) -> Mesh {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    config.write("services.yaml", &reviews_service(v1, v2));
    config.write("routes.yaml", &reviews_all_to("v1"));
    let mut opts = options(config.path());
    opts.watch = false;
    opts.admin_allow_mutations = allow_mutations;
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    mesh
}

async fn served_by(mesh: &Mesh) -> Option<String> {
    mesh.get("reviews", "/").await.echo_name()
}

/// Scenario: `meshd run`'s admin address defaults to loopback, and a
/// started server's admin socket is on loopback.
#[tokio::test]
async fn admin_binds_loopback_by_default() {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd")).args(["run", "--help"]).output().expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("[default: 127.0.0.1:15000]"), "{help}");
    assert!(help.contains("--admin-allow-mutations"), "{help}");
    let mesh = reviews_mesh(false).await;
    assert!(mesh.admin.ip().is_loopback(), "{}", mesh.admin);
}

/// Scenario: without the flag, `POST /reload` and `POST /drain` answer 403
/// and change nothing: a changed file is not applied, `/ready` stays 200
/// and the proxy keeps serving; other methods on them answer 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_are_forbidden_without_the_flag() {
    let mesh = reviews_mesh(false).await;
    mesh.config.write("routes.yaml", &reviews_all_to("v2"));

    let reload = post(&mesh, "/reload").await;
    assert_eq!(reload.status, StatusCode::FORBIDDEN);
    assert!(reload.text().contains("--admin-allow-mutations"), "{}", reload.text());
    let drain = post(&mesh, "/drain").await;
    assert_eq!(drain.status, StatusCode::FORBIDDEN);
    assert_eq!(mesh.admin("/reload").await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(mesh.admin("/drain").await.status, StatusCode::METHOD_NOT_ALLOWED);

    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[]), 1.0, "only the first load");
    assert_eq!(m.sum("meshd_config_version", &[]), 1.0);
    assert_eq!(mesh.admin("/ready").await.status, StatusCode::OK);
    assert_eq!(served_by(&mesh).await.as_deref(), Some("reviews-v1"));
}

/// Scenario: with the flag, `POST /reload` applies a changed file (as
/// SIGHUP does) and `POST /drain` starts the drain (`/ready` 503) and ends
/// the signal loop, so the process exits as after SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_with_the_flag_reload_and_drain() {
    let mut mesh = reviews_mesh(true).await;
    mesh.config.write("routes.yaml", &reviews_all_to("v2"));
    assert_eq!(post(&mesh, "/reload").await.status, StatusCode::ACCEPTED);
    mesh.wait_reloads("applied", 2.0).await;
    assert_eq!(served_by(&mesh).await.as_deref(), Some("reviews-v2"));

    let server = mesh.server.take().expect("server");
    let driven = tokio::spawn(meshd::signals::drive(server));
    assert_eq!(post(&mesh, "/drain").await.status, StatusCode::ACCEPTED);
    tokio::time::timeout(Duration::from_secs(10), driven)
        .await
        .expect("POST /drain ends the run like SIGTERM")
        .expect("drive task");
}

/// Scenario: a Gateway terminating TLS with key files and a
/// `credentialName`, and a DestinationRule originating mutual TLS with a
/// client key: `/config_dump` names the key files and holds no key
/// material.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_dump_shows_key_paths_never_key_material() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("front", &["a.example"]);
    let (client_cert, client_key) = pki.leaf("client", &["client"]);
    let credentials = Pki::credentials_dir("cred", &cert, &key);
    let up = echo("web").await;
    let port = closed_port();
    let yaml = simple_service("web", "web", up)
        + &object(
            "Gateway",
            "front",
            NS,
            &format!(
                "servers:\n- port: {{number: {port}, name: https-a, protocol: HTTPS}}\n  hosts: [a.example]\n  tls: {{mode: SIMPLE, serverCertificate: {cert}, privateKey: {key}}}\n- port: {{number: {port}, name: https-b, protocol: HTTPS}}\n  hosts: [b.example]\n  tls: {{mode: SIMPLE, credentialName: cred}}\n"
            ),
        )
        + &object(
            "DestinationRule",
            "web-mtls",
            NS,
            &format!(
                "host: web\ntrafficPolicy:\n  tls: {{mode: MUTUAL, clientCertificate: {client_cert}, privateKey: {client_key}, caCertificates: {ca}}}\n",
                ca = pki.path("ca.pem")
            ),
        );
    let config = ConfigDir::with(&yaml);
    let mut opts = options(config.path());
    opts.credentials_dir = Some(credentials.path().to_path_buf());
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;

    let dump = mesh.admin("/config_dump").await;
    assert_eq!(dump.status, StatusCode::OK);
    let text = dump.text();
    assert!(text.contains(&key) && text.contains(&client_key), "the dump names the key files:\n{text}");
    assert!(text.contains("\"credentialName\":\"cred\""), "{text}");
    assert!(!text.contains("PRIVATE KEY"), "key material in the dump:\n{text}");
    for pem in [&key, &client_key] {
        let material = std::fs::read_to_string(pem).unwrap();
        let body = material.lines().find(|l| !l.starts_with("-----")).unwrap();
        assert!(!text.contains(body), "key bytes of {pem} in the dump");
    }
}

/// Scenario: a DestinationRule's client key file readable by anyone
/// (0644) is warned about by name (`meshd validate` still succeeds); at
/// 0600 it is not.
#[test]
fn world_readable_keys_are_warned_about_by_name() {
    let pki = Pki::new();
    let (cert, key) = pki.leaf("client", &["client"]);
    let yaml = object(
        "DestinationRule",
        "web-mtls",
        NS,
        &format!("host: web\ntrafficPolicy:\n  tls: {{mode: MUTUAL, clientCertificate: {cert}, privateKey: {key}}}\n"),
    );
    let config = ConfigDir::with(&yaml);
    let validate = || {
        let out = Command::new(env!("CARGO_BIN_EXE_meshd")).arg("validate").arg(config.path()).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = validate();
    assert!(
        out.lines().any(|l| l.starts_with("warning: ") && l.contains(&key) && l.contains("world-readable")),
        "{out}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(!validate().contains("world-readable"));
}
