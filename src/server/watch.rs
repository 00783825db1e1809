//! Reload when the config file, or a file it names (JWKS and key files, certificates), changes.
//!
//! Directories are watched, not files: editors replace files by renaming, and a Kubernetes
//! ConfigMap or Secret update swaps a `..data` symlink, so a watch on the file itself would go
//! stale. Only events about the files that matter count (a log file written next to the config
//! must not wake the watcher on every line). Events are debounced, and a reload is attempted
//! only when the files' content actually changed.

use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio_util::sync::CancellationToken;

use super::Running;
use crate::config::{Config, JwtKeys};

/// Quiet period before reloading: editors and `kubectl` write in several steps.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Longest wait after the first event. Files that matter may keep changing; a change must not
/// be held back forever.
const MAX_DELAY: Duration = Duration::from_secs(1);

/// Why the config file cannot be watched (reload still works by SIGHUP and the admin API).
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// The platform's file watcher could not start.
    #[error("cannot start the config file watcher")]
    Start(#[source] notify::Error),
    /// A directory could not be watched.
    #[error("cannot watch {0}")]
    Watch(PathBuf, #[source] notify::Error),
}

/// The files whose change means a reload: the config file and every file it names.
fn watched_files(config_path: &Path, config: &Config) -> BTreeSet<PathBuf> {
    let mut files = BTreeSet::from([config_path.to_path_buf()]);
    for verifier in &config.auth {
        if let JwtKeys::Files { path, .. } = &verifier.jwt.keys {
            files.insert(path.clone());
        }
    }
    for listener in &config.listeners {
        for cert in listener.tls.iter().flat_map(|t| &t.certificates) {
            files.insert(cert.cert_path.clone());
            files.insert(cert.key_path.clone());
        }
    }
    files
}

fn dir_of(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether an event on `path` may have changed one of `files`: the file itself, or a
/// Kubernetes-style `..data` swap in its directory.
fn concerns(path: &Path, files: &BTreeSet<PathBuf>) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    files.iter().any(|f| {
        let same_dir = dir_of(f) == dir_of(path);
        same_dir && (f.file_name() == path.file_name() || name.starts_with(".."))
    })
}

/// A digest of the current content of the files other than the config file (a missing file
/// counts as empty); the config file is compared with the running text instead.
fn fingerprint(files: &BTreeSet<PathBuf>, config_path: &Path) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for file in files.iter().filter(|f| f.as_path() != config_path) {
        file.hash(&mut hasher);
        std::fs::read(file).unwrap_or_default().hash(&mut hasher);
    }
    hasher.finish()
}

/// Watch until `stop` (the shutdown sequence began: the task must not keep the proxy alive).
pub(super) fn spawn(running: Running, path: PathBuf, stop: CancellationToken) -> Result<(), WatchError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Opening or reading a file changes nothing, and our own reads would otherwise wake us.
        if let Ok(event) = event
            && !matches!(event.kind, EventKind::Access(_))
        {
            let _ = tx.send(event.paths);
        }
    })
    .map_err(WatchError::Start)?;
    let mut files = watched_files(&path, &running.proxy().config());
    let mut dirs = BTreeSet::new();
    for dir in files.iter().map(|f| dir_of(f)) {
        if dirs.insert(dir.clone()) {
            watcher.watch(&dir, RecursiveMode::NonRecursive).map_err(|e| WatchError::Watch(dir.clone(), e))?;
        }
    }
    let mut last_files = fingerprint(&files, &path);
    // The config text at the last look, so events that change nothing (or keep presenting the
    // same broken file) do not reload again.
    let mut last_text: Option<Vec<u8>> = None;
    let tasks = running.proxy().tasks().clone();
    tasks.spawn(async move {
        loop {
            tokio::select! {
                event = rx.recv() => match event {
                    None => return,
                    Some(paths) if !paths.iter().any(|p| concerns(p, &files)) => continue,
                    Some(_) => {}
                },
                _ = stop.cancelled() => return,
            }
            // Debounce: wait until events stop for a moment, but not longer than MAX_DELAY.
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(deadline);
                match tokio::time::timeout_at(quiet, rx.recv()).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            let Ok(text) = std::fs::read(&path) else { continue };
            let now = fingerprint(&files, &path);
            if last_text.as_ref() == Some(&text) && now == last_files {
                continue;
            }
            // Compared with what runs rather than with the last look: an edit made while the
            // watch was being set up is still noticed.
            let text_changed = running.proxy().config().source.text.as_bytes() != text.as_slice();
            let files_changed = now != last_files;
            last_text = Some(text);
            last_files = now;
            if !text_changed && !files_changed {
                continue;
            }
            tracing::info!(file = %path.display(), "a watched file changed: reloading");
            if running.reload().await.is_ok() {
                // The new config may name other files: watch them too.
                files = watched_files(&path, &running.proxy().config());
                for dir in files.iter().map(|f| dir_of(f)) {
                    if dirs.insert(dir.clone())
                        && let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive)
                    {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch a directory the new config names");
                    }
                }
                last_files = fingerprint(&files, &path);
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_events_about_watched_files_count() {
        let files = BTreeSet::from([PathBuf::from("/etc/tether/tether.yaml"), PathBuf::from("/keys/jwks.json")]);
        assert!(concerns(Path::new("/etc/tether/tether.yaml"), &files));
        assert!(concerns(Path::new("/keys/jwks.json"), &files));
        assert!(concerns(Path::new("/etc/tether/..data"), &files), "a ConfigMap swap");
        assert!(concerns(Path::new("/keys/..2026_12_06_10_00_00.123"), &files));
        assert!(!concerns(Path::new("/etc/tether/access.log"), &files));
        assert!(!concerns(Path::new("/etc/tether/jwks.json"), &files), "same name, other directory");
        assert!(!concerns(Path::new("/keys/tether.yaml"), &files));
    }
}
