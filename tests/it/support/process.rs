//! Starting the `tether` binary under test: `tether <args>` with its `listening <name> <addr>`
//! lines read from stdout, stderr to a file, killed on drop. Used by [`super::proxy::ProxyProcess`],
//! [`super::app_process::AppProcess`] and the `tether demo` test.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt as _, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use super::WAIT;

/// The `tether` binary under test.
pub fn tether_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tether"))
}

/// A started `tether` process.
pub struct Tether {
    /// Killed on drop.
    pub child: Child,
    /// `(name, address)` of each `listening` line, in order.
    pub listeners: Vec<(String, SocketAddr)>,
    /// Other stdout lines seen before the last awaited `listening` line.
    pub other_lines: Vec<String>,
    /// The rest of stdout.
    pub stdout: Lines<BufReader<ChildStdout>>,
}

/// Where a child's stderr goes.
#[derive(Debug, Clone, Copy)]
pub enum StderrTo<'a> {
    /// A file, read back to explain failures.
    File(&'a Path),
    /// A pipe kept open that nobody reads: a stalled log collector. Once the pipe's buffer is
    /// full, every write to stderr would block.
    UnreadPipe,
}

impl Tether {
    /// Run `tether <args>` with `env` added, stderr written to `stderr`, and read stdout until
    /// `ready` holds for the `listening` lines seen.
    pub async fn spawn(
        args: &[String],
        env: &[(String, String)],
        stderr: &Path,
        ready: impl Fn(&[(String, SocketAddr)]) -> bool,
    ) -> Tether {
        Self::spawn_with(args, env, StderrTo::File(stderr), ready).await
    }

    /// [`Tether::spawn`] with stderr sent `to`.
    pub async fn spawn_with(
        args: &[String],
        env: &[(String, String)],
        to: StderrTo<'_>,
        ready: impl Fn(&[(String, SocketAddr)]) -> bool,
    ) -> Tether {
        let (stderr_io, stderr) = match to {
            StderrTo::File(path) => (Stdio::from(std::fs::File::create(path).expect("stderr file")), Some(path)),
            StderrTo::UnreadPipe => (Stdio::piped(), None),
        };
        // The pipe's read end stays in `child.stderr`, open and unread, for the child's life.
        let mut child = Command::new(tether_bin())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr_io)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn tether {args:?}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (mut listeners, mut other_lines) = (Vec::new(), Vec::new());
        let deadline = tokio::time::Instant::now() + WAIT;
        while !ready(&listeners) {
            let line = match tokio::time::timeout_at(deadline, stdout.next_line()).await {
                Ok(Ok(Some(line))) => line,
                other => {
                    let _ = child.start_kill();
                    let log = stderr.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
                    panic!("tether {args:?} did not report its listeners ({other:?}); stderr:\n{log}");
                }
            };
            let mut parts = line.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("listening"), Some(name), Some(addr)) => {
                    listeners.push((name.to_owned(), addr.parse().expect("listening address")))
                }
                _ => other_lines.push(line),
            }
        }
        Tether { child, listeners, other_lines, stdout }
    }

    /// The address of the `listening` line named `name`.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.listeners.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }
}
