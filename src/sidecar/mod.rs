//! Sidecar mode: meshd next to an application in its pod, as Istio runs
//! Envoy (spec §7).
//!
//! - [`iptables`]: the NAT rules that redirect the pod's TCP traffic to
//!   the capture listeners (`meshd iptables`, run by an init container).
//! - `original_dst`: where a redirected connection was going
//!   (`SO_ORIGINAL_DST`).
//! - [`capture`]: the outbound (15001) and inbound (15006) listeners:
//!   protocol sniffing, HTTP through the request path (see
//!   [`crate::proxy::capture`]), TCP relayed, `ALLOW_ANY` and
//!   `REGISTRY_ONLY` for unknown destinations, inbound to the app on
//!   `127.0.0.1`.
//! - [`wait_ready`]: `meshd wait-ready`, for images that hold the app until
//!   the proxy is ready.

pub mod capture;
pub mod iptables;
mod original_dst;
pub mod wait_ready;

pub use original_dst::original_dst;
