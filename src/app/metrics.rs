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
pub enum Source {
    /// A STOMP SEND on this instance.
    Stomp,
    /// `POST /publish` on this instance.
    Http,
    /// Another instance, through the broker.
    Broker,
}

impl EncodeLabelValue for Source {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Source::Stomp => "stomp",
            Source::Http => "http",
            Source::Broker => "broker",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: Source,
}

/// Every metric of an instance.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub sessions: Gauge,
    pub subscriptions: Gauge,
    pub destinations: Gauge,
    pub messages_in: Family<SourceLabels, Counter>,
    pub messages_out: Counter,
    pub fanout_latency: Histogram,
    pub slow_consumer_disconnects: Counter,
    pub heartbeat_timeouts: Counter,
    pub protocol_errors: Counter,
    pub broker_publish_failures: Counter,
    pub redis_up: Gauge,
    pub redis_reconnects: Counter,
}

impl Metrics {
    /// `with_redis` registers the Redis metrics; an in-process bus has no Redis to report on.
    pub fn new(with_redis: bool) -> Metrics {
        let mut registry = Registry::with_prefix("tether_backend");
        let m = Metrics {
            sessions: Gauge::default(),
            subscriptions: Gauge::default(),
            destinations: Gauge::default(),
            messages_in: Family::default(),
            messages_out: Counter::default(),
            // 0.25 ms .. ~4 s: the seeds' budget is < 50 ms end to end.
            fanout_latency: Histogram::new(exponential_buckets(0.000_25, 2.0, 15)),
            slow_consumer_disconnects: Counter::default(),
            heartbeat_timeouts: Counter::default(),
            protocol_errors: Counter::default(),
            broker_publish_failures: Counter::default(),
            redis_up: Gauge::default(),
            redis_reconnects: Counter::default(),
            registry: Registry::default(),
        };
        registry.register("sessions", "Open STOMP WebSocket sessions", m.sessions.clone());
        registry.register("subscriptions", "Active STOMP subscriptions", m.subscriptions.clone());
        registry.register("destinations", "Destinations with at least one local subscriber", m.destinations.clone());
        registry.register("messages_in", "Messages published, by source", m.messages_in.clone());
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
            "broker_publish_failures",
            "Messages the broker did not accept (delivered locally only)",
            m.broker_publish_failures.clone(),
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

    pub fn count_in(&self, source: Source) {
        self.messages_in.get_or_create(&SourceLabels { source }).inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
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
        let with = Metrics::new(true);
        with.redis_up.set(1);
        with.count_in(Source::Http);
        let text = with.encode();
        assert!(text.contains("tether_backend_redis_up 1"), "{text}");
        assert!(text.contains("tether_backend_messages_in_total{source=\"http\"} 1"), "{text}");
        assert!(!Metrics::new(false).encode().contains("redis_up"));
    }
}
