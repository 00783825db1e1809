//! Reload when the config file changes.
//!
//! The file's *directory* is watched, not the file: editors replace files by renaming, and a
//! Kubernetes ConfigMap update swaps a `..data` symlink, so a watch on the file itself would
//! go stale. Events are debounced, and a reload is only attempted when the file's content
//! actually changed, so touching unrelated files in the directory does nothing.

use std::path::PathBuf;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::Running;

/// Quiet period before reloading: editors and `kubectl` write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest wait after the first event. Other files in the directory (a log file, say) may
/// change all the time; they must not hold a config change back forever.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why the config file cannot be watched (reload still works by SIGHUP and the admin API).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot start the config file watcher")]
    Start(#[source] notify::Error),
    #[error("cannot watch {0}")]
    Watch(PathBuf, #[source] notify::Error),
}

/// Watch until `stop` (the shutdown sequence began: the task must not keep the proxy alive).
pub(super) fn spawn(running: Running, path: PathBuf, stop: CancellationToken) -> Result<(), WatchError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening or reading a file changes nothing, and our own read of the config file
        // would otherwise wake us up again.
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
        {
            let _ = tx.send(());
        }
    })
    .map_err(WatchError::Start)?;
    watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| WatchError::Watch(dir.clone(), e))?;
    let tasks = running.proxy().tasks().clone();
    tasks.spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        // The content seen at the last look, so events that change nothing (or keep
        // presenting the same broken file) do not reload again.
        let mut last_seen: Option<Vec<u8>> = None;
        loop {
            tokio::select! {
                event = rx.recv() => if event.is_none() { return },
                _ = stop.cancelled() => return,
            }
            // Debounce: wait until events stop for a moment, but not longer than MAX_DELAY.
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(deadline);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Ok(now) = std::fs::read(&path) else { continue };
            if last_seen.as_ref() == Some(&now) {
                continue;
            }
            // Compared with what runs rather than with a copy read when the watch started:
            // an edit made while the watch was being set up is still noticed.
            let unchanged = running.proxy().config().source.text.as_bytes() == now.as_slice();
            last_seen = Some(now);
            if unchanged {
                continue;
            }
            tracing::info!(file = %path.display(), "config file changed: reloading");
            let _ = running.reload().await;
        }
    });
    Ok(())
}
