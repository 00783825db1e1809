//! Side by side: HTTP/1.1 keep-alive throughput and latency through tether, nginx and HAProxy
//! (and straight to the backend, for reference), measured with `wrk`.
//!
//! ```sh
//! cargo bench --bench http                       # 64 connections, 10 s per proxy
//! CONNECTIONS=256 SECONDS=20 PROXIES=tether,nginx cargo bench --bench http
//! ```
//!
//! The backend answers a small JSON body; every proxy keeps pooled connections to it. The load
//! generator shares the machine's cores with the proxy, so compare ratios within one run.
//! Needs `wrk` (`apt-get install wrk`); nginx and HAProxy are skipped when not installed.

mod common;

use std::net::SocketAddr;
use std::process::Command;

use common::{Kind, ProxyUnderTest, Tls};

fn main() {
    common::maybe_serve_backend();
    let Some(wrk) = common::which("wrk") else {
        println!("wrk is not installed (apt-get install wrk): nothing to measure");
        return;
    };
    let connections: u32 = std::env::var("CONNECTIONS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
    let seconds: u32 = std::env::var("SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let only = std::env::var("PROXIES").unwrap_or_default();
    let (mut backend_process, backend) = common::start_backend_process();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::generate(dir.path());
    println!("HTTP/1.1 keep-alive, {connections} connections, {seconds} s each, wrk -t2");
    println!("{:<10} {:>12} {:>10} {:>10} {:>10}", "target", "requests/s", "p50 ms", "p99 ms", "errors");
    let run = |label: &str, addr: SocketAddr| match wrk_run(&wrk, addr, connections, seconds) {
        Ok(r) => println!("{label:<10} {:>12.0} {:>10.3} {:>10.3} {:>10}", r.rps, r.p50_ms, r.p99_ms, r.errors),
        Err(e) => println!("{label:<10} failed: {e}"),
    };
    if only.is_empty() || only.split(',').any(|p| p == "direct") {
        run("direct", backend);
    }
    for kind in [Kind::Tether, Kind::Nginx, Kind::Haproxy] {
        if !only.is_empty() && !only.split(',').any(|p| p == kind.name()) {
            continue;
        }
        if !kind.available() {
            println!("{:<10} skipped: not installed", kind.name());
            continue;
        }
        let proxy = ProxyUnderTest::start(kind, dir.path(), backend, &tls);
        // Warm-up: fill connection pools and caches.
        let _ = wrk_run(&wrk, proxy.plain_addr, connections, 1);
        run(kind.name(), proxy.plain_addr);
        drop(proxy);
    }
    let _ = backend_process.kill();
    let _ = backend_process.wait();
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// Non-2xx answers plus socket errors.
    errors: u64,
}

fn wrk_run(wrk: &std::path::Path, addr: SocketAddr, connections: u32, seconds: u32) -> Result<WrkResult, String> {
    let output = Command::new(wrk)
        .args(["-t2", &format!("-c{connections}"), &format!("-d{seconds}s"), "--latency", "--timeout", "5s"])
        .arg(format!("http://{addr}/api"))
        .output()
        .map_err(|e| format!("cannot run wrk: {e}"))?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let field =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|rest| rest.trim().to_owned()));
    let rps =
        field("Requests/sec:").and_then(|v| v.parse().ok()).ok_or_else(|| format!("unexpected wrk output:\n{text}"))?;
    let p50_ms = field("50%").map(|v| millis(&v)).unwrap_or(f64::NAN);
    let p99_ms = field("99%").map(|v| millis(&v)).unwrap_or(f64::NAN);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let socket_errors: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',').filter_map(|part| part.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok())).sum()
        })
        .unwrap_or(0);
    Ok(WrkResult { rps, p50_ms, p99_ms, errors: non_2xx + socket_errors })
}

/// wrk prints latencies as `812.00us`, `1.20ms` or `2.01s`.
fn millis(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, f64::NAN)
    };
    number.trim().parse::<f64>().map_or(f64::NAN, |n| n * factor)
}
