//! `GET /clusters`: every cluster of the active snapshot and each of its
//! endpoints with health, ejections, requests in flight and connections,
//! as Envoy's admin page of that name lists them (text), or as JSON with
//! `?format=json`.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::snapshot::Snapshot;
use crate::upstream::outlier::OutlierStatus;
use crate::upstream::{Cluster, Endpoint};

#[derive(Serialize)]
struct ClusterView {
    name: String,
    /// Endpoints not ejected, and whether balancing ignores health.
    healthy: usize,
    panic: bool,
    endpoints: Vec<EndpointView>,
}

#[derive(Serialize)]
struct EndpointView {
    address: String,
    weight: u32,
    /// `healthy` or `ejected`.
    health: &'static str,
    /// Times outlier detection ejected the endpoint.
    ejections: u32,
    /// Until the sweep may return it; 0 when not ejected.
    ejection_time_left_ms: u64,
    active_requests: u32,
    /// Open upstream connections (idle and busy).
    connections: usize,
    idle_connections: usize,
}

/// The JSON form.
pub fn json(snapshot: &Snapshot) -> serde_json::Value {
    let clusters: Vec<_> = snapshot.clusters.iter().map(|c| view(c)).collect();
    serde_json::json!({ "clusters": clusters })
}

/// The text form: one `cluster::address::stat::value` line per fact.
pub fn text(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for cluster in &snapshot.clusters {
        let view = view(cluster);
        let name = &view.name;
        let _ = writeln!(out, "{name}::healthy_endpoints::{}", view.healthy);
        if view.panic {
            let _ = writeln!(out, "{name}::panic::true");
        }
        for e in &view.endpoints {
            let a = &e.address;
            let _ = writeln!(out, "{name}::{a}::health::{}", e.health);
            if e.health == "ejected" {
                let left = e.ejection_time_left_ms;
                let _ = writeln!(out, "{name}::{a}::outlier::ejected ({} ejections, {left} ms left)", e.ejections);
            }
            let _ = writeln!(out, "{name}::{a}::ejections::{}", e.ejections);
            let _ = writeln!(out, "{name}::{a}::rq_active::{}", e.active_requests);
            let _ = writeln!(out, "{name}::{a}::cx_active::{}", e.connections);
            let _ = writeln!(out, "{name}::{a}::cx_idle::{}", e.idle_connections);
            let _ = writeln!(out, "{name}::{a}::weight::{}", e.weight);
        }
    }
    out
}

fn view(cluster: &Cluster) -> ClusterView {
    let state = cluster.state();
    let now = Instant::now();
    let status = |e: &Endpoint| match &state.spec.policy.outlier {
        Some(config) => e.outlier.status(config, now),
        None => OutlierStatus { ejected: false, num_ejections: 0, multiplier: 0, time_left: None },
    };
    let endpoints = state
        .endpoints
        .endpoints
        .iter()
        .map(|e| {
            let s = status(e);
            EndpointView {
                address: e.addr.to_string(),
                weight: e.weight(),
                health: if s.ejected { "ejected" } else { "healthy" },
                ejections: s.num_ejections,
                ejection_time_left_ms: s.time_left.map_or(0, |d| millis(d).max(1)),
                active_requests: e.active_requests(),
                connections: e.pools().iter().map(|p| p.open_count()).sum(),
                idle_connections: e.pools().iter().map(|p| p.idle_count()).sum(),
            }
        })
        .collect();
    ClusterView { name: cluster.name().to_string(), healthy: state.healthy_count(), panic: state.panic, endpoints }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
