//! The system under test, as processes: one `redis-server`, two `tether backend` instances
//! sharing it, and one `tether proxy` with cookie affinity in front of them. Each runs in its own
//! process group (`common::spawn_group`), is stopped by that group id when its guard drops, and
//! every wait for it to come up is bounded.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common;

/// Bound on how long any process may take to come up.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A started process, SIGKILLed (its whole group) when dropped.
pub struct Guard {
    child: Child,
    pub name: String,
    pub addr: SocketAddr,
    log: PathBuf,
}

impl Guard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn start(name: &str, command: &mut Command, addr: SocketAddr, log: PathBuf) -> Result<Self, String> {
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        command.stdin(Stdio::null()).stdout(Stdio::null()).stderr(stderr);
        let child = common::spawn_group(command).map_err(|e| format!("cannot start {name}: {e}"))?;
        Ok(Self { child, name: name.to_owned(), addr, log })
    }

    /// Wait (bounded) until `probe` succeeds; fails early if the process exits.
    fn wait_until(&mut self, what: &str, mut probe: impl FnMut(SocketAddr) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + START_LIMIT;
        while !probe(self.addr) {
            if let Ok(Some(status)) = self.child.try_wait() {
                let log = std::fs::read_to_string(&self.log).unwrap_or_default();
                return Err(format!("{} exited ({status}) before {what}:\n{log}", self.name));
            }
            if Instant::now() > deadline {
                return Err(format!("{}: not {what} within {START_LIMIT:?}", self.name));
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        Ok(())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        common::stop_group(&mut self.child);
    }
}

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// One request on a fresh connection (`Connection: close`), the whole answer as text. Bounded
/// by socket timeouts.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    Some(text)
}

/// `redis-server` on a free loopback port, no persistence.
pub fn redis(dir: &Path) -> Result<Guard, String> {
    let port = common::free_port();
    let mut command = Command::new("redis-server");
    command
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir);
    let mut guard = Guard::start("redis-server", &mut command, loopback(port), dir.join("redis.log"))?;
    guard.wait_until("answering PING", |addr| {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else { return false };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut answer).is_ok() && &answer == b"+PONG\r\n"
    })?;
    Ok(guard)
}

/// `tether backend` number `n` on a free port, fanning out through `redis`. Ready once its
/// `/healthz` says Redis is up.
pub fn backend(dir: &Path, n: usize, redis: SocketAddr) -> Result<Guard, String> {
    let port = common::free_port();
    let id = format!("app-{n}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command
        .args(["backend", "--listen", &loopback(port).to_string(), "--id", &id])
        .arg("--redis")
        .arg(format!("redis://{redis}"))
        .env_remove("RUST_LOG");
    let mut guard = Guard::start(&id, &mut command, loopback(port), dir.join(format!("{id}.log")))?;
    guard.wait_until("healthy with Redis up", |addr| {
        http_get(addr, "/healthz").is_some_and(|t| t.starts_with("HTTP/1.1 200") && t.contains("\"redis\":\"up\""))
    })?;
    Ok(guard)
}

/// Sessions a backend holds, from its `/healthz`.
pub fn sessions(backend: SocketAddr) -> Option<u64> {
    let text = http_get(backend, "/healthz")?;
    let body = text.split_once("\r\n\r\n")?.1;
    let json: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    json.get("sessions")?.as_u64()
}

/// The HMAC key tether signs its cookies with (>= 32 bytes; fixed, so no startup warning).
const COOKIE_KEY_ENV: &str = "TETHER_FANOUT_COOKIE_KEY";
const COOKIE_KEY: &str = "fanout-bench-cookie-key-0123456789abcdef01";

/// Client connections tether admits. Each subscriber is one client connection and one upstream
/// connection (2 of the proxy's 20,000 descriptors); the default (100,000, clamped to what the
/// open-file limit allows: 9,968) would do, but the bench says what it needs.
pub const PROXY_MAX_CONNECTIONS: usize = 9_000;

/// `tether proxy` (release build under `cargo bench`) on a free port in front of `backends`:
/// signed sticky cookie, round robin for clients without one (every subscriber here), access
/// log off, tunnels kept for an hour of silence.
pub fn proxy(dir: &Path, backends: &[SocketAddr]) -> Result<Guard, String> {
    let port = common::free_port();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("      - {{ id: app-{}, address: \"{b}\" }}\n", i + 1))
        .collect();
    let config = format!(
        "listeners:
  - {{ name: plain, bind: \"127.0.0.1:{port}\" }}
routes: [ {{ upstream: app }} ]
upstreams:
  app:
    backends:
{servers}    affinity:
      cookie: {{ name: SRV, key_env: {COOKIE_KEY_ENV} }}
      fallback: round_robin
timeouts: {{ tunnel_idle: 1h }}
limits: {{ max_connections: {PROXY_MAX_CONNECTIONS}, max_in_flight: {PROXY_MAX_CONNECTIONS} }}
access_log: {{ format: off }}
"
    );
    // Not next to anything that changes: tether watches its config file's directory.
    let config_dir = dir.join("proxy");
    std::fs::create_dir_all(&config_dir).map_err(|e| e.to_string())?;
    let path = config_dir.join("tether.yaml");
    std::fs::write(&path, config).map_err(|e| e.to_string())?;
    let mut command = Command::new(env!("CARGO_BIN_EXE_tether"));
    command.args(["proxy", "-c"]).arg(&path).env(COOKIE_KEY_ENV, COOKIE_KEY).env_remove("RUST_LOG");
    let mut guard = Guard::start("tether proxy", &mut command, loopback(port), dir.join("proxy.log"))?;
    guard.wait_until("listening", |addr| TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok())?;
    Ok(guard)
}

/// The proxy's first startup line (worker count and why), for the record.
pub fn proxy_startup_line(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("proxy.log"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("worker"))
        .unwrap_or_default()
        .chars()
        .take(300)
        .collect()
}
