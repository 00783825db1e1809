//! What the side-by-side benchmarks share: the proxies under test (tether, nginx, HAProxy)
//! started as processes with equivalent configs, a backend process serving three backends, TLS
//! material, process-memory and CPU readings, the load generators (`load`: wrk and h2load;
//! `ws`: a raw WebSocket client). Loopback only; every wait is bounded; only processes started
//! here are ever stopped, by process group id.
#![allow(dead_code)]

pub mod load;
pub mod ws;

use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Bound on how long a proxy or the backend may take to come up.
pub const PHASE_LIMIT: Duration = Duration::from_secs(60);

/// How many backends every proxy balances over (all served by one backend process).
pub const BACKENDS: usize = 3;

/// Name of the sticky cookie, the same for every proxy.
pub const COOKIE: &str = "SRV";

/// Set in the environment of the re-executed benchmark binary that serves as the backend.
const BACKEND_ROLE: &str = "TETHER_BENCH_BACKEND";

/// When set, the process-group ids of every process started here are kept in this file (one a
/// line, only those still running), so a wrapper script can stop them if this process is killed.
pub const PIDFILE_ENV: &str = "TETHER_BENCH_PIDFILE";

/// `cargo bench` passes `--bench`; `cargo test --all-targets` runs the same `harness = false`
/// binary without it, and then every benchmark only does a quick smoke run.
pub fn bench_mode() -> bool {
    std::env::args().skip(1).any(|a| a == "--bench")
}

/// A number from the environment, or `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

// ---------------------------------------------------------------------------------------------
// Processes started here: each in its own process group, stopped by group id.

static STARTED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn write_pidfile(groups: &[u32]) {
    if let Some(path) = std::env::var_os(PIDFILE_ENV) {
        let text: String = groups.iter().map(|g| format!("{g}\n")).collect();
        let _ = std::fs::write(path, text);
    }
}

/// Spawn `command` as the leader of a new process group, remembered until [`stop_group`].
pub fn spawn_group(command: &mut Command) -> std::io::Result<Child> {
    let child = command.process_group(0).spawn()?;
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    started.push(child.id());
    write_pidfile(&started);
    Ok(child)
}

/// SIGKILL the process group led by `child` (nginx's workers die with their master) and reap it.
pub fn stop_group(child: &mut Child) {
    let group = child.id();
    // SAFETY: kill(2) on a process group this benchmark created (its leader is our child and has
    // not been reaped yet, so the id cannot have been reused).
    unsafe {
        libc::kill(-(group as i32), libc::SIGKILL);
    }
    let _ = child.wait();
    let mut started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
    started.retain(|g| *g != group);
    write_pidfile(&started);
}

/// On SIGINT, SIGTERM or SIGHUP: stop every process group started here, then exit 130.
pub fn stop_all_on_signal() {
    std::thread::spawn(|| {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
        runtime.block_on(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term), Ok(mut hup)) =
                (signal(SignalKind::interrupt()), signal(SignalKind::terminate()), signal(SignalKind::hangup()))
            else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = hup.recv() => {}
            }
            let started = STARTED.lock().unwrap_or_else(|e| e.into_inner());
            for group in started.iter() {
                // SAFETY: kill(2) on process groups this benchmark created.
                unsafe {
                    libc::kill(-(*group as i32), libc::SIGKILL);
                }
            }
            eprintln!("interrupted: stopped {} process group(s) started by this benchmark", started.len());
            std::process::exit(130);
        });
    });
}

// ---------------------------------------------------------------------------------------------
// The backend: this binary re-executed, serving BACKENDS listeners.

/// Call first in `main`: when this process is the backend, serve until killed and never return.
pub fn maybe_serve_backend() {
    if std::env::var_os(BACKEND_ROLE).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    runtime.block_on(async {
        for _ in 0..BACKENDS {
            let addr = start_backend().await;
            println!("{addr}");
        }
        std::future::pending::<()>().await;
    });
}

/// The backend process: [`BACKENDS`] hyper servers (one tokio runtime, 2 threads), each on its
/// own port, so "direct" measurements against one of them load the same process as proxied ones.
pub struct Backends {
    pub child: Child,
    pub addrs: Vec<SocketAddr>,
}

impl Backends {
    /// Start this binary again as the backend (in its own process, so the benchmark process only
    /// holds the client sockets: the open-file limit is per process).
    pub fn start() -> Self {
        use std::io::BufRead as _;
        let mut child = spawn_group(
            Command::new(std::env::current_exe().expect("current exe"))
                .env(BACKEND_ROLE, "1")
                .stdout(Stdio::piped())
                .stderr(Stdio::null()),
        )
        .expect("start the backend");
        let mut reader = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut addrs = Vec::new();
        for _ in 0..BACKENDS {
            let mut line = String::new();
            reader.read_line(&mut line).expect("backend address");
            addrs.push(line.trim().parse().expect("backend address"));
        }
        Self { child, addrs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

/// The response body of plain requests: small, like an API answer.
pub const BODY: &[u8] = b"{\"status\":\"ok\",\"instance\":\"bench\"}";

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

// ---------------------------------------------------------------------------------------------
// /proc readings.

/// Resident set of `pids`, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .sum()
}

/// The fields of `/proc/PID/stat` after the parenthesised command name: field 3 (the state, a
/// letter, read as 0) is index 0, so field N (as proc(5) numbers them) is index N - 3.
fn stat_fields(pid: u32) -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(|f| f.parse::<u64>().unwrap_or(0)).collect())
}

/// Field 4, the parent's pid.
const STAT_PPID: usize = 4 - 3;
/// Fields 14 and 15: user and system CPU time, clock ticks.
const STAT_UTIME: usize = 14 - 3;
const STAT_STIME: usize = 15 - 3;

/// `pid` and all its descendants.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut all = vec![pid];
    let mut i = 0;
    let candidates: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter_map(|child| Some((child, *stat_fields(child)?.get(STAT_PPID)? as u32)))
                .collect()
        })
        .unwrap_or_default();
    while i < all.len() {
        let parent = all[i];
        for &(child, ppid) in &candidates {
            if ppid == parent && !all.contains(&child) {
                all.push(child);
            }
        }
        i += 1;
    }
    all
}

/// User + system CPU time of `pids` (all their threads), in clock ticks (utime + stime of
/// `/proc/PID/stat`, fields 14 and 15).
pub fn cpu_ticks(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&pid| stat_fields(pid))
        .map(|f| f.get(STAT_UTIME).unwrap_or(&0) + f.get(STAT_STIME).unwrap_or(&0))
        .sum()
}

/// System CPU time of `pids` (all their threads), in clock ticks (stime of `/proc/PID/stat`,
/// field 15): the kernel's share of [`cpu_ticks`].
pub fn kernel_ticks(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|&pid| stat_fields(pid)).map(|f| *f.get(STAT_STIME).unwrap_or(&0)).sum()
}

/// Clock ticks per second (`getconf CLK_TCK`).
pub fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// CPU time of this process's reaped children (wrk, h2load), clock ticks.
pub fn children_cpu_ticks() -> u64 {
    rusage_ticks(libc::RUSAGE_CHILDREN)
}

/// User + system CPU time from getrusage(2), clock ticks.
pub fn rusage_ticks(who: libc::c_int) -> u64 {
    // SAFETY: getrusage writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let micros = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
    ((micros(usage.ru_utime) + micros(usage.ru_stime)) / 1e6 * ticks_per_second()) as u64
}

/// The whole machine's CPU time from `/proc/stat`: (busy, steal), clock ticks summed over cores.
pub fn machine_ticks() -> (u64, u64) {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return (0, 0) };
    let Some(line) = stat.lines().next() else { return (0, 0) };
    let f: Vec<u64> = line.split_whitespace().skip(1).map(|v| v.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal
    let busy = [0, 1, 2, 5, 6].iter().map(|&i| f.get(i).copied().unwrap_or(0)).sum();
    (busy, f.get(7).copied().unwrap_or(0))
}

// ---------------------------------------------------------------------------------------------
// The proxies.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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
/// cannot report an ephemeral port back). Only used by these benchmarks.
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
        let mut client =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self { cert: cert_path, key: key_path, combined, client: Arc::new(client) }
    }
}

/// How a proxy is run.
#[derive(Clone, Debug)]
pub struct ProxyOptions {
    /// nginx `worker_processes`, HAProxy `nbthread`, tether `TOKIO_WORKER_THREADS`.
    pub workers: u32,
    /// tether only: write its JSON access log (stderr) to this file; `None` = `format: off`.
    pub access_log: Option<PathBuf>,
}

impl Default for ProxyOptions {
    fn default() -> Self {
        Self { workers: 1, access_log: None }
    }
}

/// A proxy running as its own process group, listening on `plain_addr` (HTTP/1.1, ws) and
/// `tls_addr` (TLS with ALPN h2 and http/1.1, wss), balancing over every backend with a sticky
/// cookie named [`COOKIE`] set on every response to a request that does not carry a valid one.
///
/// What each proxy does per request, kept as equal as the three allow:
/// - tether: `affinity.cookie` (name `SRV`, a signed opaque value, `HttpOnly; SameSite=Lax`),
///   `fallback: round_robin`, pooled backend connections, access log off (or JSON to a file);
/// - HAProxy: `balance roundrobin` + `cookie SRV insert indirect nocache httponly`, server-side
///   keep-alive (`http-reuse safe`, the default), no `log` line;
/// - nginx has no sticky cookie in its free version, so it is emulated: a `map` from
///   `$cookie_SRV` picks a one-server upstream (or the round-robin upstream of all three when the
///   cookie is absent or unknown), and `add_header Set-Cookie "SRV=<id of $upstream_addr>..."
///   always` names the server that answered, on every response. Each upstream keeps 64 idle
///   connections per worker; `access_log off`; `keepalive_requests` raised from its default of
///   1,000 (client and upstream side), which would otherwise end every connection, h2 ones
///   included, after 1,000 requests (HAProxy and tether set no such limit); `worker_connections`
///   above the 20,000 open files, because nginx starts closing fresh connections that have not
///   sent their request yet once fewer than 1/16 of its connection slots are free (9,000 tunnels
///   take 18,000 slots).
pub struct ProxyUnderTest {
    pub kind: Kind,
    pub child: Child,
    pub plain_addr: SocketAddr,
    pub tls_addr: SocketAddr,
}

/// The HMAC key tether signs its cookies with (>= 32 bytes; fixed, so no startup warning).
const COOKIE_KEY_ENV: &str = "TETHER_BENCH_COOKIE_KEY";
const COOKIE_KEY: &str = "bench-cookie-key-0123456789abcdef0123456789";

impl ProxyUnderTest {
    pub fn start(kind: Kind, dir: &Path, backends: &[SocketAddr], tls: &Tls, options: &ProxyOptions) -> Self {
        let plain = free_port();
        let secure = free_port();
        let workers = options.workers.max(1);
        let stderr = |name: &str| Stdio::from(std::fs::File::create(dir.join(name)).expect("stderr file"));
        let child = match kind {
            Kind::Tether => {
                let config = dir.join("tether.yaml");
                std::fs::write(&config, tether_config(plain, secure, backends, tls, options.access_log.is_some()))
                    .expect("write config");
                let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
                command
                    .args(["proxy", "-c"])
                    .arg(&config)
                    .env("TOKIO_WORKER_THREADS", workers.to_string())
                    .env(COOKIE_KEY_ENV, COOKIE_KEY)
                    .env_remove("RUST_LOG")
                    .stdout(Stdio::null());
                match &options.access_log {
                    Some(log) => command.stderr(Stdio::from(std::fs::File::create(log).expect("access log file"))),
                    None => command.stderr(stderr("tether.stderr")),
                };
                spawn_group(&mut command).expect("start tether")
            }
            Kind::Nginx => {
                let prefix = dir.join("nginx");
                std::fs::create_dir_all(prefix.join("logs")).expect("nginx dirs");
                let config = prefix.join("nginx.conf");
                std::fs::write(&config, nginx_config(&prefix, plain, secure, backends, tls, workers))
                    .expect("write nginx.conf");
                spawn_group(
                    Command::new(which("nginx").expect("nginx"))
                        .arg("-p")
                        .arg(&prefix)
                        .arg("-e")
                        .arg(prefix.join("logs/error.log"))
                        .arg("-c")
                        .arg(&config)
                        .stdout(Stdio::null())
                        .stderr(stderr("nginx.stderr")),
                )
                .expect("start nginx")
            }
            Kind::Haproxy => {
                let config = dir.join("haproxy.cfg");
                std::fs::write(&config, haproxy_config(plain, secure, backends, tls, workers))
                    .expect("write haproxy.cfg");
                spawn_group(
                    Command::new(which("haproxy").expect("haproxy"))
                        .args(["-db", "-f"])
                        .arg(&config)
                        .stdout(Stdio::null())
                        .stderr(stderr("haproxy.stderr")),
                )
                .expect("start haproxy")
            }
        };
        let mut proxy = Self {
            kind,
            child,
            plain_addr: SocketAddr::from(([127, 0, 0, 1], plain)),
            tls_addr: SocketAddr::from(([127, 0, 0, 1], secure)),
        };
        if let Err(e) = proxy.wait_listening() {
            let log = std::fs::read_to_string(dir.join(format!("{}.stderr", kind.name()))).unwrap_or_default();
            stop_group(&mut proxy.child);
            panic!("{}: {e}\n{log}", kind.name());
        }
        proxy
    }

    /// This proxy's processes (nginx: master and workers).
    pub fn pids(&self) -> Vec<u32> {
        process_tree(self.child.id())
    }

    fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PHASE_LIMIT;
        for addr in [self.plain_addr, self.tls_addr] {
            while std::net::TcpStream::connect(addr).is_err() {
                if let Ok(Some(status)) = self.child.try_wait() {
                    return Err(format!("exited ({status}) before listening on {addr}"));
                }
                if Instant::now() > deadline {
                    return Err(format!("not listening on {addr} within {PHASE_LIMIT:?}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // nginx: the master listens before its workers are up; wait for them too.
        if self.kind == Kind::Nginx {
            while self.pids().len() < 2 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for ProxyUnderTest {
    fn drop(&mut self) {
        stop_group(&mut self.child);
    }
}

fn server_id(i: usize) -> String {
    format!("s{}", i + 1)
}

fn tether_config(plain: u16, secure: u16, backends: &[SocketAddr], tls: &Tls, log: bool) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("      - {{ id: {}, address: \"{b}\" }}\n", server_id(i)))
        .collect();
    format!(
        "listeners:
  - {{ name: plain, bind: \"127.0.0.1:{plain}\" }}
  - name: tls
    bind: \"127.0.0.1:{secure}\"
    tls: {{ certificates: [ {{ cert: \"{cert}\", key: \"{key}\" }} ] }}
routes: [ {{ upstream: app }} ]
upstreams:
  app:
    backends:
{servers}    affinity:
      cookie: {{ name: {COOKIE}, key_env: {COOKIE_KEY_ENV} }}
      fallback: round_robin
timeouts: {{ tunnel_idle: 1h }}
limits: {{ max_connections: 9500 }}
access_log: {{ format: {format} }}
",
        cert = tls.cert.display(),
        key = tls.key.display(),
        format = if log { "json" } else { "off" },
    )
}

fn nginx_config(prefix: &Path, plain: u16, secure: u16, backends: &[SocketAddr], tls: &Tls, workers: u32) -> String {
    let all: String = backends.iter().map(|b| format!("server {b}; ")).collect();
    let mut singles = String::new();
    let mut by_cookie = String::new();
    let mut by_addr = String::new();
    for (i, b) in backends.iter().enumerate() {
        let id = server_id(i);
        singles.push_str(&format!("  upstream app_{id} {{ server {b}; keepalive 64; keepalive_requests 1000000; }}\n"));
        by_cookie.push_str(&format!(" {id} app_{id};"));
        by_addr.push_str(&format!(" {b} {id};"));
    }
    // Several workers share the port through SO_REUSEPORT so the kernel spreads connections.
    let reuse = if workers > 1 { " reuseport" } else { "" };
    format!(
        "worker_processes {workers};
daemon off;
user root;
pid {p}/nginx.pid;
error_log {p}/logs/error.log warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fastcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;
  map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}
  upstream app {{ {all}keepalive 64; keepalive_requests 1000000; }}
{singles}  map $cookie_{COOKIE} $sticky_upstream {{ default app;{by_cookie} }}
  map $upstream_addr $sticky_id {{ default \"\";{by_addr} }}
  server {{
    listen 127.0.0.1:{plain}{reuse};
    listen 127.0.0.1:{secure} ssl http2{reuse};
    ssl_certificate {c};
    ssl_certificate_key {k};
    location / {{
      proxy_pass http://$sticky_upstream;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 1h;
      proxy_send_timeout 1h;
      add_header Set-Cookie \"{COOKIE}=$sticky_id; Path=/; HttpOnly\" always;
      add_header Cache-Control private always;
    }}
  }}
}}
",
        p = prefix.display(),
        c = tls.cert.display(),
        k = tls.key.display()
    )
}

fn haproxy_config(plain: u16, secure: u16, backends: &[SocketAddr], tls: &Tls, workers: u32) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("  server {id} {b} cookie {id}\n", id = server_id(i)))
        .collect();
    format!(
        "global
  maxconn 9200
  nbthread {workers}
defaults
  mode http
  option http-keep-alive
  timeout connect 5s
  timeout client 1h
  timeout server 1h
  timeout tunnel 1h
frontend fe
  bind 127.0.0.1:{plain}
  bind 127.0.0.1:{secure} ssl crt {pem} alpn h2,http/1.1
  default_backend be
backend be
  balance roundrobin
  cookie {COOKIE} insert indirect nocache httponly
  http-reuse safe
{servers}",
        pem = tls.combined.display()
    )
}
