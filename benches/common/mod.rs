//! What the side-by-side benchmarks share: the proxies under test (tether, nginx, HAProxy)
//! started as processes with equivalent configs, a backend process, TLS material, and
//! process-memory readings. Loopback only; every wait is bounded.
#![allow(dead_code)]

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Bound on how long a proxy may take to come up.
pub const PHASE_LIMIT: Duration = Duration::from_secs(120);

/// Set in the environment of the re-executed benchmark binary that serves as the backend.
const BACKEND_ROLE: &str = "TETHER_BENCH_BACKEND";

/// Call first in `main`: when this process is the backend, serve until killed and never return.
pub fn maybe_serve_backend() {
    if std::env::var_os(BACKEND_ROLE).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        let addr = start_backend().await;
        println!("{addr}");
        std::future::pending::<()>().await;
    });
}

/// Start this binary again as the backend (in its own process, so the benchmark process only
/// holds the client sockets: the open-file limit is per process); returns it and its address.
pub fn start_backend_process() -> (Child, SocketAddr) {
    use std::io::BufRead as _;
    let mut child = Command::new(std::env::current_exe().expect("current exe"))
        .env(BACKEND_ROLE, "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the backend");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("backend address");
    let addr = line.trim().parse().expect("backend address");
    (child, addr)
}

/// The response body of plain requests: small, like an API answer.
const BODY: &[u8] = b"{\"status\":\"ok\",\"instance\":\"bench\"}";

/// HTTP/1.1 backend: `/ws` is a WebSocket echo, anything else answers 200 with [`BODY`].
async fn start_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind backend");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|mut req: http::Request<hyper::body::Incoming>| async move {
                    if req.uri().path() != "/ws" {
                        return Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(BODY))));
                    }
                    let key =
                        req.headers().get("sec-websocket-key").cloned().unwrap_or(http::HeaderValue::from_static(""));
                    let on_upgrade = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on_upgrade.await else { return };
                        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                            TokioIo::new(upgraded),
                            tokio_tungstenite::tungstenite::protocol::Role::Server,
                            None,
                        )
                        .await;
                        while let Some(Ok(msg)) = ws.next().await {
                            if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                    });
                    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
                    let resp = http::Response::builder()
                        .status(101)
                        .header("connection", "upgrade")
                        .header("upgrade", "websocket")
                        .header("sec-websocket-accept", accept)
                        .body(Full::new(Bytes::new()))
                        .expect("response");
                    Ok(resp)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Resident set of `pids`, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
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

#[derive(Clone, Copy)]
pub enum Kind {
    Tether,
    Nginx,
    Haproxy,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tether => "tether",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }

    pub fn available(self) -> bool {
        match self {
            Kind::Tether => true,
            Kind::Nginx => which("nginx").is_some(),
            Kind::Haproxy => which("haproxy").is_some(),
        }
    }
}

pub fn which(program: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(program))
        .find(|p| p.exists())
}

/// A free loopback port (the kernel's pick, released for the proxy to bind; nginx and HAProxy
/// cannot report an ephemeral port back). Only used by this benchmark.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// cert + key in one file, as HAProxy wants it.
    pub combined: PathBuf,
    pub client: Arc<rustls::ClientConfig>,
}

impl Tls {
    pub fn generate(dir: &Path) -> Self {
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

pub struct ProxyUnderTest {
    pub child: Child,
    pub plain_addr: SocketAddr,
    pub tls_addr: SocketAddr,
}

impl ProxyUnderTest {
    pub fn start(kind: Kind, dir: &Path, backend: SocketAddr, tls: &Tls) -> Self {
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
                        "worker_processes 1;\ndaemon off;\nuser root;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log warn;\nworker_rlimit_nofile 20000;\nevents {{ worker_connections 19000; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n  upstream app {{ server {backend}; keepalive 64; }}\n  server {{\n    listen 127.0.0.1:{plain};\n    listen 127.0.0.1:{secure} ssl;\n    ssl_certificate {c};\n    ssl_certificate_key {k};\n    location / {{\n      proxy_pass http://app;\n      proxy_http_version 1.1;\n      proxy_set_header Upgrade $http_upgrade;\n      proxy_set_header Connection $connection_upgrade;\n      proxy_read_timeout 1h;\n      proxy_send_timeout 1h;\n    }}\n  }}\n}}\n",
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
