//! Side by side: HTTP/1.1 keep-alive throughput and latency through tether, nginx and HAProxy
//! (and straight to the backend, for reference), measured with `wrk`. `benches/compare.sh` is
//! the full comparison (more workloads, CPU per request, repetitions); this is the quick look.
//!
//! ```sh
//! cargo bench --bench http                       # 64 connections, 10 s per proxy, 1 worker
//! CONNECTIONS=256 SECONDS=20 WORKERS=2 PROXIES=tether,nginx cargo bench --bench http
//! ```
//!
//! Three backends in one backend process; every proxy keeps pooled connections to them and sets
//! a sticky cookie (see `common::ProxyUnderTest`). The load generator shares the machine's cores
//! with the proxy, so compare ratios within one run. Needs `wrk` (`apt-get install wrk`); nginx
//! and HAProxy are skipped when not installed. Without `--bench` (`cargo test`): 1 s per proxy.

mod common;

use std::net::SocketAddr;

use common::{Backends, Kind, ProxyOptions, ProxyUnderTest, Tls};

fn main() {
    common::maybe_serve_backend();
    let Some(wrk) = common::which("wrk") else {
        println!("wrk is not installed (apt-get install wrk): nothing to measure");
        return;
    };
    let bench = common::bench_mode();
    let connections: u32 = common::env_or("CONNECTIONS", if bench { 64 } else { 8 });
    let seconds: f64 = common::env_or("SECONDS", if bench { 10.0 } else { 1.0 });
    let workers: u32 = common::env_or("WORKERS", 1);
    let only = std::env::var("PROXIES").unwrap_or_default();
    let backends = Backends::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::generate(dir.path());
    println!("HTTP/1.1 keep-alive, {connections} connections, {seconds} s each, wrk -t1, {workers} worker(s)");
    println!("{:<10} {:>12} {:>10} {:>10} {:>10}", "target", "requests/s", "p50 ms", "p99 ms", "errors");
    let run = |label: &str, addr: SocketAddr| match common::load::wrk(&wrk, addr, "/api", 1, connections, seconds) {
        Ok(r) => println!("{label:<10} {:>12.0} {:>10.3} {:>10.3} {:>10}", r.rps, r.p50_ms, r.p99_ms, r.errors),
        Err(e) => println!("{label:<10} failed: {e}"),
    };
    if only.is_empty() || only.split(',').any(|p| p == "direct") {
        run("direct", backends.addrs[0]);
    }
    for kind in [Kind::Tether, Kind::Nginx, Kind::Haproxy] {
        if !only.is_empty() && !only.split(',').any(|p| p == kind.name()) {
            continue;
        }
        if !kind.available() {
            println!("{:<10} skipped: not installed", kind.name());
            continue;
        }
        let options = ProxyOptions { workers, access_log: None };
        let proxy = ProxyUnderTest::start(kind, dir.path(), &backends.addrs, &tls, &options);
        // Warm-up: fill connection pools and caches.
        if bench {
            let _ = common::load::wrk(&wrk, proxy.plain_addr, "/api", 1, connections, 1.0);
        }
        run(kind.name(), proxy.plain_addr);
        drop(proxy);
    }
}
