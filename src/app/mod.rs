//! `tether backend`: the reference STOMP-over-WebSocket application tether is demonstrated,
//! tested and load-tested against, and a drop-in for a Spring `addEndpoint("/ws").withSockJS()`
//! STOMP endpoint. STOMP 1.2 at `/ws` over a plain WebSocket or SockJS, fan-out across
//! instances through Redis Pub/Sub, Redis Cluster sharded Pub/Sub, or an in-process bus,
//! history for resuming subscriptions (Redis Streams or an in-memory record), foreign Redis
//! channels mapped to destinations, application destinations forwarded over HTTP, heart-beats,
//! probes, metrics and graceful shutdown.
//!
//! This module owns the command line ([`AppArgs`]) and the entry point ([`run`]): wiring,
//! accept loops and the shutdown sequence. It must not bind sockets or install signal handlers
//! (the caller passes bound [`AppListeners`] and a shutdown future).
//!
//! # Layout
//! - [`stomp`]: the frame codec (pure).
//! - [`hub`]: one destination's subscribers (pure bookkeeping, O(1) add and remove) and
//!   user-destination naming.
//! - `fanout`: the subscriber sets sharded by destination behind their own locks.
//! - `message`: MESSAGE frames encoded once per message, spliced per subscription (pure).
//! - `outbox`: a session's outbound queue, bounded in bytes.
//! - `history`: stream ids, retention, the in-memory record and the resume seam (pure).
//! - [`broker`]: the fan-out port ([`broker::Broker`]) with the Redis, Redis Cluster and
//!   in-process adapters.
//! - `channel_map`: `--channel-map` rules, foreign channel <-> destination (pure).
//! - `instance`: shared state of one instance and fan-out (publish through the broker, deliver
//!   what it hands back).
//! - `session`: one STOMP session over a WebSocket or a SockJS session (state machine, acks,
//!   transactions, heart-beats, resuming subscriptions, publish rate limit).
//! - `sockjs`: the SockJS protocol under `/ws` (framing, sessions, transports).
//! - `app_forward`: SENDs to `/app/...` POSTed to `--app-url`.
//! - `http`: routes, probes, `/publish`, `/metrics`, demo page, WebSocket handshake.
//! - `trust`: which peers are trusted proxies, which page origins may open sessions (pure).
//! - `jwt`: the verifier of CONNECT tokens (`--jwt-*`), over the proxy's `auth::Verifier`.
//! - [`login`]: `/login` minting demo tokens, for `tether demo` only.
//! - [`metrics`]: Prometheus metrics.
//!
//! Trust boundary: a session's user is, first match wins, the verified subject of the token in
//! its CONNECT frame (`--jwt-*`), the `--user-header` of its upgrade request when that came
//! from a `--trust-proxy` address, the CONNECT `login` with `--accept-login` (development
//! only), else nobody: an anonymous session with a random name.

mod app_forward;
pub mod broker;
mod channel_map;
mod fanout;
mod history;
mod http;
pub(crate) mod hub;
mod instance;
mod jwt;
pub mod login;
mod message;
pub(crate) mod metrics;
mod outbox;
mod session;
mod sockjs;
pub mod stomp;
mod trust;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ipnet::IpNet;
use jsonwebtoken::Algorithm;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lifecycle::schedule::CloseSchedule;
use broker::Received;
pub use broker::local::LocalBus;
use http::Surface;
use instance::{CloseReason, Instance, Settings};
pub use login::DemoLogin;

/// Default outbound queue per session, in bytes: about a thousand chat-sized messages, or
/// thirty 32 KiB ones. Deep enough to absorb a burst to a busy room; a client this far behind
/// is a slow consumer and is closed.
pub(crate) const DEFAULT_OUTBOUND_BYTES: usize = 1 << 20;
/// Default cap on subscriptions per session, bounding hub memory per connection.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// Default cap on a session's unacknowledged messages (`ack:client[-individual]`), after which
/// the client is a slow consumer.
pub(crate) const DEFAULT_MAX_UNACKED: usize = 1024;
/// Default bound on waiting for a broker (or application) confirmation before a session
/// answers ERROR: longer than the broker's own down threshold, so a slow Redis is waited for.
pub(crate) const DEFAULT_CONFIRM_TIMEOUT: Duration = Duration::from_secs(12);
/// After the last scheduled close, sessions get this long to finish their closing handshake
/// before shutdown stops waiting for them.
const SESSION_CLOSE_GRACE: Duration = Duration::from_secs(5);
/// Bound on waiting for background tasks (broker, HTTP connections) at the very end.
const TASKS_GRACE: Duration = Duration::from_secs(5);

/// `tether backend` command line.
#[derive(Clone, Debug, clap::Args)]
pub struct AppArgs {
    /// Address of the public listener (STOMP at /ws, demo page, probes).
    #[arg(long, value_name = "ADDR")]
    pub listen: SocketAddr,
    /// Instance name shown in /whoami, /healthz and message headers [default: the hostname].
    #[arg(long)]
    pub id: Option<String>,
    /// Redis URL for cross-instance fan-out (redis://host:port, redis+unix:///path); without
    /// it, fan-out is an in-process bus (single instance).
    #[arg(long, value_name = "URL", conflicts_with = "redis_cluster")]
    pub(crate) redis: Option<String>,
    /// Redis Cluster nodes to start from (`redis://h1:p,h2:p,...`; Redis 7+): fan-out through sharded
    /// Pub/Sub (SSUBSCRIBE/SPUBLISH), each destination's channel and stream on its slot's node.
    #[arg(long, value_name = "URL,...")]
    pub(crate) redis_cluster: Option<String>,
    /// Keep each destination's messages this long (`5m`), so a reconnecting client can resume
    /// where it left off (SUBSCRIBE `x-resume-from`): Redis Streams `tether:stream:<destination>`,
    /// or an in-memory record on the in-process bus. Off by default.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, conflicts_with = "history_len")]
    pub history: Option<Duration>,
    /// As --history, keeping about N messages per destination instead.
    #[arg(long, value_name = "N")]
    pub history_len: Option<usize>,
    /// Most SEND frames one session may publish per second (a burst of as many is allowed);
    /// past it the session gets an ERROR and is closed. No limit by default.
    #[arg(long, value_name = "PER_SECOND")]
    pub max_publish_rate: Option<u32>,
    /// Request header carrying the user id, set by the proxy from a verified token. Believed
    /// only on connections from a --trust-proxy address.
    #[arg(long, value_name = "NAME", default_value = "X-User-Id")]
    pub(crate) user_header: String,
    /// Address or network of the proxy in front (repeatable): only its requests may name the
    /// user with --user-header (and say the client's scheme and host with X-Forwarded-* or
    /// Forwarded). From anywhere else the header is ignored. Giving one replaces the default.
    #[arg(long = "trust-proxy", value_name = "CIDR", value_parser = trust::parse_cidr, default_values = trust::DEFAULT_TRUSTED)]
    pub trust_proxy: Vec<IpNet>,
    /// Take the STOMP CONNECT `login` header as the user's identity, when nothing better
    /// names one. Development only: any client can claim any name.
    #[arg(long)]
    pub accept_login: bool,
    /// Verify a token in the CONNECT frame (`Authorization: Bearer ...`, or `passcode`) with
    /// the keys of this JWKS file; a bad token is an ERROR and the connection closes.
    #[arg(long, value_name = "FILE", group = "jwt_keys")]
    pub jwt_jwks: Option<PathBuf>,
    /// As --jwt-jwks, with one PEM public key (RSA, EC or Ed25519).
    #[arg(long, value_name = "FILE", group = "jwt_keys")]
    pub jwt_key: Option<PathBuf>,
    /// As --jwt-jwks, with an HMAC secret (at least 32 bytes) read from this environment
    /// variable (HS256/384/512).
    #[arg(long, value_name = "VAR", group = "jwt_keys")]
    pub jwt_secret_env: Option<String>,
    /// Accepted token algorithms, comma-separated [default: from the keys: a JWK's `alg`, else
    /// RS256 for RSA, ES256/ES384 by the EC curve, EdDSA for Ed25519, HS256 for a secret].
    #[arg(long, value_name = "ALG,...", value_delimiter = ',', value_parser = jwt::parse_algorithm, requires = "jwt_keys")]
    pub jwt_algorithms: Vec<Algorithm>,
    /// The `iss` a token must carry.
    #[arg(long, value_name = "ISSUER", requires = "jwt_keys")]
    pub jwt_issuer: Option<String>,
    /// An `aud` a token may carry (repeatable; one must match when given).
    #[arg(long, value_name = "AUDIENCE", requires = "jwt_keys")]
    pub jwt_audience: Vec<String>,
    /// The claim that names the user.
    #[arg(long, value_name = "CLAIM", default_value = "sub")]
    pub jwt_claim: String,
    /// A page origin that may open sessions besides the request's own (repeatable):
    /// `https://app.example.com`, `https://*.example.com`, or `*` for any. WebSocket upgrades
    /// and SockJS requests from other origins get 403; requests without Origin pass.
    #[arg(long = "allowed-origin", value_name = "ORIGIN")]
    pub allowed_origin: Vec<String>,
    /// Heart-beat interval offered to clients, both directions (0 disables).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// After SIGTERM, how long to keep serving (with /readyz at 503) before draining.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,
    /// Window over which sessions are closed (Close 1001) during the drain.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain_spread: Duration,
    /// Separate listener for /publish and /metrics (and probes), not exposed through the proxy.
    /// Without it those share the main listener (fine for the demo).
    #[arg(long, value_name = "ADDR")]
    pub internal_listen: Option<SocketAddr>,
    /// Outbound queue per session, in bytes; a session whose queue overflows is closed as a
    /// slow consumer.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_OUTBOUND_BYTES, hide = true)]
    pub outbound_queue_bytes: usize,
    /// Largest accepted STOMP frame, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = stomp::DEFAULT_MAX_FRAME_BYTES, hide = true)]
    pub max_frame_bytes: usize,
    /// Messages a session may leave unacknowledged (ack: client, client-individual); past it the
    /// session is closed as a slow consumer.
    #[arg(long, value_name = "MESSAGES", default_value_t = DEFAULT_MAX_UNACKED, hide = true)]
    pub max_unacked: usize,
    /// Deliver a foreign Redis channel to a STOMP destination: CHANNEL=DESTINATION, `*` is one
    /// segment, bound in order (`auction:*=/sub/auction/*`,
    /// `notification:*=/user/*/queue/notifications`). Repeatable; needs --redis. The channel
    /// is PSUBSCRIBEd only while a mapped destination has a local subscriber.
    #[arg(long = "channel-map", value_name = "RULE")]
    pub channel_map: Vec<String>,
    /// POST SENDs to /app/... to this URL + the destination; a 2xx JSON answer
    /// {"destination": ..., "body": ...} is published. Without it, /app SENDs get an ERROR.
    #[arg(long, value_name = "URL")]
    pub app_url: Option<String>,
    /// SockJS: heartbeat frame interval on idle receiving connections.
    #[arg(long, value_name = "DURATION", default_value = "25s", value_parser = parse_duration)]
    pub sockjs_heartbeat: Duration,
    /// SockJS: how long a session lives without a receiving connection.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub sockjs_disconnect_delay: Duration,
    /// SockJS: bytes per streaming response before the client is made to open the next one.
    #[arg(long, value_name = "BYTES", default_value_t = sockjs::DEFAULT_STREAM_LIMIT)]
    pub sockjs_stream_limit: usize,
    /// SockJS: whether /info says cookie_needed and transports set a JSESSIONID cookie.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub sockjs_cookie_needed: bool,
    /// A Redis round trip longer than this is reported (/healthz "slow"), never acted on.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration, hide = true)]
    pub redis_slow_after: Duration,
    /// No answer from Redis for this long: the connection is given up and reopened.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, hide = true)]
    pub redis_down_after: Duration,
    /// How long a session waits for the broker (or the application) before answering ERROR.
    #[arg(long, value_name = "DURATION", default_value = "12s", value_parser = parse_duration, hide = true)]
    pub confirm_timeout: Duration,
}

impl AppArgs {
    /// The defaults of the command line, for embedding (tests, `tether demo`).
    pub fn new(listen: SocketAddr) -> AppArgs {
        AppArgs {
            listen,
            id: None,
            redis: None,
            redis_cluster: None,
            history: None,
            history_len: None,
            max_publish_rate: None,
            user_header: "X-User-Id".into(),
            trust_proxy: trust::DEFAULT_TRUSTED.iter().filter_map(|n| trust::parse_cidr(n).ok()).collect(),
            accept_login: false,
            jwt_jwks: None,
            jwt_key: None,
            jwt_secret_env: None,
            jwt_algorithms: Vec::new(),
            jwt_issuer: None,
            jwt_audience: Vec::new(),
            jwt_claim: "sub".into(),
            allowed_origin: Vec::new(),
            heartbeat: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            drain_spread: Duration::from_secs(5),
            internal_listen: None,
            outbound_queue_bytes: DEFAULT_OUTBOUND_BYTES,
            max_frame_bytes: stomp::DEFAULT_MAX_FRAME_BYTES,
            max_unacked: DEFAULT_MAX_UNACKED,
            channel_map: Vec::new(),
            app_url: None,
            sockjs_heartbeat: sockjs::DEFAULT_HEARTBEAT,
            sockjs_disconnect_delay: sockjs::DEFAULT_DISCONNECT_DELAY,
            sockjs_stream_limit: sockjs::DEFAULT_STREAM_LIMIT,
            sockjs_cookie_needed: true,
            redis_slow_after: broker::redis::DEFAULT_SLOW_AFTER,
            redis_down_after: broker::redis::DEFAULT_DOWN_AFTER,
            confirm_timeout: DEFAULT_CONFIRM_TIMEOUT,
        }
    }
}

/// Command-line durations are written like config durations (`250ms`, `10s`, `2m`, `1h`); a
/// bare `0` is also accepted, as in `--heartbeat 0` (off).
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "0" => Ok(Duration::ZERO),
        text => crate::config::units::parse_duration(text).map_err(|e| e.to_string()),
    }
}

/// Already-bound listeners.
#[derive(Debug)]
pub struct AppListeners {
    /// The public listener: STOMP at `/ws`, the demo page, probes.
    pub main: TcpListener,
    /// The internal listener for `/publish` and `/metrics`, when separate.
    pub internal: Option<TcpListener>,
}

impl AppArgs {
    /// What `--history` / `--history-len` ask to keep (`None`: history off).
    fn retention(&self) -> Option<history::Retention> {
        match (self.history, self.history_len) {
            (Some(age), _) => Some(history::Retention::Age(age)),
            (None, Some(n)) => Some(history::Retention::Len(n)),
            (None, None) => None,
        }
    }
}

/// Which fan-out adapter an instance uses.
#[derive(Clone, Debug)]
pub enum Fanout {
    /// Redis Pub/Sub at this URL.
    Redis(String),
    /// Redis Cluster sharded Pub/Sub, from these initial nodes.
    RedisCluster(Vec<String>),
    /// An in-process bus, shared with every instance given a clone of it.
    Local(LocalBus),
}

/// How an embedded instance is wired beyond its command line.
#[derive(Clone)]
pub struct Options {
    /// Fan-out; `None`: Redis at `args.redis` when set, else a private in-process bus.
    pub fanout: Option<Fanout>,
    /// Where `--jwt-secret-env` is read (the process environment by default).
    pub env: crate::config::Env,
    /// Serve `/login` and `/logout`, minting demo tokens: `tether demo` only, never a flag.
    pub demo_login: Option<DemoLogin>,
}

impl Default for Options {
    fn default() -> Self {
        Self { fanout: None, env: crate::config::process_env(), demo_login: None }
    }
}

/// Why the backend could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The `--redis` URL cannot be used.
    #[error(transparent)]
    Redis(#[from] broker::redis::RedisUrlError),
    /// `--user-header` is not a valid HTTP header name.
    #[error("invalid --user-header {0:?}: not an HTTP header name")]
    UserHeader(String),
    /// A queue, frame or history limit of zero.
    #[error(
        "--outbound-queue-bytes, --max-frame-bytes, --max-unacked, --sockjs-stream-limit, --history, --history-len and --max-publish-rate must be greater than zero"
    )]
    ZeroLimit,
    /// `--redis-cluster` names no usable node.
    #[error("invalid --redis-cluster: {0}")]
    RedisCluster(String),
    /// A `--channel-map` rule that cannot be used.
    #[error("invalid --channel-map {rule:?}: {reason}")]
    ChannelMap {
        /// The rule as given.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `--channel-map` without Redis.
    #[error("--channel-map needs --redis: mapped channels are Redis channels")]
    ChannelMapWithoutRedis,
    /// `--app-url` is not an `http://` URL.
    #[error("invalid --app-url {0:?}: expected http://HOST:PORT[/PATH]")]
    AppUrl(String),
    /// An `--allowed-origin` that is not an origin.
    #[error("invalid --allowed-origin: {0}")]
    AllowedOrigin(String),
    /// More than one of `--jwt-jwks`, `--jwt-key` and `--jwt-secret-env`.
    #[error("give one of --jwt-jwks, --jwt-key or --jwt-secret-env")]
    JwtKeySources,
    /// `--jwt-issuer`, `--jwt-audience` or `--jwt-algorithms` without a key to verify with.
    #[error("--jwt-issuer, --jwt-audience and --jwt-algorithms need --jwt-jwks, --jwt-key or --jwt-secret-env")]
    JwtWithoutKey,
    /// The `--jwt-*` options cannot build a verifier (a key file, a secret, an algorithm).
    #[error("{0}")]
    Jwt(String),
}

/// Runs an instance until `shutdown` resolves, then shuts down gracefully (readiness 503,
/// `shutdown_delay`, drain over `drain_spread`) and returns. Fan-out uses `args.redis` when
/// set, else a private in-process bus.
pub async fn run(
    args: AppArgs,
    listeners: AppListeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    run_with(args, listeners, Options::default(), shutdown).await
}

/// [`run`] wired by an embedder: `tether demo` passes one [`LocalBus`] clone to each of its
/// instances (`args.redis` is then ignored) and its `/login`.
pub async fn run_with(
    args: AppArgs,
    listeners: AppListeners,
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let fanout = match (options.fanout, &args.redis, &args.redis_cluster) {
        (Some(fanout), _, _) => fanout,
        (None, Some(url), _) => Fanout::Redis(url.clone()),
        (None, None, Some(list)) => {
            Fanout::RedisCluster(broker::redis::cluster::initial_nodes(list).map_err(AppError::RedisCluster)?)
        }
        (None, None, None) => Fanout::Local(LocalBus::new()),
    };
    let user_header = ::http::HeaderName::from_bytes(args.user_header.as_bytes())
        .map_err(|_| AppError::UserHeader(args.user_header.clone()))?;
    let zero_history = args.history.is_some_and(|d| d.is_zero()) || args.history_len == Some(0);
    if args.outbound_queue_bytes == 0
        || args.max_frame_bytes == 0
        || args.max_unacked == 0
        || args.sockjs_stream_limit == 0
        || zero_history
        || args.max_publish_rate == Some(0)
    {
        return Err(AppError::ZeroLimit);
    }
    let retention = args.retention();
    let mut rules = Vec::new();
    for rule in &args.channel_map {
        let parsed = channel_map::Rule::parse(rule)
            .map_err(|e| AppError::ChannelMap { rule: rule.clone(), reason: e.to_string() })?;
        rules.push(parsed);
    }
    if !rules.is_empty() && matches!(fanout, Fanout::Local(_)) {
        return Err(AppError::ChannelMapWithoutRedis);
    }
    let app_url = match &args.app_url {
        None => None,
        Some(url) => match url.parse::<::http::Uri>() {
            Ok(uri) if uri.scheme_str() == Some("http") && uri.host().is_some() => Some(uri),
            _ => return Err(AppError::AppUrl(url.clone())),
        },
    };
    let mut origins = Vec::new();
    for origin in &args.allowed_origin {
        origins.push(crate::config::parse_origin(origin).map_err(AppError::AllowedOrigin)?);
    }
    let verifier = jwt::verifier(&args, &options.env)?;
    if args.accept_login {
        tracing::warn!(
            event = "accept_login",
            "--accept-login: a STOMP CONNECT login names the user of a session without a token or a trusted header; any client can claim any name (development only)"
        );
    }
    let trust = trust::Trust {
        proxies: trust::TrustedProxies::new(&args.trust_proxy),
        origins: trust::Origins::new(origins),
        verifier: verifier.map(Arc::new),
        accept_login: args.accept_login,
        demo_login: options.demo_login,
    };
    let id: Arc<str> =
        args.id.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()).into();
    let settings = Settings {
        heartbeat: args.heartbeat,
        outbound_bytes: args.outbound_queue_bytes,
        max_publish_rate: args.max_publish_rate,
        limits: stomp::Limits { max_frame_bytes: args.max_frame_bytes, ..stomp::Limits::default() },
        max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
        max_unacked: args.max_unacked,
        user_header,
        confirm_timeout: args.confirm_timeout,
        channel_map: channel_map::ChannelMap::new(rules),
        app_url,
        sockjs: sockjs::SockJsSettings {
            heartbeat: args.sockjs_heartbeat,
            disconnect_delay: args.sockjs_disconnect_delay,
            stream_limit: args.sockjs_stream_limit,
            cookie_needed: args.sockjs_cookie_needed,
        },
        trust: Arc::new(trust),
    };
    let broker_kind = match fanout {
        Fanout::Redis(_) | Fanout::RedisCluster(_) => metrics::BrokerKind::Redis,
        Fanout::Local(_) => metrics::BrokerKind::InProcess,
    };
    let metrics = Arc::new(metrics::Metrics::new(broker_kind));
    let inst = Arc::new(Instance::new(id, settings, metrics.clone()));

    let tasks = TaskTracker::new();
    let sessions = TaskTracker::new();
    let broker_stop = CancellationToken::new();
    let weak: Weak<Instance> = Arc::downgrade(&inst);
    let inbound: broker::Inbound = Arc::new(move |received: Received| {
        if let Some(inst) = weak.upgrade() {
            inst.receive(received);
        }
    });
    let timeouts = broker::redis::RedisTimeouts { slow: args.redis_slow_after, down: args.redis_down_after };
    let broker: Box<dyn broker::Broker> = match fanout {
        Fanout::Redis(url) => Box::new(broker::redis::RedisBroker::start(
            &url,
            timeouts,
            retention,
            inbound,
            metrics,
            &tasks,
            broker_stop.clone(),
        )?),
        Fanout::RedisCluster(nodes) => Box::new(broker::redis::cluster::ClusterBroker::start(
            &nodes,
            timeouts,
            retention,
            inbound,
            metrics,
            &tasks,
            broker_stop.clone(),
        )?),
        Fanout::Local(bus) => Box::new(bus.attach(inbound, retention)),
    };
    inst.set_broker(broker);

    let stop_accepting = CancellationToken::new();
    let stop_http = CancellationToken::new();
    let main_surface = Surface::Main { operator_routes: listeners.internal.is_none() };
    let mut bound = vec![(listeners.main, main_surface)];
    if let Some(internal) = listeners.internal {
        bound.push((internal, Surface::Internal));
    }
    for (listener, surface) in bound {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(event = "listening", instance = %inst.id, surface = surface.name(), addr = %addr);
        }
        let (inst, conns, sessions, stop_http) = (inst.clone(), tasks.clone(), sessions.clone(), stop_http.clone());
        let stop = stop_accepting.clone();
        tasks.spawn(async move {
            crate::accept::run(listener, surface.name(), stop, conns, move |stream, peer| {
                let _ = stream.set_nodelay(true);
                let peer = inst.settings.trust.peer(peer.ip());
                Some(http::serve_connection(inst.clone(), stream, peer, surface, sessions.clone(), stop_http.clone()))
            })
            .await;
        });
    }

    shutdown.await;
    inst.set_shutting_down();
    tracing::info!(
        event = "shutdown_started",
        instance = %inst.id,
        delay_ms = args.shutdown_delay.as_millis() as u64,
        spread_ms = args.drain_spread.as_millis() as u64
    );
    // Keep serving while load balancers notice /readyz and stop sending new clients here.
    tokio::time::sleep(args.shutdown_delay).await;
    stop_accepting.cancel();
    stop_http.cancel();

    let live = inst.begin_drain();
    tracing::info!(event = "drain_started", instance = %inst.id, sessions = live.len());
    // Evenly over the spread, so clients do not all reconnect at once.
    let mut schedule = CloseSchedule::spread(std::time::Instant::now(), args.drain_spread, live.len());
    while let Some(next) = schedule.next_due() {
        tokio::time::sleep_until(next.into()).await;
        for i in schedule.due(std::time::Instant::now()) {
            live[i].close(CloseReason::Draining);
        }
    }
    sessions.close();
    if tokio::time::timeout(SESSION_CLOSE_GRACE, sessions.wait()).await.is_err() {
        tracing::warn!(event = "drain_incomplete", instance = %inst.id, sessions = inst.session_count());
    }

    broker_stop.cancel();
    tasks.close();
    let _ = tokio::time::timeout(TASKS_GRACE, tasks.wait()).await;
    tracing::info!(event = "shutdown_complete", instance = %inst.id);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<AppArgs, clap::Error> {
        use clap::{Args as _, FromArgMatches as _};
        let command = AppArgs::augment_args(clap::Command::new("backend").no_binary_name(true));
        command.try_get_matches_from(args).and_then(|m| AppArgs::from_arg_matches(&m))
    }

    #[test]
    fn the_command_line_is_consistent_and_trusts_loopback_by_default() {
        use clap::Args as _;
        AppArgs::augment_args(clap::Command::new("backend")).debug_assert();
        let args = parse(&["--listen", "127.0.0.1:0"]).expect("parses");
        assert_eq!(args.trust_proxy, AppArgs::new(args.listen).trust_proxy);
        assert_eq!(args.trust_proxy.len(), 2);
        assert!(!args.accept_login);
        let args = parse(&["--listen", "127.0.0.1:0", "--trust-proxy", "10.0.0.7", "--trust-proxy", "fd00::/8"])
            .expect("parses");
        assert_eq!(args.trust_proxy, ["10.0.0.7/32".parse::<IpNet>().unwrap(), "fd00::/8".parse().unwrap()]);
        let args = parse(&["--listen", "127.0.0.1:0", "--jwt-jwks", "k.json", "--jwt-algorithms", "RS256,ES256"])
            .expect("parses");
        assert_eq!(args.jwt_algorithms, [Algorithm::RS256, Algorithm::ES256]);
        assert!(parse(&["--listen", "127.0.0.1:0", "--jwt-jwks", "a", "--jwt-key", "b"]).is_err(), "one key source");
        assert!(parse(&["--listen", "127.0.0.1:0", "--jwt-issuer", "x"]).is_err(), "an issuer needs a key");
        assert!(parse(&["--listen", "127.0.0.1:0", "--jwt-secret-env", "S", "--jwt-algorithms", "none"]).is_err());
        assert!(parse(&["--listen", "127.0.0.1:0", "--trust-proxy", "somewhere"]).is_err());
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("1.5s").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
    }
}
