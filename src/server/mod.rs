//! The running proxy process: listeners (bound, TLS, accepting), the admin listener, live
//! reload, and the shutdown sequence.
//!
//! Owns: sockets on the client side, from `bind` to close, and the process-level lifecycle.
//! Must not: interpret requests (that is `proxy`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin, Readiness};
use crate::config::{Config, Env, ListenerConfig, ListenerError, ReloadError, TlsConfig};
use crate::log_writer::LogWriter;
use crate::metrics::{ListenerLabels, LogDrops, Metrics};
use crate::proxy::Proxy;
use crate::upstream::{Resolve, SystemResolver};

mod listener;
mod reload;
mod watch;

pub(crate) use watch::WatchError;

/// Descriptors kept back from `limits.max_connections` for listeners, health checks, the admin
/// API, log files and DNS.
const RESERVED_FDS: u64 = 64;
const LISTEN_BACKLOG: u32 = 4096;

/// What can be swapped for tests.
pub struct Options {
    /// Resolves `discovery.dns` names.
    pub resolver: Arc<dyn Resolve>,
    /// Where secrets named by `*_env` keys are read (admin token, cookie key, HMAC secrets).
    pub env: Env,
    /// The writer log lines go through: JSON access log lines are written to it directly, and
    /// its drop count is `tether_log_lines_dropped_total`.
    pub log_writer: Option<LogWriter>,
}

impl Default for Options {
    fn default() -> Self {
        Self { resolver: Arc::new(SystemResolver), env: crate::config::process_env(), log_writer: None }
    }
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The admin token variable is unset or empty.
    #[error("admin.token_env names {0}, which is not set: refusing to start an unprotected admin API")]
    AdminToken(String),
    /// A listener could not come up.
    #[error(transparent)]
    Listener(#[from] ListenerError),
}

/// One bound client listener.
struct Bound {
    name: String,
    /// As configured (port 0 stays 0), to match it against a reloaded config.
    bind: SocketAddr,
    addr: SocketAddr,
    state: Arc<listener::ListenerState>,
    stop: CancellationToken,
}

/// The admin listener and what it runs on.
struct AdminListener {
    addr: SocketAddr,
    stop: CancellationToken,
    /// Its accept loop and connections. Apart from the proxy's own tasks: an open keep-alive
    /// connection to the admin listener (a health checker, a scraper, the status page) must not
    /// hold up the shutdown, during which `/readyz` keeps answering.
    tasks: TaskTracker,
}

/// The process: everything a running proxy owns.
struct Server {
    proxy: Arc<Proxy>,
    readiness: Arc<Readiness>,
    listeners: Mutex<Vec<Bound>>,
    slots: Arc<Semaphore>,
    /// Accept loops of the client listeners.
    accepts: TaskTracker,
    /// Client connection tasks.
    conns: TaskTracker,
    /// Asks every client connection to finish gracefully.
    conns_stop: CancellationToken,
    admin: Option<AdminListener>,
    /// Fires when the shutdown sequence begins: background work that would only keep the
    /// process alive (the config file watch) stops.
    shutting_down: CancellationToken,
    config_path: PathBuf,
    /// Serialises reloads.
    reloading: tokio::sync::Mutex<()>,
}

/// Handle on a started proxy.
#[derive(Clone)]
pub struct Running {
    server: Arc<Server>,
}

/// Bind every listener of `config` and start serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    start_with(config, Options::default()).await
}

/// [`start`] with what tests swap out.
pub async fn start_with(config: Config, options: Options) -> Result<Running, StartError> {
    let admin_token = match config.admin.as_ref().and_then(|a| a.token_env.as_deref()) {
        Some(var) => match (options.env)(var) {
            Some(token) if !token.is_empty() => Some(token),
            _ => return Err(StartError::AdminToken(var.to_owned())),
        },
        None => None,
    };
    let nofile = raise_nofile_limit();
    let max_connections = within_descriptors("limits.max_connections", config.limits.max_connections, nofile);
    let max_in_flight = match config.limits.max_in_flight {
        Some(configured) => within_descriptors("limits.max_in_flight", configured, nofile),
        None => affordable(nofile),
    };
    let config = Arc::new(config);
    let log_drops = options.log_writer.clone().map(|w| -> LogDrops { Arc::new(move || w.dropped()) });
    let metrics = Arc::new(Metrics::new(log_drops));
    let mut bound = Vec::new();
    for listener_config in &config.listeners {
        bound.push(bind_listener(listener_config, &metrics)?);
    }
    let admin_listener = match &config.admin {
        Some(admin) => {
            let listener = bind(admin.bind).and_then(|l| Ok((l.local_addr()?, l)));
            Some(listener.map_err(|source| ListenerError::Bind {
                listener: "admin".into(),
                addr: admin.bind,
                source,
            })?)
        }
        None => None,
    };
    let proxy = Proxy::new(config.clone(), metrics, options.resolver, options.env, max_in_flight, options.log_writer);
    let admin = admin_listener.as_ref().map(|(addr, _)| AdminListener {
        addr: *addr,
        stop: CancellationToken::new(),
        tasks: TaskTracker::new(),
    });
    let server = Arc::new(Server {
        proxy,
        readiness: Arc::new(Readiness::default()),
        listeners: Mutex::new(Vec::new()),
        slots: Arc::new(Semaphore::new(max_connections)),
        accepts: TaskTracker::new(),
        conns: TaskTracker::new(),
        conns_stop: CancellationToken::new(),
        admin,
        shutting_down: CancellationToken::new(),
        config_path: config.source.path.clone(),
        reloading: tokio::sync::Mutex::new(()),
    });
    for (listener, b) in bound {
        server.spawn_accept(listener, &b);
        server.listeners.lock().push(b);
    }
    if let (Some((_, listener)), Some(handle)) = (admin_listener, &server.admin) {
        let admin_config = config.admin.as_ref();
        let admin = Arc::new(Admin {
            proxy: server.proxy.clone(),
            readiness: server.readiness.clone(),
            token: admin_token,
            reloader: server.clone(),
            allowed_hosts: admin_config.map(|a| a.allowed_hosts.clone()).unwrap_or_default(),
            metrics_public: admin_config.is_some_and(|a| a.metrics_public),
            failures: parking_lot::Mutex::default(),
        });
        handle.tasks.spawn(admin::serve(listener, admin, handle.stop.clone(), handle.tasks.clone()));
    }
    Ok(Running { server })
}

fn bind_listener(config: &ListenerConfig, metrics: &Metrics) -> Result<(TcpListener, Bound), ListenerError> {
    let bind_error = |source| ListenerError::Bind { listener: config.name.clone(), addr: config.bind, source };
    let listener = bind(config.bind).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let tls = match &config.tls {
        Some(tls) => Some(ArcSwap::from_pointee(tls_settings(&config.name, tls)?)),
        None => None,
    };
    let name: Arc<str> = config.name.as_str().into();
    let labels = ListenerLabels { listener: name.clone() };
    let state = Arc::new(listener::ListenerState {
        name,
        tls,
        open: metrics.connections_open.get_or_create_owned(&labels),
        refused: metrics.connections_refused.get_or_create_owned(&labels),
    });
    let bound = Bound { name: config.name.clone(), bind: config.bind, addr, state, stop: CancellationToken::new() };
    Ok((listener, bound))
}

fn tls_settings(listener: &str, tls: &TlsConfig) -> Result<listener::TlsSettings, ListenerError> {
    let config = crate::tls::server_config(tls)
        .map_err(|source| ListenerError::Tls { listener: listener.to_owned(), source })?;
    Ok(listener::TlsSettings { config, several_certificates: tls.certificates.len() > 1 })
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    fn spawn_accept(&self, listener: TcpListener, bound: &Bound) {
        self.accepts.spawn(listener::accept(
            listener,
            bound.state.clone(),
            self.proxy.clone(),
            self.slots.clone(),
            bound.stop.clone(),
            self.conns_stop.clone(),
            self.conns.clone(),
        ));
    }
}

impl Running {
    /// `(name, address)` of every client listener, then `("admin", address)` if there is one.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut addrs: Vec<_> = self.server.listeners.lock().iter().map(|b| (b.name.clone(), b.addr)).collect();
        if let Some(admin) = &self.server.admin {
            addrs.push(("admin".to_owned(), admin.addr));
        }
        addrs
    }

    /// The address of the listener named `name` (`admin` for the admin listener).
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// The proxy serving the listeners: its running configuration and its introspection.
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.server.proxy
    }

    /// Re-read the config file (SIGHUP, file change, `POST /admin/reload`): the new
    /// generation, or why the running configuration stays (logged as well).
    pub async fn reload(&self) -> Result<u64, ReloadError> {
        self.server.reload_now().await
    }

    /// Reload whenever the config file changes (debounced; the directory is watched, since a
    /// Kubernetes ConfigMap update swaps a symlink rather than writing the file).
    pub fn watch_config(&self) -> Result<(), WatchError> {
        watch::spawn(self.clone(), self.server.config_path.clone(), self.server.shutting_down.clone())
    }

    /// The SIGTERM sequence: `/readyz` answers 503 at once; accepting goes on for
    /// `shutdown.delay` (so load balancers take us out first); then listeners close, HTTP
    /// connections finish their requests, every tunnel gets a graceful Close spread over its
    /// upstream's `drain.close_spread`, and everything is given until `shutdown.timeout`
    /// (counted from the start). Returns false if the timeout cut work short.
    pub async fn shutdown(&self) -> bool {
        let server = &self.server;
        let config = server.proxy.config().shutdown.clone();
        let deadline = Instant::now() + config.timeout;
        server.readiness.set_not_ready();
        server.shutting_down.cancel();
        tracing::info!(
            delay_ms = config.delay.as_millis() as u64,
            "shutdown: readiness off, still accepting during the delay"
        );
        tokio::time::sleep(config.delay).await;
        tracing::info!("shutdown: no longer accepting; finishing requests and closing tunnels");
        for bound in server.listeners.lock().iter() {
            bound.stop.cancel();
        }
        server.accepts.close();
        server.conns_stop.cancel();
        server.proxy.close_tunnels();
        server.conns.close();
        let finished = tokio::time::timeout_at(deadline.into(), async {
            server.accepts.wait().await;
            server.conns.wait().await;
            server.proxy.clear_pools();
            server.proxy.tasks().wait().await;
        })
        .await
        .is_ok();
        // The admin listener goes last, so `/readyz` answers throughout.
        let admin_closed = match &server.admin {
            Some(admin) => {
                admin.stop.cancel();
                admin.tasks.close();
                // Each admin connection finishes its request in flight, if any, then closes.
                tokio::time::timeout_at(deadline.into(), admin.tasks.wait()).await.is_ok()
            }
            None => true,
        };
        finished && admin_closed
    }
}

/// Raise the soft open-file limit to the hard one and return it.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit.rlim_cur = limit.rlim_max;
            }
        }
    }
    limit.rlim_cur
}

/// Connections (or requests in flight) that `nofile` descriptors can carry: a tunnel costs
/// two, the client's and the backend's.
fn affordable(nofile: u64) -> usize {
    let affordable = (nofile.saturating_sub(RESERVED_FDS) / 2).max(1);
    usize::try_from(affordable).unwrap_or(usize::MAX)
}

/// The limit `key` as `configured`, clamped to what `nofile` descriptors can carry, with a
/// warning when clamped.
fn within_descriptors(key: &'static str, configured: usize, nofile: u64) -> usize {
    let affordable = affordable(nofile);
    if configured > affordable {
        tracing::warn!(
            configured,
            clamped_to = affordable,
            open_file_limit = nofile,
            "{key} is above what the open-file limit allows (a tunnel holds 2 descriptors); clamping"
        );
        affordable
    } else {
        configured
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_connections_is_clamped_to_half_the_usable_descriptors() {
        let key = "limits.max_connections";
        assert_eq!(within_descriptors(key, 100_000, 20_000), (20_000 - 64) / 2);
        assert_eq!(within_descriptors(key, 500, 20_000), 500);
        assert_eq!(within_descriptors(key, 10, 0), 1);
        assert_eq!(affordable(20_000), (20_000 - 64) / 2);
    }
}
