//! Mirror -> validated [`Config`](super::Config).
//!
//! Owns: the defaults, every semantic rule and cross-check, reading and matching TLS
//! certificates, and turning structural (serde) errors into located [`ConfigError`]s. Must
//! not: bind sockets, resolve DNS names (a backend name that does not resolve is a runtime
//! problem), or keep the secrets named by `*_env` keys (it only checks they are usable).
//!
//! Layout: this file holds the entry points, the error plumbing, the global sections and the
//! value checks every section uses; `listeners` (listeners, TLS, admin, routes), `upstreams`
//! (backends, health, drain, rebalance) and `affinity` (keys and the sticky cookie) hold the
//! rest.
//!
//! Every problem is collected before failing: each check that fails records its error and
//! returns [`Reported`], which can only be made by recording one, so a failed validation
//! always carries at least one message.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use rustls::crypto::CryptoProvider;

mod affinity;
mod auth;
mod listeners;
mod routes;
mod upstreams;

pub(crate) use auth::{DEFAULT_LEEWAY, MIN_SECRET_BYTES};
pub(crate) use routes::parse_origin;

use super::file::{FileAccessLog, FileConfig, FileLimits, FileRuntime, FileShutdown, FileTimeouts, Text};
use super::source::{self, PositionIndex};
use super::units::{format_duration, parse_duration, parse_size};
use super::values::{has_space_or_control, invalid_name_message, is_token, is_valid_name, parse_backend_address};
use super::{
    AccessLogConfig, AccessLogFormat, BackendAddress, Config, ConfigError, ConfigErrors, ConfigSource, DebugConfig,
    ForwardedHeaders, Limits, Loaded, MAX_WORKERS, RuntimeConfig, ShutdownConfig, Timeouts,
};

const DEFAULT_CONNECT: Duration = Duration::from_secs(2);
const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST: Duration = Duration::from_secs(60);
const DEFAULT_IDLE: Duration = Duration::from_secs(90);
const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(3600);
/// A peer that takes nothing for this long is not coming back.
const DEFAULT_SEND: Duration = Duration::from_secs(30);
const DEFAULT_BODY_READ: Duration = Duration::from_secs(30);
/// Streams one HTTP/2 connection may have open at once: enough for a page's requests, few
/// enough that one connection cannot take the whole in-flight budget.
const DEFAULT_MAX_STREAMS_PER_CONNECTION: u32 = 100;
const DEFAULT_MAX_HEADER_BYTES: u64 = 16 * 1024;
/// hyper refuses (panics on) an HTTP/1 read buffer smaller than 8 KiB.
const MIN_MAX_HEADER_BYTES: u64 = 8 * 1024;
const DEFAULT_MAX_CONNECTIONS: u64 = 100_000;
/// Query parameters that commonly carry credentials (browsers cannot set headers on a
/// WebSocket, so access tokens often travel in the query string).
const DEFAULT_REDACT_QUERY: [&str; 4] = ["access_token", "token", "jwt", "password"];
const DEFAULT_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(25);

/// Read and validate the config file at `path`.
pub fn load(path: &Path) -> Result<Loaded, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let message = match e.kind() {
            std::io::ErrorKind::NotFound => "file not found".to_owned(),
            _ => format!("cannot read file: {e}"),
        };
        ConfigErrors(vec![ConfigError { file: path.to_path_buf(), position: None, path: String::new(), message }])
    })?;
    parse(path, &text, &|name| std::env::var(name).ok())
}

/// Validate config `text` (as read from `path`), looking environment variables up with `env`.
///
/// Pure apart from reading the TLS files it names; relative TLS paths resolve against the
/// directory of `path`.
pub fn parse(path: &Path, text: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Loaded, ConfigErrors> {
    let document = source::parse(text, env).map_err(|errors| {
        let mut errors: Vec<ConfigError> = errors
            .into_iter()
            .map(|e| ConfigError { file: path.to_path_buf(), position: e.position, path: e.path, message: e.message })
            .collect();
        // Top to bottom, as the validator's problems below: they are found in event order,
        // and a block mapping's tag is reported where its first key ends, after what is in it.
        errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, usize::MAX)));
        ConfigErrors(errors)
    })?;
    if document.value.is_null() {
        return Err(ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            position: None,
            path: String::new(),
            message: "the file is empty; expected a mapping with listeners, routes and upstreams".into(),
        }]));
    }
    let index = document.index;
    let file: FileConfig =
        serde_path_to_error::deserialize(document.value).map_err(|e| structural_error(path, &index, &e))?;

    let mut validator = Validator {
        file: path,
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        index: &index,
        env,
        provider: rustls::crypto::ring::default_provider(),
        errors: Vec::new(),
        warnings: Vec::new(),
    };
    let source = ConfigSource { path: path.to_path_buf(), text: text.to_owned() };
    match validator.config(&file, source) {
        Ok(config) if validator.errors.is_empty() => Ok(Loaded { config, warnings: validator.warnings }),
        _ => {
            let mut errors = validator.errors;
            // Top to bottom, as a reader scans the file; unlocated problems last.
            errors.sort_by_key(|e| e.position.unwrap_or((usize::MAX, usize::MAX)));
            Err(ConfigErrors(errors))
        }
    }
}

/// A serde error (unknown key, wrong type, missing key): it stops deserialization, so it is
/// the only error reported.
fn structural_error(
    file: &Path,
    index: &PositionIndex,
    error: &serde_path_to_error::Error<serde_yaml::Error>,
) -> ConfigErrors {
    let path = path_string(error.path());
    let raw = error.inner().to_string();
    let (position, message) = if let Some(rest) = raw.strip_prefix("unknown field `") {
        let (key, expected) = rest.split_once('`').unwrap_or((rest, ""));
        let allowed: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        let allowed = if allowed.is_empty() {
            "no keys are allowed here".to_owned()
        } else {
            format!("allowed keys: {}", allowed.join(", "))
        };
        (index.key(&path), format!("unknown key {key:?}; {allowed}"))
    } else if let Some(rest) = raw.strip_prefix("missing field `") {
        let field = rest.trim_end_matches('`');
        (index.value(&path), format!("missing required key {field:?}"))
    } else {
        (index.value(&path), raw.replace("unit value", "empty value"))
    };
    ConfigErrors(vec![ConfigError { file: file.to_path_buf(), position, path, message }])
}

/// The same text `serde_path_to_error::Path` displays, except that the root is empty.
fn path_string(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => push_key(&mut out, key),
            Segment::Enum { variant } => push_key(&mut out, variant),
            Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    out
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

/// Proof that a problem was recorded in [`Validator::errors`]; only `Validator::error`
/// makes one.
#[derive(Debug, Clone, Copy)]
struct Reported(());

type Checked<T> = Result<T, Reported>;

struct Validator<'a> {
    file: &'a Path,
    base_dir: PathBuf,
    index: &'a PositionIndex,
    env: &'a dyn Fn(&str) -> Option<String>,
    provider: CryptoProvider,
    errors: Vec<ConfigError>,
    warnings: Vec<String>,
}

impl Validator<'_> {
    fn error(&mut self, path: &str, message: impl Into<String>) -> Reported {
        let position = self.index.value(path);
        self.error_at(path, position, message)
    }

    fn error_at(&mut self, path: &str, position: Option<(usize, usize)>, message: impl Into<String>) -> Reported {
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            position,
            path: path.to_owned(),
            message: message.into(),
        });
        Reported(())
    }

    fn warn(&mut self, path: &str, message: impl Into<String>) {
        let warning = ConfigError {
            file: self.file.to_path_buf(),
            position: self.index.value(path),
            path: path.to_owned(),
            message: message.into(),
        };
        self.warnings.push(warning.to_string());
    }

    fn config(&mut self, file: &FileConfig, source: ConfigSource) -> Checked<Config> {
        let listeners = self.listeners(&file.listeners);
        let admin = file.admin.as_ref().map(|a| self.admin(a, &file.listeners)).transpose();
        let auth = self.verifiers(file.auth.as_ref());
        let routes = self.routes(&file.routes, file, auth.as_deref().unwrap_or_default());
        let forwarded_headers = self.forwarded_headers(file.forwarded_headers.as_ref());
        let upstreams = self.upstreams(file);
        let timeouts = self.timeouts(file.timeouts.as_ref());
        let limits = self.limits(file.limits.as_ref());
        let trusted_proxies = self.trusted_proxies(file.trusted_proxies.as_deref());
        let access_log = self.access_log(file.access_log.as_ref());
        let shutdown = self.shutdown(file.shutdown.as_ref());
        let debug = DebugConfig { backend_header: file.debug.as_ref().and_then(|d| d.backend_header).unwrap_or(false) };
        let runtime = self.runtime(file.runtime.as_ref());
        Ok(Config {
            source,
            listeners: listeners?,
            admin: admin?,
            routes: routes?,
            upstreams: upstreams?,
            timeouts: timeouts?,
            limits: limits?,
            trusted_proxies: trusted_proxies?,
            access_log: access_log?,
            shutdown: shutdown?,
            debug,
            auth: auth?,
            forwarded_headers: forwarded_headers?,
            runtime: runtime?,
        })
    }

    fn runtime(&mut self, runtime: Option<&FileRuntime>) -> Checked<RuntimeConfig> {
        let workers = match runtime.and_then(|r| r.workers) {
            None => None,
            Some(n) if (1..=MAX_WORKERS as u64).contains(&n) => Some(n as usize),
            Some(_) => {
                return Err(self.error("runtime.workers", format!("must be from 1 to {MAX_WORKERS}")));
            }
        };
        Ok(RuntimeConfig { workers })
    }

    // ----- global sections ---------------------------------------------------------------

    fn forwarded_headers(&mut self, text: Option<&Text>) -> Checked<ForwardedHeaders> {
        match text.map(Text::as_str) {
            None | Some("x-forwarded") => Ok(ForwardedHeaders::XForwarded),
            Some("rfc7239") => Ok(ForwardedHeaders::Rfc7239),
            Some("both") => Ok(ForwardedHeaders::Both),
            Some(other) => Err(self
                .error("forwarded_headers", format!("invalid value {other:?}; expected x-forwarded, rfc7239 or both"))),
        }
    }

    fn timeouts(&mut self, t: Option<&FileTimeouts>) -> Checked<Timeouts> {
        let connect = self.positive_duration("timeouts.connect", t.and_then(|t| t.connect.as_ref()), DEFAULT_CONNECT);
        let header_read =
            self.positive_duration("timeouts.header_read", t.and_then(|t| t.header_read.as_ref()), DEFAULT_HEADER_READ);
        let request = self.positive_duration("timeouts.request", t.and_then(|t| t.request.as_ref()), DEFAULT_REQUEST);
        let idle = self.positive_duration("timeouts.idle", t.and_then(|t| t.idle.as_ref()), DEFAULT_IDLE);
        let tunnel_idle =
            self.positive_duration("timeouts.tunnel_idle", t.and_then(|t| t.tunnel_idle.as_ref()), DEFAULT_TUNNEL_IDLE);
        let send = self.positive_duration("timeouts.send", t.and_then(|t| t.send.as_ref()), DEFAULT_SEND);
        let body_read =
            self.positive_duration("timeouts.body_read", t.and_then(|t| t.body_read.as_ref()), DEFAULT_BODY_READ);
        Ok(Timeouts {
            connect: connect?,
            header_read: header_read?,
            request: request?,
            idle: idle?,
            tunnel_idle: tunnel_idle?,
            send: send?,
            body_read: body_read?,
        })
    }

    fn limits(&mut self, l: Option<&FileLimits>) -> Checked<Limits> {
        let header_path = "limits.max_header_bytes";
        let max_header_bytes = match l.and_then(|l| l.max_header_bytes.as_ref()) {
            None => Ok(DEFAULT_MAX_HEADER_BYTES),
            Some(text) => match parse_size(text.as_str()) {
                Ok(size) if size < MIN_MAX_HEADER_BYTES => Err(self.error(
                    header_path,
                    format!(
                        "max_header_bytes must be at least 8KiB (hyper's smallest read \
                         buffer), got {:?}",
                        text.as_str()
                    ),
                )),
                Ok(size) => Ok(size),
                Err(e) => Err(self.error(header_path, e.to_string())),
            },
        };
        let max_header_bytes = max_header_bytes.and_then(|size| {
            usize::try_from(size).map_err(|_| self.error(header_path, "max_header_bytes is too large for this machine"))
        });
        let connections_path = "limits.max_connections";
        let max_connections = match l.and_then(|l| l.max_connections) {
            None => Ok(DEFAULT_MAX_CONNECTIONS),
            Some(0) => Err(self.error(connections_path, "max_connections must be at least 1")),
            Some(n) => Ok(n),
        };
        let max_connections = max_connections.and_then(|n| {
            usize::try_from(n)
                .map_err(|_| self.error(connections_path, "max_connections is too large for this machine"))
        });
        let streams = match l.and_then(|l| l.max_streams_per_connection) {
            None => Ok(DEFAULT_MAX_STREAMS_PER_CONNECTION),
            Some(0) => Err(self.error("limits.max_streams_per_connection", "must be at least 1")),
            Some(n) => Ok(n),
        };
        let in_flight = match l.and_then(|l| l.max_in_flight) {
            None => Ok(None),
            Some(0) => Err(self.error("limits.max_in_flight", "must be at least 1")),
            Some(n) => usize::try_from(n)
                .map(Some)
                .map_err(|_| self.error("limits.max_in_flight", "max_in_flight is too large for this machine")),
        };
        Ok(Limits {
            max_header_bytes: max_header_bytes?,
            max_connections: max_connections?,
            max_streams_per_connection: streams?,
            max_in_flight: in_flight?,
        })
    }

    fn trusted_proxies(&mut self, proxies: Option<&[Text]>) -> Checked<Vec<IpNet>> {
        let mut out = Ok(Vec::new());
        for (i, text) in proxies.unwrap_or_default().iter().enumerate() {
            let s = text.as_str();
            let net = s.parse::<IpNet>().map(|net| net.trunc()).or_else(|_| s.parse::<IpAddr>().map(IpNet::from));
            match (net, &mut out) {
                (Ok(net), Ok(all)) => all.push(net),
                (Err(_), _) => {
                    out = Err(self.error(
                        &format!("trusted_proxies[{i}]"),
                        format!(
                            "invalid CIDR {s:?}; expected a network such as \"10.0.0.0/8\" or \
                             an IP address"
                        ),
                    ))
                }
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    fn access_log(&mut self, a: Option<&FileAccessLog>) -> Checked<AccessLogConfig> {
        let format = match a.and_then(|a| a.format.as_ref()) {
            None => Ok(AccessLogFormat::Json),
            Some(f) => match f.as_str().to_ascii_lowercase().as_str() {
                "json" => Ok(AccessLogFormat::Json),
                "text" => Ok(AccessLogFormat::Text),
                "off" => Ok(AccessLogFormat::Off),
                _ => Err(self.error(
                    "access_log.format",
                    format!("unknown access log format {:?}; expected json, text or off", f.as_str()),
                )),
            },
        };
        let redact_query = match a.and_then(|a| a.redact_query.as_ref()) {
            None => Ok(DEFAULT_REDACT_QUERY.map(str::to_owned).to_vec()),
            Some(names) => {
                let mut out = Ok(Vec::with_capacity(names.len()));
                for (i, name) in names.iter().enumerate() {
                    let checked = self.query_name(&format!("access_log.redact_query[{i}]"), name.as_str());
                    match (checked, &mut out) {
                        (Ok(n), Ok(all)) => all.push(n),
                        (Err(r), _) => out = Err(r),
                        (Ok(_), Err(_)) => {}
                    }
                }
                out
            }
        };
        Ok(AccessLogConfig { format: format?, redact_query: redact_query? })
    }

    fn shutdown(&mut self, s: Option<&FileShutdown>) -> Checked<ShutdownConfig> {
        let delay = self.duration("shutdown.delay", s.and_then(|s| s.delay.as_ref()), DEFAULT_SHUTDOWN_DELAY);
        let timeout = self.duration("shutdown.timeout", s.and_then(|s| s.timeout.as_ref()), DEFAULT_SHUTDOWN_TIMEOUT);
        let timeout = match (timeout, delay) {
            (Ok(t), Ok(d)) if t <= d => Err(self.error(
                "shutdown.timeout",
                format!("timeout ({}) must be longer than delay ({})", format_duration(t), format_duration(d)),
            )),
            (t, _) => t,
        };
        Ok(ShutdownConfig { delay: delay?, timeout: timeout? })
    }

    // ----- value checks ------------------------------------------------------------------

    fn duration(&mut self, path: &str, text: Option<&Text>, default: Duration) -> Checked<Duration> {
        match text {
            None => Ok(default),
            Some(text) => parse_duration(text.as_str()).map_err(|e| self.error(path, e.to_string())),
        }
    }

    fn positive_duration(&mut self, path: &str, text: Option<&Text>, default: Duration) -> Checked<Duration> {
        match self.duration(path, text, default)? {
            Duration::ZERO => Err(self.error(path, "must be greater than 0s")),
            d => Ok(d),
        }
    }

    fn at_least_one(&mut self, path: &str, value: Option<u32>, default: u32) -> Checked<u32> {
        match value.unwrap_or(default) {
            0 => Err(self.error(path, "must be at least 1")),
            n => Ok(n),
        }
    }

    fn name(&mut self, path: &str, name: &Text, what: &str) -> Checked<String> {
        if is_valid_name(name.as_str()) {
            Ok(name.0.clone())
        } else {
            Err(self.error(path, invalid_name_message(what, name.as_str())))
        }
    }

    fn socket_addr(&mut self, path: &str, text: &Text) -> Checked<SocketAddr> {
        text.as_str().parse().map_err(|_| {
            self.error(
                path,
                format!(
                    "invalid socket address {:?}; expected IP:port (e.g. \"0.0.0.0:8080\" or \
                     \"[::]:8080\")",
                    text.as_str()
                ),
            )
        })
    }

    fn backend_address(&mut self, path: &str, text: &Text) -> Checked<BackendAddress> {
        parse_backend_address(text.as_str())
            .map_err(|e| self.error(path, format!("invalid socket address {:?}: {e}", text.as_str())))
    }

    fn env_name(&mut self, path: &str, name: &Text) -> Checked<String> {
        if source::is_env_name(name.as_str()) {
            Ok(name.0.clone())
        } else {
            Err(self.error(
                path,
                format!(
                    "invalid environment variable name {:?}; expected letters, digits and _ \
                     (not starting with a digit)",
                    name.as_str()
                ),
            ))
        }
    }

    fn header_name(&mut self, path: &str, name: &str) -> Checked<HeaderName> {
        HeaderName::from_bytes(name.as_bytes()).map_err(|_| self.error(path, format!("invalid header name {name:?}")))
    }

    fn cookie_name(&mut self, path: &str, name: &str) -> Checked<String> {
        if is_token(name) {
            Ok(name.to_owned())
        } else {
            Err(self.error(
                path,
                format!(
                    "invalid cookie name {name:?}; expected an RFC 6265 token (no spaces, \
                     quotes or separators)"
                ),
            ))
        }
    }

    fn query_name(&mut self, path: &str, name: &str) -> Checked<String> {
        if name.is_empty() || name.contains(['&', '=', '#']) || has_space_or_control(name) {
            Err(self.error(path, format!("invalid query parameter name {name:?}")))
        } else {
            Ok(name.to_owned())
        }
    }

    /// An absolute URL path such as a route prefix or health check path.
    fn url_path(&mut self, path: &str, text: &Text) -> Checked<String> {
        let s = text.as_str();
        if !s.starts_with('/') {
            Err(self.error(path, format!("{s:?} must start with \"/\"")))
        } else if has_space_or_control(s) {
            Err(self.error(path, format!("{s:?} must not contain spaces or control characters")))
        } else {
            Ok(s.to_owned())
        }
    }

    fn cookie_attribute(&mut self, path: &str, value: String) -> Checked<String> {
        if value.contains(';') { Err(self.error(path, format!("{value:?} must not contain \";\""))) } else { Ok(value) }
    }
}

#[cfg(test)]
mod tests;
