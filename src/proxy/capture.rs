//! The request path's side of sidecar capture: what a connection that
//! iptables redirected to meshd (see [`crate::sidecar`]) changes for its
//! requests (spec §1.7 step 5, §7.3).
//!
//! - **Outbound** (15001): requests are routed by Host as on the mesh
//!   listeners, `match.port` compared with the original destination's
//!   port. A Host no virtual host takes goes, under `ALLOW_ANY`, to the
//!   original destination (Envoy's `PassthroughCluster`: no timeout, no
//!   retries), or under `REGISTRY_ONLY` gets `502` (`BlackHoleCluster`).
//! - **Inbound** (15006): every request goes to the app on
//!   `127.0.0.1:<original port>`, reported by the destination
//!   (`reporter="destination"`).

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use http::StatusCode;

use super::flags::ResponseFlags;
use super::local::LocalReply;
use crate::metrics::{DestinationLabels, Metrics, Reporter};
use crate::routing::retry::RoutePolicy;
use crate::routing::ServiceMeta;
use crate::upstream::Cluster;

/// A connection the sidecar listeners captured.
pub struct Captured {
    /// Where the client sent the connection (`SO_ORIGINAL_DST`).
    pub original: SocketAddr,
    pub direction: Direction,
    /// The route policy of requests no route configures (passthrough and
    /// inbound): no timeout, no retries, as Istio's routes for them.
    pub policy: Arc<RoutePolicy>,
}

/// Which way a captured connection goes.
pub enum Direction {
    /// From the app: routed by Host. `passthrough` is the cluster of the
    /// original destination, made at the first request no route takes;
    /// `None` under `REGISTRY_ONLY`.
    Outbound { passthrough: Option<OnceLock<Arc<Cluster>>> },
    /// To the app: every request goes to `app`.
    Inbound { app: Arc<Cluster> },
}

/// Envoy's name for the original-destination cluster.
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// Envoy's name for the cluster of refused destinations.
pub const BLACK_HOLE_CLUSTER: &str = "BlackHoleCluster";

// === impl Captured ===

impl std::fmt::Debug for Captured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let direction = match self.direction {
            Direction::Outbound { .. } => "outbound",
            Direction::Inbound { .. } => "inbound",
        };
        f.debug_struct("Captured").field("original", &self.original).field("direction", &direction).finish()
    }
}

impl Captured {
    /// An outbound connection to `original`; `allow_any` for
    /// `ALLOW_ANY`, else `REGISTRY_ONLY`.
    pub fn outbound(original: SocketAddr, allow_any: bool, policy: Arc<RoutePolicy>) -> Self {
        let passthrough = allow_any.then(OnceLock::new);
        Captured { original, direction: Direction::Outbound { passthrough }, policy }
    }

    /// An inbound connection to `original`, served by `app`.
    pub fn inbound(original: SocketAddr, app: Arc<Cluster>, policy: Arc<RoutePolicy>) -> Self {
        Captured { original, direction: Direction::Inbound { app }, policy }
    }

    /// The app's cluster, for an inbound connection.
    pub fn app(&self) -> Option<&Arc<Cluster>> {
        match &self.direction {
            Direction::Inbound { app } => Some(app),
            Direction::Outbound { .. } => None,
        }
    }

    /// Where an outbound request for `host` that no virtual host takes
    /// goes: the original destination, or a `502` (with the labels its
    /// metrics are recorded against).
    // The error is built once per unmatched connection, on a cold path;
    // boxing it would add an allocation there and save nothing.
    #[allow(clippy::result_large_err)]
    pub fn unmatched(
        &self,
        host: &str,
        metrics: &Arc<Metrics>,
    ) -> Result<Arc<Cluster>, (LocalReply, DestinationLabels)> {
        let Direction::Outbound { passthrough: Some(cluster) } = &self.direction else {
            let reply = LocalReply::new(StatusCode::BAD_GATEWAY, ResponseFlags::NONE, "");
            return Err((reply, black_hole_labels(host)));
        };
        Ok(cluster.get_or_init(|| passthrough_cluster(host, self.original, metrics)).clone())
    }
}

/// `PassthroughCluster` to `original`, for traffic to `host` (an HTTP Host
/// or a TCP destination) no route takes under `ALLOW_ANY`.
pub fn passthrough_cluster(host: &str, original: SocketAddr, metrics: &Arc<Metrics>) -> Arc<Cluster> {
    let service = ServiceMeta {
        host: host.into(),
        name: PASSTHROUGH_CLUSTER.into(),
        namespace: "unknown".into(),
        reporter: Reporter::Source,
    };
    Cluster::single(PASSTHROUGH_CLUSTER, service, original, Default::default(), metrics)
}

/// The destination labels of traffic to `host` refused under
/// `REGISTRY_ONLY` (`BlackHoleCluster`).
pub fn black_hole_labels(host: &str) -> DestinationLabels {
    DestinationLabels::for_service(host, BLACK_HOLE_CLUSTER, "unknown")
}
