//! `tether demo`: the whole stack in one process, for a newcomer. Two reference backends on
//! ephemeral ports share one in-process bus (or Redis), and the proxy sits in front of them
//! with user-id affinity (header `X-User-Id`, or `?user=` for browsers, which cannot set
//! headers on a WebSocket) and the sticky cookie for anonymous users.
//!
//! The proxy's config is written as YAML and goes through the same validation as a file would,
//! so the demo runs exactly the code a deployment runs.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{AppArgs, AppListeners, Fanout, LocalBus};

/// `tether demo` command line.
#[derive(Clone, Debug, clap::Args)]
pub struct DemoArgs {
    /// Where the proxy listens for browsers.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) listen: SocketAddr,
    /// Where the admin listener (status page, metrics, admin API) listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
    pub(crate) admin: SocketAddr,
    /// Fan messages out through this Redis instead of the in-process bus.
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
}

/// Backend ids, in order.
const INSTANCES: [&str; 2] = ["app-1", "app-2"];

/// The proxy config of the demo, over backends at `backends`.
pub(crate) fn config_yaml(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        r#"# tether demo: generated at startup.
listeners:
  - name: public
    bind: "{listen}"
admin:
  bind: "{admin}"
routes:
  - upstream: app
upstreams:
  app:
    backends:
"#
    );
    for (id, addr) in INSTANCES.iter().zip(backends) {
        yaml.push_str(&format!("      - {{ id: {id}, address: \"{addr}\" }}\n"));
    }
    yaml.push_str(
        r#"    affinity:
      key:
        - header: X-User-Id
        - query: user
      cookie: { name: TETHER_AFFINITY }
      fallback: least_connections
    health_check: { path: /readyz, interval: 1s, timeout: 500ms, healthy_after: 1, unhealthy_after: 2 }
    drain: { timeout: 5s, close_spread: 3s, close_code: 1001 }
shutdown: { delay: 0s, timeout: 10s }
access_log: { format: off }
limits: { max_connections: 5000 }
"#,
    );
    yaml
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// An app instance's listener.
    #[error("cannot bind an app listener on 127.0.0.1")]
    Bind(#[source] std::io::Error),
    /// The generated proxy config.
    #[error("the demo config is invalid (a bug):\n{0}")]
    Config(crate::config::ConfigErrors),
    /// The proxy.
    #[error(transparent)]
    Proxy(#[from] crate::server::StartError),
}

/// Run the demo until `stop` fires. Prints the `listening` lines and what to open.
pub async fn run(args: DemoArgs, stop: CancellationToken) -> Result<(), DemoError> {
    let fanout = match &args.redis {
        Some(url) => Fanout::Redis(url.clone()),
        None => Fanout::Local(LocalBus::new()),
    };
    let backends_stop = CancellationToken::new();
    let mut backend_addrs = Vec::new();
    let mut apps = JoinSet::new();
    for id in INSTANCES {
        let listener = TcpListener::bind("127.0.0.1:0").await.map_err(DemoError::Bind)?;
        let addr = listener.local_addr().map_err(DemoError::Bind)?;
        let mut backend_args = AppArgs::new(addr);
        backend_args.id = Some(id.to_owned());
        backend_args.shutdown_delay = Duration::ZERO;
        backend_args.drain_spread = Duration::from_secs(1);
        let listeners = AppListeners { main: listener, internal: None };
        let token = backends_stop.clone();
        apps.spawn(crate::app::run_with_fanout(backend_args, listeners, fanout.clone(), async move {
            token.cancelled().await
        }));
        backend_addrs.push(addr);
    }

    let yaml = config_yaml(args.listen, args.admin, &backend_addrs);
    let loaded = crate::config::parse(Path::new("demo.yaml"), &yaml, &|name| std::env::var(name).ok())
        .map_err(DemoError::Config)?;
    let running = crate::server::start(loaded.config).await?;
    for (name, addr) in running.addrs() {
        crate::accept::announce(&name, addr);
    }
    for (id, addr) in INSTANCES.iter().zip(&backend_addrs) {
        crate::accept::announce(id, *addr);
    }
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let public = running.addr("public").unwrap_or(args.listen);
        let admin = running.addr("admin").unwrap_or(args.admin);
        let _ = writeln!(
            out,
            "\ntether demo is running: two chat instances ({}) behind the proxy, fan-out through {}.\n\
             \n  chat:         http://{public}/   (open it in two browsers with different names)\n\
             \x20 status page:  http://{admin}/\n\
             \x20 metrics:      http://{admin}/metrics\n\
             \x20 drain app-1:  curl -X POST http://{admin}/admin/upstreams/app/backends/app-1/drain\n\
             \x20 undrain:      curl -X POST http://{admin}/admin/upstreams/app/backends/app-1/undrain\n\
             \nUsers are pinned by name (?user= / X-User-Id), anonymous ones by a cookie. Drain an\n\
             instance and watch its users get a clean close and reconnect to the other one.\n\
             Ctrl-C stops everything.",
            INSTANCES.join(", "),
            if args.redis.is_some() { "Redis" } else { "an in-process bus" },
        );
        let _ = out.flush();
    }

    stop.cancelled().await;
    running.shutdown().await;
    backends_stop.cancel();
    while let Some(ended) = apps.join_next().await {
        match ended {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "a demo app instance stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "a demo app instance task failed"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_config_is_valid() {
        let yaml = config_yaml(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9901".parse().unwrap(),
            &["127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9002".parse().unwrap()],
        );
        let loaded = crate::config::parse(Path::new("demo.yaml"), &yaml, &|_| None).expect("valid");
        let app = loaded.config.upstream("app").expect("app upstream");
        assert_eq!(app.backends.len(), 2);
        assert_eq!(app.affinity.keys.len(), 2);
        assert!(app.affinity.cookie.is_some());
    }
}
