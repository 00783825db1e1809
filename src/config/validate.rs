//! Mirror -> validated [`Config`](super::Config).
//!
//! Owns: the defaults, every semantic rule and cross-check, reading and matching TLS
//! certificates, and turning structural (serde) errors into located [`ConfigError`]s. Must
//! not: bind sockets, resolve DNS names (a backend name that does not resolve is a runtime
//! problem), or keep the secrets named by `*_env` keys (it only checks they are usable).
//!
//! Every problem is collected before failing: each check that fails records its error and
//! returns [`Reported`], which can only be made by recording one, so a failed validation
//! always carries at least one message.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;
use rustls::crypto::CryptoProvider;

use super::file::{
    FileAccessLog, FileAdmin, FileAffinity, FileBackend, FileCertificate, FileConfig, FileCookie, FileDrain,
    FileHealthCheck, FileKeySource, FileLimits, FileListener, FilePassive, FileRebalance, FileRoute, FileShutdown,
    FileTimeouts, FileTls, FileUpstream, Text,
};
use super::source::{self, PositionIndex};
use super::tls;
use super::units::{format_duration, parse_duration, parse_size};
use super::values::{
    binds_conflict, has_space_or_control, invalid_name_message, is_dns_name, is_token, is_valid_name,
    parse_backend_address, parse_host_match,
};
use super::{
    AccessLogConfig, AccessLogFormat, AdminConfig, AffinityConfig, BackendAddress, BackendConfig, CertificateConfig,
    Config, ConfigError, ConfigErrors, ConfigSource, CookieConfig, DebugConfig, DiscoveryConfig, DrainConfig, Fallback,
    HashConfig, HealthCheckConfig, HostMatch, KeySource, Limits, ListenerConfig, Loaded, PassiveConfig,
    RebalanceConfig, RouteConfig, SameSite, SecureMode, ShutdownConfig, Timeouts, TlsConfig, TokenSource,
    UpstreamConfig,
};

const DEFAULT_DISCOVERY_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_VNODES: u32 = 1000;
/// Ring points per unit of weight beyond this buy no measurable evenness and cost memory.
const MAX_VNODES: u32 = 10_000;
/// Bounds the ring a single backend can claim (weight x vnodes points): a typo such as
/// `weight: 100000` must not turn into gigabytes at startup.
const MAX_WEIGHT: u32 = 1000;
const DEFAULT_COOKIE_NAME: &str = "TETHER_AFFINITY";
/// HMAC-SHA256 keys shorter than its output size weaken the cookie signature.
const MIN_COOKIE_KEY_BYTES: usize = 32;
const DEFAULT_HEALTH_PATH: &str = "/readyz";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY_AFTER: u32 = 2;
const DEFAULT_UNHEALTHY_AFTER: u32 = 3;
const DEFAULT_CONSECUTIVE_FAILURES: u32 = 5;
const DEFAULT_EJECTION: Duration = Duration::from_secs(10);
const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);
/// Inside Kubernetes' default 30 s termination grace period, with room to exit.
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(25);
/// Spreading closes keeps every client of a draining backend from reconnecting at once.
const DEFAULT_CLOSE_SPREAD: Duration = Duration::from_secs(5);
/// 1001 "going away"; 1012 "service restart" is the other sensible choice.
const DEFAULT_CLOSE_CODE: u16 = 1001;
const DEFAULT_MAX_CLOSES_PER_SECOND: u32 = 50;
const DEFAULT_CONNECT: Duration = Duration::from_secs(2);
const DEFAULT_HEADER_READ: Duration = Duration::from_secs(10);
const DEFAULT_REQUEST: Duration = Duration::from_secs(60);
const DEFAULT_IDLE: Duration = Duration::from_secs(90);
const DEFAULT_TUNNEL_IDLE: Duration = Duration::from_secs(3600);
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
        ConfigErrors(
            errors
                .into_iter()
                .map(|e| ConfigError {
                    file: path.to_path_buf(),
                    position: e.position,
                    path: e.path,
                    message: e.message,
                })
                .collect(),
        )
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
        let routes = self.routes(&file.routes, file);
        let upstreams = self.upstreams(file);
        let timeouts = self.timeouts(file.timeouts.as_ref());
        let limits = self.limits(file.limits.as_ref());
        let trusted_proxies = self.trusted_proxies(file.trusted_proxies.as_deref());
        let access_log = self.access_log(file.access_log.as_ref());
        let shutdown = self.shutdown(file.shutdown.as_ref());
        let debug = DebugConfig { backend_header: file.debug.as_ref().and_then(|d| d.backend_header).unwrap_or(false) };
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
        })
    }

    // ----- listeners and TLS -------------------------------------------------------------

    fn listeners(&mut self, listeners: &[FileListener]) -> Checked<Vec<ListenerConfig>> {
        if listeners.is_empty() {
            return Err(self.error("listeners", "at least one listener is required"));
        }
        let mut out = Ok(Vec::with_capacity(listeners.len()));
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut binds: Vec<(SocketAddr, usize)> = Vec::new();
        for (i, listener) in listeners.iter().enumerate() {
            let path = format!("listeners[{i}]");
            let name = self.name(&format!("{path}.name"), &listener.name, "listener name");
            let name = name.and_then(|name| match names.insert(&listener.name.0, i) {
                Some(first) => Err(self.error(
                    &format!("{path}.name"),
                    format!("duplicate listener name {name:?} (also listeners[{first}])"),
                )),
                None => Ok(name),
            });
            let bind = self.socket_addr(&format!("{path}.bind"), &listener.bind);
            let bind = bind.and_then(|bind| match binds.iter().find(|(other, _)| binds_conflict(bind, *other)) {
                Some((_, first)) => {
                    Err(self.error(&format!("{path}.bind"), format!("bind {bind} is also used by listeners[{first}]")))
                }
                None => {
                    binds.push((bind, i));
                    Ok(bind)
                }
            });
            let tls = listener.tls.as_ref().map(|tls| self.tls(&format!("{path}.tls"), tls)).transpose();
            match (name, bind, tls, &mut out) {
                (Ok(name), Ok(bind), Ok(tls), Ok(out)) => out.push(ListenerConfig { name, bind, tls }),
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) => out = Err(r),
                (_, _, _, Err(_)) => {}
            }
        }
        out
    }

    fn tls(&mut self, path: &str, tls: &FileTls) -> Checked<TlsConfig> {
        if tls.certificates.is_empty() {
            return Err(self.error(&format!("{path}.certificates"), "at least one certificate is required"));
        }
        let mut certificates = Ok(Vec::new());
        for (i, certificate) in tls.certificates.iter().enumerate() {
            let checked = self.certificate(&format!("{path}.certificates[{i}]"), certificate);
            match (checked, &mut certificates) {
                (Ok(c), Ok(all)) => all.push(c),
                (Err(r), _) => certificates = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        Ok(TlsConfig { certificates: certificates? })
    }

    fn certificate(&mut self, path: &str, file: &FileCertificate) -> Checked<CertificateConfig> {
        let loaded = tls::load_certificate(&self.provider, &self.base_dir, file.cert.as_str(), file.key.as_str());
        loaded.map_err(|problems| {
            let tls::CertificateProblems { first, second } = *problems;
            let reported = self.certificate_error(path, &first);
            if let Some(second) = second {
                self.certificate_error(path, &second);
            }
            reported
        })
    }

    fn certificate_error(&mut self, path: &str, problem: &tls::CertificateError) -> Reported {
        let field = match problem.file() {
            tls::PemFile::Cert => format!("{path}.cert"),
            tls::PemFile::Key => format!("{path}.key"),
        };
        self.error(&field, problem.to_string())
    }

    // ----- admin -------------------------------------------------------------------------

    fn admin(&mut self, admin: &FileAdmin, listeners: &[FileListener]) -> Checked<AdminConfig> {
        let bind = self.socket_addr("admin.bind", &admin.bind);
        let token_env = admin.token_env.as_ref().map(|name| self.env_name("admin.token_env", name)).transpose();
        if let Ok(name) = &token_env {
            match name.as_deref().map(|n| (n, (self.env)(n))) {
                Some((name, None)) => self.warn(
                    "admin.token_env",
                    format!(
                        "environment variable {name} is not set; tether proxy will refuse to \
                         start until it is set"
                    ),
                ),
                Some((name, Some(token))) if token.is_empty() => self.warn(
                    "admin.token_env",
                    format!(
                        "environment variable {name} is empty; tether proxy will refuse to \
                         start until it is set"
                    ),
                ),
                _ => {}
            }
        }
        let bind = bind.and_then(|bind| {
            let conflict = listeners
                .iter()
                .enumerate()
                .find(|(_, l)| l.bind.as_str().parse::<SocketAddr>().is_ok_and(|other| binds_conflict(bind, other)));
            if let Some((i, _)) = conflict {
                return Err(self.error("admin.bind", format!("admin bind {bind} is also used by listeners[{i}]")));
            }
            if !bind.ip().is_loopback() && admin.token_env.is_none() {
                return Err(self.error(
                    "admin.bind",
                    format!(
                        "admin bind {bind} is not a loopback address: set token_env so that \
                         /admin/* requires a bearer token"
                    ),
                ));
            }
            Ok(bind)
        });
        Ok(AdminConfig { bind: bind?, token_env: token_env? })
    }

    // ----- routes ------------------------------------------------------------------------

    fn routes(&mut self, routes: &[FileRoute], file: &FileConfig) -> Checked<Vec<RouteConfig>> {
        if routes.is_empty() {
            return Err(self.error("routes", "at least one route is required"));
        }
        let mut out = Ok(Vec::with_capacity(routes.len()));
        for (i, route) in routes.iter().enumerate() {
            let path = format!("routes[{i}]");
            let host = match &route.host {
                None => Ok(HostMatch::Any),
                Some(host) => {
                    parse_host_match(host.as_str()).map_err(|message| self.error(&format!("{path}.host"), message))
                }
            };
            let path_prefix = match &route.path_prefix {
                None => Ok("/".to_owned()),
                Some(prefix) => self.url_path(&format!("{path}.path_prefix"), prefix),
            };
            let upstream = route.upstream.as_str();
            let upstream = if file.upstreams.0.iter().any(|(name, _)| name == upstream) {
                Ok(upstream.to_owned())
            } else {
                let defined: Vec<&str> = file.upstreams.0.iter().map(|(name, _)| name.as_str()).collect();
                let defined = if defined.is_empty() {
                    "no upstreams are defined".to_owned()
                } else {
                    format!("defined upstreams: {}", defined.join(", "))
                };
                Err(self.error(&format!("{path}.upstream"), format!("unknown upstream {upstream:?} ({defined})")))
            };
            match (host, path_prefix, upstream, &mut out) {
                (Ok(host), Ok(path_prefix), Ok(upstream), Ok(out)) => {
                    out.push(RouteConfig { host, path_prefix, upstream })
                }
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) => out = Err(r),
                (_, _, _, Err(_)) => {}
            }
        }
        out
    }

    // ----- upstreams ---------------------------------------------------------------------

    fn upstreams(&mut self, file: &FileConfig) -> Checked<Vec<UpstreamConfig>> {
        if file.upstreams.0.is_empty() {
            return Err(self.error("upstreams", "at least one upstream is required"));
        }
        let mut out = Ok(Vec::with_capacity(file.upstreams.0.len()));
        for (name, upstream) in &file.upstreams.0 {
            let checked = self.upstream(name, upstream);
            match (checked, &mut out) {
                (Ok(u), Ok(all)) => all.push(u),
                (Err(r), _) => out = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    fn upstream(&mut self, name: &str, upstream: &FileUpstream) -> Checked<UpstreamConfig> {
        let path = format!("upstreams.{name}");
        let checked_name = if is_valid_name(name) {
            Ok(name.to_owned())
        } else {
            let at = self.index.key(&path);
            Err(self.error_at(&path, at, invalid_name_message("upstream name", name)))
        };
        let discovery = upstream
            .discovery
            .as_ref()
            .map(|d| {
                let dns = self.backend_address(&format!("{path}.discovery.dns"), &d.dns);
                let interval = self.positive_duration(
                    &format!("{path}.discovery.interval"),
                    d.interval.as_ref(),
                    DEFAULT_DISCOVERY_INTERVAL,
                );
                Ok(DiscoveryConfig { dns: dns?, interval: interval? })
            })
            .transpose();
        let backends = self.backends(&path, upstream.backends.as_deref(), upstream.discovery.is_some());
        let affinity = self.affinity(&format!("{path}.affinity"), upstream.affinity.as_ref());
        let health_check =
            upstream.health_check.as_ref().map(|h| self.health_check(&format!("{path}.health_check"), h)).transpose();
        let passive = self.passive(&format!("{path}.passive"), upstream.passive.as_ref());
        let drain = self.drain(&format!("{path}.drain"), upstream.drain.as_ref());
        let rebalance = self.rebalance(&format!("{path}.rebalance"), upstream.rebalance.as_ref());
        Ok(UpstreamConfig {
            name: checked_name?,
            backends: backends?,
            discovery: discovery?,
            affinity: affinity?,
            health_check: health_check?,
            passive: passive?,
            drain: drain?,
            rebalance: rebalance?,
        })
    }

    fn backends(
        &mut self,
        upstream: &str,
        backends: Option<&[FileBackend]>,
        has_discovery: bool,
    ) -> Checked<Vec<BackendConfig>> {
        let path = format!("{upstream}.backends");
        let backends = backends.unwrap_or_default();
        if backends.is_empty() && !has_discovery {
            return Err(self.error(&path, "at least one backend is required unless discovery is set"));
        }
        let mut out = Ok(Vec::with_capacity(backends.len()));
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, backend) in backends.iter().enumerate() {
            let item = format!("{path}[{i}]");
            let id = self.name(&format!("{item}.id"), &backend.id, "backend id");
            let id =
                id.and_then(|id| match ids.insert(backend.id.as_str(), i) {
                    Some(first) => Err(self
                        .error(&format!("{item}.id"), format!("duplicate backend id {id:?} (also {path}[{first}])"))),
                    None => Ok(id),
                });
            let address = self.backend_address(&format!("{item}.address"), &backend.address);
            let weight = match backend.weight {
                None => Ok(1),
                Some(w) if (1..=MAX_WEIGHT).contains(&w) => Ok(w),
                Some(w) => Err(self
                    .error(&format!("{item}.weight"), format!("weight must be between 1 and {MAX_WEIGHT}, got {w}"))),
            };
            match (id, address, weight, &mut out) {
                (Ok(id), Ok(address), Ok(weight), Ok(out)) => out.push(BackendConfig { id, address, weight }),
                (Err(r), ..) | (_, Err(r), ..) | (_, _, Err(r), _) => out = Err(r),
                (_, _, _, Err(_)) => {}
            }
        }
        out
    }

    fn affinity(&mut self, path: &str, affinity: Option<&FileAffinity>) -> Checked<AffinityConfig> {
        let Some(affinity) = affinity else {
            return Ok(AffinityConfig {
                keys: Vec::new(),
                hash: HashConfig { vnodes: DEFAULT_VNODES, balance_factor: 0.0 },
                cookie: None,
                fallback: Fallback::default(),
            });
        };
        let mut keys = Ok(Vec::new());
        for (i, key) in affinity.key.as_deref().unwrap_or_default().iter().enumerate() {
            let checked = self.key_source(&format!("{path}.key[{i}]"), key);
            match (checked, &mut keys) {
                (Ok(k), Ok(all)) => all.push(k),
                (Err(r), _) => keys = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        let hash = affinity.hash.as_ref();
        let vnodes = match hash.and_then(|h| h.vnodes) {
            None => Ok(DEFAULT_VNODES),
            Some(v) if (1..=MAX_VNODES).contains(&v) => Ok(v),
            Some(v) => Err(self
                .error(&format!("{path}.hash.vnodes"), format!("vnodes must be between 1 and {MAX_VNODES}, got {v}"))),
        };
        let balance_factor = match hash.and_then(|h| h.balance_factor) {
            None => Ok(0.0),
            Some(f) if f == 0.0 || (f > 1.0 && f.is_finite()) => Ok(f),
            Some(f) => Err(self.error(
                &format!("{path}.hash.balance_factor"),
                format!("balance_factor must be 0 (off) or greater than 1.0 (e.g. 1.25), got {f}"),
            )),
        };
        let cookie = affinity.cookie.as_ref().map(|c| self.cookie(&format!("{path}.cookie"), c)).transpose();
        let fallback = match affinity.fallback.as_ref() {
            None => Ok(Fallback::default()),
            Some(f) => match f.as_str().to_ascii_lowercase().as_str() {
                "least_connections" => Ok(Fallback::LeastConnections),
                "round_robin" => Ok(Fallback::RoundRobin),
                "random_two_choices" => Ok(Fallback::RandomTwoChoices),
                _ => Err(self.error(
                    &format!("{path}.fallback"),
                    format!(
                        "unknown fallback {:?}; expected least_connections, round_robin or \
                         random_two_choices",
                        f.as_str()
                    ),
                )),
            },
        };
        Ok(AffinityConfig {
            keys: keys?,
            hash: HashConfig { vnodes: vnodes?, balance_factor: balance_factor? },
            cookie: cookie?,
            fallback: fallback?,
        })
    }

    fn key_source(&mut self, path: &str, key: &FileKeySource) -> Checked<KeySource> {
        let set: Vec<&str> = [
            key.header.as_ref().map(|_| "header"),
            key.cookie.as_ref().map(|_| "cookie"),
            key.query.as_ref().map(|_| "query"),
            key.jwt_claim.as_ref().map(|_| "jwt_claim"),
        ]
        .into_iter()
        .flatten()
        .collect();
        if set.len() != 1 {
            let found = if set.is_empty() { "none".to_owned() } else { set.join(" and ") };
            return Err(
                self.error(path, format!("set exactly one of header, cookie, query or jwt_claim (found {found})"))
            );
        }
        if let Some(header) = &key.header {
            return self.header_name(&format!("{path}.header"), header.as_str()).map(KeySource::Header);
        }
        if let Some(cookie) = &key.cookie {
            return self.cookie_name(&format!("{path}.cookie"), cookie.as_str()).map(KeySource::Cookie);
        }
        if let Some(query) = &key.query {
            return self.query_name(&format!("{path}.query"), query.as_str()).map(KeySource::Query);
        }
        let Some(jwt) = &key.jwt_claim else {
            // `set.len() == 1` and the three other sources were handled above.
            return Err(self.error(path, "set exactly one of header, cookie, query or jwt_claim"));
        };
        let from_path = format!("{path}.jwt_claim.from");
        let from = match jwt.from.as_str().split_once(':') {
            Some(("header", name)) => self.header_name(&from_path, name).map(TokenSource::Header),
            Some(("cookie", name)) => self.cookie_name(&from_path, name).map(TokenSource::Cookie),
            Some(("query", name)) => self.query_name(&from_path, name).map(TokenSource::Query),
            _ => Err(self.error(
                &from_path,
                format!(
                    "invalid token source {:?}; expected header:NAME, cookie:NAME or query:NAME",
                    jwt.from.as_str()
                ),
            )),
        };
        let claim = if jwt.claim.as_str().is_empty() {
            Err(self.error(&format!("{path}.jwt_claim.claim"), "claim must not be empty"))
        } else {
            Ok(jwt.claim.0.clone())
        };
        Ok(KeySource::JwtClaim { from: from?, claim: claim? })
    }

    fn cookie(&mut self, path: &str, cookie: &FileCookie) -> Checked<CookieConfig> {
        let name = match &cookie.name {
            None => Ok(DEFAULT_COOKIE_NAME.to_owned()),
            Some(name) => self.cookie_name(&format!("{path}.name"), name.as_str()),
        };
        let ttl = self.duration(&format!("{path}.ttl"), cookie.ttl.as_ref(), Duration::ZERO);
        let secure =
            match cookie.secure.as_ref().map(|s| s.as_str().to_ascii_lowercase()) {
                None => Ok(SecureMode::Auto),
                Some(s) if s == "auto" => Ok(SecureMode::Auto),
                Some(s) if s == "true" => Ok(SecureMode::Always),
                Some(s) if s == "false" => Ok(SecureMode::Never),
                Some(s) => Err(self
                    .error(&format!("{path}.secure"), format!("invalid secure {s:?}; expected auto, true or false"))),
            };
        let same_site = match cookie.same_site.as_ref().map(|s| s.as_str().to_ascii_lowercase()) {
            None => Ok(SameSite::Lax),
            Some(s) if s == "lax" => Ok(SameSite::Lax),
            Some(s) if s == "strict" => Ok(SameSite::Strict),
            Some(s) if s == "none" => Ok(SameSite::None),
            Some(s) => Err(self
                .error(&format!("{path}.same_site"), format!("invalid same_site {s:?}; expected lax, strict or none"))),
        };
        let same_site = match (same_site, secure) {
            (Ok(SameSite::None), Ok(SecureMode::Never)) => Err(self.error(
                &format!("{path}.same_site"),
                "same_site none requires secure auto or true (browsers reject SameSite=None \
                 cookies that are not Secure)",
            )),
            (same_site, _) => same_site,
        };
        let cookie_path = match &cookie.path {
            None => Ok("/".to_owned()),
            Some(p) => self
                .url_path(&format!("{path}.path"), p)
                .and_then(|p| self.cookie_attribute(&format!("{path}.path"), p)),
        };
        let domain = cookie
            .domain
            .as_ref()
            .map(|d| {
                let domain = d.as_str().to_ascii_lowercase();
                if is_dns_name(domain.strip_prefix('.').unwrap_or(&domain)) {
                    Ok(domain)
                } else {
                    Err(self.error(&format!("{path}.domain"), format!("invalid cookie domain {:?}", d.as_str())))
                }
            })
            .transpose();
        let key_path = format!("{path}.key_env");
        let key_env = cookie.key_env.as_ref().map(|name| self.env_name(&key_path, name)).transpose();
        let key_env = key_env.and_then(|name| {
            let Some(name) = name else { return Ok(None) };
            match (self.env)(&name) {
                None => {
                    self.warn(
                        &key_path,
                        format!(
                            "environment variable {name} is not set; replicas will not share \
                             sticky cookies; a random per-process key will be used"
                        ),
                    );
                    Ok(Some(name))
                }
                Some(key) if key.len() < MIN_COOKIE_KEY_BYTES => Err(self.error(
                    &key_path,
                    format!(
                        "environment variable {name} holds {} bytes; the cookie key must be at \
                         least {MIN_COOKIE_KEY_BYTES} bytes",
                        key.len()
                    ),
                )),
                Some(_) => Ok(Some(name)),
            }
        });
        Ok(CookieConfig {
            name: name?,
            ttl: ttl?,
            secure: secure?,
            http_only: cookie.http_only.unwrap_or(true),
            same_site: same_site?,
            path: cookie_path?,
            domain: domain?,
            key_env: key_env?,
        })
    }

    fn health_check(&mut self, path: &str, h: &FileHealthCheck) -> Checked<HealthCheckConfig> {
        let check_path = match &h.path {
            None => Ok(DEFAULT_HEALTH_PATH.to_owned()),
            Some(p) => self.url_path(&format!("{path}.path"), p),
        };
        let interval =
            self.positive_duration(&format!("{path}.interval"), h.interval.as_ref(), DEFAULT_HEALTH_INTERVAL);
        let timeout = self.positive_duration(&format!("{path}.timeout"), h.timeout.as_ref(), DEFAULT_HEALTH_TIMEOUT);
        let timeout = match (timeout, interval) {
            (Ok(t), Ok(i)) if t >= i => Err(self.error(
                &format!("{path}.timeout"),
                format!("timeout ({}) must be shorter than interval ({})", format_duration(t), format_duration(i)),
            )),
            (t, _) => t,
        };
        let healthy_after = self.at_least_one(&format!("{path}.healthy_after"), h.healthy_after, DEFAULT_HEALTHY_AFTER);
        let unhealthy_after =
            self.at_least_one(&format!("{path}.unhealthy_after"), h.unhealthy_after, DEFAULT_UNHEALTHY_AFTER);
        Ok(HealthCheckConfig {
            path: check_path?,
            interval: interval?,
            timeout: timeout?,
            healthy_after: healthy_after?,
            unhealthy_after: unhealthy_after?,
        })
    }

    fn passive(&mut self, path: &str, p: Option<&FilePassive>) -> Checked<PassiveConfig> {
        let consecutive_failures = self.at_least_one(
            &format!("{path}.consecutive_failures"),
            p.and_then(|p| p.consecutive_failures),
            DEFAULT_CONSECUTIVE_FAILURES,
        );
        let ejection =
            self.positive_duration(&format!("{path}.ejection"), p.and_then(|p| p.ejection.as_ref()), DEFAULT_EJECTION);
        let max_ejection = self.positive_duration(
            &format!("{path}.max_ejection"),
            p.and_then(|p| p.max_ejection.as_ref()),
            DEFAULT_MAX_EJECTION,
        );
        let max_ejection = match (max_ejection, ejection) {
            (Ok(max), Ok(min)) if max < min => Err(self.error(
                &format!("{path}.max_ejection"),
                format!(
                    "max_ejection ({}) must not be shorter than ejection ({})",
                    format_duration(max),
                    format_duration(min)
                ),
            )),
            (max, _) => max,
        };
        Ok(PassiveConfig {
            consecutive_failures: consecutive_failures?,
            ejection: ejection?,
            max_ejection: max_ejection?,
        })
    }

    fn drain(&mut self, path: &str, d: Option<&FileDrain>) -> Checked<DrainConfig> {
        let timeout =
            self.duration(&format!("{path}.timeout"), d.and_then(|d| d.timeout.as_ref()), DEFAULT_DRAIN_TIMEOUT);
        let close_spread = self.duration(
            &format!("{path}.close_spread"),
            d.and_then(|d| d.close_spread.as_ref()),
            DEFAULT_CLOSE_SPREAD,
        );
        let close_spread = match (close_spread, timeout) {
            (Ok(spread), Ok(timeout)) if spread > timeout => Err(self.error(
                &format!("{path}.close_spread"),
                format!(
                    "close_spread ({}) must not be longer than timeout ({})",
                    format_duration(spread),
                    format_duration(timeout)
                ),
            )),
            (spread, _) => spread,
        };
        let close_code = match d.and_then(|d| d.close_code) {
            None => Ok(DEFAULT_CLOSE_CODE),
            Some(code @ (1001 | 1012)) => Ok(code),
            Some(code) => Err(self.error(
                &format!("{path}.close_code"),
                format!("close_code must be 1001 (going away) or 1012 (service restart), got {code}"),
            )),
        };
        Ok(DrainConfig { timeout: timeout?, close_spread: close_spread?, close_code: close_code? })
    }

    fn rebalance(&mut self, path: &str, r: Option<&FileRebalance>) -> Checked<RebalanceConfig> {
        let max_closes_per_second = self.at_least_one(
            &format!("{path}.max_closes_per_second"),
            r.and_then(|r| r.max_closes_per_second),
            DEFAULT_MAX_CLOSES_PER_SECOND,
        );
        Ok(RebalanceConfig {
            enabled: r.and_then(|r| r.enabled).unwrap_or(false),
            max_closes_per_second: max_closes_per_second?,
        })
    }

    // ----- global sections ---------------------------------------------------------------

    fn timeouts(&mut self, t: Option<&FileTimeouts>) -> Checked<Timeouts> {
        let connect = self.positive_duration("timeouts.connect", t.and_then(|t| t.connect.as_ref()), DEFAULT_CONNECT);
        let header_read =
            self.positive_duration("timeouts.header_read", t.and_then(|t| t.header_read.as_ref()), DEFAULT_HEADER_READ);
        let request = self.positive_duration("timeouts.request", t.and_then(|t| t.request.as_ref()), DEFAULT_REQUEST);
        let idle = self.positive_duration("timeouts.idle", t.and_then(|t| t.idle.as_ref()), DEFAULT_IDLE);
        let tunnel_idle =
            self.positive_duration("timeouts.tunnel_idle", t.and_then(|t| t.tunnel_idle.as_ref()), DEFAULT_TUNNEL_IDLE);
        Ok(Timeouts {
            connect: connect?,
            header_read: header_read?,
            request: request?,
            idle: idle?,
            tunnel_idle: tunnel_idle?,
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
        Ok(Limits { max_header_bytes: max_header_bytes?, max_connections: max_connections? })
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
