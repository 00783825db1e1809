//! The publishers: `POST /publish?destination=...` (what a service's event publisher calls over HTTP) on
//! keep-alive HTTP/1.1 connections straight to the backends, alternating between them, paced by
//! a timer. The body carries the destination, a per-destination sequence number and the
//! `CLOCK_REALTIME` instant read just before the request is written. A publish counts as
//! published when the backend answers 202 (the broker took it).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::subscriber::{body, destination_name, now_ns};

/// Keep-alive connections per backend (a publish waits for its 202, so several are in flight).
const CONNECTIONS_PER_BACKEND: usize = 4;
/// Bound on one publish (the backend's own broker-confirmation timeout is 12 s).
const PUBLISH_LIMIT: Duration = Duration::from_secs(15);

/// What to publish: `rounds` rounds, each one message to every destination, evenly spaced at
/// `destinations * rate` publishes per second (destination `k % destinations`, sequence number
/// `k / destinations` for the k-th publish).
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub scenario: &'static str,
    pub destinations: u32,
    /// Publishes per second to each destination.
    pub rate: f64,
    pub rounds: u32,
    /// Rounds before this one are warm-up.
    pub timed_from: u32,
}

impl Schedule {
    pub fn total(&self) -> u64 {
        self.destinations as u64 * self.rounds as u64
    }

    fn at(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / (self.destinations as f64 * self.rate))
    }
}

/// What the publishers did.
pub struct Outcome<T> {
    /// `confirmed[d][seq]`: the backend answered 202.
    pub confirmed: Vec<Vec<bool>>,
    pub failed: u64,
    pub first_error: Option<String>,
    /// How far behind its schedule the pacer fell at worst.
    pub max_behind_ms: f64,
    /// What `at_timed_start` returned (called when the first timed publish is due).
    pub timed_start: Option<T>,
}

async fn worker(
    addr: SocketAddr,
    scenario: &'static str,
    mut jobs: mpsc::UnboundedReceiver<(u32, u32)>,
) -> Vec<(u32, u32, Result<(), String>)> {
    let mut done = Vec::new();
    let mut sender = None;
    while let Some((d, seq)) = jobs.recv().await {
        let result = tokio::time::timeout(PUBLISH_LIMIT, async {
            if sender.is_none() {
                let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
                let _ = tcp.set_nodelay(true);
                let (s, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                tokio::spawn(conn);
                sender = Some(s);
            }
            let s = sender.as_mut().expect("set above");
            s.ready().await.map_err(|e| format!("connection: {e}"))?;
            let request = http::Request::post(format!("/publish?destination={}", destination_name(scenario, d)))
                .header("host", "127.0.0.1")
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from(body(d, seq, now_ns()))))
                .map_err(|e| e.to_string())?;
            let response = s.send_request(request).await.map_err(|e| format!("publish: {e}"))?;
            let status = response.status();
            let text = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if status == http::StatusCode::ACCEPTED {
                Ok(())
            } else {
                Err(format!("{status}: {}", String::from_utf8_lossy(&text)))
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {PUBLISH_LIMIT:?}")));
        if result.is_err() {
            // Start afresh: the connection may be in any state.
            sender = None;
        }
        done.push((d, seq, result));
    }
    done
}

/// Publish `schedule` through `backends`; all publishes answered (or timed out) on return.
pub async fn run<T>(backends: &[SocketAddr], schedule: Schedule, at_timed_start: impl FnOnce() -> T) -> Outcome<T> {
    let mut queues = Vec::new();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS_PER_BACKEND {
        for &addr in backends {
            let (tx, rx) = mpsc::unbounded_channel();
            queues.push(tx);
            workers.spawn(worker(addr, schedule.scenario, rx));
        }
    }
    let mut at_timed_start = Some(at_timed_start);
    let mut timed_start = None;
    let timed_k = schedule.timed_from as u64 * schedule.destinations as u64;
    let start = Instant::now();
    let mut max_behind = Duration::ZERO;
    for k in 0..schedule.total() {
        let due = start + schedule.at(k);
        tokio::time::sleep_until(due).await;
        max_behind = max_behind.max(Instant::now().saturating_duration_since(due));
        if k == timed_k
            && let Some(f) = at_timed_start.take()
        {
            timed_start = Some(f());
        }
        let d = (k % schedule.destinations as u64) as u32;
        let seq = (k / schedule.destinations as u64) as u32;
        // Consecutive publishes alternate between backends, then between connections.
        let _ = queues[(k % queues.len() as u64) as usize].send((d, seq));
    }
    drop(queues);
    let mut confirmed = vec![vec![false; schedule.rounds as usize]; schedule.destinations as usize];
    let (mut failed, mut first_error) = (0, None);
    while let Some(done) = workers.join_next().await {
        for (d, seq, result) in done.expect("a publisher connection panicked") {
            match result {
                Ok(()) => confirmed[d as usize][seq as usize] = true,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    Outcome { confirmed, failed, first_error, max_behind_ms: max_behind.as_secs_f64() * 1e3, timed_start }
}
