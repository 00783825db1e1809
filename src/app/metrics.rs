//! Prometheus metrics of one backend instance (`GET /metrics`, text exposition format).
//!
//! Owns metric definitions and encoding. It holds counters only; it must not decide anything or
//! be read back by the data path.

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Where a published message came from.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Source {
    /// A STOMP SEND on this instance.
    Stomp,
    /// `POST /publish` on this instance.
    Http,
    /// Another instance, through the broker.
    Broker,
    /// A foreign Redis channel (`--channel-map`).
    Channel,
    /// The application's answer to a SEND to `/app/...` (`--app-url`).
    App,
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Source::Stomp => "stomp",
            Source::Http => "http",
            Source::Broker => "broker",
            Source::Channel => "channel",
            Source::App => "app",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SourceLabels {
    pub(crate) source: Source,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabels {
    pub(crate) reason: &'static str,
}

/// Every metric of an instance.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    pub(crate) sessions: Gauge,
    pub(crate) subscriptions: Gauge,
    pub(crate) destinations: Gauge,
    pub(crate) messages_in: Family<SourceLabels, Counter>,
    pub(crate) messages_out: Counter,
    pub(crate) fanout_latency: Histogram,
    pub(crate) slow_consumer_disconnects: Counter,
    pub(crate) heartbeat_timeouts: Counter,
    pub(crate) protocol_errors: Counter,
    pub(crate) publish_failures: Family<SourceLabels, Counter>,
    pub(crate) acks: Counter,
    pub(crate) nacks: Counter,
    pub(crate) app_forward_failures: Counter,
    pub(crate) untrusted_identity_headers: Counter,
    pub(crate) token_rejections: Family<ReasonLabels, Counter>,
    pub(crate) publish_rate_limited: Counter,
    pub(crate) redis_up: Gauge,
    pub(crate) redis_reconnects: Counter,
}

/// Which fan-out an instance uses, as far as its metrics care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BrokerKind {
    Redis,
    InProcess,
}

impl Metrics {
    /// Redis metrics exist only with Redis; an in-process bus has no Redis to report on.
    pub(crate) fn new(broker: BrokerKind) -> Metrics {
        let with_redis = broker == BrokerKind::Redis;
        let mut registry = Registry::with_prefix("tether_backend");
        let m = Metrics {
            sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            destinations: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Counter::default(),
            // 0.25 ms .. ~4 s, fine-grained around a 50 ms end-to-end budget.
            fanout_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            slow_consumer_disconnects: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            protocol_errors: Counter::default(),
            publish_failures: Family::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            app_forward_failures: Counter::default(),
            untrusted_identity_headers: Counter::default(),
            token_rejections: Family::default(),
            publish_rate_limited: Counter::default(),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "Open STOMP WebSocket sessions", m.sessions.clone());
        registry.register("subscriptions", "Active STOMP subscriptions", m.subscriptions.clone());
        registry.register("destinations", "Destinations with at least one local subscriber", m.destinations.clone());
        registry.register("messages_in", "Messages accepted for fan-out, by source", m.messages_in.clone());
        registry.register("messages_out", "MESSAGE frames queued to local subscribers", m.messages_out.clone());
        registry.register(
            "fanout_latency_seconds",
            "Time from publish to queueing at the local subscribers",
            m.fanout_latency.clone(),
        );
        registry.register(
            "slow_consumer_disconnects",
            "Sessions closed because their outbound queue was full",
            m.slow_consumer_disconnects.clone(),
        );
        registry.register(
            "heartbeat_timeouts",
            "Sessions closed for missing heart-beats",
            m.heartbeat_timeouts.clone(),
        );
        registry.register("protocol_errors", "Sessions closed with a STOMP ERROR", m.protocol_errors.clone());
        registry.register(
            "publish_failures",
            "Messages the broker did not accept (delivered nowhere; the publisher got an error), by source",
            m.publish_failures.clone(),
        );
        registry.register("acks", "ACK frames that acknowledged messages", m.acks.clone());
        registry.register("nacks", "NACK frames (accepted; the broker does not redeliver)", m.nacks.clone());
        registry.register(
            "app_forward_failures",
            "SENDs to /app destinations the application did not answer with 2xx",
            m.app_forward_failures.clone(),
        );
        registry.register(
            "untrusted_identity_headers",
            "Identity headers ignored because the request came from outside --trust-proxy",
            m.untrusted_identity_headers.clone(),
        );
        registry.register(
            "token_rejections",
            "CONNECT frames refused for their token (ERROR, then close), by reason",
            m.token_rejections.clone(),
        );
        registry.register(
            "publish_rate_limited",
            "Sessions closed with an ERROR for publishing faster than --max-publish-rate",
            m.publish_rate_limited.clone(),
        );
        if with_redis {
            registry.register("redis_up", "1 while the Redis connections are established", m.redis_up.clone());
            registry.register(
                "redis_reconnects",
                "Successful Redis reconnections after an outage",
                m.redis_reconnects.clone(),
            );
        }
        Metrics { registry, ..m }
    }

    pub(crate) fn count_in(&self, source: Source) {
        self.messages_in.get_or_create(&SourceLabels { source }).inc();
    }

    pub(crate) fn count_publish_failure(&self, source: Source) {
        self.publish_failures.get_or_create(&SourceLabels { source }).inc();
    }

    pub(crate) fn count_token_rejection(&self, reason: &'static str) {
        self.token_rejections.get_or_create(&ReasonLabels { reason }).inc();
    }

    /// The text exposition.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String never fails.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_metrics_exist_only_with_redis() {
        let with = Metrics::new(BrokerKind::Redis);
        with.redis_up.set(1);
        with.count_in(Source::Http);
        let text = with.encode();
        assert!(text.contains("tether_backend_redis_up 1"), "{text}");
        assert!(text.contains("tether_backend_messages_in_total{source=\"http\"} 1"), "{text}");
        assert!(!Metrics::new(BrokerKind::InProcess).encode().contains("redis_up"));
    }
}
