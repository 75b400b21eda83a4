//! Turning file changes into reload requests.
//!
//! Each `--config` directory is watched (non-recursively), and for a file
//! its parent directory, so that every way a file can change is seen:
//! in-place writes, editors' write-and-rename, and Kubernetes ConfigMap
//! updates, which atomically re-point the `..data` symlink (the event is on
//! `..data`, not on the file names the pod sees, and arrives as a create or
//! a write depending on the platform). Any event in a watched directory
//! asks for a reload; the reloader debounces bursts and skips reloads whose
//! content hash did not change.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use notify::{RecommendedWatcher, RecursiveMode, Watcher};

/// Watches `paths` and calls `on_change` (from the watcher's thread) after
/// every filesystem event under them. Keep the returned watcher alive.
pub fn watch(paths: &[PathBuf], on_change: impl Fn() + Send + 'static) -> notify::Result<RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            on_change();
        }
    })?;
    for dir in directories(paths) {
        watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    }
    Ok(watcher)
}

/// The directories to watch for `paths`.
fn directories(paths: &[PathBuf]) -> BTreeSet<PathBuf> {
    paths
        .iter()
        .map(|p| {
            if p.is_dir() {
                p.clone()
            } else {
                p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
            }
        })
        .collect()
}
