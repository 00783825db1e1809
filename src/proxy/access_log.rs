//! Access log records: one per request and one per finished tunnel, emitted through `tracing`
//! under the target `tether::access` so the process's log format (JSON or text) applies.

use std::net::SocketAddr;
use std::time::Duration;

use super::query::redact;
use crate::config::{AccessLogConfig, AccessLogFormat};

/// Target of access log events; `access_log.format: off` filters it out.
pub(crate) const TARGET: &str = "tether::access";

#[derive(Debug, Clone)]
pub(crate) struct AccessLog {
    enabled: bool,
    redact_query: Vec<String>,
}

/// One finished HTTP exchange.
pub(crate) struct RequestRecord<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) listener: &'a str,
    pub(crate) method: &'a str,
    pub(crate) host: Option<&'a str>,
    pub(crate) path_and_query: &'a str,
    pub(crate) status: u16,
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) duration: Duration,
    pub(crate) upstream: Option<&'a str>,
    pub(crate) backend: Option<&'a str>,
    /// False when the response body was cut short.
    pub(crate) complete: bool,
}

/// One finished WebSocket tunnel.
pub(crate) struct TunnelRecord<'a> {
    pub(crate) client: SocketAddr,
    pub(crate) listener: &'a str,
    pub(crate) host: Option<&'a str>,
    pub(crate) path_and_query: &'a str,
    pub(crate) upstream: &'a str,
    pub(crate) backend: &'a str,
    /// Client -> backend.
    pub(crate) bytes_in: u64,
    /// Backend -> client.
    pub(crate) bytes_out: u64,
    pub(crate) lifetime: Duration,
    /// Why it ended: `client_closed`, `backend_closed`, `idle_timeout`, `drained`, `error`...
    pub(crate) end: &'a str,
}

impl AccessLog {
    /// `extra_redact`: more query parameters whose values never reach a log line (the ones
    /// verifiers read tokens from).
    pub(crate) fn new<'a>(config: &AccessLogConfig, extra_redact: impl Iterator<Item = &'a str>) -> Self {
        let mut redact_query = config.redact_query.clone();
        for name in extra_redact {
            if !redact_query.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                redact_query.push(name.to_owned());
            }
        }
        Self { enabled: config.format != AccessLogFormat::Off, redact_query }
    }

    pub(crate) fn request(&self, r: &RequestRecord<'_>) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: TARGET,
            kind = "request",
            client = %r.client,
            listener = r.listener,
            method = r.method,
            host = r.host.unwrap_or(""),
            path = %redact(r.path_and_query, &self.redact_query),
            status = r.status,
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            duration_ms = millis(r.duration),
            upstream = r.upstream.unwrap_or(""),
            backend = r.backend.unwrap_or(""),
            complete = r.complete,
        );
    }

    pub(crate) fn tunnel(&self, r: &TunnelRecord<'_>) {
        if !self.enabled {
            return;
        }
        tracing::info!(
            target: TARGET,
            kind = "tunnel",
            client = %r.client,
            listener = r.listener,
            host = r.host.unwrap_or(""),
            path = %redact(r.path_and_query, &self.redact_query),
            upstream = r.upstream,
            backend = r.backend,
            bytes_in = r.bytes_in,
            bytes_out = r.bytes_out,
            lifetime_ms = millis(r.lifetime),
            end = r.end,
        );
    }
}

fn millis(d: Duration) -> f64 {
    (d.as_micros() as f64) / 1000.0
}
