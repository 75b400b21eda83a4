//! Pool tests over real sockets: a tiny hyper HTTP/1.1 server on loopback.

use super::*;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::routing::{CircuitBreakers, UNLIMITED};

const TIMEOUT: Duration = Duration::from_secs(5);

/// An HTTP/1.1 server answering `ok`; counts accepted connections.
async fn server() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            tokio::spawn(conn);
        }
    });
    (addr, accepted)
}

fn resources(max_connections: u64, max_pending_requests: u64) -> Arc<ClusterResources> {
    ClusterResources::new(CircuitBreakers {
        max_connections,
        max_pending_requests,
        max_requests: UNLIMITED,
        max_retries: UNLIMITED,
    })
}

async fn checkout(pool: &ConnectionPool, resources: &Arc<ClusterResources>, settings: &PoolSettings) -> Checkout {
    pool.checkout(resources, settings, TIMEOUT).await.expect("checkout")
}

/// One request and its whole response on `conn`.
async fn exchange(conn: &mut PooledConn) {
    let response = conn.sender().send_request(Request::new(RequestBody::Empty)).await.expect("response");
    let body = response.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, Bytes::from_static(b"ok"));
}

/// Waits (a bounded while) until `done` holds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn one_connection_one_pending_third_request_overflows() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(ConnectionPool::new(addr));
    let resources = resources(1, 1);
    let settings = PoolSettings::default();
    let mut first = checkout(&pool, &resources, &settings).await;
    assert!(!first.reused);
    exchange(&mut first.conn).await;

    let second = tokio::spawn({
        let (pool, resources, settings) = (pool.clone(), resources.clone(), settings);
        async move { pool.checkout(&resources, &settings, TIMEOUT).await.map(|c| (c.reused, c.conn)) }
    });
    eventually("the second request is pending", || resources.stats().rq_pending_active == 1).await;
    let stats = resources.stats();
    assert_eq!((stats.cx_overflow, stats.cx_open, stats.rq_pending_open), (1, 1, 1));

    let third = pool.checkout(&resources, &settings, TIMEOUT).await;
    assert!(matches!(third, Err(PoolError::Overflow)));
    assert_eq!(resources.stats().rq_pending_overflow, 1);

    pool.checkin(first.conn);
    let (reused, mut conn) = second.await.expect("join").expect("checkout");
    assert!(reused);
    assert_eq!(conn.requests_served(), 2);
    exchange(&mut conn).await;
    let stats = resources.stats();
    assert_eq!((stats.rq_pending_active, stats.cx_active, stats.cx_total), (0, 1, 1));
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn a_dropped_waiter_releases_its_pending_slot() {
    let (addr, _) = server().await;
    let pool = Arc::new(ConnectionPool::new(addr));
    let resources = resources(1, 1);
    let settings = PoolSettings::default();
    let mut first = checkout(&pool, &resources, &settings).await;
    exchange(&mut first.conn).await;

    let waiter = tokio::spawn({
        let (pool, resources, settings) = (pool.clone(), resources.clone(), settings);
        async move { pool.checkout(&resources, &settings, TIMEOUT).await.is_ok() }
    });
    eventually("the waiter is pending", || resources.stats().rq_pending_active == 1).await;
    waiter.abort();
    assert!(waiter.await.is_err());
    assert_eq!(resources.stats().rq_pending_active, 0);

    // Nobody waits any more: the connection goes back to the pool.
    pool.checkin(first.conn);
    assert_eq!(pool.idle_count(), 1);
    assert!(checkout(&pool, &resources, &settings).await.reused);
}

#[tokio::test]
async fn a_waiter_that_goes_away_passes_its_connection_on() {
    let (addr, _) = server().await;
    let pool = ConnectionPool::new(addr);
    let resources = resources(1, 1);
    let settings = PoolSettings::default();
    let mut first = checkout(&pool, &resources, &settings).await;
    exchange(&mut first.conn).await;

    let mut pending = None;
    let Ok(Step::Wait(rx)) = pool.next_step(&resources, &mut pending, false) else {
        panic!("expected to wait at the connection limit");
    };
    let waiting = Waiting { pool: &pool, rx };
    pool.checkin(first.conn);
    assert_eq!(pool.idle_count(), 0, "handed to the waiter");
    drop(waiting);
    assert_eq!(pool.idle_count(), 1, "passed on when the waiter went away");
}

#[tokio::test]
async fn a_waiter_connects_when_a_connection_closes() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(ConnectionPool::new(addr));
    let resources = resources(1, 1);
    let settings = PoolSettings::default();
    let first = checkout(&pool, &resources, &settings).await;

    let second = tokio::spawn({
        let (pool, resources, settings) = (pool.clone(), resources.clone(), settings);
        async move { pool.checkout(&resources, &settings, TIMEOUT).await.map(|c| c.reused) }
    });
    eventually("the second request is pending", || resources.stats().rq_pending_active == 1).await;
    drop(first);
    assert!(!second.await.expect("join").expect("checkout"), "a new connection");
    eventually("two connections accepted", || accepted.load(Ordering::SeqCst) == 2).await;
    assert_eq!(resources.stats().cx_total, 2);
}

#[tokio::test]
async fn max_requests_per_connection_closes_after_the_last() {
    let (addr, accepted) = server().await;
    let pool = ConnectionPool::new(addr);
    let resources = resources(UNLIMITED, UNLIMITED);
    let settings = PoolSettings { max_requests_per_connection: Some(2), ..PoolSettings::default() };
    for round in 1..=2 {
        let mut checkout = checkout(&pool, &resources, &settings).await;
        assert_eq!((checkout.reused, checkout.conn.requests_served()), (round == 2, round));
        exchange(&mut checkout.conn).await;
        pool.checkin(checkout.conn);
    }
    assert_eq!(pool.idle_count(), 0);
    eventually("the connection closed", || pool.open_count() == 0 && resources.stats().cx_active == 0).await;
    assert!(!checkout(&pool, &resources, &settings).await.reused);
    eventually("two connections accepted", || accepted.load(Ordering::SeqCst) == 2).await;
}

#[tokio::test]
async fn idle_connections_close_after_their_idle_timeout() {
    let (addr, _) = server().await;
    let pool = ConnectionPool::new(addr);
    let resources = resources(UNLIMITED, UNLIMITED);
    let settings = PoolSettings { idle_timeout: Some(Duration::from_secs(60)), ..PoolSettings::default() };
    let mut first = checkout(&pool, &resources, &settings).await;
    exchange(&mut first.conn).await;
    pool.checkin(first.conn);
    let idle_since = Instant::now();

    pool.evict_idle(idle_since + Duration::from_secs(30));
    assert_eq!(pool.idle_count(), 1);
    pool.evict_idle(idle_since + Duration::from_secs(61));
    assert_eq!(pool.idle_count(), 0);
    eventually("the connection closed", || pool.open_count() == 0 && resources.stats().cx_active == 0).await;

    // Found expired on checkout, without a sweep.
    let mut second = checkout(&pool, &resources, &settings).await;
    exchange(&mut second.conn).await;
    pool.checkin(second.conn);
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(61)).await;
    tokio::time::resume();
    assert!(!checkout(&pool, &resources, &settings).await.reused);
}

#[tokio::test]
async fn connections_past_their_max_duration_are_not_pooled() {
    let (addr, _) = server().await;
    let pool = ConnectionPool::new(addr);
    let resources = resources(UNLIMITED, UNLIMITED);
    let settings = PoolSettings { max_connection_duration: Some(Duration::from_secs(10)), ..PoolSettings::default() };
    let mut first = checkout(&pool, &resources, &settings).await;
    exchange(&mut first.conn).await;
    pool.checkin(first.conn);
    assert_eq!(pool.idle_count(), 1);
    let mut second = checkout(&pool, &resources, &settings).await;
    assert!(second.reused);
    exchange(&mut second.conn).await;
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(11)).await;
    tokio::time::resume();
    pool.checkin(second.conn);
    assert_eq!(pool.idle_count(), 0);
    eventually("the connection closed", || pool.open_count() == 0).await;
}

#[tokio::test]
async fn one_connection_per_endpoint_even_at_the_cluster_limit() {
    let (addr, accepted) = server().await;
    let (a, b) = (ConnectionPool::new(addr), Arc::new(ConnectionPool::new(addr)));
    let resources = resources(1, UNLIMITED);
    let settings = PoolSettings::default();
    let _on_a = checkout(&a, &resources, &settings).await;
    let mut on_b = checkout(&b, &resources, &settings).await;
    assert!(!on_b.reused);
    let stats = resources.stats();
    assert_eq!((stats.cx_active, stats.cx_overflow, stats.cx_open), (2, 1, 1));
    exchange(&mut on_b.conn).await;

    // b has a connection now: a second request to b waits for it.
    let waiter = tokio::spawn({
        let (b, resources, settings) = (b.clone(), resources.clone(), settings);
        async move { b.checkout(&resources, &settings, TIMEOUT).await.map(|c| c.reused) }
    });
    eventually("the request to b is pending", || resources.stats().rq_pending_active == 1).await;
    assert_eq!(resources.stats().cx_overflow, 2);
    b.checkin(on_b.conn);
    assert!(waiter.await.expect("join").expect("checkout"));
    eventually("two connections accepted", || accepted.load(Ordering::SeqCst) == 2).await;
}

#[tokio::test]
async fn connect_failures_are_counted_and_release_their_slots() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let pool = ConnectionPool::new(addr);
    let resources = resources(1, 1);
    let result = pool.checkout(&resources, &PoolSettings::default(), TIMEOUT).await;
    assert!(matches!(result, Err(PoolError::Connect(ConnectError::Io(_)))));
    let stats = resources.stats();
    assert_eq!((stats.cx_connect_fail, stats.cx_total), (1, 1));
    assert_eq!((stats.cx_active, stats.rq_pending_active, pool.open_count()), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_the_limited_connections() {
    let (addr, accepted) = server().await;
    let pool = Arc::new(ConnectionPool::new(addr));
    let resources = resources(3, UNLIMITED);
    let settings = PoolSettings { max_requests_per_connection: Some(7), ..PoolSettings::default() };
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (p, r, s) = (pool.clone(), resources.clone(), settings);
        tasks.spawn(async move {
            let (pool, resources, settings) = (p, r, s);
            let mut checkout = pool.checkout(&resources, &settings, TIMEOUT).await.expect("checkout");
            assert!(resources.stats().cx_active <= 3);
            exchange(&mut checkout.conn).await;
            if i % 10 == 0 {
                drop(checkout); // closed instead of returned
            } else {
                pool.checkin(checkout.conn);
            }
        });
        if i % 25 == 0 {
            // A checkout that goes away while it waits.
            let (pool, resources, settings) = (pool.clone(), resources.clone(), settings);
            let abandoned = tokio::spawn(async move { pool.checkout(&resources, &settings, TIMEOUT).await.is_ok() });
            tokio::task::yield_now().await;
            abandoned.abort();
        }
    }
    tokio::time::timeout(TIMEOUT, async {
        while let Some(done) = tasks.join_next().await {
            done.expect("request task");
        }
    })
    .await
    .expect("every request got a connection");
    eventually("no pending request left", || resources.stats().rq_pending_active == 0).await;
    let stats = resources.stats();
    assert!(stats.cx_total >= 200 / 7, "{stats:?}");
    assert!(stats.cx_overflow > 0, "{stats:?}");
    assert_eq!(pool.open_count() as u64, stats.cx_active);
    assert!(accepted.load(Ordering::SeqCst) as u64 <= stats.cx_total);
}
