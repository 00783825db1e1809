//! Listeners: binding, TLS acceptors, accept loops, and the running proxy's handle.
//!
//! Owns: sockets on the client side, from `bind` to close. Must not: interpret requests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ListenerConfig};
use crate::proxy::{Proxy, Runtime};

pub mod conn;
pub mod listener;
pub mod sniff;
pub mod tls;

/// Descriptors kept back from `limits.max_connections` for listeners, health checks, the admin
/// API, log files and DNS.
const RESERVED_FDS: u64 = 64;
const LISTEN_BACKLOG: u32 = 4096;

/// A running proxy.
pub struct Running {
    /// `(listener name, bound address)` in config order.
    pub addrs: Vec<(String, SocketAddr)>,
    proxy: Arc<Proxy>,
    shutdown: CancellationToken,
    conns: TaskTracker,
}

impl Running {
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.iter().find(|(n, _)| n == name).map(|(_, a)| *a)
    }

    pub fn proxy(&self) -> &Arc<Proxy> {
        &self.proxy
    }

    /// Stop accepting, finish in-flight requests gracefully, end tunnels, and wait up to
    /// `timeout` for everything to finish. Returns false if the deadline cut work short.
    pub async fn shutdown(self, timeout: Duration) -> bool {
        self.shutdown.cancel();
        self.conns.close();
        self.proxy.tasks().close();
        for registry in self
            .proxy
            .runtime()
            .upstreams
            .values()
            .flat_map(|u| u.backends().iter().map(|b| b.tunnels.clone()))
        {
            for tunnel in registry.snapshot() {
                tunnel.request_close(1001);
            }
        }
        let all = async {
            self.conns.wait().await;
            self.proxy.tasks().wait().await;
        };
        tokio::time::timeout(timeout, all).await.is_ok()
    }
}

/// Bind every listener of `config` and start serving. Listener binds of port 0 get an
/// ephemeral port; [`Running::addrs`] tells which.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let max_connections =
        effective_max_connections(config.limits.max_connections, raise_nofile_limit());
    let config = Arc::new(config);
    let proxy = Proxy::new(Runtime::new(config.clone()));
    let slots = Arc::new(Semaphore::new(max_connections));
    let shutdown = CancellationToken::new();
    let conns = TaskTracker::new();
    let mut addrs = Vec::new();
    for listener_config in &config.listeners {
        let listener = bind(listener_config)?;
        let addr = listener.local_addr()?;
        let tls = match &listener_config.tls {
            Some(tls) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(tls)
                    .with_context(|| format!("listener {}: TLS setup", listener_config.name))?,
            )),
            None => None,
        };
        let ctx = Arc::new(listener::ListenerCtx {
            name: listener_config.name.as_str().into(),
            tls,
        });
        tokio::spawn(listener::accept_loop(
            listener,
            ctx,
            proxy.clone(),
            slots.clone(),
            shutdown.clone(),
            conns.clone(),
        ));
        addrs.push((listener_config.name.clone(), addr));
    }
    Ok(Running {
        addrs,
        proxy,
        shutdown,
        conns,
    })
}

fn bind(config: &ListenerConfig) -> anyhow::Result<TcpListener> {
    let what = || format!("listener {}: cannot listen on {}", config.name, config.bind);
    let socket = if config.bind.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .with_context(what)?;
    socket.set_reuseaddr(true).with_context(what)?;
    socket.bind(config.bind).with_context(what)?;
    socket.listen(LISTEN_BACKLOG).with_context(what)
}

/// Raise the soft open-file limit to the hard one and return it.
fn raise_nofile_limit() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1024;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
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
        assert_eq!(
            effective_max_connections(100_000, 20_000),
            (20_000 - 64) / 2
        );
        assert_eq!(effective_max_connections(500, 20_000), 500);
        assert_eq!(effective_max_connections(10, 0), 1);
    }
}
