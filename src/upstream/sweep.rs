//! The outlier-detection sweep of one cluster: every `interval`, return
//! endpoints whose ejection time is up and decay backoff multipliers
//! (Envoy's `DetectorImpl::onIntervalTimer`). The task holds only a weak
//! reference, so it ends with its cluster.

use std::sync::Weak;
use std::time::Duration;

use tokio::task::AbortHandle;
use tokio::time::{interval_at, Instant, MissedTickBehavior};

use super::cluster::Cluster;

/// Spawns the sweep of `cluster` every `period`.
pub fn spawn(cluster: Weak<Cluster>, period: Duration) -> AbortHandle {
    tokio::spawn(async move {
        let mut ticks = interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let Some(cluster) = cluster.upgrade() else { return };
            cluster.sweep(Instant::now());
        }
    })
    .abort_handle()
}
