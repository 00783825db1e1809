//! The measuring half of `benches/compare.sh`: tether, nginx and HAProxy side by side (and
//! straight to the backend), each at 1 and 2 workers, in an order rotated every repetition.
//! Writes one JSON object per line (per measurement) to `COMPARE_OUT`; `benches/compare_report.py`
//! turns them into the tables. Run it through the script, which installs the tools, builds in
//! release mode and writes the report:
//!
//! ```sh
//! benches/compare.sh            # full: 3 repetitions
//! benches/compare.sh --quick    # smoke: 1 repetition, short windows, few tunnels
//! ```
//!
//! Per proxy and worker count ("variant"), one proxy process serves, in turn:
//! - `http`: `wrk -t1 -c64` keep-alive on a small JSON answer (after a warm-up run);
//! - `ws`: 64 WebSockets, closed loop, 16-byte binary messages, from one client thread;
//! - `h2`: `h2load -t1 -c8 -m8` (8 TLS connections x 8 streams = 64 requests in flight).
//!
//! Around every measured window the CPU time (utime + stime from `/proc/PID/stat`) of all the
//! proxy's processes, of the backend, of the load generator and of the whole machine is read,
//! so each record carries proxy CPU per operation and how busy the machine was with other work.
//! Then `mem`: for each proxy (1 worker) and scheme (ws, wss), tunnels are opened up to each N in
//! `COMPARE_TUNNELS` and the proxy's resident set is read once they are idle.
//!
//! Settings (environment): `COMPARE_OUT` (file, required with `--bench`), `COMPARE_REPS` (3),
//! `COMPARE_SECONDS` (8, per measured window), `COMPARE_WARMUP` (2), `COMPARE_TUNNELS`
//! (`2000,5000,9000`), `COMPARE_IDLE` (2, seconds tunnels sit idle before the reading),
//! `COMPARE_SYSTEMS` (`direct,nginx,haproxy,tether,tether-log`), `COMPARE_WORKERS` (`1,2`),
//! `COMPARE_TESTS` (`http,ws,h2,mem`), `COMPARE_MEM_WORKERS` (1).
//!
//! Without `--bench` (as `cargo test --all-targets` runs it) it only smoke-tests every installed
//! proxy's config for a few seconds: sticky cookie set, WebSocket echo, a few tunnels, a short
//! wrk/h2load run when installed, tether's access log written when on.

mod common;

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::load::{self, H2Amount};
use common::{Backends, Kind, ProxyOptions, ProxyUnderTest, Tls, ws};
use serde_json::{Value, json};

/// Concurrency of every throughput test: wrk connections, WebSocket connections, h2 streams.
const CONNECTIONS: u32 = 64;
const H2_CLIENTS: u32 = 8;
const H2_STREAMS: u32 = 8;
/// Handshakes in flight while opening idle tunnels (few enough that the proxies' transient
/// per-handshake buffers do not dominate the figure).
const OPEN_CONCURRENCY: usize = 50;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Direct,
    Proxy { kind: Kind, log: bool },
}

impl System {
    fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Proxy { kind: Kind::Tether, log: true } => "tether-log",
            System::Proxy { kind, .. } => kind.name(),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "direct" => System::Direct,
            "nginx" => System::Proxy { kind: Kind::Nginx, log: false },
            "haproxy" => System::Proxy { kind: Kind::Haproxy, log: false },
            "tether" => System::Proxy { kind: Kind::Tether, log: false },
            "tether-log" => System::Proxy { kind: Kind::Tether, log: true },
            _ => return None,
        })
    }

    fn available(self) -> bool {
        match self {
            System::Direct => true,
            System::Proxy { kind, .. } => kind.available(),
        }
    }
}

struct Settings {
    out: PathBuf,
    reps: usize,
    seconds: f64,
    warmup: f64,
    idle: f64,
    tunnels: Vec<usize>,
    systems: Vec<System>,
    workers: Vec<u32>,
    mem_workers: u32,
    tests: Vec<String>,
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Settings {
    fn from_env() -> Result<Self, String> {
        let out = std::env::var_os("COMPARE_OUT").ok_or("COMPARE_OUT (the results file) is not set")?.into();
        let mut tunnels: Vec<usize> = list("COMPARE_TUNNELS", "2000,5000,9000")
            .iter()
            .map(|n| n.parse().map_err(|_| format!("COMPARE_TUNNELS: {n} is not a number")))
            .collect::<Result<_, _>>()?;
        tunnels.sort_unstable();
        // Each tunnel is 2 sockets in the proxy, whose open-file limit is 20,000 here.
        if tunnels.last().is_some_and(|&n| n > 9_000) {
            return Err("COMPARE_TUNNELS: at most 9000 (a proxy holds 2 sockets per tunnel)".to_owned());
        }
        let systems = list("COMPARE_SYSTEMS", "direct,nginx,haproxy,tether,tether-log")
            .iter()
            .map(|s| System::parse(s).ok_or_else(|| format!("COMPARE_SYSTEMS: unknown {s}")))
            .collect::<Result<_, _>>()?;
        let workers = list("COMPARE_WORKERS", "1,2")
            .iter()
            .map(|w| w.parse().map_err(|_| format!("COMPARE_WORKERS: {w} is not a number")))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            out,
            reps: common::env_or("COMPARE_REPS", 3usize).max(1),
            seconds: common::env_or("COMPARE_SECONDS", 8.0f64).max(1.0),
            warmup: common::env_or("COMPARE_WARMUP", 2.0f64).max(1.0),
            idle: common::env_or("COMPARE_IDLE", 2.0f64).max(0.0),
            tunnels,
            systems,
            workers,
            mem_workers: common::env_or("COMPARE_MEM_WORKERS", 1u32).max(1),
            tests: list("COMPARE_TESTS", "http,ws,h2,mem"),
        })
    }

    fn runs(&self, test: &str) -> bool {
        self.tests.iter().any(|t| t == test)
    }
}

fn main() {
    common::maybe_serve_backend();
    if !common::bench_mode() {
        smoke();
        return;
    }
    common::stop_all_on_signal();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("compare: {e}");
            std::process::exit(2);
        }
    };
    let mut bench = Bench::new(settings);
    bench.run();
}

/// Bring `items` round by `by` places (the order of proxies changes every repetition).
fn rotated<T: Clone>(items: &[T], by: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let by = by % v.len();
        v.rotate_left(by);
    }
    v
}

/// CPU readings at one instant (clock ticks).
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    proxy: u64,
    /// The kernel's share of `proxy` (system calls, and loopback TCP work charged to the proxy).
    proxy_kernel: u64,
    backend: u64,
    /// Reaped children (wrk, h2load) + this process (the WebSocket client).
    children: u64,
    this: u64,
    machine_busy: u64,
    steal: u64,
}

impl Sample {
    fn take(proxy: &[u32], backend: u32) -> Self {
        let (machine_busy, steal) = common::machine_ticks();
        Self {
            at: Instant::now(),
            proxy: common::cpu_ticks(proxy),
            proxy_kernel: common::kernel_ticks(proxy),
            backend: common::cpu_ticks(&[backend]),
            children: common::children_cpu_ticks(),
            this: common::cpu_ticks(&[std::process::id()]),
            machine_busy,
            steal,
        }
    }
}

/// CPU figures for a window in which `ops` operations completed; the client is the reaped child
/// (`external`) or this process.
fn cpu_fields(before: &Sample, after: &Sample, ops: u64, external: bool, has_proxy: bool) -> Value {
    let tps = common::ticks_per_second();
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let proxy = after.proxy.saturating_sub(before.proxy) as f64;
    let proxy_kernel = after.proxy_kernel.saturating_sub(before.proxy_kernel) as f64;
    let backend = after.backend.saturating_sub(before.backend) as f64;
    let client = if external {
        after.children.saturating_sub(before.children) as f64
    } else {
        after.this.saturating_sub(before.this) as f64
    };
    let busy = after.machine_busy.saturating_sub(before.machine_busy) as f64;
    let steal = after.steal.saturating_sub(before.steal) as f64;
    let per_op = |ticks: f64| if ops > 0 { ticks / tps * 1e6 / ops as f64 } else { f64::NAN };
    let cores = |ticks: f64| ticks / tps / wall;
    // Straight to the backend there is no proxy (serde_json writes NaN as null).
    let (proxy_us, proxy_kernel_us) =
        if has_proxy { (per_op(proxy), per_op(proxy_kernel)) } else { (f64::NAN, f64::NAN) };
    json!({
        "proxy_cpu_us": proxy_us,
        "proxy_kernel_us": proxy_kernel_us,
        "backend_cpu_us": per_op(backend),
        "client_cpu_us": per_op(client),
        "proxy_cores": cores(proxy),
        "backend_cores": cores(backend),
        "client_cores": cores(client),
        // Whatever else kept the machine busy (other work on this shared machine, kernel threads).
        "other_cores": cores((busy - proxy - backend - client).max(0.0)),
        "steal_cores": cores(steal),
        "window_s": wall,
    })
}

fn merge(mut a: Value, b: Value) -> Value {
    if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

struct Bench {
    settings: Settings,
    out: std::fs::File,
    backends: Backends,
    dir: tempfile::TempDir,
    tls: Tls,
    wrk: Option<PathBuf>,
    h2load: Option<PathBuf>,
}

impl Bench {
    fn new(settings: Settings) -> Self {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&settings.out)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", settings.out.display()));
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = Tls::generate(dir.path());
        let backends = Backends::start();
        Self { settings, out, backends, dir, tls, wrk: common::which("wrk"), h2load: common::which("h2load") }
    }

    fn emit(&mut self, record: Value) {
        let _ = writeln!(self.out, "{record}");
        let _ = self.out.flush();
    }

    fn run(&mut self) {
        let s = &self.settings;
        let systems: Vec<System> = s.systems.iter().copied().filter(|sys| sys.available()).collect();
        let skipped: Vec<&str> = s.systems.iter().filter(|sys| !sys.available()).map(|sys| sys.name()).collect();
        let meta = json!({
            "type": "meta",
            "reps": s.reps, "seconds": s.seconds, "warmup": s.warmup, "idle": s.idle,
            "tunnels": s.tunnels, "workers": s.workers, "mem_workers": s.mem_workers, "tests": s.tests,
            "systems": systems.iter().map(|x| x.name()).collect::<Vec<_>>(), "skipped": skipped,
            "connections": CONNECTIONS, "h2_clients": H2_CLIENTS, "h2_streams": H2_STREAMS,
            "ws_payload": ws::PAYLOAD, "backends": common::BACKENDS,
            "ticks_per_second": common::ticks_per_second(),
            "wrk": self.wrk.is_some(), "h2load": self.h2load.is_some(),
        });
        self.emit(meta);
        let started = Instant::now();
        for rep in 0..self.settings.reps {
            let order = rotated(&systems, rep);
            let workers = rotated(&self.settings.workers, rep);
            let begin_load = loadavg();
            eprintln!(
                "== repetition {}/{}: {} (load average {begin_load})",
                rep + 1,
                self.settings.reps,
                order.iter().map(|x| x.name()).collect::<Vec<_>>().join(", ")
            );
            for &system in &order {
                let counts: Vec<u32> = if system == System::Direct { vec![0] } else { workers.clone() };
                for w in counts {
                    self.variant(rep, system, w);
                }
            }
            if self.settings.runs("mem") {
                let proxies: Vec<Kind> = order
                    .iter()
                    .filter_map(|sys| match sys {
                        System::Proxy { kind, log: false } => Some(*kind),
                        _ => None,
                    })
                    .collect();
                let schemes = rotated(&[false, true], rep);
                for kind in proxies {
                    for &tls in &schemes {
                        self.memory(rep, kind, tls);
                    }
                }
            }
            let record = json!({"type": "rep", "rep": rep, "order": order.iter().map(|x| x.name()).collect::<Vec<_>>(),
                "loadavg_start": begin_load, "loadavg_end": loadavg()});
            self.emit(record);
        }
        eprintln!("== done in {:.0} s", started.elapsed().as_secs_f64());
    }

    /// One proxy process at `workers` workers: http, ws and h2 in turn.
    fn variant(&mut self, rep: usize, system: System, workers: u32) {
        let access_log = access_log_path(self.dir.path());
        let proxy = match system {
            System::Direct => None,
            System::Proxy { kind, log } => {
                let options = ProxyOptions { workers, access_log: log.then(|| access_log.clone()) };
                let dir = self.dir.path().to_owned();
                let addrs = self.backends.addrs.clone();
                match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    ProxyUnderTest::start(kind, &dir, &addrs, &self.tls, &options)
                })) {
                    Ok(p) => Some(p),
                    Err(_) => {
                        let record = json!({"type": "run", "rep": rep, "system": system.name(), "workers": workers,
                            "test": "start", "error": "the proxy did not start"});
                        self.emit(record);
                        return;
                    }
                }
            }
        };
        let pids = proxy.as_ref().map(|p| p.pids()).unwrap_or_default();
        let plain = proxy.as_ref().map_or(self.backends.addrs[0], |p| p.plain_addr);
        let base = json!({"type": "run", "rep": rep, "system": system.name(), "workers": workers});
        let label =
            if system == System::Direct { "direct".to_owned() } else { format!("{} w{workers}", system.name()) };
        if self.settings.runs("http") {
            let record = merge(base.clone(), self.http(plain, &pids));
            report(&label, &record);
            self.emit(record);
        }
        if self.settings.runs("ws") {
            let record = merge(base.clone(), self.ws(plain, &pids));
            report(&label, &record);
            self.emit(record);
        }
        if self.settings.runs("h2")
            && let Some(proxy) = &proxy
        {
            let tls_addr = proxy.tls_addr;
            let record = merge(base.clone(), self.h2(tls_addr, &pids));
            report(&label, &record);
            self.emit(record);
        }
        drop(proxy);
        if let System::Proxy { log: true, .. } = system {
            let bytes = std::fs::metadata(&access_log).map(|m| m.len()).unwrap_or(0);
            let record = merge(base, json!({"test": "log", "log_bytes": bytes}));
            self.emit(record);
            let _ = std::fs::remove_file(&access_log);
        }
    }

    fn http(&self, addr: SocketAddr, pids: &[u32]) -> Value {
        let Some(wrk) = &self.wrk else { return json!({"test": "http", "error": "wrk is not installed"}) };
        let s = &self.settings;
        if let Err(e) = load::wrk(wrk, addr, "/api", 1, CONNECTIONS, s.warmup) {
            return json!({"test": "http", "error": format!("warm-up: {e}")});
        }
        let before = Sample::take(pids, self.backends.pid());
        let result = load::wrk(wrk, addr, "/api", 1, CONNECTIONS, s.seconds);
        let after = Sample::take(pids, self.backends.pid());
        match result {
            Ok(r) => merge(
                json!({"test": "http", "rate": r.rps, "ops": r.requests, "errors": r.errors,
                    "p50_ms": r.p50_ms, "p99_ms": r.p99_ms}),
                cpu_fields(&before, &after, r.requests, true, !pids.is_empty()),
            ),
            Err(e) => json!({"test": "http", "error": e}),
        }
    }

    fn ws(&self, addr: SocketAddr, pids: &[u32]) -> Value {
        let s = &self.settings;
        let backend = self.backends.pid();
        let result = ws::echo_load(
            addr,
            CONNECTIONS as usize,
            Duration::from_secs_f64(s.warmup),
            Duration::from_secs_f64(s.seconds),
            || Sample::take(pids, backend),
        );
        match result {
            Ok(run) => merge(
                json!({"test": "ws", "rate": run.messages as f64 / run.seconds, "ops": run.messages, "errors": 0}),
                cpu_fields(&run.before, &run.after, run.messages, false, !pids.is_empty()),
            ),
            Err(e) => json!({"test": "ws", "error": e}),
        }
    }

    fn h2(&self, addr: SocketAddr, pids: &[u32]) -> Value {
        let Some(h2load) = &self.h2load else { return json!({"test": "h2", "error": "h2load is not installed"}) };
        let s = &self.settings;
        let warm = H2Amount::Seconds(s.warmup);
        if let Err(e) = load::h2load(h2load, addr, "/api", H2_CLIENTS, H2_STREAMS, warm) {
            return json!({"test": "h2", "error": format!("warm-up: {e}")});
        }
        let before = Sample::take(pids, self.backends.pid());
        let result = load::h2load(h2load, addr, "/api", H2_CLIENTS, H2_STREAMS, H2Amount::Seconds(s.seconds));
        let after = Sample::take(pids, self.backends.pid());
        match result {
            Ok(r) => merge(
                json!({"test": "h2", "rate": r.rps, "ops": r.requests, "errors": r.errors}),
                cpu_fields(&before, &after, r.requests, true, !pids.is_empty()),
            ),
            Err(e) => json!({"test": "h2", "error": e}),
        }
    }

    /// Resident-set growth of `kind` (its `mem_workers` setting) with idle tunnels at each N.
    fn memory(&mut self, rep: usize, kind: Kind, tls: bool) {
        let scheme = if tls { "wss" } else { "ws" };
        let workers = self.settings.mem_workers;
        let options = ProxyOptions { workers, access_log: None };
        let dir = self.dir.path().to_owned();
        let addrs = self.backends.addrs.clone();
        let base = json!({"type": "mem", "rep": rep, "system": kind.name(), "workers": workers, "scheme": scheme});
        let proxy = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            ProxyUnderTest::start(kind, &dir, &addrs, &self.tls, &options)
        })) {
            Ok(p) => p,
            Err(_) => {
                self.emit(merge(base, json!({"error": "the proxy did not start"})));
                return;
            }
        };
        let addr = if tls { proxy.tls_addr } else { proxy.plain_addr };
        let connector = tls.then(|| tokio_rustls::TlsConnector::from(self.tls.client.clone()));
        let steps = self.settings.tunnels.clone();
        let idle = Duration::from_secs_f64(self.settings.idle);
        let started = Instant::now();
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
        let result = runtime.block_on(async {
            let limit = Duration::from_secs(180);
            // Warm-up: a few tunnels, closed again, so one-time allocations are in the baseline.
            if let Err(e) = ws::open_tunnels(addr, connector.as_ref(), 20, 20, limit).await {
                return json!({"error": format!("warm-up: {e}")});
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            let base_kib = common::rss_kib(&proxy.pids());
            let mut open = Vec::new();
            let mut points = Vec::new();
            for &n in &steps {
                let more = n.saturating_sub(open.len());
                match ws::open_tunnels(addr, connector.as_ref(), more, OPEN_CONCURRENCY, limit).await {
                    Ok(streams) => open.extend(streams),
                    Err(e) => {
                        // Keep the readings so far; say where it broke.
                        let error = format!("at {} of {n} tunnels: {e}", open.len());
                        return json!({"base_kib": base_kib, "points": points, "error": error});
                    }
                }
                // Let them go idle (buffers used by the echo are released where the proxy does so).
                tokio::time::sleep(idle).await;
                points.push(json!({"n": n, "rss_kib": common::rss_kib(&proxy.pids())}));
            }
            drop(open);
            json!({"base_kib": base_kib, "points": points})
        });
        runtime.shutdown_timeout(Duration::from_secs(5));
        drop(proxy);
        let record = merge(merge(base, result), json!({"seconds": started.elapsed().as_secs_f64()}));
        report(&format!("{} w{workers}", kind.name()), &record);
        self.emit(record);
    }
}

/// Where tether (log on) writes its access log: not in the directory of its config file, which
/// tether watches for changes (reload): there, every log line would also wake the watcher.
fn access_log_path(dir: &std::path::Path) -> PathBuf {
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).expect("logs dir");
    logs.join("access.log")
}

/// One progress line on stderr.
fn report(label: &str, r: &Value) {
    let f = |k: &str| r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let test = r.get("test").and_then(Value::as_str).unwrap_or("mem");
    if let Some(e) = r.get("error") {
        eprintln!("  {label:<14} {test:<4} FAILED: {}", e.as_str().unwrap_or_default().lines().next().unwrap_or(""));
        return;
    }
    let cpu = format!(
        "proxy {:.1} us/op ({:.1} kernel, {:.2} cores), backend {:.1} us/op, client {:.1} us/op, other load {:.2} cores",
        f("proxy_cpu_us"),
        f("proxy_kernel_us"),
        f("proxy_cores"),
        f("backend_cpu_us"),
        f("client_cpu_us"),
        f("other_cores")
    );
    match test {
        "http" => eprintln!(
            "  {label:<14} http {:>9.0} req/s  p50 {:.2} ms p99 {:.2} ms  errors {}  {cpu}",
            f("rate"),
            f("p50_ms"),
            f("p99_ms"),
            f("errors")
        ),
        "ws" => eprintln!("  {label:<14} ws   {:>9.0} msg/s  {cpu}", f("rate")),
        "h2" => eprintln!("  {label:<14} h2   {:>9.0} req/s  errors {}  {cpu}", f("rate"), f("errors")),
        _ => {
            let points = r.get("points").and_then(Value::as_array).cloned().unwrap_or_default();
            let base = f("base_kib");
            let text: Vec<String> = points
                .iter()
                .map(|p| {
                    let n = p["n"].as_f64().unwrap_or(1.0);
                    let rss = p["rss_kib"].as_f64().unwrap_or(0.0);
                    format!("{n:.0}: {:.0} B", (rss - base) * 1024.0 / n)
                })
                .collect();
            eprintln!(
                "  {label:<14} mem  {:<3} base {:.1} MiB, per tunnel {}",
                r.get("scheme").and_then(Value::as_str).unwrap_or(""),
                base / 1024.0,
                text.join(", ")
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Test mode: a few seconds per installed proxy.

fn smoke() {
    let started = Instant::now();
    cpu_reading_agrees();
    let backends = Backends::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = Tls::generate(dir.path());
    let wrk = common::which("wrk");
    let h2load = common::which("h2load");
    let log = access_log_path(dir.path());
    let variants =
        [(Kind::Tether, Some(log.clone())), (Kind::Tether, None), (Kind::Nginx, None), (Kind::Haproxy, None)];
    for (kind, access_log) in variants {
        if !kind.available() {
            println!("compare smoke: {} not installed, skipped", kind.name());
            continue;
        }
        let options = ProxyOptions { workers: 1, access_log: access_log.clone() };
        let proxy = ProxyUnderTest::start(kind, dir.path(), &backends.addrs, &tls, &options);
        let head = get_head(proxy.plain_addr);
        assert!(head.starts_with("HTTP/1.1 200"), "{}: {head}", kind.name());
        let prefix = format!("set-cookie: {}=", common::COOKIE.to_ascii_lowercase());
        let cookie = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&prefix))
            .map(|l| l[prefix.len()..].to_owned())
            .unwrap_or_default();
        // A value naming the backend (not empty: nginx's emulation maps $upstream_addr to an id).
        assert!(!cookie.is_empty() && !cookie.starts_with(';'), "{}: no sticky cookie in\n{head}", kind.name());
        let echo = ws::echo_load(proxy.plain_addr, 4, Duration::from_millis(100), Duration::from_millis(300), || ())
            .expect("echo");
        assert!(echo.messages > 0, "{}: no WebSocket echo", kind.name());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let connector = tokio_rustls::TlsConnector::from(tls.client.clone());
        let limit = Duration::from_secs(30);
        let base = common::rss_kib(&proxy.pids());
        let tunnels = runtime
            .block_on(async {
                let mut open = ws::open_tunnels(proxy.plain_addr, None, 100, 50, limit).await?;
                open.extend(ws::open_tunnels(proxy.tls_addr, Some(&connector), 100, 50, limit).await?);
                Ok::<_, String>(open)
            })
            .expect("tunnels");
        let grown = common::rss_kib(&proxy.pids()).saturating_sub(base);
        drop(tunnels);
        let mut line = format!(
            "compare smoke: {}{}: cookie {cookie:?}, {} echoes, 200 tunnels (+{grown} KiB)",
            kind.name(),
            if access_log.is_some() { " (log on)" } else { "" },
            echo.messages
        );
        if let Some(wrk) = &wrk {
            let r = load::wrk(wrk, proxy.plain_addr, "/api", 1, 8, 1.0).expect("wrk");
            assert!(r.requests > 0 && r.errors == 0, "{}: wrk {r:?}", kind.name());
            line.push_str(&format!(", wrk {} requests", r.requests));
        }
        if let Some(h2load) = &h2load {
            let r = load::h2load(h2load, proxy.tls_addr, "/api", 2, 4, H2Amount::Requests(200)).expect("h2load");
            assert!(r.requests == 200 && r.errors == 0, "{}: h2load {r:?}", kind.name());
            line.push_str(", h2load 200 requests");
        }
        drop(proxy);
        if let Some(log) = &access_log {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(text.contains("\"kind\":\"request\""), "tether wrote no JSON access log line:\n{text}");
        }
        println!("{line}");
    }
    println!(
        "compare smoke: done in {:.1} s (run with --bench, or benches/compare.sh, to measure)",
        started.elapsed().as_secs_f64()
    );
}

/// The /proc reading used for every CPU figure agrees with getrusage(2) on this process after
/// some user-space work (utime and stime both counted, nothing else). The work is measured in
/// CPU time, not wall time, so a loaded machine only makes it take longer.
fn cpu_reading_agrees() {
    let before = common::rusage_ticks(libc::RUSAGE_SELF);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut x = 0u64;
    while common::rusage_ticks(libc::RUSAGE_SELF) < before + 30 && Instant::now() < deadline {
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
    }
    let proc_ticks = common::cpu_ticks(&[std::process::id()]) as i64;
    let rusage = common::rusage_ticks(libc::RUSAGE_SELF) as i64;
    assert!(proc_ticks >= 20, "/proc CPU reading {proc_ticks} ticks after 300 ms of CPU work");
    assert!((proc_ticks - rusage).abs() <= 5, "/proc says {proc_ticks} ticks, getrusage {rusage}");
}

/// The response head of `GET /api` on a fresh connection.
fn get_head(addr: SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(b"GET /api HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}
