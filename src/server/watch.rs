//! Reload when the config file changes.
//!
//! The file's *directory* is watched, not the file: editors replace files by renaming, and a
//! Kubernetes ConfigMap update swaps a `..data` symlink, so a watch on the file itself would
//! go stale. Events are debounced, and a reload is only attempted when the file's content
//! actually changed, so touching unrelated files in the directory does nothing.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use notify::{RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::Running;

/// Quiet period before reloading: editors and `kubectl` write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);

/// Watch until `stop` (the shutdown sequence began: the task must not keep the proxy alive).
pub fn spawn(running: Running, path: PathBuf, stop: CancellationToken) -> anyhow::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = tx.send(());
        }
    })
    .context("cannot start the config file watcher")?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).with_context(|| format!("cannot watch {}", dir.display()))?;
    let tasks = running.proxy().tasks().clone();
    tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        let mut last = std::fs::read(&path).ok();
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                _ = stop.cancelled() => return,
            }
            // Debounce: wait until events stop for a moment.
            loop {
                match tokio::time::timeout(DEBOUNCE, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            tracing::info!(file = %path.display(), "config file changed: reloading");
            let _ = running.reload().await;
        }
    });
    Ok(())
}
