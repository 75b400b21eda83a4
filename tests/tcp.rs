//! TCP routes over real sockets (`--listen tcp://ADDR=HOST`): weighted
//! destinations, matches on the port the client connected to, the default
//! route of a service without a VirtualService, half-close passed through
//! both ways, and Istio's TCP metrics counting exactly the connections and
//! bytes relayed.

mod common;

use std::net::SocketAddr;

use common::*;
use meshd::server::TcpListen;
use tokio::net::TcpListener;

async fn exchange(addr: SocketAddr, data: &[u8]) -> String {
    tcp_exchange(addr, data).await.expect("TCP exchange")
}

/// A `db` service (port 5432, TCP) with a v1 and a v2 endpoint and
/// subsets, the documents `extra`, and meshd with a TCP listener for each
/// of `hosts`.
async fn db_mesh(extra: &str, hosts: &[&str]) -> (Mesh, Vec<SocketAddr>) {
    let (v1, v2) = (tcp_upstream("db-v1").await, tcp_upstream("db-v2").await);
    let se = service_entry("db", NS, &["db"], 5432, &[ep(v1, &[("version", "v1")]), ep(v2, &[("version", "v2")])])
        .replace("protocol: HTTP", "protocol: TCP")
        .replace("name: http", "name: tcp")
        .replace("{http:", "{tcp:");
    let dr = destination_rule(
        "db",
        NS,
        "db",
        Some("ROUND_ROBIN"),
        &[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])],
    );
    let config = ConfigDir::with(&(se + &dr + extra));
    let mut opts = options(config.path());
    opts.tcp = hosts.iter().map(|h| TcpListen { addr: "127.0.0.1:0".parse().unwrap(), host: h.to_string() }).collect();
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    let addrs = mesh.server().tcp_addrs.clone();
    (mesh, addrs)
}

/// Scenario: an 80/20 split of 200 connections within ±8 %, each
/// half-closed by the client and answered whole; the TCP metrics count
/// every connection opened and closed and every byte each way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_tcp_route_relays_half_closed_connections_and_counts_them() {
    let vs = object(
        "VirtualService",
        "db",
        NS,
        "hosts: [db]\ntcp:\n- route:\n  - {destination: {host: db, subset: v1}, weight: 80}\n  - {destination: {host: db, subset: v2}, weight: 20}\n",
    );
    let (mesh, addrs) = db_mesh(&vs, &["db"]).await;
    let (mut v1, mut sent) = (0, 0u64);
    for i in 0..200 {
        let data = format!("query-{i}");
        let answer = exchange(addrs[0], data.as_bytes()).await;
        let (name, echoed) = answer.split_once(':').expect("NAME:data");
        assert_eq!(echoed, data, "the whole request reached the upstream and the whole answer came back");
        v1 += usize::from(name == "db-v1");
        sent += answer.len() as u64;
    }
    assert!((144..=176).contains(&v1), "v1 got {v1} of 200 (expected 160 ± 16)");
    let received: u64 = (0..200).map(|i| format!("query-{i}").len() as u64).sum();
    mesh.wait_metric("istio_tcp_connections_closed_total", &[("destination_service_name", "db")], 200.0).await;
    let m = mesh.metrics().await;
    let db = [("destination_service_name", "db"), ("request_protocol", "tcp")];
    assert_eq!(m.sum("istio_tcp_connections_opened_total", &db), 200.0);
    assert_eq!(m.sum("istio_tcp_received_bytes_total", &db), received as f64);
    assert_eq!(m.sum("istio_tcp_sent_bytes_total", &db), sent as f64);
    assert_eq!(m.sum("istio_tcp_connections_closed_total", &[("destination_version", "v1")]), v1 as f64);
}

/// Scenario: a `port` match sends connections on one listener to v2 and
/// the rest to v1; a service without a VirtualService takes its default
/// route; a host without TCP routes closes the connection, flag `NR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_match_the_port_and_services_default_to_all_endpoints() {
    let (mesh, addrs) = db_mesh("", &["db", "nowhere.example"]).await;
    let mut names = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let answer = exchange(addrs[0], b"x").await;
        names.insert(answer.split_once(':').map(|(n, _)| n.to_owned()).unwrap_or(answer));
    }
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["db-v1", "db-v2"], "round robin over every endpoint");
    let refused = tcp_exchange(addrs[1], b"x").await;
    assert!(refused.as_deref().map_or(true, str::is_empty), "no route: closed, got {refused:?}");
    mesh.wait_metric("istio_tcp_connections_closed_total", &[("response_flags", "NR")], 1.0).await;
    drop(mesh);

    let probe = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let vs = object(
        "VirtualService",
        "db",
        NS,
        &format!("hosts: [db]\ntcp:\n- match: [{{port: {port}}}]\n  route: [{{destination: {{host: db, subset: v2}}}}]\n- route: [{{destination: {{host: db, subset: v1}}}}]\n"),
    );
    let (v1, v2) = (tcp_upstream("db-v1").await, tcp_upstream("db-v2").await);
    let se = service_entry("db", NS, &["db"], 5432, &[ep(v1, &[("version", "v1")]), ep(v2, &[("version", "v2")])])
        .replace("protocol: HTTP", "protocol: TCP");
    let dr = destination_rule("db", NS, "db", None, &[("v1", &[("version", "v1")]), ("v2", &[("version", "v2")])]);
    let config = ConfigDir::with(&(se + &dr + &vs));
    let mut opts = options(config.path());
    let listen = |addr: &str| TcpListen { addr: addr.parse().unwrap(), host: "db.default.svc.cluster.local".into() };
    opts.tcp = vec![listen(&format!("127.0.0.1:{port}")), listen("127.0.0.1:0")];
    let mesh = Mesh::start_with(config, opts).await;
    mesh.wait_ready().await;
    let addrs = mesh.server().tcp_addrs.clone();
    assert!(exchange(addrs[0], b"x").await.starts_with("db-v2:"), "the port match");
    assert!(exchange(addrs[1], b"x").await.starts_with("db-v1:"), "any other port");
}
