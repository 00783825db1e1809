//! Running tether's proxy in tests, from one builder: in-process ([`TestProxy`], on its own
//! [`ServerRuntime`]) or as the real binary ([`ProxyProcess`]).
//!
//! ```ignore
//! let proxy = TestProxy::builder().yaml(Yaml::app(|u| u.backend("a", a.addr))).spawn().await;
//! let proxy = TestProxy::builder().dir(dir).yaml(&text).env("VAR", "value").spawn_process().await;
//! ```
//!
//! The config is written to `<tempdir>/tether.yaml` (so relative paths resolve there) unless
//! an existing file is given with [`TestProxyBuilder::file`]. Dropping either kind stops it:
//! the in-process proxy's runtime is shut down without waiting (and a panic of the proxy fails
//! the test), the child process is killed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tether::config::Config;
use tether::server::{Options, Running};
use tether::upstream::discovery::Resolve;
use tokio::process::Child;

use super::admin::AdminClient;
use super::process::{StderrTo, Tether};
use super::server_runtime::ServerRuntime;
use super::within;

type Edit = Box<dyn FnOnce(&mut Config) + Send>;

/// Where the config comes from and what the proxy runs with.
#[derive(Default)]
pub struct TestProxyBuilder {
    yaml: Option<String>,
    file: Option<PathBuf>,
    dir: Option<TempDir>,
    env: Vec<(String, String)>,
    resolver: Option<Arc<dyn Resolve>>,
    edit: Option<Edit>,
}

impl TestProxyBuilder {
    /// The config text, written to `<dir>/tether.yaml`.
    pub fn yaml(mut self, yaml: impl Into<String>) -> Self {
        self.yaml = Some(yaml.into());
        self
    }

    /// Use this existing config file as it is (nothing is written).
    pub fn file(mut self, path: &Path) -> Self {
        self.file = Some(path.to_owned());
        self
    }

    /// The directory the config goes into (and the proxy keeps alive), e.g. one that already
    /// holds certificate files. Default: a fresh temporary directory.
    pub fn dir(mut self, dir: TempDir) -> Self {
        self.dir = Some(dir);
        self
    }

    /// An environment variable for `${VAR}` in the config (in-process) or for the child.
    pub fn env(mut self, name: &str, value: &str) -> Self {
        self.env.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The DNS resolver discovery uses (in-process only).
    pub fn resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// Change the parsed config before the proxy starts (in-process only).
    pub fn edit(mut self, edit: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.edit = Some(Box::new(edit));
        self
    }

    /// Write the config (unless a file was given); returns the directory and the config path.
    fn prepare(&mut self) -> (TempDir, PathBuf) {
        let dir = self.dir.take().unwrap_or_else(|| tempfile::tempdir().expect("tempdir"));
        let path = match (&self.file, &self.yaml) {
            (Some(file), None) => file.clone(),
            (None, Some(yaml)) => {
                let path = dir.path().join("tether.yaml");
                std::fs::write(&path, yaml).expect("write config");
                path
            }
            _ => panic!("give the proxy either yaml(..) or file(..)"),
        };
        (dir, path)
    }

    /// Start the proxy in this process, on its own runtime.
    pub async fn spawn(mut self) -> TestProxy {
        let (dir, path) = self.prepare();
        let text = std::fs::read_to_string(&path).expect("read config");
        let env = std::mem::take(&mut self.env);
        let lookup: tether::config::Env = Arc::new(move |name: &str| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).or_else(|| std::env::var(name).ok())
        });
        let mut config = tether::config::parse(&path, &text, lookup.as_ref())
            .unwrap_or_else(|e| panic!("test config is invalid:\n{e}\n---\n{text}"))
            .config;
        if let Some(edit) = self.edit.take() {
            edit(&mut config);
        }
        // The same variables serve `${VAR}` in the text and the secrets named by `*_env` keys.
        let mut options = Options { env: lookup, ..Options::default() };
        if let Some(resolver) = self.resolver.take() {
            options.resolver = resolver;
        }
        let runtime = ServerRuntime::start("the proxy");
        let running = within("the proxy to start", runtime.run(tether::server::start_with(config, options)))
            .await
            .unwrap_or_else(|e| panic!("the proxy does not start: {e:#}\n---\n{text}"));
        TestProxy { running, path, runtime, dir }
    }

    /// Start `tether proxy -c <config>` as a child process and wait for its `listening` lines.
    pub async fn spawn_process(self) -> ProxyProcess {
        self.spawn_process_logging(Logs::ToFile).await
    }

    /// [`TestProxyBuilder::spawn_process`] with its logs (stderr) going where `logs` says.
    pub async fn spawn_process_logging(mut self, logs: Logs) -> ProxyProcess {
        assert!(self.resolver.is_none() && self.edit.is_none(), "resolver and edit are for the in-process proxy");
        let (dir, path) = self.prepare();
        let env = std::mem::take(&mut self.env);
        ProxyProcess::start(dir, &path, &env, logs).await
    }
}

/// A proxy running inside the test process, on its own runtime; stopped on drop.
pub struct TestProxy {
    running: Running,
    path: PathBuf,
    runtime: ServerRuntime,
    dir: TempDir,
}

impl TestProxy {
    pub fn builder() -> TestProxyBuilder {
        TestProxyBuilder::default()
    }

    /// Shorthand for `builder().yaml(yaml).spawn()`.
    pub async fn start(yaml: impl Into<String>) -> Self {
        Self::builder().yaml(yaml).spawn().await
    }

    /// The address of listener `name` (`admin` for the admin listener).
    pub fn addr(&self, name: &str) -> SocketAddr {
        self.try_addr(name).unwrap_or_else(|| panic!("no listener named {name}"))
    }

    pub fn try_addr(&self, name: &str) -> Option<SocketAddr> {
        self.running.addr(name)
    }

    /// A client of the admin listener.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.addr("admin"))
    }

    /// The running proxy, for looking at its state directly.
    pub fn running(&self) -> &Running {
        &self.running
    }

    /// The directory holding the config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.path
    }

    /// Re-read the config file, as SIGHUP does.
    pub async fn reload(&self) -> Result<u64, String> {
        let running = self.running.clone();
        within("the reload", self.runtime.run(async move { running.reload().await.map_err(|e| e.to_string()) })).await
    }

    /// Write `yaml` over the config file and reload it.
    pub async fn rewrite(&self, yaml: impl Into<String>) -> Result<u64, String> {
        std::fs::write(&self.path, yaml.into()).expect("write config");
        self.reload().await
    }

    /// Reload whenever the config file changes.
    pub fn watch_config(&self) {
        let _runtime = self.runtime.handle().enter();
        self.running.watch_config().expect("watch the config file");
    }
}

/// A `tether proxy` child process; killed on drop.
pub struct ProxyProcess {
    child: Child,
    addrs: Vec<(String, SocketAddr)>,
    dir: TempDir,
    path: PathBuf,
    stderr_path: PathBuf,
}

/// Where a proxy child process's logs go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logs {
    /// A file [`ProxyProcess::stderr`] reads.
    ToFile,
    /// A pipe nobody reads (a stalled log collector); [`ProxyProcess::stderr`] is empty.
    ToUnreadPipe,
}

impl ProxyProcess {
    async fn start(dir: TempDir, config: &Path, env: &[(String, String)], logs: Logs) -> Self {
        let stderr_path = dir.path().join("stderr.log");
        let expected = count_listeners(config);
        let args = ["proxy".to_owned(), "-c".to_owned(), config.display().to_string()];
        let to = match logs {
            Logs::ToFile => StderrTo::File(&stderr_path),
            Logs::ToUnreadPipe => StderrTo::UnreadPipe,
        };
        let Tether { child, listeners, mut stdout, .. } =
            Tether::spawn_with(&args, env, to, |seen| seen.len() >= expected).await;
        // Keep reading stdout (a reload prints new listeners) so the child never blocks on a
        // full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = stdout.next_line().await {} });
        Self { child, addrs: listeners, dir, path: config.to_owned(), stderr_path }
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == listener).map(|(_, a)| *a).expect("listener")
    }

    /// A client of the admin listener.
    pub fn admin(&self) -> AdminClient {
        AdminClient::new(self.addr("admin"))
    }

    /// The directory holding the config file.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> &Path {
        &self.path
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("tether proxy still running")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Wait until the process's stderr has a line containing `needle`; returns that line.
    pub async fn wait_for_stderr_line(&self, what: &str, needle: &str) -> String {
        super::eventually(what, async || self.stderr().lines().find(|l| l.contains(needle)).map(str::to_owned)).await
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

    /// Wait for the process to exit, up to `limit`; returns its status and when it exited.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<(std::process::ExitStatus, Instant)> {
        let status = tokio::time::timeout(limit, self.child.wait()).await.ok()?.expect("wait for tether proxy");
        Some((status, Instant::now()))
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Whether the process is still running, without reaping it (`&self`).
    pub fn is_running_now(&self) -> bool {
        std::path::Path::new(&format!("/proc/{}", self.pid())).exists()
    }
}

/// Listeners the config declares (plus the admin listener), i.e. `listening` lines to expect.
fn count_listeners(config: &Path) -> usize {
    let text = std::fs::read_to_string(config).expect("config");
    let value: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let listeners = value.get("listeners").and_then(|l| l.as_sequence()).map_or(0, |l| l.len());
    listeners + usize::from(value.get("admin").is_some())
}
