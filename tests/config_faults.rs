//! Configuration faults: every way a config file goes bad on disk is
//! refused with a message (or, where the fault changes nothing meshd can
//! see, handled), the last good snapshot keeps serving, the refusal is
//! counted in `meshd_config_reloads_total{result="rejected"}`, and
//! `meshd validate` on the same input exits 1 with the message, never a
//! panic.
//!
//! Each test starts meshd on one file, `mesh.yaml` (routing `reviews` to
//! v1), with file watching off: the fault is written, then a reload is
//! asked for explicitly (SIGHUP's path), so one fault is one reload.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use meshd::config::{limits, Sources};

/// The good configuration: the reviews service and a route to v1.
fn good_yaml(v1: std::net::SocketAddr, v2: std::net::SocketAddr) -> String {
    format!("{}---\n{}", reviews_service(v1, v2), reviews_all_to("v1"))
}

/// A ready meshd whose `--config` is `path` (a file or a directory),
/// serving the reviews route to v1.
async fn serving(config: ConfigDir, path: PathBuf) -> Mesh {
    let mut options = options(&path);
    options.watch = false;
    let mesh = Mesh::start_with(config, options).await;
    mesh.wait_ready().await;
    assert_still_serving(&mesh).await;
    mesh
}

/// meshd on `mesh.yaml` holding [`good_yaml`]; returns it and the file.
async fn serving_file() -> (Mesh, PathBuf) {
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    config.write("mesh.yaml", &good_yaml(v1, v2));
    let file = config.file("mesh.yaml");
    (serving(config, file.clone()).await, file)
}

async fn assert_still_serving(mesh: &Mesh) {
    let resp = mesh.get("reviews", "/").await;
    assert_eq!(resp.status, http::StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.echo_name().as_deref(), Some("reviews-v1"));
    assert_eq!(mesh.admin("/ready").await.status, http::StatusCode::OK);
}

/// Waits until `meshd_config_reloads_total{result}` is at least `n`.
async fn wait_at_least(mesh: &Mesh, result: &str, n: f64) {
    wait_for(&format!("reloads{{result={result}}} >= {n}"), Duration::from_secs(30), || async move {
        let seen = mesh.metrics().await.sum("meshd_config_reloads_total", &[("result", result)]);
        if seen >= n {
            Ok(())
        } else {
            Err(format!("{seen}"))
        }
    })
    .await
}

/// Asks for a reload of the faulty file: it must be refused, counted, the
/// version must stay 1, and the v1 route must still answer.
async fn assert_reload_refused(mesh: &Mesh) {
    mesh.server().reload();
    wait_at_least(mesh, "rejected", 1.0).await;
    let m = mesh.metrics().await;
    assert_eq!(m.sum("meshd_config_reloads_total", &[("result", "applied")]), 1.0);
    assert_eq!(m.sum("meshd_config_version", &[]), 1.0);
    assert_still_serving(mesh).await;
}

/// The library refuses `path` with a problem containing `message`, within
/// 20 seconds (a debug build).
fn assert_load_refused(path: &Path, message: &str) {
    let sources = Sources { paths: vec![path.to_path_buf()], namespace: NS.into() };
    let started = Instant::now();
    let refused = meshd::config::load_and_validate(&sources).expect_err("the fault must be refused");
    assert!(started.elapsed() < Duration::from_secs(20), "took {:?}", started.elapsed());
    let lines: Vec<String> = refused.problems.iter().map(ToString::to_string).collect();
    assert!(lines.iter().any(|l| l.contains(message)), "expected {message:?} in {lines:#?}");
}

/// `meshd validate path` exits 1 (not a panic's 101, not a signal) and
/// prints `message`.
fn assert_validate_refuses(path: &Path, message: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_meshd")).arg("validate").arg(path).output().expect("run validate");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stdout.contains(message), "expected {message:?} in:\n{stdout}");
}

/// The whole check for a fault written into the served file.
async fn check_file_fault(fault: impl FnOnce(&Path), message: &str) {
    let (mesh, file) = serving_file().await;
    fault(&file);
    assert_reload_refused(&mesh).await;
    assert_load_refused(&file, message);
    assert_validate_refuses(&file, message);
}

/// Scenario: the `--config` file is deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_file_is_refused_and_the_old_config_serves() {
    check_file_fault(|f| std::fs::remove_file(f).expect("delete"), "cannot read: No such file or directory").await;
}

/// Scenario: the file is truncated to 0 bytes (what `> file` leaves before
/// the writer writes): refused, not applied as an empty configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_file_is_refused_and_the_old_config_serves() {
    check_file_fault(|f| std::fs::write(f, "").expect("truncate"), "file is empty").await;
}

/// Scenario: the file holds only the first part of what was being written
/// (cut inside the VirtualService's flow mapping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_written_file_is_refused_and_the_old_config_serves() {
    let fault = |f: &Path| {
        let text = std::fs::read_to_string(f).expect("read");
        let cut = text.rfind("subset:").expect("the route's subset");
        std::fs::write(f, &text[..cut]).expect("write half");
    };
    check_file_fault(fault, "invalid YAML").await;
}

/// Scenario: the file is replaced with binary bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_file_is_refused_and_the_old_config_serves() {
    let fault = |f: &Path| std::fs::write(f, pattern(4096, 7).iter().map(|b| b | 0x80).collect::<Vec<_>>()).unwrap();
    check_file_fault(fault, "not UTF-8 text").await;
}

/// Scenario: binary that happens to be UTF-8 (NUL and control bytes): the
/// YAML parser refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_bytes_are_refused_and_the_old_config_serves() {
    check_file_fault(|f| std::fs::write(f, b"\x00\x01\x02kind: \x07\x00\n").unwrap(), "invalid YAML").await;
}

/// Scenario: a "billion laughs" YAML bomb (10 aliases a level, 12 levels:
/// 10^12 nodes if expanded): serde_yaml's repetition limit refuses it
/// after bounded work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_bomb_is_refused_quickly_and_the_old_config_serves() {
    let mut bomb = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..12 {
        let p = format!("*a{}", i - 1);
        bomb.push_str(&format!("a{i}: &a{i} [{}]\n", vec![p; 10].join(", ")));
    }
    check_file_fault(|f| std::fs::write(f, &bomb).unwrap(), "repetition limit exceeded").await;
}

/// Scenario: nesting 100,000 levels deep: serde_yaml's recursion limit
/// (128) refuses it before the stack could overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_nesting_is_refused_and_the_old_config_serves() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    check_file_fault(|f| std::fs::write(f, &deep).unwrap(), "recursion limit exceeded").await;
}

/// Scenario: a 50 MB file (sparse, so the test costs no disk): refused
/// unread by the 32 MiB file limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_file_is_refused_unread_and_the_old_config_serves() {
    let fault = |f: &Path| {
        let file = std::fs::OpenOptions::new().write(true).open(f).expect("open");
        file.set_len(50 * 1000 * 1000).expect("grow");
    };
    check_file_fault(fault, "larger than the 33554432-byte (32 MiB) limit").await;
}

/// Scenario: 100,000 ServiceEntries: parsing stops at the 50,000-object
/// limit with a message, within bounded time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_resources_are_refused_and_the_old_config_serves() {
    let fault = |f: &Path| {
        let mut text = String::with_capacity(100_000 * 120);
        for i in 0..100_000 {
            text.push_str(&format!(
                "---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: s{i}}}\nspec: {{hosts: [s{i}.example]}}\n"
            ));
        }
        std::fs::write(f, text).unwrap();
    };
    check_file_fault(fault, &format!("more than {} objects in one load", limits::MAX_OBJECTS)).await;
}

/// Scenario: the `--config` directory is made unreadable (`chmod 000`).
/// Not root: the reload is refused with "cannot read directory". Root
/// (where `chmod` denies nothing): the files read the same, so the reload
/// finds the configuration unchanged. Either way the old config serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_directory_is_refused_or_unchanged_and_the_old_config_serves() {
    use std::os::unix::fs::PermissionsExt;
    let (v1, v2) = reviews_upstreams().await;
    let config = ConfigDir::new();
    config.write("mesh.yaml", &good_yaml(v1, v2));
    let dir = config.path().to_path_buf();
    let mesh = serving(config, dir.clone()).await;

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o000)).expect("chmod 000");
    let denied = std::fs::read_dir(&dir).is_err();
    mesh.server().reload();
    if denied {
        wait_at_least(&mesh, "rejected", 1.0).await;
        assert_load_refused(&dir, "cannot read directory");
        assert_validate_refuses(&dir, "cannot read directory");
    } else {
        // Root: chmod does not deny reads.
        wait_at_least(&mesh, "unchanged", 1.0).await;
        assert_eq!(mesh.metrics().await.sum("meshd_config_reloads_total", &[("result", "rejected")]), 0.0);
    }
    assert_eq!(mesh.metrics().await.sum("meshd_config_version", &[]), 1.0);
    assert_still_serving(&mesh).await;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod back");
}

/// Scenario: a fault then the good file back: the good content applies
/// again (a refused set is not remembered as tried).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_file_after_a_fault_applies_again() {
    let (mesh, file) = serving_file().await;
    let good = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, "").expect("truncate");
    assert_reload_refused(&mesh).await;
    std::fs::write(&file, good.replace("subset: v1", "subset: v2")).expect("restore");
    mesh.server().reload();
    wait_at_least(&mesh, "applied", 2.0).await;
    assert_eq!(mesh.get("reviews", "/").await.echo_name().as_deref(), Some("reviews-v2"));
}

/// The limits stay well above real configurations and in order.
#[test]
fn limits_are_ordered_and_generous() {
    const { assert!(limits::MAX_FILE_BYTES >= 16 * 1024 * 1024) };
    const { assert!(limits::MAX_TOTAL_BYTES >= limits::MAX_FILE_BYTES) };
    const { assert!(limits::MAX_OBJECTS >= 10_000) };
}
