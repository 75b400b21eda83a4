//! The immutable value the request path reads: one routing table bound to
//! live clusters, and the configuration it came from.
//!
//! A request does one `ArcSwap::load_full` of the current [`Snapshot`] and
//! uses it to the end of routing, so it never sees half of a reload.

use std::sync::Arc;

use crate::config::Config;
use crate::routing::RouteTable;
use crate::upstream::Cluster;

pub struct Snapshot {
    /// Increases by one with every applied configuration (0: none yet).
    pub version: u64,
    pub table: RouteTable,
    /// Indexed by `ClusterId`.
    pub clusters: Vec<Arc<Cluster>>,
    /// The configuration this snapshot was compiled from (`/config_dump`).
    pub config: Arc<Config>,
}

// === impl Snapshot ===

impl Snapshot {
    /// The snapshot before any configuration: every request gets 404 `NR`.
    pub fn empty() -> Self {
        Snapshot { version: 0, table: RouteTable::default(), clusters: Vec::new(), config: Arc::new(Config::default()) }
    }
}
