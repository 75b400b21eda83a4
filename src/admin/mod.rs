//! The admin server: readiness, liveness, metrics and the config dump.
//!
//! | path | answer |
//! |---|---|
//! | `GET /ready` | 200 `ready` once a configuration is serving; 503 before that and while draining |
//! | `GET /healthz` | 200 `ok` while the process runs |
//! | `GET /stats/prometheus`, `GET /metrics` | Prometheus text |
//! | `GET /config_dump` | JSON: version, content hash, every resource |
//! | `GET /clusters` | text (JSON with `?format=json`): each cluster and endpoint, health, ejections, requests in flight, connections |
//! | `POST /reload`, `POST /drain` | 403 unless `--admin-allow-mutations`; see [`mutations`] |
//!
//! It binds loopback by default and changes nothing unless mutations are
//! explicitly allowed: every other path is a read.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

mod clusters;
pub mod mutations;

use crate::metrics::Metrics;
use crate::snapshot::Snapshot;

/// What the admin pages read.
pub struct AdminState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Arc<Metrics>,
    /// Set once the first configuration is applied and listeners are bound.
    pub ready: AtomicBool,
    /// Set when draining begins; `/ready` answers 503 from then on.
    pub draining: AtomicBool,
    /// `POST /reload` and `POST /drain`'s handles; `None` (they answer 403)
    /// without `--admin-allow-mutations`.
    pub mutations: Option<mutations::Mutations>,
}

/// Which of the admin API's pages a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everything (`--admin`, loopback by default).
    Admin,
    /// `/stats/prometheus` and `/metrics` only (`--stats`, Istio's 15090).
    Stats,
    /// `/healthz/ready` only (`--readiness`, Istio's 15021).
    Readiness,
}

// === impl AdminState ===

impl AdminState {
    /// Starts the drain (SIGTERM, `POST /drain`): `/ready` answers 503
    /// from now on, and `shutdown` tells the listeners to stop accepting.
    pub fn begin_drain(&self, shutdown: &watch::Sender<bool>) {
        self.draining.store(true, Ordering::Release);
        shutdown.send_replace(true);
    }
}

/// Serves the admin API on `listener` until `shutdown` turns true.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>, shutdown: watch::Receiver<bool>) {
    serve_scope(listener, state, Scope::Admin, shutdown).await
}

/// [`serve`] limited to the pages of `scope`.
pub async fn serve_scope(
    listener: TcpListener,
    state: Arc<AdminState>,
    scope: Scope,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    debug!(%error, "admin accept failed");
                    continue;
                }
            },
        };
        let state = state.clone();
        let service = service_fn(move |req| {
            let response = answer(&state, scope, &req);
            async move { Ok::<_, std::convert::Infallible>(response) }
        });
        tokio::spawn(async move {
            if let Err(error) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn answer(state: &AdminState, scope: Scope, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if let (Scope::Admin, Some(mutation)) = (scope, mutations::Mutation::from_path(path)) {
        return match *req.method() {
            Method::POST => mutations::apply(state, mutation),
            _ => text(StatusCode::METHOD_NOT_ALLOWED, "only POST\n"),
        };
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let allowed = match scope {
        Scope::Admin => true,
        Scope::Stats => matches!(path, "/stats/prometheus" | "/metrics"),
        Scope::Readiness => path == "/healthz/ready",
    };
    if !allowed {
        return text(StatusCode::NOT_FOUND, "not found\n");
    }
    match path {
        "/ready" | "/healthz/ready" => {
            if state.draining.load(Ordering::Acquire) {
                text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if state.ready.load(Ordering::Acquire) {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/stats/prometheus" | "/metrics" => {
            let mut response = text(StatusCode::OK, state.metrics.encode());
            response
                .headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            response
        }
        "/config_dump" => config_dump(&state.snapshot.load()),
        "/clusters" if req.uri().query().is_some_and(|q| q.split('&').any(|p| p == "format=json")) => {
            json(&clusters::json(&state.snapshot.load()))
        }
        "/clusters" => text(StatusCode::OK, clusters::text(&state.snapshot.load())),
        _ => text(StatusCode::NOT_FOUND, "not found; try /ready /healthz /stats/prometheus /config_dump /clusters\n"),
    }
}

fn config_dump(snapshot: &Snapshot) -> Response<Full<Bytes>> {
    let clusters: Vec<_> = snapshot
        .clusters
        .iter()
        .map(|c| {
            let state = c.state();
            serde_json::json!({
                "name": &**c.name(),
                "lb": format!("{:?}", state.spec.policy.lb),
                "endpoints": state.endpoints.endpoints.iter().map(|e| e.addr.to_string()).collect::<Vec<_>>(),
            })
        })
        .collect();
    let dump = Dump {
        version: snapshot.version,
        content_hash: format!("{:016x}", snapshot.config.content_hash),
        config: &snapshot.config.json,
        clusters,
    };
    json(&dump)
}

/// The `/config_dump` document.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Dump<'a> {
    version: u64,
    content_hash: String,
    config: &'a serde_json::value::RawValue,
    clusters: Vec<serde_json::Value>,
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("JSON encoding failed: {error}\n")),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
