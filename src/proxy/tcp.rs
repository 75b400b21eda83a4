//! TCP listeners (`--listen tcp://ADDR=HOST`): each connection is routed by
//! the host's TCP routes ([`RouteTable::find_tcp`]) to a weighted
//! destination, an endpoint is picked by the cluster's balancer, and bytes
//! are copied both ways until both sides are done, a half-close passed on
//! (`tokio::io::copy_bidirectional` shuts the other side's write half down
//! when one side ends its stream).
//!
//! Failures close the client's connection and are counted in
//! `istio_tcp_connections_closed_total` with Envoy's flag: no route `NR`,
//! an unknown cluster `NC`, no healthy endpoint `UH`, a failed connect `UF`.
//! With `--access-log`, each connection gets a line at its end.
//!
//! [`RouteTable::find_tcp`]: crate::routing::RouteTable::find_tcp

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use super::access_log::TcpRecord;
use super::flags::ResponseFlags;
use super::Proxy;
use crate::metrics::{DestinationLabels, TcpClose};
use crate::routing::ClusterRef;
use crate::upstream::Cluster;

/// Serves the TCP listener `listener`, bound to `host`, until `shutdown`
/// turns true; then stops accepting and waits up to `drain_timeout` for
/// the open connections to end.
pub async fn serve(
    listener: TcpListener,
    host: Arc<str>,
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
        connections.spawn(relay(stream, host.clone(), proxy.clone()));
    }
    drop(listener);
    let drained = tokio::time::timeout(drain_timeout, async { while connections.join_next().await.is_some() {} });
    if drained.await.is_err() {
        warn!(?drain_timeout, "drain timeout passed with TCP connections still open");
    }
}

/// Proxies one client connection.
async fn relay(mut client: TcpStream, host: Arc<str>, proxy: Arc<Proxy>) {
    let Ok(local) = client.local_addr() else { return };
    let mut log = proxy.access_log.tcp(&client);
    let cluster = match target(&proxy, &host, local) {
        Ok(cluster) => cluster,
        Err((labels, flags)) => return refuse(&proxy, &labels, flags, log),
    };
    log.cluster(cluster.name());
    let Some(picked) = cluster.pick(None, &[]) else {
        return refuse(&proxy, &cluster.service_labels(), ResponseFlags::UH, log);
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

/// The cluster for a connection to `host` arriving at `local`, or the
/// labels and flag to count its refusal with.
fn target(proxy: &Proxy, host: &str, local: SocketAddr) -> Result<Arc<Cluster>, (DestinationLabels, ResponseFlags)> {
    let snapshot = proxy.snapshot.load();
    let no_route = || (DestinationLabels::for_service(host, host, "unknown"), ResponseFlags::NR);
    let route = snapshot.table.find_tcp(host, local).ok_or_else(no_route)?;
    match &route.forward.pick(fastrand::u32(..)).ok_or_else(no_route)?.cluster {
        ClusterRef::Known(id) => snapshot.clusters.get(id.0 as usize).cloned().ok_or_else(no_route),
        ClusterRef::Missing { service, .. } => {
            let labels = DestinationLabels::for_service(&service.host, &service.name, &service.namespace);
            Err((labels, ResponseFlags::NC))
        }
    }
}

/// Counts (and logs) a connection meshd closed without an upstream (it was
/// counted neither opened nor anything else yet).
fn refuse(proxy: &Proxy, labels: &DestinationLabels, flags: ResponseFlags, log: TcpRecord) {
    let flags = flags.as_str();
    proxy.metrics.tcp_opened(labels);
    proxy.metrics.tcp_closed(labels, &TcpClose { flags: &flags, sent: 0, received: 0 });
    log.finish(&flags, 0, 0);
}
