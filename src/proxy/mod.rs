//! The request path.
//!
//! ```text
//! accept (listener) ─▶ hyper h1/h2 ─▶ service::handle
//!   ─▶ RouteTable::find ─▶ weighted destination ─▶ Cluster::pick
//!   ─▶ forward::send (pooled HTTP/1.1 connection)
//!   ─▶ response streamed back through body::ProxyBody
//!   ─▶ at its end: connection back to the pool, metrics recorded
//! ```
//! Failures before response headers become local replies (`local`) with Envoy's
//! status, body and response flag.

use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod body;
mod exchange;
pub mod flags;
mod forward;
pub mod hash_key;
pub mod headers;
pub mod listener;
mod local;
mod path;
pub mod service;

pub use flags::ResponseFlags;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// What every request needs, shared by all listeners and connections.
pub struct Proxy {
    /// The active snapshot, replaced whole on reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
}
