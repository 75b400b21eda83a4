//! Which worker thread the caller runs on, so each worker keeps its own
//! upstream connection pools (as Envoy's workers do: pools per worker,
//! circuit breakers per cluster).
//!
//! A connection's I/O task runs on the runtime that opened it; a request
//! from another worker would hand every exchange across threads. With one
//! pool per worker, a connection is only ever used by the thread that
//! drives it.
//!
//! The count is set once, before the first configuration is compiled
//! ([`set_count`]); each worker thread marks itself with [`enter`]. Threads
//! that never call `enter` (the main runtime, tests) use shard 0.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many pool shards an endpoint gets (the number of workers).
static COUNT: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    /// This thread's shard.
    static CURRENT: Cell<usize> = const { Cell::new(0) };
}

/// Sets the number of shards for endpoints created from now on.
pub fn set_count(workers: usize) {
    COUNT.store(workers.max(1), Ordering::Relaxed);
}

/// The number of shards a new endpoint gets.
pub fn count() -> usize {
    COUNT.load(Ordering::Relaxed)
}

/// Marks the calling thread as worker `index`.
pub fn enter(index: usize) {
    CURRENT.with(|c| c.set(index));
}

/// The calling thread's shard.
pub fn current() -> usize {
    CURRENT.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_start_at_shard_zero_and_keep_their_own() {
        assert_eq!(current(), 0);
        let other = std::thread::spawn(|| {
            enter(3);
            current()
        });
        assert_eq!(other.join().ok(), Some(3));
        assert_eq!(current(), 0);
    }
}
