//! TCP listeners: `--listen tcp://ADDR=HOST`, routed by the host's TCP
//! routes ([`RouteTable::find_tcp`]); a Gateway `TCP` port, routed by the
//! `tcp` routes bound to it ([`GatewayListener::find_tcp`]); and a Gateway
//! TLS passthrough port, routed by the `tls` routes bound to it
//! ([`GatewayListener::find_tls`]) with the SNI of the ClientHello, peeked
//! without terminating ([`passthrough`]). Each connection goes to a
//! weighted destination, an endpoint is picked by the cluster's balancer,
//! and bytes are copied both ways until both sides are done, a half-close
//! passed on (`tokio::io::copy_bidirectional` shuts the other side's write
//! half down when one side ends its stream). A passthrough connection's
//! ClientHello is relayed like the rest: the upstream terminates TLS.
//!
//! Failures close the client's connection and are counted in
//! `istio_tcp_connections_closed_total` with Envoy's flag: no route `NR`
//! (a passthrough connection whose first bytes are no ClientHello
//! included, labelled with destination `unknown`), an unknown cluster
//! `NC`, no healthy endpoint `UH`, a failed connect `UF`. With
//! `--access-log`, each connection gets a line at its end.
//!
//! [`RouteTable::find_tcp`]: crate::routing::RouteTable::find_tcp
//! [`GatewayListener::find_tcp`]: crate::routing::GatewayListener::find_tcp
//! [`GatewayListener::find_tls`]: crate::routing::GatewayListener::find_tls

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::access_log::TcpRecord;
use super::flags::ResponseFlags;
use super::{passthrough, Proxy};
use crate::metrics::{DestinationLabels, Metrics, TcpClose};
use crate::routing::{ClusterRef, Forward};
use crate::snapshot::Snapshot;
use crate::upstream::Cluster;

/// What a TCP listener's connections are routed by.
#[derive(Debug, Clone)]
pub enum Routing {
    /// `--listen tcp://ADDR=HOST`: the host's `tcp` routes.
    Host(Arc<str>),
    /// A Gateway `TCP` port: the `tcp` routes bound to it.
    GatewayTcp(u16),
    /// A Gateway TLS passthrough port: the `tls` routes bound to it, by
    /// the ClientHello's SNI.
    GatewayTls(u16),
    /// A captured outbound connection, by the `tcp` routes of the host
    /// (VIP) it was sent to, if that host serves its port.
    Captured(Arc<str>),
}

/// Serves the TCP listener `listener`, routed by `routing`, until
/// `shutdown` turns true; then stops accepting and waits up to
/// `drain_timeout` for the open connections to end.
pub async fn serve(
    listener: TcpListener,
    routing: Routing,
    proxy: Arc<Proxy>,
    mut shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(error) => {
                warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        connections.spawn(relay(stream, routing.clone(), proxy.clone()));
    }
    drop(listener);
    let drained = tokio::time::timeout(drain_timeout, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        warn!(?drain_timeout, "drain timeout passed with TCP connections still open");
    }
}

/// Proxies one client connection.
async fn relay(client: TcpStream, routing: Routing, proxy: Arc<Proxy>) {
    let Ok(local) = client.local_addr() else { return };
    let log = proxy.access_log.tcp(&client);
    let sni = match routing {
        Routing::GatewayTls(_) => match passthrough::server_name(&client).await {
            Ok(sni) => sni,
            Err(error) => {
                debug!(%error, "TLS passthrough connection closed");
                return refuse(&proxy.metrics, &no_route_labels("unknown"), ResponseFlags::NR, log);
            }
        },
        Routing::Host(_) | Routing::GatewayTcp(_) | Routing::Captured(_) => None,
    };
    match target(&proxy, &routing, sni.as_deref(), local) {
        Ok(cluster) => relay_to(client, &cluster, log).await,
        Err((labels, flags)) => refuse(&proxy.metrics, &labels, flags, log),
    }
}

/// Proxies one client connection to an endpoint of `cluster`; `log` is its
/// access-log line.
pub async fn relay_to(mut client: TcpStream, cluster: &Cluster, mut log: TcpRecord) {
    log.cluster(cluster.name());
    let Some(picked) = cluster.pick(None, &[]) else {
        return refuse(cluster.metrics(), &cluster.service_labels(), ResponseFlags::UH, log);
    };
    let endpoint = picked.endpoint;
    log.upstream_host(endpoint.addr);
    let labels = endpoint.metrics.labels().clone();
    let metrics = cluster.metrics();
    metrics.tcp_opened(&labels);
    let _active = endpoint.clone().start();
    let connect = tokio::time::timeout(picked.connect_timeout, TcpStream::connect(endpoint.addr));
    let mut upstream = match connect.await {
        Ok(Ok(upstream)) => upstream,
        Ok(Err(error)) => {
            debug!(%error, addr = %endpoint.addr, "TCP upstream connect failed");
            log.finish("UF", 0, 0);
            return metrics.tcp_closed(&labels, &TcpClose { flags: "UF", sent: 0, received: 0 });
        }
        Err(_) => {
            log.finish("UF", 0, 0);
            return metrics.tcp_closed(&labels, &TcpClose { flags: "UF", sent: 0, received: 0 });
        }
    };
    let _ = upstream.set_nodelay(true);
    log.connected(&upstream);
    let (received, sent, flags) = match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((to_upstream, to_client)) => (to_upstream, to_client, "-"),
        Err(error) => {
            debug!(%error, "TCP connection ended with an error");
            (0, 0, "DC")
        }
    };
    metrics.tcp_closed(&labels, &TcpClose { flags, sent, received });
    log.finish(flags, received, sent);
}

/// The cluster for a connection arriving at `local` (whose ClientHello
/// names `sni`, on a passthrough port), or the labels and flag to count
/// its refusal with.
// Refusals are once per connection; boxing the error saves nothing.
#[allow(clippy::result_large_err)]
pub fn target(
    proxy: &Proxy,
    routing: &Routing,
    sni: Option<&str>,
    local: SocketAddr,
) -> Result<Arc<Cluster>, (DestinationLabels, ResponseFlags)> {
    let snapshot = proxy.snapshot.load();
    let named = match routing {
        Routing::Host(host) | Routing::Captured(host) => host,
        Routing::GatewayTcp(_) | Routing::GatewayTls(_) => sni.unwrap_or("unknown"),
    };
    let no_route = || (no_route_labels(named), ResponseFlags::NR);
    let forward = route(&snapshot, routing, sni, local).ok_or_else(no_route)?;
    match &forward.pick(fastrand::u32(..)).ok_or_else(no_route)?.cluster {
        ClusterRef::Known(id) => snapshot.clusters.get(id.0 as usize).cloned().ok_or_else(no_route),
        ClusterRef::Missing { service, .. } => {
            let labels = DestinationLabels::for_service(&service.host, &service.name, &service.namespace);
            Err((labels, ResponseFlags::NC))
        }
    }
}

/// The weighted destinations of the route a connection takes.
fn route<'s>(snapshot: &'s Snapshot, routing: &Routing, sni: Option<&str>, local: SocketAddr) -> Option<&'s Forward> {
    match routing {
        Routing::Host(host) => snapshot.table.find_tcp(host, local).map(|r| &r.forward),
        Routing::Captured(host) => snapshot.table.find_captured_tcp(host, local).map(|r| &r.forward),
        Routing::GatewayTcp(port) => snapshot.gateway(*port)?.find_tcp(local).map(|r| &r.forward),
        Routing::GatewayTls(port) => snapshot.gateway(*port)?.find_tls(sni, local).map(|r| &r.forward),
    }
}

/// The labels of a connection to `host` that found no route.
fn no_route_labels(host: &str) -> DestinationLabels {
    DestinationLabels::for_service(host, host, "unknown")
}

/// Counts (and logs) a connection meshd closed without an upstream (it was
/// counted neither opened nor anything else yet).
pub fn refuse(metrics: &Metrics, labels: &DestinationLabels, flags: ResponseFlags, log: TcpRecord) {
    let flags = flags.as_str();
    metrics.tcp_opened(labels);
    metrics.tcp_closed(labels, &TcpClose { flags: &flags, sent: 0, received: 0 });
    log.finish(&flags, 0, 0);
}
