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

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Connections opened at once while setting up tunnels: enough to be quick, few enough that the
/// proxies' transient per-handshake buffers do not dominate the figure.
const CONCURRENCY: usize = 50;
/// Bound on how long one proxy may take to come up or to carry all tunnels.
const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// Set in the environment of the re-executed bench binary that serves as the echo backend.
const ECHO_ROLE: &str = "TETHER_BENCH_ECHO";

fn main() {
    if std::env::var_os(ECHO_ROLE).is_some() {
        return echo_server_process();
    }
    let tunnels: usize = std::env::var("TUNNELS").ok().and_then(|v| v.parse().ok()).unwrap_or(8000);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async move {
        // The backend runs in its own process so this one only holds the client sockets (the
        // open-file limit is per process).
        let (mut echo, backend) = start_echo_process();
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

/// Start this binary again as the echo backend; returns it and its address.
fn start_echo_process() -> (Child, SocketAddr) {
    use std::io::BufRead as _;
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(ECHO_ROLE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the echo backend");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("echo address");
    let addr = line.trim().parse().expect("echo address");
    (child, addr)
}

fn echo_server_process() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let addr = start_echo_backend().await;
        println!("{addr}");
        // Runs until the benchmark kills it.
        std::future::pending::<()>().await;
    });
}

/// An in-process echo WebSocket server.
async fn start_echo_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else { return };
                while let Some(Ok(msg)) = ws.next().await {
                    if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// Resident set of `pids`, KiB.
fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// `pid` and all its descendants.
fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else { continue };
                // The parent pid is the 2nd field after the parenthesised command name.
                let ppid =
                    stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
                if ppid == Some(parent) && !all.contains(&child) {
                    all.push(child);
                }
            }
        }
        i += 1;
    }
    all
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

#[derive(Clone, Copy)]
enum Kind {
    Tether,
    Nginx,
    Haproxy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tether => "tether",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    fn available(self) -> bool {
        match self {
            Kind::Tether => true,
            Kind::Nginx => which("nginx").is_some(),
            Kind::Haproxy => which("haproxy").is_some(),
        }
    }
}

fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.exists())
}

/// A free loopback port (the kernel's pick, released for the proxy to bind; nginx and HAProxy
/// cannot report an ephemeral port back). Only used by this benchmark.
fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

struct Tls {
    cert: PathBuf,
    key: PathBuf,
    /// cert + key in one file, as HAProxy wants it.
    combined: PathBuf,
    client: Arc<rustls::ClientConfig>,
}

impl Tls {
    fn generate(dir: &Path) -> Self {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        let (cert_path, key_path, combined) = (dir.join("bench.crt"), dir.join("bench.key"), dir.join("bench.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        std::fs::write(&combined, format!("{}{}", cert.pem(), key.serialize_pem())).expect("write pem");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).expect("root");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        Self { cert: cert_path, key: key_path, combined, client: Arc::new(client) }
    }
}

struct ProxyUnderTest {
    child: Child,
    plain_addr: SocketAddr,
    tls_addr: SocketAddr,
}

impl ProxyUnderTest {
    fn start(kind: Kind, dir: &Path, backend: SocketAddr, tls: &Tls) -> Self {
        let plain = free_port();
        let secure = free_port();
        let child = match kind {
            Kind::Tether => {
                let config = dir.join("tether.yaml");
                std::fs::write(
                    &config,
                    format!(
                        "listeners:\n  - {{ name: plain, bind: \"127.0.0.1:{plain}\" }}\n  - name: tls\n    bind: \"127.0.0.1:{secure}\"\n    tls: {{ certificates: [ {{ cert: \"{}\", key: \"{}\" }} ] }}\nroutes: [ {{ upstream: app }} ]\nupstreams:\n  app:\n    backends: [ {{ id: app, address: \"{backend}\" }} ]\ntimeouts: {{ tunnel_idle: 1h }}\nlimits: {{ max_connections: 9500 }}\naccess_log: {{ format: off }}\n",
                        tls.cert.display(),
                        tls.key.display()
                    ),
                )
                .expect("write config");
                Command::new(env!("CARGO_BIN_EXE_tether"))
                    .args(["proxy", "-c"])
                    .arg(&config)
                    .env("RUST_LOG", "warn")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start tether")
            }
            Kind::Nginx => {
                let prefix = dir.join("nginx");
                std::fs::create_dir_all(prefix.join("logs")).expect("nginx dirs");
                let config = prefix.join("nginx.conf");
                std::fs::write(
                    &config,
                    format!(
                        "worker_processes 1;\ndaemon off;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 19000; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n  server {{\n    listen 127.0.0.1:{plain};\n    listen 127.0.0.1:{secure} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    location / {{\n      proxy_pass http://{backend};\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n    }}\n  }}\n}}\n",
                        p = prefix.display(),
                        c = tls.cert.display(),
                        k = tls.key.display()
                    ),
                )
                .expect("write nginx.conf");
                Command::new(which("nginx").expect("nginx"))
                    .arg("-p")
                    .arg(&prefix)
                    .arg("-e")
                    .arg(prefix.join("logs/error.log"))
                    .arg("-c")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nginx")
            }
            Kind::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(
                    &config,
                    format!(
                        "global\n  maxconn 9000\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\nfrontend fe\n  bind 127.0.0.1:{plain}\n  bind 127.0.0.1:{secure} ssl crt {}\n  default_backend be\nbackend be\n  server app {backend}\n",
                        tls.combined.display()
                    ),
                )
                .expect("write haproxy.cfg");
                Command::new(which("haproxy").expect("haproxy"))
                    .args(["-db", "-f"])
                    .arg(&config)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start haproxy")
            }
        };
        let proxy = Self {
            child,
            plain_addr: SocketAddr::from(([127, 0, 0, 1], plain)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], secure)),
        };
        proxy.wait_listening();
        proxy
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + PHASE_LIMIT;
        for addr in [self.plain_addr, self.tls_addr] {
            while std::net::TcpStream::connect(addr).is_err() {
                assert!(Instant::now() < deadline, "proxy did not start listening on {addr}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        // SIGKILL the process group we started: nginx's worker dies with its master.
        for pid in process_tree(self.child.id()).into_iter().rev() {
            // SAFETY: kill(2) on processes this benchmark started.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}
