//! The running proxy process: listeners (bound, TLS, accepting), the admin listener, live
//! reload, and the shutdown sequence.
//!
//! Owns: sockets on the client side, from `bind` to close, and the process-level lifecycle.
//! Must not: interpret requests (that is `proxy`).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, Admin, Probe, Reloader};
use crate::config::{self, Config, ListenerConfig, TlsConfig};
use crate::metrics::{ListenerLabels, Metrics, ResultLabels};
use crate::proxy::Proxy;
use crate::upstream::discovery::{Resolve, SystemResolver};

pub mod conn;
pub mod listener;
pub mod sniff;
pub mod tls;
pub mod watch;

/// Descriptors kept back from `limits.max_connections` for listeners, health checks, the admin
/// API, log files and DNS.
const RESERVED_FDS: u64 = 64;
const LISTEN_BACKLOG: u32 = 4096;

/// What can be swapped for tests.
pub struct Options {
    pub resolver: Arc<dyn Resolve>,
}

impl Default for Options {
    fn default() -> Self {
        Self { resolver: Arc::new(SystemResolver) }
    }
}

/// One bound client listener.
struct Bound {
    name: String,
    /// As configured (port 0 stays 0), to match it against a reloaded config.
    bind: SocketAddr,
    addr: SocketAddr,
    ctx: Arc<listener::ListenerCtx>,
    stop: CancellationToken,
}

/// The process: everything a running proxy owns.
pub struct Server {
    proxy: Arc<Proxy>,
    probe: Arc<Probe>,
    listeners: Mutex<Vec<Bound>>,
    slots: Arc<Semaphore>,
    /// Client connection tasks.
    conns: TaskTracker,
    /// Asks every client connection to finish gracefully.
    conns_stop: CancellationToken,
    /// Stops the admin listener (last, so `/readyz` keeps answering during shutdown).
    admin_stop: CancellationToken,
    /// Admin connection tasks. Apart from the proxy's own tasks: an open keep-alive connection
    /// to the admin listener (a health checker, a scraper, the status page) must not hold up
    /// the shutdown, during which `/readyz` keeps answering.
    admin_conns: TaskTracker,
    /// Fires when the shutdown sequence begins: background work that would only keep the
    /// process alive (the config file watch) stops.
    shutting_down: CancellationToken,
    admin_addr: Option<SocketAddr>,
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
pub async fn start(config: Config) -> anyhow::Result<Running> {
    start_with(config, Options::default()).await
}

pub async fn start_with(config: Config, options: Options) -> anyhow::Result<Running> {
    let admin_token = match config.admin.as_ref().and_then(|a| a.token_env.as_deref()) {
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.is_empty() => Some(token),
            _ => anyhow::bail!(
                "admin.token_env names {var}, which is not set: refusing to start an unprotected admin API"
            ),
        },
        None => None,
    };
    let max_connections = effective_max_connections(config.limits.max_connections, raise_nofile_limit());
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::new());
    let mut bound = Vec::new();
    for listener_config in &config.listeners {
        bound.push(bind_listener(listener_config, &metrics)?);
    }
    let admin_listener = match &config.admin {
        Some(admin) => {
            Some(bind(admin.bind).with_context(|| format!("admin listener: cannot listen on {}", admin.bind))?)
        }
        None => None,
    };
    let proxy = Proxy::new(config.clone(), metrics, options.resolver);
    let server = Arc::new(Server {
        proxy,
        probe: Arc::new(Probe::default()),
        listeners: Mutex::new(Vec::new()),
        slots: Arc::new(Semaphore::new(max_connections)),
        conns: TaskTracker::new(),
        conns_stop: CancellationToken::new(),
        admin_stop: CancellationToken::new(),
        admin_conns: TaskTracker::new(),
        shutting_down: CancellationToken::new(),
        admin_addr: admin_listener.as_ref().and_then(|l| l.local_addr().ok()),
        config_path: config.source.path.clone(),
        reloading: tokio::sync::Mutex::new(()),
    });
    for (listener, b) in bound {
        server.spawn_accept(listener, &b);
        server.lock_listeners().push(b);
    }
    if let Some(listener) = admin_listener {
        let admin = Arc::new(Admin {
            proxy: server.proxy.clone(),
            probe: server.probe.clone(),
            token: admin_token,
            reloader: server.clone(),
        });
        tokio::spawn(admin::serve(listener, admin, server.admin_stop.clone(), server.admin_conns.clone()));
    }
    Ok(Running { server })
}

fn bind_listener(config: &ListenerConfig, metrics: &Metrics) -> anyhow::Result<(TcpListener, Bound)> {
    let listener =
        bind(config.bind).with_context(|| format!("listener {}: cannot listen on {}", config.name, config.bind))?;
    let addr = listener.local_addr()?;
    let tls = match &config.tls {
        Some(tls) => Some(ArcSwap::new(tls_settings(&config.name, tls)?)),
        None => None,
    };
    let name: Arc<str> = config.name.as_str().into();
    let labels = ListenerLabels { listener: name.clone() };
    let ctx = Arc::new(listener::ListenerCtx {
        name,
        tls,
        open: metrics.connections_open.get_or_create_owned(&labels),
        refused: metrics.connections_refused.get_or_create_owned(&labels),
    });
    let bound = Bound { name: config.name.clone(), bind: config.bind, addr, ctx, stop: CancellationToken::new() };
    Ok((listener, bound))
}

fn tls_settings(name: &str, tls: &TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    tls::server_config(tls).with_context(|| format!("listener {name}: TLS setup"))
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

impl Server {
    fn lock_listeners(&self) -> std::sync::MutexGuard<'_, Vec<Bound>> {
        self.listeners.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn_accept(&self, listener: TcpListener, bound: &Bound) {
        tokio::spawn(listener::accept_loop(
            listener,
            bound.ctx.clone(),
            self.proxy.clone(),
            self.slots.clone(),
            bound.stop.clone(),
            self.conns_stop.clone(),
            self.conns.clone(),
        ));
    }

    /// Re-read the config file and apply it, or keep the running config if it is invalid.
    async fn reload_now(&self) -> Result<u64, String> {
        let _one_at_a_time = self.reloading.lock().await;
        let metrics = self.proxy.metrics().clone();
        let result = self.try_reload().await;
        match &result {
            Ok(generation) => {
                metrics.reloads.get_or_create(&ResultLabels { result: "ok" }).inc();
                tracing::info!(generation, "configuration reloaded");
            }
            Err(problems) => {
                metrics.reloads.get_or_create(&ResultLabels { result: "error" }).inc();
                tracing::error!(errors = %problems, "configuration reload rejected; the running configuration stays");
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<u64, String> {
        let path = self.config_path.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&path))
            .await
            .map_err(|e| format!("reload task failed: {e}"))?
            .map_err(|errors| errors.to_string())?;
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let config = loaded.config;
        // Everything that can fail happens before anything changes: new listeners are bound
        // and new TLS settings built first.
        let mut fresh = Vec::new();
        let mut tls_updates = Vec::new();
        {
            let current = self.lock_listeners();
            for wanted in &config.listeners {
                match current.iter().find(|b| b.name == wanted.name && b.bind == wanted.bind) {
                    Some(existing) => {
                        let tls = match &wanted.tls {
                            Some(tls) => Some(tls_settings(&wanted.name, tls).map_err(|e| format!("{e:#}"))?),
                            None => None,
                        };
                        if tls.is_some() != existing.ctx.tls.is_some() {
                            return Err(format!(
                                "listener {}: turning TLS on or off needs a new listener name or bind",
                                wanted.name
                            ));
                        }
                        tls_updates.push((existing.ctx.clone(), tls));
                    }
                    None => fresh.push(bind_listener(wanted, self.proxy.metrics()).map_err(|e| format!("{e:#}"))?),
                }
            }
        }
        if config.admin.as_ref().map(|a| a.bind) != self.proxy.runtime().config.admin.as_ref().map(|a| a.bind) {
            tracing::warn!("admin.bind changed: it takes effect at the next restart");
        }
        for (ctx, tls) in tls_updates {
            if let (Some(slot), Some(tls)) = (&ctx.tls, tls) {
                slot.store(tls);
            }
        }
        {
            let mut current = self.lock_listeners();
            current.retain(|b| {
                let keep = config.listeners.iter().any(|w| w.name == b.name && w.bind == b.bind);
                if !keep {
                    // Stop accepting; connections already open carry on.
                    tracing::info!(listener = %b.name, addr = %b.addr, "listener removed");
                    b.stop.cancel();
                }
                keep
            });
            for (listener, b) in fresh {
                tracing::info!(listener = %b.name, addr = %b.addr, "listener added");
                println!("listening {} {}", b.name, b.addr);
                self.spawn_accept(listener, &b);
                current.push(b);
            }
        }
        Ok(self.proxy.apply(Arc::new(config)))
    }
}

impl Reloader for Server {
    fn reload(&self) -> Pin<Box<dyn Future<Output = Result<u64, String>> + Send + '_>> {
        Box::pin(self.reload_now())
    }
}

impl Running {
    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.server.proxy
    }

    /// `(name, address)` of every client listener, then `("admin", address)` if there is one.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut addrs: Vec<_> = self.server.lock_listeners().iter().map(|b| (b.name.clone(), b.addr)).collect();
        if let Some(admin) = self.server.admin_addr {
            addrs.push(("admin".to_owned(), admin));
        }
        addrs
    }

    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs().into_iter().find(|(n, _)| n == name).map(|(_, a)| a)
    }

    /// Re-read the config file (SIGHUP, file change, `POST /admin/reload`).
    pub async fn reload(&self) -> Result<u64, String> {
        self.server.reload_now().await
    }

    /// Reload whenever the config file changes (debounced; the directory is watched, since a
    /// Kubernetes ConfigMap update swaps a symlink rather than writing the file).
    pub fn watch_config(&self) -> anyhow::Result<()> {
        watch::spawn(self.clone(), self.server.config_path.clone(), self.server.shutting_down.clone())
    }

    /// The SIGTERM sequence: `/readyz` answers 503 at once; accepting goes on for
    /// `shutdown.delay` (so load balancers take us out first); then listeners close, HTTP
    /// connections finish their requests, every tunnel gets a graceful Close spread over its
    /// upstream's `drain.close_spread`, and everything is given until `shutdown.timeout`
    /// (counted from the start). Returns false if the timeout cut work short.
    pub async fn shutdown(&self) -> bool {
        let server = &self.server;
        let config = server.proxy.runtime().config.shutdown.clone();
        let deadline = Instant::now() + config.timeout;
        server.probe.set_not_ready();
        server.shutting_down.cancel();
        tracing::info!(
            delay_ms = config.delay.as_millis() as u64,
            "shutdown: readiness off, still accepting during the delay"
        );
        tokio::time::sleep(config.delay).await;
        tracing::info!("shutdown: no longer accepting; finishing requests and closing tunnels");
        for bound in server.lock_listeners().iter() {
            bound.stop.cancel();
        }
        server.conns_stop.cancel();
        for upstream in server.proxy.runtime().upstreams.values() {
            upstream.stop();
            for backend in upstream.all_backends() {
                crate::lifecycle::drain::cancel(&backend);
            }
            if let Some(rebalance) = upstream.rebalance_slot().take() {
                rebalance.cancel();
            }
            upstream.close_all_tunnels();
        }
        server.conns.close();
        server.proxy.tasks().close();
        let finished = tokio::time::timeout_at(deadline.into(), async {
            server.conns.wait().await;
            // No client connection is left to send a request, so idle pooled backend
            // connections would only keep their driver tasks (and us) waiting.
            for upstream in server.proxy.runtime().upstreams.values() {
                for backend in upstream.all_backends() {
                    backend.pool.clear();
                }
            }
            server.proxy.tasks().wait().await;
        })
        .await
        .is_ok();
        server.admin_stop.cancel();
        server.admin_conns.close();
        // Each admin connection finishes its request in flight, if any, then closes.
        let admin_closed = tokio::time::timeout_at(deadline.into(), server.admin_conns.wait()).await.is_ok();
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

/// `configured`, clamped to what `nofile` descriptors can carry (a tunnel costs two: the
/// client's and the backend's), with a warning when clamped.
pub fn effective_max_connections(configured: usize, nofile: u64) -> usize {
    let affordable = (nofile.saturating_sub(RESERVED_FDS) / 2).max(1);
    let affordable = usize::try_from(affordable).unwrap_or(usize::MAX);
    if configured > affordable {
        tracing::warn!(
            configured,
            clamped_to = affordable,
            open_file_limit = nofile,
            "limits.max_connections is above what the open-file limit allows (a tunnel holds 2 descriptors); clamping"
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
        assert_eq!(effective_max_connections(100_000, 20_000), (20_000 - 64) / 2);
        assert_eq!(effective_max_connections(500, 20_000), 500);
        assert_eq!(effective_max_connections(10, 0), 1);
    }
}
