//! Wiring and lifecycle: build the shared state, apply the first
//! configuration, bind listeners and the admin port, reload on request,
//! and drain on shutdown.
//!
//! Shutdown is a `watch` channel every task listens to (mini-redis's
//! broadcast idiom): `/ready` turns 503, listeners stop accepting and give
//! open connections up to the drain timeout to finish, then the admin
//! server stops and [`RunningServer::wait`] returns.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;
use tracing::{info, warn};

mod background;
mod gateways;
mod reload;
mod workers;

pub use reload::{Outcome, Reloader};

use self::gateways::GatewayListeners;
use crate::admin::{self, AdminState};
use crate::config::keys::KeyDirs;
use crate::config::Sources;
use crate::metrics::{Metrics, SourceLabels};
use crate::proxy::{access_log, listener, tcp, Proxy};
use crate::sidecar::capture;
use crate::snapshot::Snapshot;

/// Pause after the first change event before reloading, so a burst of
/// events (an editor's save, a ConfigMap flip) costs one reload.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// How `meshd run` is configured.
#[derive(Clone, Debug)]
pub struct Options {
    pub config: Vec<PathBuf>,
    pub listen: Vec<SocketAddr>,
    pub admin: SocketAddr,
    pub namespace: String,
    pub drain_timeout: Duration,
    /// Watch the config paths for changes.
    pub watch: bool,
    /// Worker threads. 0 or 1: the listeners run on the caller's runtime;
    /// more: one thread per worker with a runtime and `SO_REUSEPORT`
    /// sockets of its own (see `workers`).
    pub workers: usize,
    /// TCP listeners, each bound to a host; they run on the caller's
    /// runtime.
    pub tcp: Vec<TcpListen>,
    /// Where the ports Gateways name are opened (`--gateway-bind-address`).
    pub gateway_bind: std::net::IpAddr,
    /// Where a Gateway's `credentialName` is read (`NAME/tls.crt`,
    /// `tls.key`, `ca.crt`; `--credentials-dir`).
    pub credentials_dir: Option<PathBuf>,
    /// The workload's mesh certificates for `ISTIO_MUTUAL` (`--mesh-cert-dir`).
    pub mesh_cert_dir: Option<PathBuf>,
    /// One line per request on stdout, or none (`--access-log`).
    pub access_log: access_log::Format,
    /// Sidecar capture and its companions (`--sidecar` and its flags).
    pub sidecar: SidecarOptions,
    /// Request and connection limits and timeouts (`--max-request-body`,
    /// `--max-connections`, `--request-headers-timeout`, `--idle-timeout`,
    /// `--request-body-timeout`).
    pub limits: crate::proxy::limits::Limits,
    /// Enables the admin API's `POST /reload` and `POST /drain`
    /// (`--admin-allow-mutations`); without it they answer 403.
    pub admin_allow_mutations: bool,
}

/// The sidecar listeners; all off by default.
#[derive(Clone, Debug, Default)]
pub struct SidecarOptions {
    /// The outbound capture listener (`--outbound`, 15001).
    pub outbound: Option<SocketAddr>,
    /// The inbound capture listener (`--inbound`, 15006).
    pub inbound: Option<SocketAddr>,
    /// `--outbound-traffic-policy REGISTRY_ONLY`: unknown destinations are
    /// refused instead of passed through (`ALLOW_ANY`).
    pub registry_only: bool,
    /// `/stats/prometheus` alone (`--stats`, 15090).
    pub stats: Option<SocketAddr>,
    /// `/healthz/ready` alone (`--readiness`, 15021).
    pub readiness: Option<SocketAddr>,
    /// The pod's labels (`--pod-labels`, a downward-API file), for
    /// `source_*` and the inbound `destination_*` labels.
    pub pod_labels: Option<PathBuf>,
}

/// A TCP listener bound to one host (`--listen tcp://ADDR=HOST`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TcpListen {
    pub addr: SocketAddr,
    /// The host whose TCP routes its connections take (any form a Host
    /// header may take: `db`, `db.prod`, the FQDN, a VIP).
    pub host: String,
}

/// One `--listen` value: `ADDR` (HTTP) or `tcp://ADDR=HOST`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Http(SocketAddr),
    Tcp(TcpListen),
}

/// A `--listen` value that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is neither ADDR nor tcp://ADDR=HOST")]
pub struct BadListen(String);

// === impl ListenAddr ===

impl std::str::FromStr for ListenAddr {
    type Err = BadListen;

    fn from_str(value: &str) -> Result<Self, BadListen> {
        let bad = || BadListen(value.to_owned());
        match value.strip_prefix("tcp://") {
            None => value.parse().map(ListenAddr::Http).map_err(|_| bad()),
            Some(rest) => {
                let (addr, host) = rest.split_once('=').ok_or_else(bad)?;
                let addr = addr.parse().map_err(|_| bad())?;
                let host = host.trim();
                if host.is_empty() {
                    return Err(bad());
                }
                Ok(ListenAddr::Tcp(TcpListen { addr, host: host.to_owned() }))
            }
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("cannot start worker threads: {0}")]
    Workers(#[source] std::io::Error),
}

/// A started server.
pub struct RunningServer {
    /// Bound proxy addresses (useful with port 0).
    pub listen_addrs: Vec<SocketAddr>,
    /// Bound TCP listener addresses, in `Options::tcp` order.
    pub tcp_addrs: Vec<SocketAddr>,
    pub admin_addr: SocketAddr,
    /// Bound sidecar listeners: outbound and inbound capture, stats,
    /// readiness (`None` when off).
    pub outbound_addr: Option<SocketAddr>,
    pub inbound_addr: Option<SocketAddr>,
    pub stats_addr: Option<SocketAddr>,
    pub readiness_addr: Option<SocketAddr>,
    pub admin: Arc<AdminState>,
    /// Asks the reload task for a reload.
    reload: Arc<Notify>,
    /// `true` starts the drain: listeners stop accepting.
    shutdown: watch::Sender<bool>,
    /// `true` once every listener has drained: the admin API (which must
    /// keep answering `/ready` with 503 while draining) and the reload task
    /// stop.
    stop: watch::Sender<bool>,
    /// Listener tasks (they end after draining), then the admin and reload
    /// tasks.
    listeners: JoinSet<()>,
    /// The worker threads, when listeners run on workers of their own.
    workers: Option<workers::Workers>,
    /// Cloned into every Gateway listener task; dropped by `wait` so that
    /// `gateways_closed` ends when the last of them has drained.
    gateways_open: Option<mpsc::Sender<()>>,
    gateways_closed: mpsc::Receiver<()>,
    background: JoinSet<()>,
    /// Keeps the file watcher alive.
    _watcher: Option<notify::RecommendedWatcher>,
}

// === impl RunningServer ===

impl RunningServer {
    /// Binds everything, applies the configuration once, and starts serving.
    /// An invalid first configuration is logged and the server starts
    /// anyway, not ready, waiting for a valid one.
    pub async fn start(options: Options) -> Result<Self, StartError> {
        let pod_labels = options.sidecar.pod_labels.as_deref().map(crate::metrics::read_pod_labels);
        let metrics = Metrics::new(SourceLabels::from_env(&options.namespace, &pod_labels.unwrap_or_default()))?;
        // Before the first compile: endpoints get one pool per worker, and
        // ISTIO_MUTUAL clusters find the mesh certificates.
        crate::upstream::shard::set_count(options.workers);
        if let Some(dir) = &options.mesh_cert_dir {
            crate::upstream::tls::set_mesh_cert_dir(dir.clone());
        }
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
        let sources = Sources { paths: options.config.clone(), namespace: options.namespace.clone() };
        let key_dirs =
            KeyDirs { credentials: options.credentials_dir.clone(), mesh_cert: options.mesh_cert_dir.clone() };
        let mut reloader = Reloader::new(sources, snapshot.clone(), metrics.clone()).with_key_dirs(key_dirs);
        let first = reloader.reload().await;

        let mut listeners_bound = Vec::new();
        let worker_sockets = if options.workers > 1 {
            let bound = workers::bind(&options.listen, options.workers);
            Some(bound.map_err(|(addr, source)| StartError::Bind { addr, source })?)
        } else {
            for addr in &options.listen {
                let listener =
                    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: *addr, source })?;
                listeners_bound.push(listener);
            }
            None
        };
        let admin_listener = TcpListener::bind(options.admin)
            .await
            .map_err(|source| StartError::Bind { addr: options.admin, source })?;
        let listen_addrs = match &worker_sockets {
            Some(sockets) => sockets.first().into_iter().flatten().filter_map(|l| l.local_addr().ok()).collect(),
            None => listeners_bound.iter().filter_map(|l| l.local_addr().ok()).collect::<Vec<_>>(),
        };
        let admin_addr =
            admin_listener.local_addr().map_err(|source| StartError::Bind { addr: options.admin, source })?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let reload = Arc::new(Notify::new());
        let mutations = options
            .admin_allow_mutations
            .then(|| admin::mutations::Mutations { reload: reload.clone(), drain: shutdown.clone() });
        let admin = Arc::new(AdminState {
            snapshot: snapshot.clone(),
            metrics: metrics.clone(),
            ready: Default::default(),
            draining: Default::default(),
            mutations,
        });
        let body_rules = crate::proxy::request_body::BodyRules::new(&options.limits, &metrics);
        let proxy = Arc::new(Proxy {
            snapshot,
            metrics,
            access_log: options.access_log,
            limits: options.limits.clone(),
            connections: Default::default(),
            body_rules,
        });
        let mut listeners = JoinSet::new();
        for listener in listeners_bound {
            listeners.spawn(listener::serve(listener, proxy.clone(), shutdown_rx.clone(), options.drain_timeout));
        }
        let mut tcp_addrs = Vec::with_capacity(options.tcp.len());
        for TcpListen { addr, host } in &options.tcp {
            let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr: *addr, source })?;
            tcp_addrs.push(listener.local_addr().map_err(|source| StartError::Bind { addr: *addr, source })?);
            let routing = tcp::Routing::Host(host.as_str().into());
            let serve = tcp::serve(listener, routing, proxy.clone(), shutdown_rx.clone(), options.drain_timeout);
            listeners.spawn(serve);
        }
        let workers = match worker_sockets {
            Some(sockets) => Some(
                workers::spawn(sockets, proxy.clone(), shutdown_rx.clone(), options.drain_timeout)
                    .map_err(StartError::Workers)?,
            ),
            None => None,
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut background = JoinSet::new();
        background.spawn(admin::serve(admin_listener, admin.clone(), stop_rx.clone()));
        let sidecar = &options.sidecar;
        let mut capture_addrs = [None, None];
        let allow_any = !sidecar.registry_only;
        let directions = [capture::Direction::Outbound { allow_any }, capture::Direction::Inbound];
        for ((addr, direction), bound) in
            [sidecar.outbound, sidecar.inbound].iter().zip(directions).zip(&mut capture_addrs)
        {
            let Some(addr) = addr else { continue };
            let listener = bind(*addr).await?;
            *bound = listener.local_addr().ok();
            let serve = capture::serve(listener, direction, proxy.clone(), shutdown_rx.clone(), options.drain_timeout);
            listeners.spawn(serve);
        }
        let mut scoped_addrs = [None, None];
        let scopes = [admin::Scope::Stats, admin::Scope::Readiness];
        for ((addr, scope), bound) in [sidecar.stats, sidecar.readiness].iter().zip(scopes).zip(&mut scoped_addrs) {
            let Some(addr) = addr else { continue };
            let listener = bind(*addr).await?;
            *bound = listener.local_addr().ok();
            background.spawn(admin::serve_scope(listener, admin.clone(), scope, stop_rx.clone()));
        }

        let (gateways_open, gateways_closed) = mpsc::channel(1);
        let mut gateways = GatewayListeners::new(
            options.gateway_bind,
            options.credentials_dir.clone(),
            proxy.clone(),
            shutdown_rx.clone(),
            options.drain_timeout,
            gateways_open.downgrade(),
        );
        gateways.reconcile(&proxy.snapshot.load_full().gateways).await;
        background.spawn(gateways::watch_certificates(
            proxy.snapshot.clone(),
            options.credentials_dir.clone(),
            reload.clone(),
            stop_rx.clone(),
        ));
        background.spawn(reload_task(reloader, gateways, reload.clone(), admin.clone(), stop_rx));
        let watcher = if options.watch {
            let notify = reload.clone();
            match crate::config::watch::watch(&options.config, move || notify.notify_one()) {
                Ok(watcher) => Some(watcher),
                Err(error) => {
                    // A path that does not exist yet cannot be watched; the
                    // proxy still serves, and SIGHUP still reloads.
                    warn!(%error, "cannot watch the configuration; reload with SIGHUP");
                    None
                }
            }
        } else {
            None
        };
        if matches!(first, Outcome::Applied { .. }) {
            admin.ready.store(true, Ordering::Release);
        }
        info!(listen = ?listen_addrs, tcp = ?tcp_addrs, admin = %admin_addr, "meshd listening");
        Ok(RunningServer {
            listen_addrs,
            tcp_addrs,
            admin_addr,
            outbound_addr: capture_addrs[0],
            inbound_addr: capture_addrs[1],
            stats_addr: scoped_addrs[0],
            readiness_addr: scoped_addrs[1],
            admin,
            reload,
            shutdown,
            stop,
            listeners,
            workers,
            gateways_open: Some(gateways_open),
            gateways_closed,
            background,
            _watcher: watcher,
        })
    }

    /// Asks for a reload (as SIGHUP does).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// Starts draining: `/ready` turns 503 and listeners stop accepting.
    pub fn shutdown(&self) {
        self.admin.begin_drain(&self.shutdown);
    }

    /// Resolves once draining has begun, by [`shutdown`](Self::shutdown) or
    /// the admin API's `POST /drain`.
    pub async fn drain_started(&self) {
        let _ = self.shutdown.subscribe().wait_for(|draining| *draining).await;
    }

    /// Waits until every listener has drained, then stops the rest.
    pub async fn wait(mut self) {
        while self.listeners.join_next().await.is_some() {}
        if let Some(workers) = self.workers.take() {
            workers.wait().await;
        }
        drop(self.gateways_open.take());
        while self.gateways_closed.recv().await.is_some() {}
        self.stop.send_replace(true);
        self.background.shutdown().await;
        // The last second of access-log lines.
        tokio::task::spawn_blocking(access_log::flush).await.ok();
        info!("meshd stopped");
    }
}

/// A listener on `addr`.
async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })
}

/// Runs reloads one at a time as requests arrive, debounced.
async fn reload_task(
    mut reloader: Reloader,
    mut gateways: GatewayListeners,
    requests: Arc<Notify>,
    admin: Arc<AdminState>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = requests.notified() => {}
        }
        tokio::time::sleep(DEBOUNCE).await;
        match reloader.reload().await {
            Outcome::Applied { .. } => {
                gateways.reconcile(&admin.snapshot.load_full().gateways).await;
                admin.ready.store(true, Ordering::Release)
            }
            // Same configuration: certificates may still have been rotated.
            Outcome::Unchanged => gateways.reconcile(&admin.snapshot.load_full().gateways).await,
            Outcome::Rejected { problems } => {
                warn!(problems = problems.len(), "reload refused");
            }
        }
    }
}
