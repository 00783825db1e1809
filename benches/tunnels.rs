//! Side by side: user-space memory per idle WebSocket tunnel through tether, nginx and HAProxy,
//! over plain ws and over wss (TLS terminated at the proxy). `benches/compare.sh` measures the
//! same at several N, with repetitions, next to the throughput figures.
//!
//! ```sh
//! cargo bench --bench tunnels            # TUNNELS=8000 by default
//! TUNNELS=2000 PROXIES=tether,nginx cargo bench --bench tunnels
//! ```
//!
//! For each proxy (1 worker) and scheme: start the proxy as its own process in front of the
//! backend process, open `TUNNELS` WebSocket connections through it, exchange one message on
//! each, let them sit idle, and compare the proxy's resident set (all its processes) with its
//! resident set before the tunnels were opened. nginx and HAProxy are used when installed
//! (`apt-get install nginx haproxy`) and skipped otherwise. Everything listens on 127.0.0.1 only;
//! every loop is bounded in count and time. Without `--bench` (as `cargo test --all-targets`
//! runs it): 200 tunnels, a smoke run of a few seconds.

use std::time::Duration;

use common::{Backends, Kind, ProxyOptions, ProxyUnderTest, Tls, rss_kib, ws};

/// Connections opened at once while setting up tunnels: enough to be quick, few enough that the
/// proxies' transient per-handshake buffers do not dominate the figure.
const CONCURRENCY: usize = 50;

mod common;

fn main() {
    common::maybe_serve_backend();
    let bench = common::bench_mode();
    let tunnels: usize = common::env_or("TUNNELS", if bench { 8000 } else { 200 }).min(9000);
    let idle = if bench { Duration::from_secs(2) } else { Duration::from_millis(200) };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    // The backend runs in its own process so this one only holds the client sockets (the
    // open-file limit is per process).
    let backends = Backends::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::generate(dir.path());
    let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
    println!("memory per idle WebSocket tunnel, {tunnels} tunnels");
    println!("{:<10} {:<6} {:>14} {:>14} {:>16}", "proxy", "scheme", "baseline KiB", "loaded KiB", "bytes/tunnel");
    let only = std::env::var("PROXIES").unwrap_or_default();
    for kind in [Kind::Tether, Kind::Nginx, Kind::Haproxy] {
        if !only.is_empty() && !only.split(',').any(|p| p == kind.name()) {
            continue;
        }
        if !kind.available() {
            println!("{:<10} skipped: not installed", kind.name());
            continue;
        }
        for tls_on in [false, true] {
            let scheme = if tls_on { "wss" } else { "ws" };
            let proxy = ProxyUnderTest::start(kind, dir.path(), &backends.addrs, &tls, &ProxyOptions::default());
            let addr = if tls_on { proxy.tls_addr } else { proxy.plain_addr };
            let connector = tls_on.then_some(&connector);
            let limit = common::PHASE_LIMIT * 3;
            let measured = runtime.block_on(async {
                // Warm up: a few tunnels, closed again, so one-time allocations are in the baseline.
                drop(ws::open_tunnels(addr, connector, 20, 20, limit).await?);
                tokio::time::sleep(idle / 4).await;
                let base = rss_kib(&proxy.pids());
                let open = ws::open_tunnels(addr, connector, tunnels, CONCURRENCY, limit).await?;
                // Let them go idle (buffers used by the echo are released where the proxy does so).
                tokio::time::sleep(idle).await;
                let loaded = rss_kib(&proxy.pids());
                drop(open);
                Ok::<_, String>((base, loaded))
            });
            match measured {
                Ok((base, loaded)) => {
                    let per = (loaded.saturating_sub(base) as f64 * 1024.0) / tunnels as f64;
                    println!("{:<10} {:<6} {:>14} {:>14} {:>16.0}", kind.name(), scheme, base, loaded, per);
                }
                Err(e) => println!("{:<10} {:<6} failed: {e}", kind.name(), scheme),
            }
            drop(proxy);
        }
    }
}
