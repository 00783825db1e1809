//! `AppProcess`: the real `tether backend` binary as a child process (as a container or a
//! pod runs it), with the command line a deployment file gives it. Killed on drop.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use tempfile::TempDir;
use tokio::io::{BufReader, Lines};
use tokio::process::{Child, ChildStdout};

use super::process::Tether;
use super::within;

pub struct AppProcess {
    child: Child,
    /// The main listener (`--listen`).
    pub addr: SocketAddr,
    /// The `--internal-listen` listener, when asked for.
    pub internal: Option<SocketAddr>,
    /// The command line it was started with (after `tether`).
    pub args: Vec<String>,
    /// Standard output after the `listening` lines (kept open: the process may write more).
    stdout: Lines<BufReader<ChildStdout>>,
    stderr_path: PathBuf,
    _dir: TempDir,
}

impl AppProcess {
    /// Runs `tether <args>` (args start with `backend`) and waits for its `listening` lines.
    pub async fn spawn(args: &[String]) -> AppProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("stderr.log");
        let wants_internal = args.iter().any(|a| a == "--internal-listen");
        let names = |seen: &[(String, SocketAddr)], name: &str| seen.iter().any(|(n, _)| n == name);
        let tether = Tether::spawn(args, &[], &stderr_path, |seen| {
            names(seen, "backend") && (!wants_internal || names(seen, "internal"))
        })
        .await;
        assert!(tether.other_lines.is_empty(), "unexpected stdout lines from tether backend: {:?}", tether.other_lines);
        AppProcess {
            addr: tether.addr("backend").expect("main listener"),
            internal: tether.addr("internal"),
            child: tether.child,
            args: args.to_vec(),
            stdout: tether.stdout,
            stderr_path,
            _dir: dir,
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Where `/publish` and `/metrics` live.
    pub fn operator_addr(&self) -> SocketAddr {
        self.internal.unwrap_or(self.addr)
    }

    /// Waits until `/healthz` reports the Redis broker up: the backend listens before its
    /// first broker connection is made, and a subscription asked for in between is refused.
    pub async fn wait_redis_up(&self) {
        let addr = self.addr;
        super::eventually("redis to be up on the backend's /healthz", async || {
            (super::http_client::get(addr, "/healthz").await.json()["redis"] == "up").then_some(())
        })
        .await;
    }

    /// SIGTERM, as `docker stop` or the kubelet sends it.
    pub fn sigterm(&self) {
        let pid = self.pid().expect("backend still running") as libc::pid_t;
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "kill(SIGTERM) failed");
    }

    /// Waits for the process to exit, at most `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> ExitStatus {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(e)) => panic!("waiting for tether backend: {e}"),
            Err(_) => panic!("tether backend did not exit within {within:?}; stderr:\n{}", self.stderr()),
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The lines written to stdout after the `listening` lines, up to the end of the stream
    /// (call it once the process has exited).
    pub async fn rest_of_stdout(&mut self) -> Vec<String> {
        let mut rest = Vec::new();
        while let Some(line) = within("the end of stdout", self.stdout.next_line()).await.expect("read stdout") {
            rest.push(line);
        }
        rest
    }
}

impl Drop for AppProcess {
    /// A failing test shows what the backend logged.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- stderr of tether {} ---\n{}", self.args.join(" "), self.stderr());
        }
    }
}

/// `tether demo` as a child process (the proxy and two app instances), killed on drop.
pub struct DemoProcess {
    tether: Tether,
    _dir: TempDir,
}

impl DemoProcess {
    /// Starts the demo on ephemeral ports and waits for its four `listening` lines.
    pub async fn start() -> DemoProcess {
        let dir = tempfile::tempdir().expect("tempdir");
        let args = ["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"].map(String::from);
        let tether = Tether::spawn(&args, &[], &dir.path().join("stderr.log"), |seen| seen.len() >= 4).await;
        DemoProcess { tether, _dir: dir }
    }

    /// `public` (the proxy), `admin`, `app-1` or `app-2`.
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.tether.addr(name).unwrap_or_else(|| panic!("the demo has no listener {name}"))
    }
}
