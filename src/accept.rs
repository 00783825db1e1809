//! Accepting connections: the one accept loop every listener runs (proxy listeners, the admin
//! listener, the reference app's listeners), and the `listening` line that announces them.
//!
//! Owns: waiting for connections until told to stop, backing off when the process is out of
//! descriptors (without losing the listener), and handing each connection to a task owned by a
//! tracker that shutdown waits on. Must not: read from connections or decide what to serve.

use std::future::Future;
use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// First pause after an accept failed for lack of descriptors or memory; doubled while it keeps
/// failing, up to [`BACKOFF_MAX`]. Short enough to recover quickly once a descriptor frees up,
/// long enough not to burn a core spinning on `EMFILE`.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// Resource errors are logged at most this often, with how many happened since.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// Print `listening <name> <addr>` on stdout: scripts and tests bind port 0 and read the real
/// port from here. The only place that prints it.
pub fn announce(name: &str, addr: SocketAddr) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "listening {name} {addr}");
    let _ = out.flush();
}

/// Accept on `listener` until `stop`. Each connection goes to `serve`, which either returns
/// the future serving it (spawned on `tasks`) or `None` when it dealt with the connection
/// itself (refused it, say).
pub(crate) async fn run<F, Fut>(
    listener: TcpListener,
    name: &str,
    stop: CancellationToken,
    tasks: TaskTracker,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Option<Fut>,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut backoff = BACKOFF_MIN;
    let mut failures = Failures::default();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = BACKOFF_MIN;
                if let Some(conn) = serve(stream, peer) {
                    tasks.spawn(conn);
                }
            }
            Err(e) if is_resource_exhaustion(&e) => {
                if let Some(count) = failures.record(Instant::now()) {
                    tracing::warn!(listener = name, error = %e, failures = count, backoff_ms = backoff.as_millis() as u64, "accept failed: out of descriptors or memory; backing off");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.cancelled() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            // A connection reset before we accepted it, and the like: that connection's problem.
            Err(e) => tracing::debug!(listener = name, error = %e, "accept failed"),
        }
    }
}

fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM))
}

/// Rate limit for the resource-exhaustion warning.
#[derive(Debug, Default)]
struct Failures {
    last_log: Option<Instant>,
    since_log: u64,
}

impl Failures {
    /// Count one failure at `now`; `Some(n)` when it is time to log the `n` counted since the
    /// last line.
    fn record(&mut self, now: Instant) -> Option<u64> {
        self.since_log += 1;
        if self.last_log.is_some_and(|at| now.duration_since(at) < LOG_EVERY) {
            return None;
        }
        self.last_log = Some(now);
        Some(std::mem::take(&mut self.since_log))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_failures_are_logged_at_most_once_a_second_with_a_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut f = Failures::default();
        assert_eq!(f.record(at(0)), Some(1));
        assert_eq!(f.record(at(100)), None);
        assert_eq!(f.record(at(900)), None);
        assert_eq!(f.record(at(1000)), Some(3));
        assert_eq!(f.record(at(1500)), None);
        assert_eq!(f.record(at(2600)), Some(2));
    }
}
