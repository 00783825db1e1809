//! Heart-beats with `--heartbeat 1s`: a client silent for three agreed intervals is closed, a
//! heart-beating one is kept, and the server sends its own heart-beats at the agreed rate.

use std::time::{Duration, Instant};

use crate::support::app::TestApp;
use crate::support::http_client;
use crate::support::stomp_client::{ConnectOptions, StompClient};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_closed_within_three_intervals() {
    let a = TestApp::builder().heartbeat(Duration::from_secs(1)).spawn().await;
    // The client promises a heart-beat every 1 s and wants none back, then stays silent.
    let mut c = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().heart_beat("1000,0")).await;
    assert_eq!(c.connected.get("heart-beat"), Some("1000,1000"));
    let connected_at = Instant::now();
    let (close, frames) = c.expect_close(Duration::from_secs(10)).await;
    let after = connected_at.elapsed();
    assert!(frames.is_empty(), "{frames:?}");
    assert_eq!(close.map(|c| u16::from(c.code)), Some(1008));
    // 3 intervals, measured server-side from the CONNECT (just before `connected_at`); the
    // upper bound leaves 2 s for a loaded machine.
    assert!(after >= Duration::from_millis(2_800), "closed after {after:?}");
    assert!(after <= Duration::from_secs(5), "closed after {after:?}");
    assert_eq!(c.heartbeats_received, 0, "server sent heart-beats nobody asked for");

    let metrics = http_client::get(a.addr, "/metrics").await.body;
    assert!(metrics.lines().any(|l| l == "tether_backend_heartbeat_timeouts_total 1"), "{metrics}");
    a.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heart_beating_client_is_kept_and_gets_server_heart_beats() {
    let a = TestApp::builder().heartbeat(Duration::from_secs(1)).spawn().await;
    let mut c = StompClient::connect_with(&a.ws_url(), ConnectOptions::default().heart_beat("1000,1000")).await;
    c.subscribe("/topic/hb", "s").await;
    // Five agreed intervals, well past the 3-interval limit, beating twice per interval.
    c.idle(Duration::from_secs(5), Some(Duration::from_millis(500))).await;
    assert!(
        (3..=6).contains(&c.heartbeats_received),
        "expected ~5 server heart-beats in 5 s, got {}",
        c.heartbeats_received
    );
    // Still open and working.
    c.send("/topic/hb", "alive").await;
    assert_eq!(c.next_body().await, "alive");
    a.shutdown().await;
}
