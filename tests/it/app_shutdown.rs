//! The `tether backend` binary: prints its listeners, logs JSON to stderr, and on SIGTERM flips
//! readiness at once, keeps serving for `--shutdown-delay`, closes every session with 1001
//! within the drain spread, and exits 0.

use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader};
use tokio::process::{Child, Command};

use crate::support::http_client;
use crate::support::stomp_client::{StompClient, WAIT};

/// Kills the child on drop (tests must not leak processes).
struct Backend {
    child: Child,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn read_listening_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    name: &str,
) -> std::net::SocketAddr {
    let line = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("listening line in time")
        .expect("stdout readable")
        .expect("a line");
    let addr =
        line.strip_prefix(&format!("listening {name} ")).unwrap_or_else(|| panic!("unexpected stdout line {line:?}"));
    addr.parse().expect("socket address")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_readiness_then_drains_every_session_with_1001_and_exits_0() {
    let delay = Duration::from_millis(200);
    let spread = Duration::from_millis(500);
    let child = Command::new(env!("CARGO_BIN_EXE_tether"))
        .args([
            "backend",
            "--listen",
            "127.0.0.1:0",
            "--internal-listen",
            "127.0.0.1:0",
            "--id",
            "drain-1",
            "--heartbeat",
            "1s",
            "--shutdown-delay",
            "200ms",
            "--drain-spread",
            "500ms",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn tether backend");
    let mut backend = Backend { child };
    let stdout = backend.child.stdout.take().expect("stdout");
    let mut stderr = backend.child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stdout).lines();
    let addr = read_listening_line(&mut lines, "backend").await;
    let internal = read_listening_line(&mut lines, "internal").await;

    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = StompClient::connect(&url).await;
        c.subscribe("/topic/drain", &format!("s{i}")).await;
        clients.push(c);
    }
    assert_eq!(http_client::get(addr, "/readyz").await.status, 200);
    assert_eq!(http_client::get(internal, "/metrics").await.status, 200);

    let pid = backend.child.id().expect("running") as libc::pid_t;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let signalled = Instant::now();

    // Readiness flips at once; the process keeps serving HTTP while it does.
    let mut polls = 0;
    loop {
        polls += 1;
        let status = http_client::get(addr, "/readyz").await.status;
        if status == 503 {
            break;
        }
        assert!(polls < 200, "readyz never turned 503");
        assert!(signalled.elapsed() < delay, "readyz still {status} after the shutdown delay");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // Every session is closed with 1001 within delay + spread (+ tolerance for a loaded box).
    let budget = delay + spread + Duration::from_secs(2);
    for (i, c) in clients.iter_mut().enumerate() {
        let (close, frames) = c.expect_close(budget).await;
        assert!(frames.iter().all(|f| f.body.is_empty()), "client {i}: {frames:?}");
        assert_eq!(close.map(|c| u16::from(c.code)), Some(1001), "client {i}");
    }
    let closed_after = signalled.elapsed();
    assert!(closed_after >= delay, "closed before the shutdown delay: {closed_after:?}");
    assert!(closed_after <= budget, "drain took {closed_after:?}");

    let status = tokio::time::timeout(WAIT, backend.child.wait()).await.expect("exit in time").expect("wait");
    assert!(status.success(), "exit status {status}");

    // stdout carries only the listening lines; stderr is JSON lines.
    assert_eq!(lines.next_line().await.expect("read"), None);
    let mut err = String::new();
    stderr.read_to_string(&mut err).await.expect("stderr");
    let events: Vec<serde_json::Value> =
        err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for event in ["shutdown_started", "drain_started", "shutdown_complete"] {
        assert!(events.iter().any(|e| e["event"] == event), "no {event} in stderr:\n{err}");
    }
}
