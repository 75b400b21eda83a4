//! `ServiceEntry` and `WorkloadEntry` (networking.istio.io), field for field.

use serde::{Deserialize, Serialize};

use super::common::{Labels, PortMap, WorkloadSelector};

#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceEntry {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<Resolution>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<WorkloadEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub number: u32,
    /// Upper-case as Istio writes it; empty means "sniff".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u32>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Location {
    #[default]
    MeshExternal,
    MeshInternal,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Resolution {
    #[default]
    None,
    Static,
    Dns,
    DnsRoundRobin,
    DynamicDns,
}

/// A `WorkloadEntry`: standalone, or inline as a ServiceEntry endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntry {
    #[serde(default)]
    pub address: String,
    /// Service port name → endpoint port.
    #[serde(default, skip_serializing_if = "PortMap::is_empty")]
    pub ports: PortMap,
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<String>,
    /// 0 or absent means 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// The protocol families of a service port, from its `protocol` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    Http,
    Http2,
    Grpc,
    Https,
    Tls,
    Tcp,
    /// Mongo, Redis, MySQL, UDP…: opaque to meshd.
    Other,
    /// No protocol given: Istio sniffs.
    Unspecified,
}

// === impl ServicePort ===

impl ServicePort {
    pub fn protocol(&self) -> PortProtocol {
        match self.protocol.as_deref().map(str::to_ascii_uppercase).as_deref() {
            None | Some("") => PortProtocol::Unspecified,
            Some("HTTP") => PortProtocol::Http,
            Some("HTTP2") => PortProtocol::Http2,
            Some("GRPC") | Some("GRPC-WEB") => PortProtocol::Grpc,
            Some("HTTPS") => PortProtocol::Https,
            Some("TLS") => PortProtocol::Tls,
            Some("TCP") => PortProtocol::Tcp,
            Some(_) => PortProtocol::Other,
        }
    }

    /// The port endpoints listen on when they do not name one.
    pub fn endpoint_port(&self) -> u32 {
        self.target_port.filter(|p| *p != 0).unwrap_or(self.number)
    }
}

// === impl PortProtocol ===

impl PortProtocol {
    /// Whether meshd's HTTP proxy serves this port.
    pub fn is_http(self) -> bool {
        matches!(self, Self::Http | Self::Http2 | Self::Grpc | Self::Unspecified)
    }
}

// === impl WorkloadEntry ===

impl WorkloadEntry {
    /// Endpoint weight with Istio's default (0/unset ⇒ 1).
    pub fn effective_weight(&self) -> u32 {
        self.weight.filter(|w| *w > 0).unwrap_or(1)
    }
}
