//! Serde types mirroring Istio's `networking.istio.io` kinds one to one, and
//! the envelope ([`Resource`]) that records where each object came from.
//!
//! The types accept `v1`, `v1beta1` and `v1alpha3` alike (same schema).
//! Deserialization is lenient about presence (most fields default) so that
//! [`crate::config::validate`] can report missing or contradictory fields
//! with Istio's own wording instead of a serde error.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

mod common;
mod destination_rule;
mod gateway;
mod service_entry;
mod virtual_service;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use service_entry::*;
pub use virtual_service::*;

/// The kinds meshd reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WorkloadEntry,
    Gateway,
}

/// Where a resource was read from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    /// The file, as given or found in a directory.
    pub file: Arc<Path>,
    /// Zero-based index of the YAML document in the file (and of the item
    /// inside a `kind: List`).
    pub document: usize,
}

/// `metadata`, the parts meshd uses.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta {
    pub name: String,
    /// Already defaulted: `metadata.namespace`, else the proxy's namespace.
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
}

/// One Istio object: metadata, typed spec and origin.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Resource<T> {
    pub kind: Kind,
    pub api_version: String,
    pub meta: Meta,
    pub spec: T,
    #[serde(skip)]
    pub source: Source,
}

/// `Kind namespace/name`, the way every message names a resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

// === impl Kind ===

impl Kind {
    pub fn from_name(kind: &str) -> Option<Kind> {
        Some(match kind {
            "VirtualService" => Kind::VirtualService,
            "DestinationRule" => Kind::DestinationRule,
            "ServiceEntry" => Kind::ServiceEntry,
            "WorkloadEntry" => Kind::WorkloadEntry,
            "Gateway" => Kind::Gateway,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::Gateway => "Gateway",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Resource ===

impl<T> Resource<T> {
    pub fn id(&self) -> ResourceId {
        ResourceId { kind: self.kind, namespace: self.meta.namespace.clone(), name: self.meta.name.clone() }
    }
}

// === impl ResourceId ===

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}
