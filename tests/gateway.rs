//! Gateway listeners over real sockets: a Gateway's port opens with the
//! configuration, routes the VirtualServices bound to it (and only those),
//! answers `httpsRedirect` servers with a 301, and closes when a reload
//! removes it; a port that cannot be bound leaves the rest serving.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use http::StatusCode;

/// A free loopback port number.
fn free_port() -> u16 {
    closed_port()
}

fn gateway(name: &str, servers: &str) -> String {
    object("Gateway", name, NS, &format!("servers:\n{servers}"))
}

/// `GET path` with `Host: host` on `127.0.0.1:port`.
async fn get_on(port: u16, host: &str, path: &str) -> Result<Resp, String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    try_send(&client(), get(host, path).build(addr, empty())).await
}

/// Scenario: the bookinfo-style front door. A Gateway on one port serves
/// the VirtualService bound to it (`gateways: [front]`); the mesh listener
/// does not serve that host, and the gateway does not serve mesh-only
/// hosts; a second server with `httpsRedirect` answers 301 to https. A
/// reload that drops the Gateway closes its port; one that brings it back
/// opens it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_ports_route_their_bound_virtual_services_and_follow_reloads() {
    let shop = echo("shop").await;
    let inner = echo("inner").await;
    let (port, redirect_port) = (free_port(), free_port());
    let gateways = gateway(
        "front",
        &format!("- port: {{number: {port}, name: http, protocol: HTTP}}\n  hosts: [\"*\"]\n- port: {{number: {redirect_port}, name: http-redirect, protocol: HTTP}}\n  hosts: [\"*\"]\n  tls: {{httpsRedirect: true}}\n"),
    );
    let services = simple_service("shop", "shop.default.svc.cluster.local", shop)
        + &simple_service("inner", "inner.default.svc.cluster.local", inner)
        + &virtual_service("inner", NS, &["inner"], "- route: [{destination: {host: inner}}]\n");
    let front = object(
        "VirtualService",
        "front",
        NS,
        "hosts: [shop.example.com]\ngateways: [front]\nhttp:\n- match: [{uri: {prefix: /shop}}]\n  route: [{destination: {host: shop}}]\n",
    );
    let mesh = Mesh::with(&(services.clone() + &gateways + &front)).await;

    let resp = wait_for("the Gateway port to serve", Duration::from_secs(5), || async {
        get_on(port, "shop.example.com", "/shop/cart").await
    })
    .await;
    assert_eq!((resp.status, resp.echo_name().as_deref()), (StatusCode::OK, Some("shop")));
    assert_eq!(get_on(port, "shop.example.com", "/other").await.unwrap().status, StatusCode::NOT_FOUND);
    assert_eq!(get_on(port, "inner", "/").await.unwrap().status, StatusCode::NOT_FOUND, "mesh-only host");
    assert_eq!(mesh.get("shop.example.com", "/shop").await.status, StatusCode::NOT_FOUND, "gateway-only host");
    assert_eq!(mesh.get("inner", "/").await.echo_name().as_deref(), Some("inner"));

    let resp = get_on(redirect_port, "shop.example.com:8080", "/shop?x=1").await.unwrap();
    assert_eq!(resp.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(resp.header("location"), Some("https://shop.example.com/shop?x=1"));

    mesh.config.write("reviews.yaml", &(services.clone() + &front));
    wait_until("the Gateway port to close", Duration::from_secs(10), || async {
        get_on(port, "shop.example.com", "/shop").await.is_err()
    })
    .await;
    mesh.config.write("reviews.yaml", &(services + &gateways + &front));
    wait_until("the Gateway port to open again", Duration::from_secs(10), || async {
        get_on(port, "shop.example.com", "/shop").await.is_ok_and(|r| r.status == StatusCode::OK)
    })
    .await;
}

/// Scenario: a Gateway port already taken by another process is reported
/// and skipped; the Gateway's other port and the mesh listener serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_that_cannot_be_bound_leaves_the_rest_serving() {
    let shop = echo("shop").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let port = free_port();
    let gateways = gateway(
        "front",
        &format!("- port: {{number: {taken_port}, name: http-a, protocol: HTTP}}\n  hosts: [\"*\"]\n- port: {{number: {port}, name: http-b, protocol: HTTP}}\n  hosts: [\"*\"]\n"),
    );
    let front = object(
        "VirtualService",
        "front",
        NS,
        "hosts: [\"*\"]\ngateways: [front]\nhttp:\n- route: [{destination: {host: shop}}]\n",
    );
    let mesh = Mesh::with(&(simple_service("shop", "shop", shop) + &gateways + &front)).await;
    let resp = wait_for("the free Gateway port to serve", Duration::from_secs(5), || async {
        get_on(port, "anything.example", "/").await
    })
    .await;
    assert_eq!(resp.echo_name().as_deref(), Some("shop"));
    assert_eq!(mesh.get("shop", "/").await.status, StatusCode::OK);
    drop(taken);
}
