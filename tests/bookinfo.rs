//! Istio's bookinfo traffic-management tasks, with the VirtualService files
//! of `shared/corpus/istio/bookinfo` unchanged and ServiceEntries standing
//! in for the Kubernetes services: request routing by user, a weighted
//! shift, and fault injection for `jason` (a 7 s delay, a 500 abort).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use http::StatusCode;

const BOOKINFO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/corpus/istio/bookinfo");

/// The corpus file `name`, or `None` (with a note) when the corpus is not
/// beside the project.
fn corpus(name: &str) -> Option<String> {
    let path = Path::new(BOOKINFO).join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) => {
            eprintln!("note: {} unreadable ({e}); skipping", path.display());
            None
        }
    }
}

/// `reviews` v1, v2 and v3 and `ratings` v1 as echo upstreams behind
/// ServiceEntries (port 9080), with `destination-rule-all.yaml` and the
/// VirtualService file `vs`.
async fn bookinfo(vs: &str) -> Option<Mesh> {
    let rules = corpus("destination-rule-all.yaml")?;
    let vs = corpus(vs)?;
    let mut yaml = String::new();
    let mut reviews = Vec::new();
    for version in ["v1", "v2", "v3"] {
        reviews.push(ep(echo(&format!("reviews-{version}")).await, &[("app", "reviews"), ("version", version)]));
    }
    yaml += &service_entry("reviews", NS, &["reviews"], 9080, &reviews);
    let ratings = ep(echo("ratings-v1").await, &[("app", "ratings"), ("version", "v1")]);
    yaml += &service_entry("ratings", NS, &["ratings"], 9080, &[ratings]);
    yaml += &format!("---\n{rules}\n---\n{vs}\n");
    Some(Mesh::with(&yaml).await)
}

/// `virtual-service-reviews-jason-v2-v3.yaml`: jason sees v2, everyone
/// else v3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_jason_v2_everyone_else_v3() {
    let Some(mesh) = bookinfo("virtual-service-reviews-jason-v2-v3.yaml").await else { return };
    let jason = mesh.tally(&get("reviews:9080", "/reviews/0").header("end-user", "jason"), 50, 2).await;
    assert_eq!(jason.into_iter().collect::<Vec<_>>(), [((200, "reviews-v2".to_owned()), 50)]);
    let others = mesh.tally(&get("reviews:9080", "/reviews/0").header("end-user", "mary"), 50, 2).await;
    assert_eq!(others.into_iter().collect::<Vec<_>>(), [((200, "reviews-v3".to_owned()), 50)]);
}

/// `virtual-service-reviews-90-10.yaml`: 90 % v1, 10 % v2 (±3 % over
/// 1,000 requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_90_10_split() {
    let Some(mesh) = bookinfo("virtual-service-reviews-90-10.yaml").await else { return };
    let counts = mesh.tally(&get("reviews", "/reviews/0"), 1000, 4).await;
    let v1 = counts.get(&(200, "reviews-v1".into())).copied().unwrap_or(0);
    let v2 = counts.get(&(200, "reviews-v2".into())).copied().unwrap_or(0);
    assert_eq!(v1 + v2, 1000, "{counts:?}");
    assert!((870..=930).contains(&v1), "v1 got {v1} of 1000 (expected 900 ± 30)");
}

/// `virtual-service-ratings-test-delay.yaml`: jason's ratings calls wait
/// 7 s (flag `DI`), other users' do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_delay_of_7s_for_jason() {
    let Some(mesh) = bookinfo("virtual-service-ratings-test-delay.yaml").await else { return };
    let started = Instant::now();
    let resp = mesh.get("ratings", "/ratings/0").await;
    assert_eq!(resp.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "mary is not delayed: {:?}", started.elapsed());
    let started = Instant::now();
    let resp = mesh.send(&get("ratings", "/ratings/0").header("end-user", "jason")).await;
    let took = started.elapsed();
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.echo_name().as_deref(), Some("ratings-v1"));
    assert!((Duration::from_secs(7)..Duration::from_secs(9)).contains(&took), "jason waited {took:?}");
    mesh.wait_requests(&[("destination_service_name", "ratings"), ("response_flags", "DI")], 1.0).await;
}

/// `virtual-service-ratings-test-abort.yaml`: jason's ratings calls get
/// 500 `fault filter abort` (flag `FI`) and never reach ratings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ratings_abort_500_for_jason() {
    let Some(mesh) = bookinfo("virtual-service-ratings-test-abort.yaml").await else { return };
    let jason = mesh.tally(&get("ratings", "/ratings/0").header("end-user", "jason"), 20, 2).await;
    assert_eq!(jason.into_iter().collect::<Vec<_>>(), [((500, "-".to_owned()), 20)]);
    let resp = mesh.send(&get("ratings", "/ratings/0").header("end-user", "jason")).await;
    assert_eq!(resp.text(), "fault filter abort");
    let others = mesh.tally(&get("ratings", "/ratings/0"), 20, 2).await;
    assert_eq!(others.into_iter().collect::<Vec<_>>(), [((200, "ratings-v1".to_owned()), 20)]);
    let labels = [("destination_service_name", "ratings"), ("response_code", "500"), ("response_flags", "FI")];
    mesh.wait_requests(&labels, 21.0).await;
}

/// `bookinfo-gateway.yaml`: the Gateway's HTTP port (moved from 8080 to a
/// free port for the test) routes `/productpage` and the other listed
/// paths to the productpage service, and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_gateway_routes_productpage_on_the_gateway_port() {
    let Some(gateway) = corpus("bookinfo-gateway.yaml") else { return };
    let port = closed_port();
    let gateway = gateway.replace("number: 8080", &format!("number: {port}"));
    let productpage = ep(echo("productpage-v1").await, &[("app", "productpage"), ("version", "v1")]);
    let yaml = service_entry("productpage", NS, &["productpage"], 9080, &[productpage]) + &format!("---\n{gateway}\n");
    let _mesh = Mesh::with(&yaml).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let client = client();
    let resp = common::wait_for("the bookinfo gateway port", Duration::from_secs(5), || {
        let client = client.clone();
        async move { try_send(&client, get("bookinfo.example.com", "/productpage").build(addr, empty())).await }
    })
    .await;
    assert_eq!((resp.status, resp.echo_name().as_deref()), (StatusCode::OK, Some("productpage-v1")));
    let api = send(&client, get("1.2.3.4", "/api/v1/products/0").build(addr, empty())).await;
    assert_eq!(api.echo_name().as_deref(), Some("productpage-v1"), "any host: the VirtualService's hosts are *");
    let other = send(&client, get("bookinfo.example.com", "/admin").build(addr, empty())).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
}
