//! meshd: an L7 proxy data plane that reads Istio networking YAML.
//!
//! # Layout
//!
//! Data flows top to bottom; each module owns one mechanism.
//!
//! - [`config`]: YAML files in (files, directories, multi-document,
//!   `kind: List`), typed Istio resources, Istio's validation rules, and the
//!   file watcher that asks for reloads.
//! - [`routing`]: compiles a validated [`config::Config`] into an immutable
//!   [`routing::RouteTable`] (virtual hosts by domain, ordered routes,
//!   weighted destinations) and one [`routing::ClusterSpec`] per
//!   `outbound|PORT|SUBSET|HOST` cluster.
//! - [`upstream`]: the long-lived, stateful side: clusters and their
//!   endpoints (static or DNS), balancing, per-endpoint connection pools.
//!   Reconciled, not rebuilt, on reload.
//! - [`snapshot`]: the one value behind the `ArcSwap` that a request reads:
//!   the route table bound to live clusters.
//! - [`proxy`]: listeners and the request path (route, pick, forward, stream
//!   back, local replies with Envoy's response flags).
//! - [`metrics`]: the Prometheus registry with Istio's standard metrics.
//! - [`admin`]: `/ready`, `/healthz`, `/stats/prometheus`, `/config_dump`.
//! - [`server`]: wiring and lifecycle (first load, reloads, drain);
//!   [`signals`] maps SIGHUP and SIGTERM onto it.
//! - [`echo`] and [`demo`]: the built-in upstream and the quickstart demo.

#![forbid(unsafe_code)]

pub mod admin;
pub mod config;
pub mod demo;
pub mod echo;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod signals;
pub mod snapshot;
pub mod upstream;
