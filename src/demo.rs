//! `tether demo`: the whole stack in one process, for a newcomer. Two reference backends on
//! ephemeral ports share one in-process bus (or Redis), and the proxy sits in front of them.
//! Users are who a verified token says: `/login?user=NAME` (served by the backends, for the
//! demo only) sets a short-lived HS256 token in a cookie, the proxy verifies it on the
//! WebSocket upgrade, pins the user by the verified `sub` and tells the backend in
//! `X-User-Id` (which the backend believes from the proxy's loopback address only). Anonymous
//! users get the sticky cookie.
//!
//! The HMAC key is random per run and reaches the in-process proxy through
//! [`server::Options::env`](crate::server::Options::env), never through the process
//! environment. The proxy's config is written as YAML and goes through the same validation as
//! a file would, so the demo runs exactly the code a deployment runs.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rand::TryRng as _;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::app::{AppArgs, AppListeners, DemoLogin, Fanout, LocalBus, login};

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
/// How long the demo's backends keep each room's messages for a page that reconnects.
const DEMO_HISTORY: Duration = Duration::from_secs(300);
/// The variable the proxy's verifier reads its HMAC key from (answered by the demo itself).
const SECRET_VAR: &str = "TETHER_DEMO_TOKEN_SECRET";
/// Random bytes of the per-run HMAC key (hex-encoded: twice as many characters).
const SECRET_BYTES: usize = 32;

/// The proxy config of the demo, over backends at `backends`.
pub(crate) fn config_yaml(listen: SocketAddr, admin: SocketAddr, backends: &[SocketAddr]) -> String {
    let mut yaml = format!(
        r#"# tether demo: generated at startup.
listeners:
  - name: public
    bind: "{listen}"
admin:
  bind: "{admin}"
auth:
  demo:
    jwt:
      algorithms: [HS256]
      secret_env: {SECRET_VAR}
      issuer: {issuer}
      leeway: 5s
    token_from: ["header:Authorization", "cookie:{cookie}"]
    identity: {{ claim: sub, header: X-User-Id }}
    required: false
routes:
  # Tokens are checked where sessions open; the page, /login and /logout need none (a stale
  # cookie from an earlier run must not lock a visitor out of the page that renews it).
  - {{ path_prefix: /ws, upstream: app, auth: demo }}
  - upstream: app
upstreams:
  app:
    backends:
"#,
        issuer = login::ISSUER,
        cookie = login::COOKIE,
    );
    for (id, addr) in INSTANCES.iter().zip(backends) {
        yaml.push_str(&format!("      - {{ id: {id}, address: \"{addr}\" }}\n"));
    }
    yaml.push_str(
        r#"    affinity:
      key:
        - verified_claim: sub
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
    /// No randomness for the token key.
    #[error("cannot make the demo's token key")]
    Entropy(#[source] rand::rngs::SysError),
}

/// A fresh HMAC key, hex-encoded, from the OS.
fn random_secret() -> Result<String, DemoError> {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::rngs::SysRng.try_fill_bytes(&mut bytes).map_err(DemoError::Entropy)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The proxy's environment: the token key under [`SECRET_VAR`], the process environment
/// for anything else.
fn proxy_env(secret: String) -> crate::config::Env {
    Arc::new(move |name: &str| if name == SECRET_VAR { Some(secret.clone()) } else { std::env::var(name).ok() })
}

/// Run the demo until `stop` fires. Prints the `listening` lines and what to open.
pub async fn run(args: DemoArgs, stop: CancellationToken) -> Result<(), DemoError> {
    let fanout = match &args.redis {
        Some(url) => Fanout::Redis(url.clone()),
        None => Fanout::Local(LocalBus::new()),
    };
    let secret = random_secret()?;
    let demo_login = DemoLogin::new(&secret);
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
        // The chat page resumes its room after a reconnect (a drain, say) from this record.
        backend_args.history = Some(DEMO_HISTORY);
        let listeners = AppListeners { main: listener, internal: None };
        let token = backends_stop.clone();
        let options = crate::app::Options {
            fanout: Some(fanout.clone()),
            demo_login: Some(demo_login.clone()),
            ..Default::default()
        };
        apps.spawn(crate::app::run_with(backend_args, listeners, options, async move { token.cancelled().await }));
        backend_addrs.push(addr);
    }

    let yaml = config_yaml(args.listen, args.admin, &backend_addrs);
    let env = proxy_env(secret);
    let loaded = crate::config::parse(Path::new("demo.yaml"), &yaml, &|name| env(name)).map_err(DemoError::Config)?;
    let options = crate::server::Options { env, ..Default::default() };
    let running = crate::server::start_with(loaded.config, options).await?;
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
             \n  sign in:      http://{public}/?user=alice   (the page gets a demo token from /login)\n\
             \nSigned-in users are pinned by their verified name, anonymous ones by a cookie. Drain an\n\
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
    fn the_demo_config_is_valid_and_pins_by_the_verified_claim() {
        let yaml = config_yaml(
            "127.0.0.1:8080".parse().unwrap(),
            "127.0.0.1:9901".parse().unwrap(),
            &["127.0.0.1:9001".parse().unwrap(), "127.0.0.1:9002".parse().unwrap()],
        );
        let secret = random_secret().expect("secret");
        assert_eq!(secret.len(), SECRET_BYTES * 2);
        assert_ne!(secret, random_secret().expect("secret"), "one key per run");
        let env = proxy_env(secret);
        let loaded = crate::config::parse(Path::new("demo.yaml"), &yaml, &|name| env(name)).expect("valid");
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        let app = loaded.config.upstream("app").expect("app upstream");
        assert_eq!(app.backends.len(), 2);
        assert!(matches!(app.affinity.keys[..], [crate::config::KeySource::VerifiedClaim(ref c)] if c == "sub"));
        assert!(app.affinity.cookie.is_some());
        assert_eq!(loaded.config.auth.len(), 1);
        assert!(!loaded.config.auth[0].required, "anonymous clients are served");
    }
}
