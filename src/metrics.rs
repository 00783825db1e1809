//! Prometheus metrics of the proxy (prometheus-client, text exposition format).
//!
//! Owns: the registry and every metric family. Hot paths never look a family up: each backend
//! keeps its own handles ([`BackendMetrics`]), created once when the backend is created.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct BackendLabels {
    pub(crate) upstream: Arc<str>,
    pub(crate) backend: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    pub(crate) upstream: Arc<str>,
    pub(crate) backend: Arc<str>,
    /// `1xx` .. `5xx`.
    pub(crate) class: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    pub(crate) upstream: Arc<str>,
    pub(crate) backend: Arc<str>,
    /// `in` (client to backend) or `out` (backend to client).
    pub(crate) direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabels {
    pub(crate) upstream: Arc<str>,
    pub(crate) backend: Arc<str>,
    pub(crate) state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) upstream: Arc<str>,
    /// `key`, `cookie`, `fallback`, `repin`, `bounded_load_skip`, `panic`.
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CloseLabels {
    pub(crate) upstream: Arc<str>,
    pub(crate) code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    /// `ok` or `error`.
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct AuthLabels {
    pub(crate) verifier: Arc<str>,
    /// `missing`, `invalid`, `expired`...
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TimeoutLabels {
    /// `send`, `body_read`, `header_read`.
    pub(crate) kind: &'static str,
}

/// Which timeout ended a connection or request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimeoutKind {
    /// A peer stopped taking what tether writes to it.
    Send,
    /// A client stopped sending its request body.
    BodyRead,
    /// A request head did not complete.
    HeaderRead,
}

impl TimeoutKind {
    fn label(self) -> &'static str {
        match self {
            TimeoutKind::Send => "send",
            TimeoutKind::BodyRead => "body_read",
            TimeoutKind::HeaderRead => "header_read",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabels {
    pub(crate) listener: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectedLabels {
    pub(crate) listener: Arc<str>,
    /// The answer: `400` (malformed) or `404` (no route).
    pub(crate) status: u16,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Request latency buckets, seconds: 1 ms .. 60 s.
const LATENCY_BUCKETS: [f64; 14] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 60.0];
/// Tunnel lifetime buckets, seconds: 1 s .. 1 day.
const LIFETIME_BUCKETS: [f64; 10] =
    [1.0, 10.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 4.0 * 3600.0, 12.0 * 3600.0, 86400.0];

/// Reads how many log lines were dropped so far (the log writer counts them when its sink
/// cannot keep up).
pub type LogDrops = Arc<dyn Fn() -> u64 + Send + Sync>;

/// `tether_log_lines_dropped_total`, read from the log writer at each scrape.
struct LogDropsCollector(Option<LogDrops>);

impl std::fmt::Debug for LogDropsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LogDropsCollector")
    }
}

impl prometheus_client::collector::Collector for LogDropsCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric as _;
        let counter = prometheus_client::metrics::counter::ConstCounter::new(self.0.as_ref().map_or(0, |read| read()));
        let metric = encoder.encode_descriptor(
            "log_lines_dropped",
            "Log lines dropped because the log sink could not keep up (the proxy never waits for it)",
            None,
            counter.metric_type(),
        )?;
        counter.encode(metric)
    }
}

/// Every metric tether exports.
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) request_duration: Family<UpstreamLabels, Histogram>,
    pub(crate) tunnels_open: Family<BackendLabels, Gauge>,
    pub(crate) tunnels_total: Family<BackendLabels, Counter>,
    pub(crate) tunnel_lifetime: Family<BackendLabels, Histogram>,
    pub(crate) bytes: Family<DirectionLabels, Counter>,
    pub(crate) affinity: Family<ReasonLabels, Counter>,
    pub(crate) backend_state: Family<StateLabels, Gauge>,
    pub(crate) state_changes: Family<StateLabels, Counter>,
    pub(crate) connect_failures: Family<BackendLabels, Counter>,
    pub(crate) drains_started: Family<BackendLabels, Counter>,
    pub(crate) drains_finished: Family<BackendLabels, Counter>,
    pub(crate) closes_sent: Family<CloseLabels, Counter>,
    pub(crate) rebalance_closes: Family<UpstreamLabels, Counter>,
    pub(crate) reloads: Family<ResultLabels, Counter>,
    pub(crate) config_generation: Gauge,
    pub(crate) connections_open: Family<ListenerLabels, Gauge>,
    pub(crate) connections_refused: Family<ListenerLabels, Counter>,
    pub(crate) rejected: Family<RejectedLabels, Counter>,
    pub(crate) auth_rejected: Family<AuthLabels, Counter>,
    pub(crate) timeouts: Family<TimeoutLabels, Counter>,
    pub(crate) in_flight_refused: Family<ListenerLabels, Counter>,
}

impl Metrics {
    /// Every family, registered; `log_drops` reads the log writer's drop count.
    pub(crate) fn new(log_drops: Option<LogDrops>) -> Self {
        let mut registry = Registry::with_prefix("tether");
        registry.register_collector(Box::new(LogDropsCollector(log_drops)));
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "HTTP requests answered, by backend and status class", requests.clone());
        let request_duration =
            Family::<UpstreamLabels, Histogram>::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS));
        registry.register(
            "request_duration_seconds",
            "Time from request head to the end of the response body",
            request_duration.clone(),
        );
        let tunnels_open = Family::<BackendLabels, Gauge>::default();
        registry.register("tunnels_open", "WebSocket tunnels currently open", tunnels_open.clone());
        let tunnels_total = Family::<BackendLabels, Counter>::default();
        registry.register("tunnels", "WebSocket tunnels opened", tunnels_total.clone());
        let tunnel_lifetime =
            Family::<BackendLabels, Histogram>::new_with_constructor(|| Histogram::new(LIFETIME_BUCKETS));
        registry.register("tunnel_lifetime_seconds", "Lifetime of finished WebSocket tunnels", tunnel_lifetime.clone());
        let bytes = Family::<DirectionLabels, Counter>::default();
        registry.register("bytes", "Bytes relayed (bodies and tunnel traffic), in = client to backend", bytes.clone());
        let affinity = Family::<ReasonLabels, Counter>::default();
        registry.register("affinity_decisions", "Routing decisions by reason", affinity.clone());
        let backend_state = Family::<StateLabels, Gauge>::default();
        registry.register("backend_state", "1 for the backend's current state", backend_state.clone());
        let state_changes = Family::<StateLabels, Counter>::default();
        registry.register(
            "backend_state_changes",
            "Backend state changes, by the state entered",
            state_changes.clone(),
        );
        let connect_failures = Family::<BackendLabels, Counter>::default();
        registry.register("backend_connect_failures", "Failed connections to backends", connect_failures.clone());
        let drains_started = Family::<BackendLabels, Counter>::default();
        registry.register("drains_started", "Backend drains started", drains_started.clone());
        let drains_finished = Family::<BackendLabels, Counter>::default();
        registry.register(
            "drains_finished",
            "Backend drains finished with nothing left on the backend",
            drains_finished.clone(),
        );
        let closes_sent = Family::<CloseLabels, Counter>::default();
        registry.register("closes_sent", "WebSocket Close frames sent by tether, by close code", closes_sent.clone());
        let rebalance_closes = Family::<UpstreamLabels, Counter>::default();
        registry.register(
            "rebalance_closes",
            "Tunnels closed to move them to their new backend",
            rebalance_closes.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register("reloads", "Configuration reloads", reloads.clone());
        // Both outcomes exist from the start, so `rate(..{result="error"})` has a series to
        // watch before the first reload.
        for result in ["ok", "error"] {
            let _ = reloads.get_or_create(&ResultLabels { result });
        }
        let config_generation = Gauge::default();
        registry.register(
            "config_generation",
            "Generation of the running configuration (1 at start)",
            config_generation.clone(),
        );
        let connections_open = Family::<ListenerLabels, Gauge>::default();
        registry.register("connections_open", "Client connections currently open", connections_open.clone());
        let connections_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "connections_refused",
            "Client connections refused over limits.max_connections",
            connections_refused.clone(),
        );
        let rejected = Family::<RejectedLabels, Counter>::default();
        registry.register(
            "rejected_requests",
            "Requests answered by tether itself before any upstream: malformed (400) or unrouted (404)",
            rejected.clone(),
        );
        let auth_rejected = Family::<AuthLabels, Counter>::default();
        registry.register(
            "auth_rejected",
            "Requests refused by a route's token verifier (401), by verifier and reason",
            auth_rejected.clone(),
        );
        let timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "timeouts",
            "Connections and requests ended by a timeout: send (a peer stopped reading), body_read, header_read",
            timeouts.clone(),
        );
        for kind in [TimeoutKind::Send, TimeoutKind::BodyRead, TimeoutKind::HeaderRead] {
            let _ = timeouts.get_or_create(&TimeoutLabels { kind: kind.label() });
        }
        let in_flight_refused = Family::<ListenerLabels, Counter>::default();
        registry.register(
            "in_flight_refused",
            "Requests refused over limits.max_in_flight: 503 on HTTP/1.1, REFUSED_STREAM on HTTP/2",
            in_flight_refused.clone(),
        );
        Self {
            in_flight_refused,
            timeouts,
            auth_rejected,
            registry,
            requests,
            request_duration,
            tunnels_open,
            tunnels_total,
            tunnel_lifetime,
            bytes,
            affinity,
            backend_state,
            state_changes,
            connect_failures,
            drains_started,
            drains_finished,
            closes_sent,
            rebalance_closes,
            reloads,
            config_generation,
            connections_open,
            connections_refused,
            rejected,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub(crate) fn backend(&self, upstream: &Arc<str>, backend: &Arc<str>) -> BackendMetrics {
        let labels = BackendLabels { upstream: upstream.clone(), backend: backend.clone() };
        let class = |class| {
            self.requests.get_or_create_owned(&RequestLabels {
                upstream: upstream.clone(),
                backend: backend.clone(),
                class,
            })
        };
        let dir = |direction| {
            self.bytes.get_or_create_owned(&DirectionLabels {
                upstream: upstream.clone(),
                backend: backend.clone(),
                direction,
            })
        };
        BackendMetrics {
            requests: STATUS_CLASSES.map(class),
            bytes_in: dir("in"),
            bytes_out: dir("out"),
            tunnels_open: self.tunnels_open.get_or_create_owned(&labels),
            tunnels_total: self.tunnels_total.get_or_create_owned(&labels),
            tunnel_lifetime: self.tunnel_lifetime.get_or_create_owned(&labels),
            connect_failures: self.connect_failures.get_or_create_owned(&labels),
            drains_started: self.drains_started.get_or_create_owned(&labels),
            drains_finished: self.drains_finished.get_or_create_owned(&labels),
        }
    }

    /// Record a state change of a backend: the old state's gauge drops to 0, the new one's
    /// rises to 1, and the change is counted.
    pub(crate) fn state_change(
        &self,
        upstream: &Arc<str>,
        backend: &Arc<str>,
        from: Option<&'static str>,
        to: &'static str,
    ) {
        let labels = |state| StateLabels { upstream: upstream.clone(), backend: backend.clone(), state };
        if let Some(from) = from {
            self.backend_state.get_or_create(&labels(from)).set(0);
        }
        self.backend_state.get_or_create(&labels(to)).set(1);
        self.state_changes.get_or_create(&labels(to)).inc();
    }

    /// Create the per-upstream series at 0 (every affinity reason, rebalance closes, closes
    /// with the configured drain code), so dashboards and alerts see them before the first
    /// event rather than "no data".
    /// Returns the upstream's affinity counters, so requests need no family lookup.
    pub(crate) fn upstream_series(&self, upstream: &Arc<str>, close_code: u16) -> AffinityCounters {
        let reason = |reason| self.affinity.get_or_create_owned(&ReasonLabels { upstream: upstream.clone(), reason });
        let counters = AffinityCounters {
            key: reason("key"),
            cookie: reason("cookie"),
            fallback: reason("fallback"),
            repin: reason("repin"),
            bounded_load_skip: reason("bounded_load_skip"),
            panic: reason("panic"),
        };
        let _ = self.rebalance_closes.get_or_create(&UpstreamLabels { upstream: upstream.clone() });
        let _ = self.closes_sent.get_or_create(&CloseLabels { upstream: upstream.clone(), code: close_code });
        counters
    }

    /// A request routed to `upstream` that no backend answered (no backend available): counted
    /// under `backend="none"`, so an outage shows in the error rate instead of silence.
    pub(crate) fn request_without_backend(&self, upstream: &Arc<str>, status: u16) {
        let class = STATUS_CLASSES[usize::from(status / 100).clamp(1, 5) - 1];
        self.requests.get_or_create(&RequestLabels { upstream: upstream.clone(), backend: "none".into(), class }).inc();
    }

    /// A request answered before reaching any upstream (400, 404).
    pub(crate) fn rejected(&self, listener: &Arc<str>, status: u16) {
        self.rejected.get_or_create(&RejectedLabels { listener: listener.clone(), status }).inc();
    }

    /// A connection or request ended by the `kind` timeout.
    pub(crate) fn timeout(&self, kind: TimeoutKind) {
        self.timeouts.get_or_create(&TimeoutLabels { kind: kind.label() }).inc();
    }

    /// A request refused by `verifier`; `reason` is a metric label (`expired`, `signature`...).
    pub(crate) fn auth_rejected(&self, verifier: &str, reason: &'static str) {
        self.auth_rejected.get_or_create(&AuthLabels { verifier: verifier.into(), reason }).inc();
    }

    pub(crate) fn close_sent(&self, upstream: &Arc<str>, code: u16) {
        self.closes_sent.get_or_create(&CloseLabels { upstream: upstream.clone(), code }).inc();
    }
}

/// `tether_affinity_decisions_total` of one upstream, by reason.
#[derive(Clone, Debug)]
pub(crate) struct AffinityCounters {
    pub(crate) key: Counter,
    pub(crate) cookie: Counter,
    pub(crate) fallback: Counter,
    pub(crate) repin: Counter,
    pub(crate) bounded_load_skip: Counter,
    pub(crate) panic: Counter,
}

/// Handles for one backend's metrics.
#[derive(Clone, Debug)]
pub(crate) struct BackendMetrics {
    requests: [Counter; 5],
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    pub(crate) tunnels_open: Gauge,
    pub(crate) tunnels_total: Counter,
    pub(crate) tunnel_lifetime: Histogram,
    pub(crate) connect_failures: Counter,
    pub(crate) drains_started: Counter,
    pub(crate) drains_finished: Counter,
}

impl BackendMetrics {
    pub(crate) fn request(&self, status: u16) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.requests[class].inc();
    }

    pub(crate) fn requests_total(&self) -> u64 {
        self.requests.iter().map(Counter::get).sum()
    }

    /// Answers with status 5xx.
    pub(crate) fn errors_total(&self) -> u64 {
        self.requests[4].get()
    }
}
