//! Access log records: one per request and one per finished tunnel, emitted through `tracing`
//! under the target `tether::access` so the process's log format (JSON or text) applies.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

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
    pub(crate) fn new(config: &AccessLogConfig) -> Self {
        Self { enabled: config.format != AccessLogFormat::Off, redact_query: config.redact_query.clone() }
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
            path = %redact_query(r.path_and_query, &self.redact_query),
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
            path = %redact_query(r.path_and_query, &self.redact_query),
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

/// Replace the values of the named query parameters with `REDACTED`, leaving everything else
/// byte for byte as the client sent it. Parameter names are compared after percent-decoding,
/// so `acc%65ss_token` cannot slip a token past the filter.
pub(crate) fn redact_query<'a>(path_and_query: &'a str, names: &[String]) -> Cow<'a, str> {
    let Some((path, query)) = path_and_query.split_once('?') else {
        return Cow::Borrowed(path_and_query);
    };
    if names.is_empty() || query.is_empty() {
        return Cow::Borrowed(path_and_query);
    }
    let mut changed = false;
    let parts: Vec<Cow<'_, str>> = query
        .split('&')
        .map(|pair| {
            let (raw_name, has_value) = match pair.split_once('=') {
                Some((n, _)) => (n, true),
                None => (pair, false),
            };
            let name: String = form_urlencoded::parse(raw_name.as_bytes()).map(|(k, _)| k.into_owned()).collect();
            if has_value && names.iter().any(|n| n == &name) {
                changed = true;
                Cow::Owned(format!("{raw_name}=REDACTED"))
            } else {
                Cow::Borrowed(pair)
            }
        })
        .collect();
    if !changed {
        return Cow::Borrowed(path_and_query);
    }
    Cow::Owned(format!("{path}?{}", parts.join("&")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["access_token".into(), "token".into()]
    }

    #[test]
    fn named_parameters_are_redacted_and_others_kept_verbatim() {
        assert_eq!(
            redact_query("/ws?room=a%20b&access_token=s3cr3t&x", &names()),
            "/ws?room=a%20b&access_token=REDACTED&x"
        );
        assert_eq!(redact_query("/ws?token=1&token=2", &names()), "/ws?token=REDACTED&token=REDACTED");
    }

    #[test]
    fn encoded_parameter_names_are_caught() {
        assert_eq!(redact_query("/?acc%65ss_token=abc", &names()), "/?acc%65ss_token=REDACTED");
    }

    #[test]
    fn paths_without_sensitive_parameters_are_untouched() {
        assert!(matches!(redact_query("/a?tokenized=1", &names()), Cow::Borrowed(_)));
        assert!(matches!(redact_query("/a", &names()), Cow::Borrowed(_)));
        assert!(matches!(redact_query("/a?", &names()), Cow::Borrowed(_)));
    }
}
