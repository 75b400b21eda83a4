//! Configuration work off the request path.
//!
//! Parsing, validating and compiling 1,000 services costs ~200 ms of CPU,
//! and freeing the table a reload replaced a few more. Run on a runtime
//! thread, or at the workers' priority on the CPU they are pinned to, that
//! work takes its share of the CPU from requests: with a rewrite every
//! 100 ms under saturating load, throughput fell by 39 %.
//!
//! So each reload prepares its snapshot on a thread of its own under
//! Linux's `SCHED_IDLE` policy: the scheduler runs it only when no normal
//! thread wants the CPU, and a worker that wakes up preempts it at once
//! (sched(7); the fair class's wakeup check). Under saturation it still
//! gets the idle class's weight, 3 against a nice-0 thread's 1024, so a
//! reload is slowed there, never starved. A lower nice value was tried
//! first: at nice 15 a worker woken while the reload ran still waited
//! for the reload's time slice, and throughput fell 8.5 %. The first load,
//! before anything is served, keeps the normal policy so start-up is not
//! slowed.
//!
//! The snapshot a swap replaced is freed on such a thread too, once no
//! request holds it, rather than by whichever request lets go last.

use std::sync::Arc;
use std::time::{Duration, Instant};

use thread_priority::unix::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy, ThreadSchedulePolicy,
};
use thread_priority::ThreadPriority;
use tracing::debug;

/// How often a retired snapshot's holders are counted.
const RETIRE_POLL: Duration = Duration::from_millis(10);

/// Past this, a retired snapshot is left to its last holder (a long
/// streaming request) instead of being watched longer.
const RETIRE_WAIT: Duration = Duration::from_secs(60);

/// At what priority a job runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// As the workers: nothing is being served yet.
    Normal,
    /// `SCHED_IDLE`: requests come first.
    Low,
}

/// Why a job gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("cannot start the configuration thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("the configuration thread stopped without an answer (it panicked)")]
    Lost,
}

/// Runs `job` on a new thread at `priority`, inside the current tokio
/// runtime (clusters built by the job start their timers on it).
pub async fn run<T: Send + 'static>(
    priority: Priority,
    job: impl FnOnce() -> T + Send + 'static,
) -> Result<T, JobError> {
    let (answer, answered) = tokio::sync::oneshot::channel();
    let runtime = tokio::runtime::Handle::current();
    std::thread::Builder::new()
        .name("meshd-config".into())
        .spawn(move || {
            set_priority(priority);
            let _entered = runtime.enter();
            let _ = answer.send(job());
        })
        .map_err(JobError::Spawn)?;
    answered.await.map_err(|_| JobError::Lost)
}

/// Frees `old` on a low-priority thread once it is the last holder, so
/// the request that finishes last on a replaced snapshot does not pay for
/// freeing its table and clusters.
pub fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    let spawned = std::thread::Builder::new().name("meshd-retire".into()).spawn(move || {
        set_priority(Priority::Low);
        let started = Instant::now();
        while Arc::strong_count(&old) > 1 && started.elapsed() < RETIRE_WAIT {
            std::thread::sleep(RETIRE_POLL);
        }
        drop(old);
    });
    if let Err(error) = spawned {
        // The snapshot was moved into the closure the failed spawn
        // dropped: it is freed here instead, which is merely slower.
        debug!(%error, "cannot start a thread to free the old snapshot");
    }
}

/// Puts the calling thread under `SCHED_IDLE` for [`Priority::Low`].
fn set_priority(priority: Priority) {
    if priority == Priority::Low {
        let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
        if let Err(error) = set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle) {
            debug!(?error, "cannot lower the configuration thread's priority");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use thread_priority::unix::thread_schedule_policy;

    fn policy() -> Option<ThreadSchedulePolicy> {
        thread_schedule_policy().ok()
    }

    #[tokio::test]
    async fn low_priority_jobs_run_idle_and_leave_the_caller_alone() {
        let before = policy();
        let low = run(Priority::Low, policy).await.unwrap();
        let normal = run(Priority::Normal, policy).await.unwrap();
        assert_eq!(low, Some(ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle)));
        assert_eq!(normal, before);
        assert_eq!(policy(), before);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_not_a_hang() {
        let result = run(Priority::Normal, || -> u32 { panic!("job failed") }).await;
        assert!(matches!(result, Err(JobError::Lost)), "{result:?}");
    }

    #[test]
    fn a_retired_value_is_freed_after_its_last_other_holder() {
        let old = Arc::new(());
        let held = old.clone();
        let weak = Arc::downgrade(&old);
        retire(old);
        std::thread::sleep(RETIRE_POLL * 3);
        assert!(weak.upgrade().is_some(), "freed while still held");
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(5);
        while weak.strong_count() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(weak.strong_count(), 0);
    }
}
