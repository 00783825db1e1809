//! Access log records: one per request and one per finished tunnel, under the target
//! `tether::access`. In JSON, with the process's log writer at hand, a record is written
//! straight into it as one line (the same line `tracing`'s JSON formatter would write, at a
//! fraction of the cost: users run with their access log on); otherwise it goes through
//! `tracing`, so the process's log format applies.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::query::redact;
use crate::config::{AccessLogConfig, AccessLogFormat};
use crate::log_writer::LogWriter;

/// Target of access log events; `access_log.format: off` filters it out.
pub(crate) const TARGET: &str = "tether::access";

#[derive(Clone)]
pub(crate) struct AccessLog {
    enabled: bool,
    redact_query: Vec<String>,
    /// JSON lines are written here directly.
    json: Option<LogWriter>,
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
    /// `writer`: the process's log writer, which JSON records are written to directly.
    pub(crate) fn new<'a>(
        config: &AccessLogConfig,
        extra_redact: impl Iterator<Item = &'a str>,
        writer: Option<&LogWriter>,
    ) -> Self {
        let mut redact_query = config.redact_query.clone();
        for name in extra_redact {
            if !redact_query.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                redact_query.push(name.to_owned());
            }
        }
        let json = writer.filter(|_| config.format == AccessLogFormat::Json).cloned();
        Self { enabled: config.format != AccessLogFormat::Off, redact_query, json }
    }

    pub(crate) fn request(&self, r: &RequestRecord<'_>) {
        if !self.enabled {
            return;
        }
        // `RUST_LOG` may still turn the access log's target off.
        if let Some(writer) = self.json.as_ref().filter(|_| tracing::enabled!(target: TARGET, tracing::Level::INFO)) {
            let path = redact(r.path_and_query, &self.redact_query);
            return write_line(writer, |line| {
                line.str_field("kind", "request");
                line.addr_field("client", r.client);
                line.str_field("listener", r.listener);
                line.str_field("method", r.method);
                line.str_field("host", r.host.unwrap_or(""));
                line.str_field("path", &path);
                line.int_field("status", r.status.into());
                line.int_field("bytes_in", r.bytes_in);
                line.int_field("bytes_out", r.bytes_out);
                line.float_field("duration_ms", millis(r.duration));
                line.str_field("upstream", r.upstream.unwrap_or(""));
                line.str_field("backend", r.backend.unwrap_or(""));
                line.bool_field("complete", r.complete);
            });
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
        // `RUST_LOG` may still turn the access log's target off.
        if let Some(writer) = self.json.as_ref().filter(|_| tracing::enabled!(target: TARGET, tracing::Level::INFO)) {
            let path = redact(r.path_and_query, &self.redact_query);
            return write_line(writer, |line| {
                line.str_field("kind", "tunnel");
                line.addr_field("client", r.client);
                line.str_field("listener", r.listener);
                line.str_field("host", r.host.unwrap_or(""));
                line.str_field("path", &path);
                line.str_field("upstream", r.upstream);
                line.str_field("backend", r.backend);
                line.int_field("bytes_in", r.bytes_in);
                line.int_field("bytes_out", r.bytes_out);
                line.float_field("lifetime_ms", millis(r.lifetime));
                line.str_field("end", r.end);
            });
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

thread_local! {
    /// Each worker thread's line buffer and the timestamp text of the second it last wrote.
    static LINE: RefCell<(Line, u64, String)> = RefCell::new((Line(Vec::with_capacity(512)), u64::MAX, String::new()));
}

/// One JSON line: `{"timestamp":…,"level":"INFO",` + the fields + `"target":"tether::access"}`,
/// in the order and format of `tracing-subscriber`'s flattened JSON events.
struct Line(Vec<u8>);

impl Line {
    fn key(&mut self, key: &str) {
        self.0.push(b'"');
        self.0.extend_from_slice(key.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    fn str_field(&mut self, key: &str, value: &str) {
        self.key(key);
        // Writing JSON into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, value);
        self.0.push(b',');
    }

    fn int_field(&mut self, key: &str, value: u64) {
        self.key(key);
        self.0.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
        self.0.push(b',');
    }

    fn float_field(&mut self, key: &str, value: f64) {
        self.key(key);
        let _ = serde_json::to_writer(&mut self.0, &value);
        self.0.push(b',');
    }

    fn bool_field(&mut self, key: &str, value: bool) {
        self.key(key);
        self.0.extend_from_slice(if value { b"true," } else { b"false," });
    }

    /// A socket address as `Display` writes it, without `fmt` for IPv4 (the common case).
    fn addr_field(&mut self, key: &str, addr: SocketAddr) {
        self.key(key);
        self.0.push(b'"');
        match addr.ip() {
            IpAddr::V4(v4) => {
                let mut digits = itoa::Buffer::new();
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.0.push(b'.');
                    }
                    self.0.extend_from_slice(digits.format(octet).as_bytes());
                }
                self.0.push(b':');
                self.0.extend_from_slice(digits.format(addr.port()).as_bytes());
            }
            IpAddr::V6(_) => {
                use std::io::Write as _;
                let _ = write!(self.0, "{addr}");
            }
        }
        self.0.extend_from_slice(b"\",");
    }
}

/// Build one record's line with `fields` and hand it to `writer`.
fn write_line(writer: &LogWriter, fields: impl FnOnce(&mut Line)) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    LINE.with_borrow_mut(|(line, second, stamp)| {
        if *second != now.as_secs() {
            *second = now.as_secs();
            *stamp = timestamp_second(now.as_secs());
        }
        line.0.clear();
        line.0.extend_from_slice(b"{\"timestamp\":\"");
        line.0.extend_from_slice(stamp.as_bytes());
        let mut micros = [b'0'; 6];
        let mut rest = now.subsec_micros();
        for digit in micros.iter_mut().rev() {
            *digit = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        line.0.extend_from_slice(&micros);
        line.0.extend_from_slice(b"Z\",\"level\":\"INFO\",");
        fields(line);
        line.0.extend_from_slice(b"\"target\":\"tether::access\"}\n");
        writer.push(&line.0);
    });
}

/// `YYYY-MM-DDTHH:MM:SS.` (UTC) of a Unix second: what stays the same for a second's lines.
fn timestamp_second(unix: u64) -> String {
    let (days, secs) = (unix / 86_400, unix % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.", secs / 3600, secs / 60 % 60, secs % 60)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Captured {
        /// The captured lines without their timestamps (which differ between two writes).
        fn lines(&self) -> Vec<String> {
            let text = String::from_utf8(self.0.lock().clone()).expect("UTF-8");
            text.lines()
                .map(|l| {
                    let (stamp, rest) = l.split_once(",\"level\"").expect("a level after the timestamp");
                    assert!(stamp.starts_with("{\"timestamp\":\"") && stamp.ends_with("Z\""), "{stamp}");
                    rest.to_owned()
                })
                .collect()
        }
    }

    fn config() -> AccessLogConfig {
        AccessLogConfig { format: AccessLogFormat::Json, redact_query: vec!["token".into()] }
    }

    fn log_both(log: &AccessLog) {
        log.request(&RequestRecord {
            client: "10.1.2.3:4567".parse().expect("addr"),
            listener: "public",
            method: "GET",
            host: Some("app.test"),
            path_and_query: "/a\"b\\c?Token=secret&x=1",
            status: 404,
            bytes_in: 12,
            bytes_out: 3_456,
            duration: Duration::from_micros(95_912),
            upstream: Some("app"),
            backend: None,
            complete: false,
        });
        log.tunnel(&TunnelRecord {
            client: "[2001:db8::1]:443".parse().expect("addr"),
            listener: "tls",
            host: None,
            path_and_query: "/ws",
            upstream: "app",
            backend: "app-1",
            bytes_in: 0,
            bytes_out: u64::MAX,
            lifetime: Duration::from_millis(1_500),
            end: "client_closed",
        });
    }

    #[test]
    fn a_line_written_directly_is_the_line_tracing_writes() {
        let through_tracing = Captured::default();
        let sink = through_tracing.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(move || sink.clone())
            .finish();
        let traced = AccessLog::new(&config(), std::iter::empty(), None);
        tracing::subscriber::with_default(subscriber, || log_both(&traced));

        let direct = Captured::default();
        let (writer, guard) = LogWriter::start(direct.clone(), 100, "access-log-test").expect("writer");
        let unused = Captured::default();
        let subscriber = tracing_subscriber::fmt().with_writer(move || unused.clone()).finish();
        let log = AccessLog::new(&config(), std::iter::empty(), Some(&writer));
        tracing::subscriber::with_default(subscriber, || log_both(&log));
        drop(guard);

        let expected = through_tracing.lines();
        assert_eq!(expected.len(), 2, "{expected:?}");
        assert_eq!(direct.lines(), expected);
        assert!(expected[0].contains("\"path\":\"/a\\\"b\\\\c?Token=REDACTED&x=1\""), "{}", expected[0]);
    }

    #[test]
    fn a_log_filter_that_turns_the_access_target_off_is_obeyed() {
        let direct = Captured::default();
        let (writer, guard) = LogWriter::start(direct.clone(), 100, "access-log-test").expect("writer");
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,tether::access=off"))
            .with_writer(Captured::default)
            .finish();
        let log = AccessLog::new(&config(), std::iter::empty(), Some(&writer));
        tracing::subscriber::with_default(subscriber, || log_both(&log));
        drop(guard);
        assert!(direct.lines().is_empty());
    }

    #[test]
    fn timestamps_name_the_utc_second() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(11_017), (2000, 3, 1));
        assert_eq!(civil_from_days(20_794), (2026, 12, 7));
        assert_eq!(civil_from_days(2_932_896), (9999, 12, 31));
        assert_eq!(timestamp_second(20_794 * 86_400 + 3_661), "2026-12-07T01:01:01.");
    }
}
