//! meshd: an L7 proxy data plane that reads Istio networking YAML.
//!
//! # Layout
//!
//! Data flows top to bottom; each module owns one mechanism.
//!
//! - [`config`]: YAML files in (files, directories, multi-document,
//!   `kind: List`), typed Istio resources, Istio's validation rules (and
//!   the warnings for fields not applied yet), and the file watcher that
//!   asks for reloads.
//! - [`routing`]: compiles a validated [`config::Config`] into an immutable
//!   [`routing::RouteTable`] (virtual hosts by domain, ordered routes,
//!   weighted destinations, each route's timeout and retry policy in
//!   [`routing::retry`], its redirect, direct response, rewrite, header
//!   operations and fault in [`routing::actions`]) and one
//!   [`routing::ClusterSpec`] per `outbound|PORT|SUBSET|HOST` cluster,
//!   whose [`routing::ClusterPolicy`]
//!   is the DestinationRule's traffic policy after Istio's port-level and
//!   subset overrides, with Istio's and Envoy's defaults applied.
//! - [`upstream`]: the long-lived, stateful side: clusters and their
//!   endpoints (static or DNS), balancing and consistent hashing
//!   ([`upstream::hash`]), per-endpoint connection pools (`pool`),
//!   cluster-wide circuit breakers ([`upstream::resources`]), outlier
//!   detection ([`upstream::outlier`], with the `sweep` task that returns
//!   ejected endpoints), one immutable `cluster_state` per change, and the
//!   counters behind Envoy's cluster stats ([`upstream::stats`]).
//!   Reconciled, not rebuilt, on reload.
//! - [`snapshot`]: the one value behind the `ArcSwap` that a request reads:
//!   the route table bound to live clusters.
//! - [`proxy`]: listeners and the request path (route, hash key, then the
//!   router in `exchange`: circuit breaking, attempts, retries, timeouts,
//!   results to outlier detection; stream back; local replies with Envoy's
//!   response flags).
//! - [`metrics`]: the Prometheus registry with Istio's standard metrics,
//!   and [`metrics::clusters`], Envoy's `envoy_cluster_*` stats collected
//!   from the live clusters at scrape time.
//! - [`admin`]: `/ready`, `/healthz`, `/stats/prometheus`, `/config_dump`,
//!   and `/clusters` (`admin::clusters`: endpoint health and ejections,
//!   text or JSON).
//! - [`sidecar`]: sidecar mode: the iptables rules (`meshd iptables`), the
//!   outbound and inbound capture listeners (original destination,
//!   protocol sniffing, `ALLOW_ANY`/`REGISTRY_ONLY`, inbound to the app).
//! - [`server`]: wiring and lifecycle (first load, reloads prepared on
//!   `SCHED_IDLE` threads so they never take CPU from requests, drain);
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
pub mod sidecar;
pub mod signals;
pub mod snapshot;
pub mod upstream;
