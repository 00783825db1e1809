//! Running tether's proxy in tests: in-process ([`TestProxy`]) or as the real binary
//! ([`ProxyProcess`]), always from a YAML config written to a temporary directory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tether::server::Running;

/// A proxy running inside the test process.
pub struct TestProxy {
    pub running: Running,
    pub dir: TempDir,
}

impl TestProxy {
    /// Start from `yaml` (written to `<tempdir>/tether.yaml`, so relative paths resolve there).
    pub async fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::start_in(dir, yaml).await
    }

    pub async fn start_in(dir: TempDir, yaml: &str) -> Self {
        let path = dir.path().join("tether.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let loaded = tether::config::parse(&path, yaml, &|name| std::env::var(name).ok())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{yaml}"));
        let running = tether::server::start(loaded.config).await.expect("proxy starts");
        Self { running, dir }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.running.addr(listener).unwrap_or_else(|| panic!("no listener named {listener}"))
    }
}

/// The `tether` binary under test.
pub fn tether_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tether"))
}

/// A `tether proxy` child process; killed on drop.
pub struct ProxyProcess {
    pub child: Child,
    pub addrs: Vec<(String, SocketAddr)>,
    pub dir: TempDir,
    stderr_path: PathBuf,
}

impl ProxyProcess {
    pub fn start(yaml: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("tether.yaml");
        std::fs::write(&path, yaml).expect("write config");
        Self::start_with(dir, &path, &[])
    }

    /// Start `tether proxy -c config`, with extra environment variables, and wait for its
    /// `listening` lines.
    pub fn start_with(dir: TempDir, config: &Path, env: &[(&str, &str)]) -> Self {
        let stderr_path = dir.path().join("stderr.log");
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        let mut cmd = Command::new(tether_bin());
        cmd.arg("proxy").arg("-c").arg(config).stdout(Stdio::piped()).stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn tether proxy");
        let stdout = child.stdout.take().expect("stdout");
        let expected = count_listeners(config);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let mut addrs = Vec::new();
        let deadline = Instant::now() + super::WAIT;
        while addrs.len() < expected {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let mut parts = line.split_whitespace();
                    if let (Some("listening"), Some(name), Some(addr)) = (parts.next(), parts.next(), parts.next()) {
                        addrs.push((name.to_owned(), addr.parse().expect("listening address")));
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                    panic!("tether proxy did not report its listeners; stderr:\n{log}");
                }
            }
        }
        Self { child, addrs, dir, stderr_path }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == listener).map(|(_, a)| *a).expect("listener")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Resident set size now, and its peak, in KiB (from /proc).
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
        unsafe {
            libc::kill(self.pid() as i32, signal);
        }
    }

    /// Wait for the process to exit, up to `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Listeners the config declares (plus the admin listener), i.e. `listening` lines to expect.
fn count_listeners(config: &Path) -> usize {
    let text = std::fs::read_to_string(config).expect("config");
    let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let listeners = value.get("listeners").and_then(|l| l.as_sequence()).map_or(0, |l| l.len());
    listeners + usize::from(value.get("admin").is_some())
}
