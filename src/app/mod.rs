//! `tether backend`: the reference STOMP-over-WebSocket application tether is demonstrated,
//! tested and load-tested against, and a drop-in for a Spring `addEndpoint("/ws").withSockJS()`
//! STOMP endpoint. STOMP 1.2 at `/ws` over a plain WebSocket or SockJS, fan-out across
//! instances through Redis Pub/Sub (or an in-process bus), foreign Redis channels mapped to
//! destinations, application destinations forwarded over HTTP, heart-beats, probes, metrics
//! and graceful shutdown.
//!
//! This module owns the command line ([`AppArgs`]) and the entry point ([`run`]): wiring,
//! accept loops and the shutdown sequence. It must not bind sockets or install signal handlers
//! (the caller passes bound [`AppListeners`] and a shutdown future).
//!
//! # Layout
//! - [`stomp`]: the frame codec (pure).
//! - [`hub`]: local subscriptions by destination (pure bookkeeping) and user-destination naming.
//! - [`broker`]: the fan-out port ([`broker::Broker`]) with the Redis and in-process adapters.
//! - `channel_map`: `--channel-map` rules, foreign channel <-> destination (pure).
//! - `instance`: shared state of one instance and fan-out (publish through the broker, deliver
//!   what it hands back).
//! - `session`: one STOMP session over a WebSocket or a SockJS session (state machine, acks,
//!   transactions, heart-beats, outbound queue).
//! - `sockjs`: the SockJS protocol under `/ws` (framing, sessions, transports).
//! - `app_forward`: SENDs to `/app/...` POSTed to `--app-url`.
//! - `http`: routes, probes, `/publish`, `/metrics`, demo page, WebSocket handshake.
//! - [`metrics`]: Prometheus metrics.
//!
//! Trust boundary: the `--user-header` (default `X-User-Id`) and CONNECT `login` are trusted
//! as the user's identity. In production something in front (an auth layer, or tether once it
//! verifies tokens) must set the header and strip client-supplied copies.

mod app_forward;
pub mod broker;
mod channel_map;
mod http;
pub(crate) mod hub;
mod instance;
pub(crate) mod metrics;
mod session;
mod sockjs;
pub mod stomp;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::lifecycle::schedule::CloseSchedule;
use broker::Received;
pub use broker::local::LocalBus;
use http::Surface;
use instance::{CloseReason, Instance, Settings};

/// Default outbound queue per session, in MESSAGE frames. Deep enough to absorb a burst to a
/// busy room; a client this far behind is a slow consumer and is closed.
pub(crate) const DEFAULT_OUTBOUND_QUEUE: usize = 1024;
/// Default cap on subscriptions per session, bounding hub memory per connection.
pub(crate) const DEFAULT_MAX_SUBSCRIPTIONS: usize = 256;
/// Default cap on a session's unacknowledged messages (`ack:client[-individual]`): as deep as
/// the outbound queue, after which the client is a slow consumer.
pub(crate) const DEFAULT_MAX_UNACKED: usize = DEFAULT_OUTBOUND_QUEUE;
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
    #[arg(long, value_name = "URL")]
    pub(crate) redis: Option<String>,
    /// Request header carrying the trusted user id (set by the proxy or an auth layer).
    #[arg(long, value_name = "NAME", default_value = "X-User-Id")]
    pub(crate) user_header: String,
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
    /// Outbound queue per session, in frames; a session whose queue overflows is closed.
    #[arg(long, value_name = "FRAMES", default_value_t = DEFAULT_OUTBOUND_QUEUE, hide = true)]
    pub outbound_queue: usize,
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
            user_header: "X-User-Id".into(),
            heartbeat: Duration::from_secs(10),
            shutdown_delay: Duration::from_secs(5),
            drain_spread: Duration::from_secs(5),
            internal_listen: None,
            outbound_queue: DEFAULT_OUTBOUND_QUEUE,
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

/// Which fan-out adapter an instance uses.
#[derive(Clone, Debug)]
pub enum Fanout {
    /// Redis Pub/Sub at this URL.
    Redis(String),
    /// An in-process bus, shared with every instance given a clone of it.
    Local(LocalBus),
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
    /// A queue or frame limit of zero.
    #[error("--outbound-queue, --max-frame-bytes, --max-unacked and --sockjs-stream-limit must be greater than zero")]
    ZeroLimit,
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
}

/// Runs an instance until `shutdown` resolves, then shuts down gracefully (readiness 503,
/// `shutdown_delay`, drain over `drain_spread`) and returns. Fan-out uses `args.redis` when
/// set, else a private in-process bus.
pub async fn run(
    args: AppArgs,
    listeners: AppListeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let fanout = match &args.redis {
        Some(url) => Fanout::Redis(url.clone()),
        None => Fanout::Local(LocalBus::new()),
    };
    run_with_fanout(args, listeners, fanout, shutdown).await
}

/// [`run`] with an explicit fan-out adapter (`args.redis` is ignored): `tether demo` passes
/// one [`LocalBus`] clone to each of its instances.
pub async fn run_with_fanout(
    args: AppArgs,
    listeners: AppListeners,
    fanout: Fanout,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), AppError> {
    let user_header = ::http::HeaderName::from_bytes(args.user_header.as_bytes())
        .map_err(|_| AppError::UserHeader(args.user_header.clone()))?;
    if args.outbound_queue == 0 || args.max_frame_bytes == 0 || args.max_unacked == 0 || args.sockjs_stream_limit == 0 {
        return Err(AppError::ZeroLimit);
    }
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
    let id: Arc<str> =
        args.id.clone().unwrap_or_else(|| gethostname::gethostname().to_string_lossy().into_owned()).into();
    let settings = Settings {
        heartbeat: args.heartbeat,
        outbound_queue: args.outbound_queue,
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
    };
    let broker_kind = match fanout {
        Fanout::Redis(_) => metrics::BrokerKind::Redis,
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
        Fanout::Redis(url) => {
            Box::new(broker::redis::RedisBroker::start(&url, timeouts, inbound, metrics, &tasks, broker_stop.clone())?)
        }
        Fanout::Local(bus) => Box::new(bus.attach(inbound)),
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
            crate::accept::run(listener, surface.name(), stop, conns, move |stream, _peer| {
                let _ = stream.set_nodelay(true);
                Some(http::serve_connection(inst.clone(), stream, surface, sessions.clone(), stop_http.clone()))
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
