//! The Gateways' listeners, opened and closed as the configuration changes.
//!
//! After every applied configuration [`GatewayListeners::reconcile`] opens
//! a listener on `--gateway-bind-address` for each port a Gateway names
//! that has none yet, and drains those whose port is gone or now serves
//! another kind (HTTP, TLS passthrough, TCP: [`PortKind`]). HTTP ports
//! serve with [`listener::serve_on`], passthrough and TCP ports with
//! [`tcp::serve`]. A port that cannot be bound is logged and skipped; the
//! rest of the configuration serves. Each listener task holds a sender of one channel; the server's
//! shutdown waits until the last is dropped, so Gateway listeners drain
//! like the others on SIGTERM.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;

use arc_swap::ArcSwapOption;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::proxy::listener::TlsConfig;
use crate::proxy::{listener, tcp, terminate, Proxy};
use crate::routing::{GatewayListener, PortKind};

/// The open Gateway listeners and what opening another needs.
pub struct GatewayListeners {
    /// The address every Gateway port binds on.
    bind: IpAddr,
    proxy: Arc<Proxy>,
    /// The server's shutdown: every Gateway listener drains on it.
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
    /// Where `credentialName`s are read (`--credentials-dir`).
    credentials: Option<PathBuf>,
    /// Port → the listener open on it.
    running: HashMap<u16, Running>,
    /// Handed (upgraded) to each listener task; weak here, so that once
    /// the server drops its sender no new listener can start and the
    /// server's wait ends with the last task.
    open: mpsc::WeakSender<()>,
}

/// One open Gateway listener.
struct Running {
    addr: SocketAddr,
    /// What it serves: a port whose kind changes is opened anew.
    kind: PortKind,
    /// Drains this listener alone.
    stop: watch::Sender<bool>,
    /// `HTTPS`: the configuration new connections take; `None` in clear.
    tls: Option<TlsConfig>,
}

// === impl GatewayListeners ===

impl GatewayListeners {
    pub fn new(
        bind: IpAddr,
        credentials: Option<PathBuf>,
        proxy: Arc<Proxy>,
        shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
        open: mpsc::WeakSender<()>,
    ) -> Self {
        GatewayListeners { bind, proxy, shutdown, drain_timeout, credentials, running: HashMap::new(), open }
    }

    /// Opens a listener for each Gateway port not open yet, drains the
    /// ones no Gateway names any more (or whose protocol changed), and
    /// rebuilds every `HTTPS` port's TLS configuration from its files, so
    /// a reload (SIGHUP included) picks up rotated certificates; open
    /// connections keep theirs. A port drained because it changed is
    /// opened anew once its old listener has let go of it.
    pub async fn reconcile(&mut self, wanted: &[GatewayListener]) {
        let mut drained = Vec::new();
        self.running.retain(|port, running| {
            let keep = wanted
                .iter()
                .any(|g| g.port == *port && g.kind == running.kind && g.tls.is_empty() == running.tls.is_none());
            if !keep {
                info!(addr = %running.addr, "Gateway port removed or changed; draining its listener");
                running.stop.send_replace(true);
                drained.push(*port);
            }
            keep
        });
        for gateway in wanted {
            let tls = match gateway.tls.as_slice() {
                [] => None,
                servers => match terminate::Termination::new(servers, self.credentials.as_deref()) {
                    Ok(config) => Some(config),
                    Err(error) => {
                        error!(port = gateway.port, %error, "cannot build the Gateway port's TLS configuration");
                        continue;
                    }
                },
            };
            match self.running.get(&gateway.port) {
                Some(running) => {
                    if let (Some(slot), Some(config)) = (&running.tls, tls) {
                        slot.store(Some(config));
                    }
                }
                None => {
                    let tls = tls.map(|c| Arc::new(ArcSwapOption::new(Some(c))));
                    self.open(gateway.port, gateway.kind, tls, drained.contains(&gateway.port)).await
                }
            }
        }
    }

    /// Opens `port`; `drained`: its previous listener was just told to
    /// drain, and may hold the port a moment longer.
    async fn open(&mut self, port: u16, kind: PortKind, tls: Option<TlsConfig>, drained: bool) {
        let Some(open) = self.open.upgrade() else { return };
        let addr = SocketAddr::new(self.bind, port);
        let listener = match bind_freed(addr, drained).await {
            Ok(listener) => listener,
            Err(error) => {
                error!(%addr, %error, "cannot open the Gateway listener; the port is not served");
                return;
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = watch::channel(false);
        let drain = either(self.shutdown.clone(), stopped);
        let (proxy, timeout) = (self.proxy.clone(), self.drain_timeout);
        match kind {
            PortKind::Http => spawn(listener::serve_on(listener, Some(port), tls.clone(), proxy, drain, timeout), open),
            PortKind::TlsPassthrough => {
                spawn(tcp::serve(listener, tcp::Routing::GatewayTls(port), proxy, drain, timeout), open)
            }
            PortKind::Tcp => spawn(tcp::serve(listener, tcp::Routing::GatewayTcp(port), proxy, drain, timeout), open),
        }
        info!(addr = %bound, ?kind, https = tls.is_some(), "Gateway listener open");
        self.running.insert(port, Running { addr: bound, kind, stop, tls });
    }
}

/// Runs a listener's `serve`, holding `open` until it has drained.
fn spawn(serve: impl std::future::Future<Output = ()> + Send + 'static, open: mpsc::Sender<()>) {
    tokio::spawn(async move {
        serve.await;
        drop(open);
    });
}

/// How long a port whose listener was just drained is waited for (its
/// accept loop lets go of it as soon as it sees the drain, within a few
/// milliseconds).
const REBIND_WAIT: Duration = Duration::from_secs(1);

/// Binds `addr`; if its previous listener was just `drained`, tries again
/// while the port is in use, for up to [`REBIND_WAIT`].
async fn bind_freed(addr: SocketAddr, drained: bool) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + REBIND_WAIT;
    loop {
        match bind(addr) {
            Err(error)
                if drained
                    && error.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            bound => return bound,
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

/// A receiver that turns true when either `a` or `b` does.
fn either(mut a: watch::Receiver<bool>, mut b: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = a.wait_for(|stop| *stop) => {}
            _ = b.wait_for(|stop| *stop) => {}
        }
        tx.send_replace(true);
    });
    rx
}

/// How often the certificate files of `HTTPS` servers are looked at.
pub const CERT_POLL: Duration = Duration::from_secs(2);

/// Asks for a reload whenever a certificate, key or CA file a Gateway
/// `HTTPS` server names changes (size, modification time, or the file a
/// Kubernetes secret's symlink points to), so rotated certificates reach
/// new connections without a SIGHUP. Ends with `stop`.
pub async fn watch_certificates(
    snapshot: Arc<arc_swap::ArcSwap<crate::snapshot::Snapshot>>,
    credentials: Option<PathBuf>,
    reload: Arc<tokio::sync::Notify>,
    mut stop: watch::Receiver<bool>,
) {
    let current = || stamp(&certificate_files(&snapshot.load().gateways, credentials.as_deref()));
    let mut last = current();
    loop {
        tokio::select! {
            _ = stop.wait_for(|stop| *stop) => return,
            _ = tokio::time::sleep(CERT_POLL) => {}
        }
        let now = current();
        if now != last {
            info!("a Gateway certificate file changed; reloading");
            reload.notify_one();
        }
        last = now;
    }
}

/// The files the `HTTPS` servers of `gateways` read.
fn certificate_files(gateways: &[GatewayListener], credentials: Option<&std::path::Path>) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for server in gateways.iter().flat_map(|g| &g.tls) {
        let s = &server.settings;
        if let (Some(name), Some(dir)) = (s.credential_name.as_deref(), credentials) {
            files.extend(["tls.crt", "tls.key", "ca.crt"].map(|f| dir.join(name).join(f)));
        }
        files.extend(
            [&s.server_certificate, &s.private_key, &s.ca_certificates].into_iter().flatten().map(PathBuf::from),
        );
    }
    files
}

/// A fingerprint of the files' sizes and modification times (resolving
/// symlinks, as `metadata` does).
fn stamp(files: &[PathBuf]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files {
        let meta = std::fs::metadata(file).ok();
        (file, meta.as_ref().map(|m| m.len()), meta.and_then(|m| m.modified().ok())).hash(&mut hasher);
    }
    hasher.finish()
}
