//! Periodic DNS resolution for `resolution: DNS` ServiceEntries (Envoy's
//! `STRICT_DNS`: every address found is an endpoint).
//!
//! The system resolver (`getaddrinfo` on a blocking thread) gives no TTL,
//! so names are re-resolved every [`REFRESH`]. A failed lookup keeps the
//! previous addresses. When a name has IPv4 addresses only those are used
//! (as Istio's default `V4_ONLY`/`V4_PREFERRED` lookup family on an IPv4
//! pod), else its IPv6 ones.

use std::net::SocketAddr;
use std::sync::Weak;
use std::time::Duration;

use tracing::{debug, warn};

use super::cluster::Cluster;
use crate::routing::{DnsTarget, EndpointSpec};

/// How often names are re-resolved.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Resolves `targets` now and every [`REFRESH`] until the cluster is gone.
pub fn spawn(cluster: Weak<Cluster>, targets: Vec<DnsTarget>) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        let mut last: Option<Vec<EndpointSpec>> = None;
        loop {
            let resolved = resolve_all(&targets).await;
            let Some(cluster) = cluster.upgrade() else { return };
            match resolved {
                Some(found) if last.as_ref() != Some(&found) => {
                    debug!(cluster = %cluster.name(), endpoints = found.len(), "DNS resolved");
                    cluster.set_resolved(found.clone());
                    last = Some(found);
                }
                Some(_) => {}
                None if last.is_none() => cluster.set_resolved(Vec::new()),
                None => {}
            }
            drop(cluster);
            tokio::time::sleep(REFRESH).await;
        }
    })
    .abort_handle()
}

/// Every target's addresses, or `None` if any lookup failed (so a partial
/// failure does not shrink the endpoint set).
async fn resolve_all(targets: &[DnsTarget]) -> Option<Vec<EndpointSpec>> {
    let mut out = Vec::new();
    let mut failed = false;
    for target in targets {
        match tokio::net::lookup_host((&*target.hostname, target.port)).await {
            Ok(addrs) => {
                let addrs: Vec<SocketAddr> = addrs.collect();
                let v4 = addrs.iter().any(SocketAddr::is_ipv4);
                let mut chosen: Vec<SocketAddr> = addrs.into_iter().filter(|a| a.is_ipv4() == v4).collect();
                chosen.sort();
                chosen.dedup();
                out.extend(chosen.into_iter().map(|addr| EndpointSpec {
                    addr,
                    weight: target.weight,
                    labels: target.labels.clone(),
                }));
            }
            Err(error) => {
                warn!(host = %target.hostname, %error, "DNS resolution failed");
                failed = true;
            }
        }
    }
    (!failed).then_some(out)
}
