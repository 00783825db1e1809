//! `TestApp`: the reference STOMP application (`tether backend`) in-process, on 127.0.0.1:0.
//!
//! `TestApp::builder().redis(&url).spawn().await` runs `tether::app::run_with` on its own
//! [`ServerRuntime`]; `shutdown()` runs the graceful shutdown and re-raises a failure or a
//! panic of the instance. Dropping it stops the instance at once, and a panic of any of its
//! tasks fails the test.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tether::app::{AppArgs, AppListeners, Fanout, LocalBus};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::http_client::{self, HttpResponse};
use super::server_runtime::ServerRuntime;
use super::{WAIT, eventually, within};

pub struct TestAppBuilder {
    args: AppArgs,
    fanout: Fanout,
    internal: bool,
    /// The instance's own environment (`--jwt-secret-env`), never the test process's.
    env: Vec<(String, String)>,
}

impl TestAppBuilder {
    pub fn id(mut self, id: &str) -> Self {
        self.args.id = Some(id.into());
        self
    }

    pub fn redis(mut self, url: &str) -> Self {
        self.fanout = Fanout::Redis(url.into());
        self
    }

    pub fn bus(mut self, bus: &LocalBus) -> Self {
        self.fanout = Fanout::Local(bus.clone());
        self
    }

    pub fn heartbeat(mut self, d: Duration) -> Self {
        self.args.heartbeat = d;
        self
    }

    pub fn shutdown_delay(mut self, d: Duration) -> Self {
        self.args.shutdown_delay = d;
        self
    }

    pub fn drain_spread(mut self, d: Duration) -> Self {
        self.args.drain_spread = d;
        self
    }

    /// `--outbound-queue-bytes`.
    pub fn outbound_queue_bytes(mut self, n: usize) -> Self {
        self.args.outbound_queue_bytes = n;
        self
    }

    /// `--history DURATION`.
    pub fn history(mut self, d: Duration) -> Self {
        self.args.history = Some(d);
        self
    }

    /// `--history-len N`.
    pub fn history_len(mut self, n: usize) -> Self {
        self.args.history_len = Some(n);
        self
    }

    /// `--max-publish-rate N`.
    pub fn max_publish_rate(mut self, n: u32) -> Self {
        self.args.max_publish_rate = Some(n);
        self
    }

    /// `--redis-cluster` initial nodes.
    pub fn redis_cluster(mut self, nodes: Vec<String>) -> Self {
        self.fanout = Fanout::RedisCluster(nodes);
        self
    }

    pub fn max_frame_bytes(mut self, n: usize) -> Self {
        self.args.max_frame_bytes = n;
        self
    }

    pub fn max_unacked(mut self, n: usize) -> Self {
        self.args.max_unacked = n;
        self
    }

    /// `--channel-map RULE` (repeatable).
    pub fn channel_map(mut self, rule: &str) -> Self {
        self.args.channel_map.push(rule.into());
        self
    }

    pub fn app_url(mut self, url: &str) -> Self {
        self.args.app_url = Some(url.into());
        self
    }

    pub fn redis_slow_after(mut self, d: Duration) -> Self {
        self.args.redis_slow_after = d;
        self
    }

    pub fn confirm_timeout(mut self, d: Duration) -> Self {
        self.args.confirm_timeout = d;
        self
    }

    /// SockJS timers and the streaming limit, shrunk for tests.
    pub fn sockjs(mut self, heartbeat: Duration, disconnect_delay: Duration, stream_limit: usize) -> Self {
        self.args.sockjs_heartbeat = heartbeat;
        self.args.sockjs_disconnect_delay = disconnect_delay;
        self.args.sockjs_stream_limit = stream_limit;
        self
    }

    /// `--trust-proxy CIDR` (repeatable; the first call replaces the loopback default).
    pub fn trust_proxy(mut self, cidr: &str) -> Self {
        if self.args.trust_proxy == AppArgs::new(self.args.listen).trust_proxy {
            self.args.trust_proxy.clear();
        }
        self.args.trust_proxy.push(cidr.parse().expect("CIDR"));
        self
    }

    /// `--accept-login`.
    pub fn accept_login(mut self) -> Self {
        self.args.accept_login = true;
        self
    }

    /// `--jwt-jwks FILE`.
    pub fn jwt_jwks(mut self, file: &Path) -> Self {
        self.args.jwt_jwks = Some(file.to_owned());
        self
    }

    /// `--jwt-secret-env VAR`, with VAR set to `secret` in the instance's environment.
    pub fn jwt_secret(mut self, var: &str, secret: &str) -> Self {
        self.args.jwt_secret_env = Some(var.into());
        self.env.push((var.into(), secret.into()));
        self
    }

    /// `--jwt-issuer` and `--jwt-audience`.
    pub fn jwt_claims(mut self, issuer: &str, audience: &str) -> Self {
        self.args.jwt_issuer = Some(issuer.into());
        self.args.jwt_audience.push(audience.into());
        self
    }

    /// `--allowed-origin ORIGIN` (repeatable).
    pub fn allowed_origin(mut self, origin: &str) -> Self {
        self.args.allowed_origin.push(origin.into());
        self
    }

    /// Adds an `--internal-listen` listener.
    pub fn internal_listener(mut self) -> Self {
        self.internal = true;
        self
    }

    /// [`Self::spawn`], then wait until the app's Redis connection is up.
    pub async fn spawn_with_redis_up(self) -> TestApp {
        assert!(
            matches!(self.fanout, Fanout::Redis(_) | Fanout::RedisCluster(_)),
            "spawn_with_redis_up needs .redis(url) or .redis_cluster(nodes)"
        );
        let app = self.spawn().await;
        app.wait_redis("up").await;
        app
    }

    pub async fn spawn(self) -> TestApp {
        let runtime = ServerRuntime::start("the app");
        let Self { args, fanout, internal, env } = self;
        let options = tether::app::Options {
            fanout: Some(fanout),
            env: Arc::new(move |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())),
            demo_login: None,
        };
        let (stop, stopped) = oneshot::channel::<()>();
        // Bound on the app's own runtime, whose reactor then drives them.
        let (addr, internal, task) = within(
            "the app to start",
            runtime.run(async move {
                let main = TcpListener::bind("127.0.0.1:0").await.expect("bind main");
                let addr = main.local_addr().expect("main addr");
                let internal =
                    if internal { Some(TcpListener::bind("127.0.0.1:0").await.expect("bind internal")) } else { None };
                let internal_addr = internal.as_ref().map(|l| l.local_addr().expect("addr"));
                let listeners = AppListeners { main, internal };
                let task = tokio::spawn(tether::app::run_with(args, listeners, options, async move {
                    let _ = stopped.await;
                }));
                (addr, internal_addr, task)
            }),
        )
        .await;
        TestApp { addr, internal, stop: Some(stop), task: Some(task), runtime }
    }
}

/// Whether the `/metrics` text has exactly this sample line.
pub fn has_line(metrics: &str, line: &str) -> bool {
    metrics.lines().any(|l| l == line)
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub internal: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tether::app::AppError>>>,
    runtime: ServerRuntime,
}

impl TestApp {
    /// Test defaults: short shutdown delay and drain spread, heart-beats at 10 s (clients in
    /// tests send `0,0` unless they test heart-beats).
    pub fn builder() -> TestAppBuilder {
        let mut args = AppArgs::new("127.0.0.1:0".parse().expect("addr"));
        args.shutdown_delay = Duration::from_millis(200);
        args.drain_spread = Duration::from_millis(500);
        TestAppBuilder { args, fanout: Fanout::Local(LocalBus::new()), internal: false, env: Vec::new() }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Where `/publish` and `/metrics` live.
    pub fn operator_addr(&self) -> SocketAddr {
        self.internal.unwrap_or(self.addr)
    }

    pub async fn health(&self) -> serde_json::Value {
        let r = http_client::get(self.addr, "/healthz").await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    pub async fn metrics(&self) -> String {
        let r = http_client::get(self.operator_addr(), "/metrics").await;
        assert_eq!(r.status, 200);
        r.body
    }

    /// `POST /publish?destination=...`.
    pub async fn publish(&self, destination: &str, body: &str) -> HttpResponse {
        let query: String =
            form_urlencoded::Serializer::new(String::new()).append_pair("destination", destination).finish();
        http_client::post(self.operator_addr(), &format!("/publish?{query}"), body.to_owned()).await
    }

    /// Publishes `{prefix}0`, `{prefix}1`, ... to `destination` every 5 ms (200 messages/s)
    /// until `stop`; returns the numbers taken (202), in order. A publish refused with 503
    /// (the broker reconnecting or following a change) is not counted; anything else fails.
    pub async fn publish_numbered_until(
        &self,
        destination: &str,
        prefix: &str,
        stop: tokio_util::sync::CancellationToken,
    ) -> Vec<u32> {
        let mut taken = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        for n in 0u32.. {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            let r = self.publish(destination, &format!("{prefix}{n}")).await;
            match r.status.as_u16() {
                202 => taken.push(n),
                503 => {}
                other => panic!("publish {n}: {other} {}", r.body),
            }
        }
        taken
    }

    /// Wait until `/healthz` reports redis `state`.
    pub async fn wait_redis(&self, state: &str) {
        eventually(&format!("redis to be {state} on /healthz"), async || {
            (self.health().await["redis"] == state).then_some(())
        })
        .await;
    }

    /// Starts the graceful shutdown without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and waits for `run` to return Ok; re-raises a panic of the instance or of
    /// any of its tasks.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.join().await;
    }

    /// Waits for `run` to return after [`Self::begin_shutdown`].
    pub async fn join(&mut self) {
        let Some(task) = self.task.take() else { return };
        let grace = WAIT * 2;
        match tokio::time::timeout(grace, task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => panic!("the app failed: {e}"),
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Ok(Err(e)) => panic!("the app task failed: {e}"),
            Err(_) => panic!("the app did not shut down within {grace:?}"),
        }
        self.runtime.assert_no_panic();
    }
}
