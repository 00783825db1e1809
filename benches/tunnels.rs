//! Side by side: user-space memory per idle WebSocket tunnel through tether, nginx and HAProxy,
//! over plain ws and over wss (TLS terminated at the proxy).
//!
//! ```sh
//! cargo bench --bench tunnels            # TUNNELS=5000 by default
//! TUNNELS=2000 PROXIES=tether,nginx cargo bench --bench tunnels
//! ```
//!
//! For each proxy and scheme: start the proxy as its own process in front of an in-process
//! WebSocket echo backend, open `TUNNELS` WebSocket connections through it, exchange one message
//! on each, let them sit idle, and compare the proxy's resident set (all its processes) with
//! its resident set before the tunnels were opened. nginx and HAProxy are used when installed
//! (`apt-get install nginx haproxy`) and skipped otherwise. Everything listens on 127.0.0.1 only;
//! every loop is bounded in count and time.

use std::net::SocketAddr;
use std::time::Duration;

use common::{Kind, PHASE_LIMIT, ProxyUnderTest, Tls, process_tree, rss_kib};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connections opened at once while setting up tunnels: enough to be quick, few enough that the
/// proxies' transient per-handshake buffers do not dominate the figure.
const CONCURRENCY: usize = 50;

mod common;

fn main() {
    common::maybe_serve_backend();
    let tunnels: usize = std::env::var("TUNNELS").ok().and_then(|v| v.parse().ok()).unwrap_or(8000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        // The backend runs in its own process so this one only holds the client sockets (the
        // open-file limit is per process).
        let (mut echo, backend) = common::start_backend_process();
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::generate(dir.path());
        println!("memory per idle WebSocket tunnel, {tunnels} tunnels, backend {backend}");
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
                let proxy = ProxyUnderTest::start(kind, dir.path(), backend, &tls);
                let addr = if tls_on { proxy.tls_addr } else { proxy.plain_addr };
                match measure(&proxy, addr, tls_on.then_some(&tls), tunnels).await {
                    Ok((base, loaded)) => {
                        let per = (loaded.saturating_sub(base) as f64 * 1024.0) / tunnels as f64;
                        println!("{:<10} {:<6} {:>14} {:>14} {:>16.0}", kind.name(), scheme, base, loaded, per);
                    }
                    Err(e) => println!("{:<10} {:<6} failed: {e}", kind.name(), scheme),
                }
                drop(proxy);
            }
        }
        let _ = echo.kill();
        let _ = echo.wait();
    });
}

async fn measure(proxy: &ProxyUnderTest, addr: SocketAddr, tls: Option<&Tls>, n: usize) -> Result<(u64, u64), String> {
    // Warm up: a few tunnels, closed again, so one-time allocations are in the baseline.
    let warm = open_tunnels(addr, tls, 20).await?;
    drop(warm);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pids = process_tree(proxy.child.id());
    let base = rss_kib(&pids);
    let tunnels = tokio::time::timeout(PHASE_LIMIT, open_tunnels(addr, tls, n))
        .await
        .map_err(|_| format!("{n} tunnels not up within {PHASE_LIMIT:?}"))??;
    // Let them go idle (buffers used by the echo exchange are released where the proxy does so).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded = rss_kib(&process_tree(proxy.child.id()));
    drop(tunnels);
    Ok((base, loaded))
}

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn open_tunnels(addr: SocketAddr, tls: Option<&Tls>, n: usize) -> Result<Vec<Client>, String> {
    let connector = tls.map(|t| tokio_tungstenite::Connector::Rustls(t.client.clone()));
    let mut open = Vec::with_capacity(n);
    let mut started = 0;
    while started < n {
        let batch = (n - started).min(CONCURRENCY);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            let connector = connector.clone();
            set.spawn(async move { one_tunnel(addr, connector).await });
        }
        while let Some(result) = set.join_next().await {
            open.push(result.map_err(|e| e.to_string())??);
        }
        started += batch;
    }
    Ok(open)
}

async fn one_tunnel(addr: SocketAddr, connector: Option<tokio_tungstenite::Connector>) -> Result<Client, String> {
    let scheme = if connector.is_some() { "wss" } else { "ws" };
    let request =
        format!("{scheme}://localhost:{}/ws", addr.port()).into_client_request().map_err(|e| e.to_string())?;
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut ws, _) = tokio_tungstenite::client_async_tls_with_config(request, stream, None, connector)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    ws.send(Message::text("hello")).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
        Ok(Some(Ok(msg))) if msg.is_text() => Ok(ws),
        other => Err(format!("no echo: {other:?}")),
    }
}
