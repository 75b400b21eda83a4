//! The request path.
//!
//! ```text
//! accept (listener) ─▶ hyper h1/h2 ─▶ service::handle
//!   ─▶ RouteTable::find ─▶ weighted destination ─▶ cluster + route policy
//!   ─▶ hash_key (consistent-hash clusters: header, cookie, source IP, query)
//!   ─▶ exchange::run, the router:
//!        max_requests slot ─▶ attempt: Cluster::pick (avoiding tried hosts)
//!        ─▶ forward::send (pooled HTTP/1.1 connection) ─▶ response headers
//!        ─▶ result to outlier detection ─▶ retriable? backoff, next attempt
//!   ─▶ response streamed back through body::ProxyBody
//!   ─▶ at its end: connection back to the pool, metrics recorded
//! ```
//!
//! - `service`: routing, the hash key, request preparation (forwarding
//!   headers, origin-form URI, hop-by-hop headers removed).
//! - `exchange`: Envoy's router filter. Circuit breaking at the request
//!   (`max_requests`, 503 `UO` with `x-envoy-overloaded`); retries with
//!   jittered backoff, `max_retries` slots and previous-host avoidance; the
//!   route timeout over all attempts and the per-try timeout (504 `UT`);
//!   `URX` when retries run out; each attempt's result reported to the
//!   cluster's outlier detection. `replay`: the copy of a request (head and
//!   small or teed body) kept when the retry policy can retry after
//!   sending.
//! - `forward`: one attempt on one endpoint; a request that never left
//!   (connect failure, dead reused connection) is handed back for a retry.
//! - `local`: failures before response headers become local replies with
//!   Envoy's status, body and response flag (`flags`).
//! - `actions`: a rule's redirect, direct response, CORS preflight and
//!   fault abort replies, and the rewrite and header operations of a
//!   forwarded request; `mirror`: fire-and-forget copies to mirror clusters.
//! - `tcp`: TCP listeners bound to a host, and Gateway `TCP` and TLS
//!   passthrough ports, routed by `tcp` or `tls` routes and relayed byte
//!   for byte; `passthrough`: the SNI of a ClientHello, peeked without
//!   terminating; `upgrade`: HTTP/1.1 `Upgrade`s (WebSocket) tunnelled
//!   after the 101; `terminate`: TLS for Gateway `HTTPS` servers
//!   (certificates by SNI); `xfcc`: `x-forwarded-client-cert` from the
//!   client's certificate.
//! - `body`: the response body stream and the bookkeeping at its end;
//!   `headers`, `path`: header and path handling; `listener`: accept loops.
//! - `access_log`: one line per request (and per TCP connection) on
//!   stdout, Envoy's text format or JSON with Istio's keys, recorded where
//!   the metrics are.
//! - `limits`: hostile and slow clients: request checks hyper leaves to
//!   meshd, connection limits, the idle watchdog; `request_body`: the
//!   request body's size limit and idle timeout while it streams.

use std::sync::Arc;

use arc_swap::ArcSwap;

pub mod access_log;
mod actions;
pub mod body;
pub mod capture;
pub mod detect;
mod exchange;
pub mod flags;
mod forward;
pub mod hash_key;
pub mod headers;
pub mod limits;
pub mod listener;
mod local;
mod mirror;
mod overrides;
pub mod passthrough;
mod path;
mod replay;
pub mod request_body;
pub mod service;
pub mod tcp;
pub mod terminate;
mod upgrade;
pub mod xfcc;

pub use flags::ResponseFlags;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// What every request needs, shared by all listeners and connections.
pub struct Proxy {
    /// The active snapshot, replaced whole on reload.
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// The access log's format (`Off`: none, at no cost).
    pub access_log: access_log::Format,
    /// Request and connection limits and timeouts (`limits`).
    pub limits: limits::Limits,
    /// Downstream connections open now, against `limits.max_connections`.
    pub connections: Arc<limits::ConnectionCount>,
    /// `limits`' rules for request bodies as they stream, shared by their
    /// guards.
    pub body_rules: Arc<request_body::BodyRules>,
}
