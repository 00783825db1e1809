//! Configuration: the validated, typed form of a tether YAML file.
//!
//! Owns: reading a config file (`load`), expanding `${VAR}` references per value, rejecting
//! unknown keys, and every semantic cross-check, so that the rest of tether only ever sees a
//! [`Config`] that is known to be valid. Must not: bind sockets, read secrets named by `*_env`
//! keys (that happens where they are used), or keep any runtime state.
//!
//! Layout: `file` is the serde mirror of the YAML (`deny_unknown_fields`), `source` turns text
//! into a positioned, env-expanded tree, `validate` turns the mirror into these types (with
//! `units` for durations and sizes, `values` for names and addresses, `tls` for certificate
//! files), and `error` formats problems as `file:line:column: field.path: message`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use ipnet::IpNet;

mod error;
mod file;
mod source;
mod tls;
pub mod units;
mod validate;
mod values;

pub(crate) use error::{ConfigError, ConfigErrors, ReloadError};
pub use validate::{load, parse};
pub(crate) use values::AddressError;

/// A validated configuration plus the text it came from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from and its text as written (`${VAR}` unexpanded), for
    /// `/admin/config` and for resolving relative paths.
    pub source: ConfigSource,
    pub listeners: Vec<ListenerConfig>,
    pub admin: Option<AdminConfig>,
    /// In file order: the first matching route wins.
    pub routes: Vec<RouteConfig>,
    /// In file order.
    pub upstreams: Vec<UpstreamConfig>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub trusted_proxies: Vec<IpNet>,
    pub access_log: AccessLogConfig,
    pub shutdown: ShutdownConfig,
    pub debug: DebugConfig,
}

/// A successfully loaded config and the warnings found while loading it (unset `*_env`
/// variables, for example), which `tether check` prints and `tether proxy` logs.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct ListenerConfig {
    pub name: String,
    pub bind: SocketAddr,
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Chosen by SNI; the first is the default for clients that send no (or an unknown) name.
    pub certificates: Vec<CertificateConfig>,
}

/// A certificate chain and its private key, already read, parsed and checked to match.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (lowercase; may start with `*.`).
    pub names: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub bind: SocketAddr,
    /// Name of the environment variable holding the bearer token for `/admin/*`.
    pub token_env: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteConfig {
    pub host: HostMatch,
    /// Always starts with `/`.
    pub path_prefix: String,
    /// Name of an upstream that exists in [`Config::upstreams`].
    pub upstream: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// `"*"`
    Any,
    /// An exact host name, lowercase, without port.
    Exact(String),
    /// `"*.example.com"`, stored as `".example.com"` (lowercase): matches any name ending in it.
    Suffix(String),
}

#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    pub name: String,
    /// Static backends, in file order. Ids are unique within the upstream.
    pub backends: Vec<BackendConfig>,
    pub discovery: Option<DiscoveryConfig>,
    pub affinity: AffinityConfig,
    /// `None`: no active checks, backends are judged passively only.
    pub health_check: Option<HealthCheckConfig>,
    pub passive: PassiveConfig,
    pub drain: DrainConfig,
    pub rebalance: RebalanceConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable identity: it goes on the hash ring and into sticky cookies, never the address.
    pub id: String,
    pub address: BackendAddress,
    /// >= 1.
    pub weight: u32,
}

/// `host:port` where host is an IP literal or a DNS name, resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddress {
    /// IPv6 literals are stored without brackets.
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for BackendAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for BackendAddress {
    type Err = AddressError;

    /// `host:port` as accepted in the config (`127.0.0.1:9001`, `[::1]:9001`, `app:8080`);
    /// a name is not resolved.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        values::parse_backend_address(text)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    pub dns: BackendAddress,
    pub interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// Tried in order; the first that yields a non-empty value wins. Empty: no key affinity.
    pub keys: Vec<KeySource>,
    pub hash: HashConfig,
    /// `None`: no sticky cookie is ever set.
    pub cookie: Option<CookieConfig>,
    pub fallback: Fallback,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    JwtClaim { from: TokenSource, claim: String },
}

/// Where a JWT is read from: `header:NAME`, `cookie:NAME` or `query:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    Header(HeaderName),
    Cookie(String),
    Query(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// 0 = exact stickiness; > 1 (e.g. 1.25) = consistent hashing with bounded loads.
    pub balance_factor: f64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    pub name: String,
    /// Zero = session cookie.
    pub ttl: Duration,
    pub secure: SecureMode,
    pub http_only: bool,
    pub same_site: SameSite,
    pub path: String,
    pub domain: Option<String>,
    /// Environment variable holding the HMAC key shared by all proxy replicas.
    pub key_env: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    /// Secure on TLS listeners only.
    Auto,
    Always,
    Never,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Lax,
    Strict,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    #[default]
    LeastConnections,
    RoundRobin,
    RandomTwoChoices,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub healthy_after: u32,
    pub unhealthy_after: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    pub consecutive_failures: u32,
    pub ejection: Duration,
    pub max_ejection: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    pub timeout: Duration,
    pub close_spread: Duration,
    /// 1001 (going away) or 1012 (service restart).
    pub close_code: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceConfig {
    pub enabled: bool,
    pub max_closes_per_second: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP connect to a backend.
    pub connect: Duration,
    /// From the first byte of a request head to its end (slowloris guard).
    pub header_read: Duration,
    /// Until the backend's response headers arrive; bodies may stream longer.
    pub request: Duration,
    /// A client keep-alive connection with no request in flight.
    pub idle: Duration,
    /// A WebSocket tunnel with no bytes in either direction.
    pub tunnel_idle: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// >= 8 KiB (hyper's minimum read buffer).
    pub max_header_bytes: usize,
    /// Client connections (a tunnel counts once here but holds two file descriptors).
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    pub format: AccessLogFormat,
    /// Query parameters whose values are replaced by `REDACTED` in logged paths.
    pub redact_query: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    Json,
    Text,
    Off,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// Keep accepting this long after SIGTERM, with `/readyz` answering 503.
    pub delay: Duration,
    /// Exit no later than this after SIGTERM.
    pub timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DebugConfig {
    /// Add `X-Tether-Backend: <backend id>` to responses.
    pub backend_header: bool,
}

impl Config {
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
