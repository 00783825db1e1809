//! The `tether backend` binary: prints its listeners, logs JSON to stderr, and on SIGTERM flips
//! readiness at once, keeps serving for `--shutdown-delay`, closes every session with 1001
//! within the drain spread, and exits 0.

use std::time::{Duration, Instant};

use crate::support::app_process::AppProcess;
use crate::support::http_client;
use crate::support::stomp_client::StompClient;
use crate::support::{WAIT, eventually_within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_flips_readiness_then_drains_every_session_with_1001_and_exits_0() {
    let delay = Duration::from_millis(200);
    let spread = Duration::from_millis(500);
    let args = [
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
    ]
    .map(String::from);
    let mut app = AppProcess::spawn(&args).await;
    let (addr, internal) = (app.addr, app.internal.expect("internal listener"));

    let url = format!("ws://{addr}/ws");
    let mut clients = Vec::new();
    for i in 0..5 {
        let mut c = StompClient::connect(&url).await;
        c.subscribe("/topic/drain", &format!("s{i}")).await;
        clients.push(c);
    }
    assert_eq!(http_client::get(addr, "/readyz").await.status, 200);
    assert_eq!(http_client::get(internal, "/metrics").await.status, 200);

    app.sigterm();
    let signalled = Instant::now();

    // Readiness flips at once: 503 within the shutdown delay, while the process keeps serving
    // HTTP.
    eventually_within("/readyz to answer 503", delay.saturating_sub(signalled.elapsed()), async || {
        (http_client::get(addr, "/readyz").await.status == 503).then_some(())
    })
    .await;

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

    let status = app.wait_exit(WAIT).await;
    assert!(status.success(), "exit status {status}");

    // stdout carries only the listening lines; stderr is JSON lines.
    assert_eq!(app.rest_of_stdout().await, Vec::<String>::new());
    let err = app.stderr();
    let events: Vec<serde_json::Value> =
        err.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    for event in ["shutdown_started", "drain_started", "shutdown_complete"] {
        assert!(events.iter().any(|e| e["event"] == event), "no {event} in stderr:\n{err}");
    }
}
