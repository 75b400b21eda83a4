//! The immutable value the request path reads: one routing table bound to
//! live clusters, and the configuration it came from.
//!
//! A request does one `ArcSwap::load_full` of the current [`Snapshot`] and
//! uses it to the end of routing, so it never sees half of a reload.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::config::Config;
use crate::routing::{GatewayListener, RouteTable};
use crate::upstream::Cluster;

pub struct Snapshot {
    /// Increases by one with every applied configuration (0: none yet).
    pub version: u64,
    /// The mesh's (sidecar) listeners' routes.
    pub table: RouteTable,
    /// The Gateways' listeners, by port, with their routes.
    pub gateways: Vec<GatewayListener>,
    /// Indexed by `ClusterId`.
    pub clusters: Vec<Arc<Cluster>>,
    /// The configuration this snapshot was compiled from (`/config_dump`).
    pub config: ConfigDump,
}

/// The active configuration as `/config_dump` shows it, kept as compact
/// JSON rather than as the typed resources: nothing but the dump reads it
/// after compilation, and the text is a fraction of the tree's size (1,000
/// services: ~7 MB of resources in ~100,000 allocations).
pub struct ConfigDump {
    /// Hash of the files' names and contents.
    pub content_hash: u64,
    /// The resources, serialized once when the snapshot is built.
    pub json: Box<RawValue>,
}

// === impl Snapshot ===

impl Snapshot {
    /// The snapshot before any configuration: every request gets 404 `NR`.
    pub fn empty() -> Self {
        Snapshot {
            version: 0,
            table: RouteTable::default(),
            gateways: Vec::new(),
            clusters: Vec::new(),
            config: ConfigDump::of(&Config::default()),
        }
    }
}

impl Snapshot {
    /// The Gateway listener on `port`, if the configuration has one.
    pub fn gateway(&self, port: u16) -> Option<&GatewayListener> {
        self.gateways.iter().find(|g| g.port == port)
    }
}

// === impl ConfigDump ===

impl ConfigDump {
    pub fn of(config: &Config) -> Self {
        // Serializing plain data into memory cannot fail; were it to, the
        // dump says so instead of failing the reload.
        let json = serde_json::value::to_raw_value(config).unwrap_or_else(|e| {
            let note = serde_json::json!({ "error": format!("configuration not serializable: {e}") });
            serde_json::value::to_raw_value(&note).unwrap_or_default()
        });
        ConfigDump { content_hash: config.content_hash, json }
    }
}
