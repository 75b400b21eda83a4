//! Unix signals for `meshd run`: SIGHUP reloads, SIGTERM and SIGINT drain
//! and stop.

use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::server::RunningServer;

/// Runs `server` until SIGTERM or SIGINT, reloading on SIGHUP; then drains
/// and returns once stopped.
pub async fn drive(server: RunningServer) {
    let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
        (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        warn!("cannot install signal handlers; stopping");
        server.shutdown();
        server.wait().await;
        return;
    };
    loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading configuration");
                server.reload();
            }
            _ = term.recv() => {
                info!("SIGTERM: draining");
                break;
            }
            _ = int.recv() => {
                info!("SIGINT: draining");
                break;
            }
            // The admin API's `POST /drain` (with --admin-allow-mutations).
            _ = server.drain_started() => break,
        }
    }
    server.shutdown();
    server.wait().await;
}
