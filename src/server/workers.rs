//! Worker threads: one current-thread tokio runtime per worker, each
//! accepting on its own `SO_REUSEPORT` socket of every listen address.
//!
//! The kernel spreads new connections over the sockets, and a connection
//! (with its upstream connections, see [`shard`]) never leaves the thread
//! that accepted it: no work stealing, no cross-thread wake-ups on the
//! request path. This is the shape of Envoy's workers and nginx's worker
//! processes. Measured on 2 CPUs (`WORKERS=2 benches/wrk.sh`), tokio's
//! multi-thread runtime served ~0.72× the requests of nginx and HAProxy
//! with two workers; see the README's performance section for this shape.
//!
//! Completion is detected by dropped senders (mini-redis): every worker
//! holds a clone of one `mpsc::Sender`, and [`Workers::wait`] returns once
//! all are gone.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::sync::{mpsc, watch};
use tracing::error;

use crate::proxy::{listener, Proxy};
use crate::upstream::shard;

/// Pending connections the kernel queues per socket.
const BACKLOG: i32 = 1024;

/// The running worker threads.
pub struct Workers {
    /// Closed once every worker has drained and stopped.
    done: mpsc::Receiver<()>,
}

/// Binds `addrs` once per worker with `SO_REUSEPORT`: `sockets[w][i]` is
/// worker `w`'s socket for `addrs[i]`. Port 0 is resolved by the first
/// socket, and the other workers bind the port it got.
pub fn bind(addrs: &[SocketAddr], workers: usize) -> Result<Vec<Vec<std::net::TcpListener>>, (SocketAddr, io::Error)> {
    let mut sockets: Vec<Vec<std::net::TcpListener>> = (0..workers).map(|_| Vec::new()).collect();
    for addr in addrs {
        let first = bind_one(*addr).map_err(|e| (*addr, e))?;
        let bound = first.local_addr().map_err(|e| (*addr, e))?;
        let mut per_addr = vec![first];
        for _ in 1..workers {
            per_addr.push(bind_one(bound).map_err(|e| (bound, e))?);
        }
        for (worker, socket) in sockets.iter_mut().zip(per_addr) {
            worker.push(socket);
        }
    }
    Ok(sockets)
}

fn bind_one(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(socket.into())
}

/// Starts one thread per entry of `sockets`, each serving its sockets
/// until `shutdown` turns true and its connections have drained.
pub fn spawn(
    sockets: Vec<Vec<std::net::TcpListener>>,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) -> io::Result<Workers> {
    let (alive, done) = mpsc::channel(1);
    for (index, own) in sockets.into_iter().enumerate() {
        let (proxy, shutdown, alive) = (proxy.clone(), shutdown.clone(), alive.clone());
        std::thread::Builder::new().name(format!("meshd-worker-{index}")).spawn(move || {
            shard::enter(index);
            run_worker(own, proxy, shutdown, drain_timeout);
            drop(alive);
        })?;
    }
    Ok(Workers { done })
}

/// One worker: a current-thread runtime serving `sockets`.
fn run_worker(
    sockets: Vec<std::net::TcpListener>,
    proxy: Arc<Proxy>,
    shutdown: watch::Receiver<bool>,
    drain_timeout: Duration,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            error!(%error, "cannot start a worker runtime");
            return;
        }
    };
    runtime.block_on(async move {
        let mut serving = tokio::task::JoinSet::new();
        for socket in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    serving.spawn(listener::serve(listener, proxy.clone(), shutdown.clone(), drain_timeout));
                }
                Err(error) => error!(%error, "cannot register a listener with the worker runtime"),
            }
        }
        while serving.join_next().await.is_some() {}
    });
}

// === impl Workers ===

impl Workers {
    /// Waits until every worker has stopped.
    pub async fn wait(mut self) {
        while self.done.recv().await.is_some() {}
    }
}
