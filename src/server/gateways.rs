//! The Gateways' listeners, opened and closed as the configuration changes.
//!
//! After every applied configuration [`GatewayListeners::reconcile`] opens
//! a listener on `--gateway-bind-address` for each port a Gateway names
//! that has none yet, and drains those whose port is gone. A port that
//! cannot be bound is logged and skipped; the rest of the configuration
//! serves. Each listener task holds a sender of one channel; the server's
//! shutdown waits until the last is dropped, so Gateway listeners drain
//! like the others on SIGTERM.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{error, info};

use crate::proxy::{listener, Proxy};

/// The open Gateway listeners and what opening another needs.
pub struct GatewayListeners {
    /// The address every Gateway port binds on.
    bind: IpAddr,
    proxy: Arc<Proxy>,
    /// The server's shutdown: every Gateway listener drains on it.
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
    /// Port → the switch that drains that listener alone.
    running: HashMap<u16, (SocketAddr, watch::Sender<bool>)>,
    /// Handed (upgraded) to each listener task; weak here, so that once
    /// the server drops its sender no new listener can start and the
    /// server's wait ends with the last task.
    open: mpsc::WeakSender<()>,
}

// === impl GatewayListeners ===

impl GatewayListeners {
    pub fn new(
        bind: IpAddr,
        proxy: Arc<Proxy>,
        shutdown: watch::Receiver<bool>,
        drain_timeout: Duration,
        open: mpsc::WeakSender<()>,
    ) -> Self {
        GatewayListeners { bind, proxy, shutdown, drain_timeout, running: HashMap::new(), open }
    }

    /// Opens a listener for each of `ports` not open yet and drains the
    /// ones not among them.
    pub fn reconcile(&mut self, ports: &[u16]) {
        self.running.retain(|port, (addr, stop)| {
            let keep = ports.contains(port);
            if !keep {
                info!(%addr, "Gateway port removed; draining its listener");
                stop.send_replace(true);
            }
            keep
        });
        for &port in ports {
            if !self.running.contains_key(&port) {
                self.open(port);
            }
        }
    }

    fn open(&mut self, port: u16) {
        let Some(open) = self.open.upgrade() else { return };
        let addr = SocketAddr::new(self.bind, port);
        let listener = match bind(addr) {
            Ok(listener) => listener,
            Err(error) => {
                error!(%addr, %error, "cannot open the Gateway listener; the port is not served");
                return;
            }
        };
        let bound = listener.local_addr().unwrap_or(addr);
        let (stop, stopped) = watch::channel(false);
        let drain = either(self.shutdown.clone(), stopped);
        let serve = listener::serve_on(listener, Some(port), self.proxy.clone(), drain, self.drain_timeout);
        tokio::spawn(async move {
            serve.await;
            drop(open);
        });
        info!(addr = %bound, "Gateway listener open");
        self.running.insert(port, (bound, stop));
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
