//! The capture listeners: what Envoy's `virtualOutbound` (15001) and
//! `virtualInbound` (15006) listeners do for an Istio sidecar (spec §7.3).
//!
//! Each accepted connection's original destination is read
//! ([`original_dst`]), then its first bytes are sniffed
//! ([`detect::sniff`](crate::proxy::detect::sniff)): HTTP/1.1 and h2c are served by the HTTP request
//! path with the connection marked [`Captured`]; anything else is relayed
//! as TCP.
//!
//! - **Outbound TCP** goes by the `tcp` routes of the service whose VIP
//!   and port it was sent to; to an unknown address it goes, under
//!   `ALLOW_ANY`, to that address (`PassthroughCluster`), and under
//!   `REGISTRY_ONLY` it is closed (`BlackHoleCluster`).
//! - **Inbound** traffic goes to the app on `127.0.0.1:<original port>`,
//!   reported by the destination.
//! - A connection sent to the capture port itself (no redirect) is closed,
//!   as Envoy blackholes it: relaying it would loop.
//!
//! On shutdown the inbound listener drains at once; the outbound one keeps
//! accepting until the drain timeout has passed, so that the app can make
//! the calls it needs to finish its own requests (Istio drains a sidecar's
//! inbound listeners only).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

use super::original_dst::original_dst;
use crate::config::resources::Labels;
use crate::metrics::Reporter;
use crate::proxy::capture::{black_hole_labels, passthrough_cluster, Captured};
use crate::proxy::detect::{sniff, Sniffed};
use crate::proxy::listener::{next_connection, serve_sniffed, Servers};
use crate::proxy::service::Downstream;
use crate::proxy::tcp::{refuse, relay_to, target};
use crate::proxy::xfcc::ForwardClientCert;
use crate::proxy::{Proxy, ResponseFlags};
use crate::routing::retry::RoutePolicy;
use crate::routing::ServiceMeta;
use crate::upstream::Cluster;

/// Which capture listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the app (15001); `allow_any` is `--outbound-traffic-policy
    /// ALLOW_ANY`.
    Outbound { allow_any: bool },
    /// To the app (15006).
    Inbound,
}

/// What one capture listener's connections share.
struct Listener {
    direction: Direction,
    /// The listener's own address: a connection whose original
    /// destination is this was not redirected.
    local: SocketAddr,
    proxy: Arc<Proxy>,
    servers: Servers,
    /// The route policy of passthrough and inbound requests.
    policy: Arc<RoutePolicy>,
    /// Inbound: the app's cluster per port, made at the first connection
    /// to that port and kept (copy-on-write; read without a lock).
    apps: ArcSwap<HashMap<u16, Arc<Cluster>>>,
}

// === impl Direction ===

impl Direction {
    fn name(self) -> &'static str {
        match self {
            Direction::Outbound { .. } => "outbound",
            Direction::Inbound => "inbound",
        }
    }
}

/// Serves a capture listener until `shutdown` turns true (the outbound
/// one: until `drain_timeout` after that), then waits up to
/// `drain_timeout` for its connections to close.
pub async fn serve(
    listener: TcpListener,
    direction: Direction,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let Ok(local) = listener.local_addr() else { return };
    let state = Arc::new(Listener {
        direction,
        local,
        servers: Servers::new(&proxy),
        proxy,
        policy: Arc::new(RoutePolicy { timeout: None, retry: None }),
        apps: ArcSwap::default(),
    });
    // The outbound listener, and its connections, see the drain only once
    // the drain timeout has passed.
    let (stop, stopped) = watch::channel(false);
    let mut signal = shutdown.clone();
    let delay = if matches!(direction, Direction::Outbound { .. }) { drain_timeout } else { Duration::ZERO };
    tokio::spawn(async move {
        let _ = signal.wait_for(|stop| *stop).await;
        tokio::time::sleep(delay).await;
        stop.send_replace(true);
    });
    accept_loop(listener, state, stopped, drain_timeout).await;
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<Listener>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let (open, mut all_closed) = mpsc::channel::<()>(1);
    while let Some((stream, peer)) = next_connection(&listener, &mut shutdown).await {
        let _ = stream.set_nodelay(true);
        let (state, open, shutdown) = (state.clone(), open.clone(), shutdown.clone());
        tokio::spawn(async move {
            state.serve(stream, peer, shutdown).await;
            drop(open);
        });
    }
    drop(listener);
    drop(open);
    if tokio::time::timeout(drain_timeout, all_closed.recv()).await.is_err() {
        warn!(?drain_timeout, "drain timeout passed with captured connections still open");
    }
}

// === impl Listener ===

impl Listener {
    /// Serves one captured connection.
    async fn serve(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, mut shutdown: watch::Receiver<bool>) {
        let original = match original_dst(&stream) {
            Ok(original) => original,
            Err(error) => return debug!(%error, "no original destination"),
        };
        if original == self.local {
            return debug!(%peer, "connection addressed to the capture port itself; closed");
        }
        let sniffed = tokio::select! {
            sniffed = sniff(&stream) => sniffed,
            _ = shutdown.wait_for(|stop| *stop) => return,
        };
        match sniffed {
            Ok(Some(Sniffed::Http(protocol))) => {
                let captured = match self.direction {
                    Direction::Outbound { allow_any } => Captured::outbound(original, allow_any, self.policy.clone()),
                    Direction::Inbound => Captured::inbound(original, self.app(original.port()), self.policy.clone()),
                };
                let downstream = Downstream {
                    access_log: self.proxy.access_log.connection(&stream, peer),
                    peer,
                    scheme: "http",
                    gateway: None,
                    client_cert: ForwardClientCert::Untouched,
                    capture: Some(Arc::new(captured)),
                };
                let served = serve_sniffed(&self.servers, stream, protocol, self.proxy.clone(), downstream, shutdown);
                if let Err(error) = served.await {
                    debug!(%peer, %error, direction = self.direction.name(), "captured connection ended with an error");
                }
            }
            Ok(Some(Sniffed::Opaque)) => self.relay(stream, original).await,
            Ok(None) => {}
            Err(error) => debug!(%error, "reading the first bytes failed"),
        }
    }

    /// Relays a connection that is not HTTP.
    async fn relay(&self, stream: TcpStream, original: SocketAddr) {
        let log = self.proxy.access_log.tcp(&stream);
        let allow_any = match self.direction {
            Direction::Inbound => return relay_to(stream, &self.app(original.port()), log).await,
            Direction::Outbound { allow_any } => allow_any,
        };
        let routing = crate::proxy::tcp::Routing::Captured(original.ip().to_string().into());
        match target(&self.proxy, &routing, None, original) {
            Ok(cluster) => relay_to(stream, &cluster, log).await,
            Err((_, ResponseFlags::NR)) if allow_any => {
                let cluster = passthrough_cluster(&original.to_string(), original, &self.proxy.metrics);
                relay_to(stream, &cluster, log).await
            }
            Err((_, ResponseFlags::NR)) => {
                refuse(&self.proxy.metrics, &black_hole_labels(&original.to_string()), ResponseFlags::NONE, log)
            }
            Err((labels, flags)) => refuse(&self.proxy.metrics, &labels, flags, log),
        }
    }

    /// The app's cluster for `port`: `127.0.0.1:port`, labelled as this
    /// workload and reported by the destination.
    fn app(&self, port: u16) -> Arc<Cluster> {
        if let Some(cluster) = self.apps.load().get(&port) {
            return cluster.clone();
        }
        let source = self.proxy.metrics.source();
        let host = if source.canonical_service == "unknown" {
            "unknown".to_owned()
        } else {
            format!("{}.{}.svc.cluster.local", source.canonical_service, source.namespace)
        };
        let service = service(&host, &source.canonical_service, &source.namespace, Reporter::Destination);
        let mut labels = Labels::default();
        for (key, value) in [
            ("app", &source.app),
            ("version", &source.version),
            ("service.istio.io/canonical-name", &source.canonical_service),
            ("service.istio.io/canonical-revision", &source.canonical_revision),
            ("workload", &source.workload),
        ] {
            if value != "unknown" {
                labels.insert(key.to_owned(), value.clone());
            }
        }
        let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
        let name = format!("inbound|{port}||");
        let cluster = Cluster::single(&name, service, addr, labels, &self.proxy.metrics);
        self.apps.rcu(|apps| {
            let mut apps = HashMap::clone(apps);
            apps.entry(port).or_insert_with(|| cluster.clone());
            apps
        });
        self.apps.load().get(&port).cloned().unwrap_or(cluster)
    }
}

fn service(host: &str, name: &str, namespace: &str, reporter: Reporter) -> ServiceMeta {
    ServiceMeta { host: host.into(), name: name.into(), namespace: namespace.into(), reporter }
}
