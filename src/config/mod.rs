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

use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

mod error;
mod file;
pub(crate) mod jwt;
mod source;
mod tls;
pub mod units;
mod validate;
mod values;

pub use error::{ConfigError, ConfigErrors, ListenerError, ReloadError};
pub(crate) use validate::{DEFAULT_LEEWAY, MIN_SECRET_BYTES, parse_origin};
pub use validate::{load, parse};
pub use values::AddressError;

/// Looks an environment variable up: where secrets named by `*_env` keys are read at run time
/// (the process environment, unless an embedder or a test supplies its own).
pub type Env = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// The process environment, as an [`Env`].
pub fn process_env() -> Env {
    Arc::new(|name: &str| std::env::var(name).ok())
}

/// A validated configuration plus the text it came from.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config came from and its text as written (`${VAR}` unexpanded), for
    /// `/admin/config` and for resolving relative paths.
    pub source: ConfigSource,
    /// Client listeners, in file order.
    pub listeners: Vec<ListenerConfig>,
    /// The admin listener, if configured.
    pub admin: Option<AdminConfig>,
    /// In file order: the first matching route wins.
    pub routes: Vec<RouteConfig>,
    /// In file order.
    pub upstreams: Vec<UpstreamConfig>,
    /// Connection and request timeouts.
    pub timeouts: Timeouts,
    /// Size and connection limits.
    pub limits: Limits,
    /// Peers whose forwarding headers are kept and extended.
    pub trusted_proxies: Vec<IpNet>,
    /// The access log.
    pub access_log: AccessLogConfig,
    /// The SIGTERM sequence.
    pub shutdown: ShutdownConfig,
    /// Debugging aids.
    pub debug: DebugConfig,
    /// Token verifiers, in file order; routes name them in `auth`.
    pub auth: Vec<VerifierConfig>,
    /// Which forwarding headers tether writes for backends.
    pub forwarded_headers: ForwardedHeaders,
    /// The async runtime.
    pub runtime: RuntimeConfig,
}

/// A successfully loaded config and the warnings found while loading it (unset `*_env`
/// variables, for example), which `tether check` prints and `tether proxy` logs.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Problems that do not prevent running, one line each.
    pub warnings: Vec<String>,
}

/// Where a config came from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    /// The file, as given.
    pub path: PathBuf,
    /// Its text as written.
    pub text: String,
}

/// One client listener.
#[derive(Debug, Clone)]
pub struct ListenerConfig {
    /// Unique name (metrics, logs, the `listening` line).
    pub name: String,
    /// Address to bind (port 0: any free port).
    pub bind: SocketAddr,
    /// TLS termination, when set.
    pub tls: Option<TlsConfig>,
}

/// The certificates of a TLS listener.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// Chosen by SNI; the first is the default for clients that send no (or an unknown) name.
    pub certificates: Vec<CertificateConfig>,
}

/// A certificate chain and its private key, already read, parsed and checked to match.
#[derive(Debug, Clone)]
pub struct CertificateConfig {
    /// The PEM certificate chain file.
    pub cert_path: PathBuf,
    /// The PEM private key file.
    pub key_path: PathBuf,
    /// Chain and key, parsed and checked to belong together.
    pub certified: Arc<rustls::sign::CertifiedKey>,
    /// DNS names from the leaf's subjectAltName (lowercase; may start with `*.`).
    pub names: Vec<String>,
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Address to bind; loopback unless a token protects it.
    pub bind: SocketAddr,
    /// Name of the environment variable holding the bearer token for `/admin/*`.
    pub token_env: Option<String>,
    /// Host names (lowercase) accepted in the `Host` of admin requests, besides IP literals
    /// and `localhost`.
    pub allowed_hosts: Vec<String>,
    /// `/metrics` answers without the token.
    pub metrics_public: bool,
}

/// One route: requests matching host and path prefix go to an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RouteConfig {
    /// Which hosts the route applies to.
    pub host: HostMatch,
    /// Always starts with `/`.
    pub path_prefix: String,
    /// Name of an upstream that exists in [`Config::upstreams`].
    pub upstream: String,
    /// Name of the verifier (in [`Config::auth`]) whose token the route requires or reads.
    pub auth: Option<String>,
    /// Set and remove headers of requests, after tether's own.
    pub request_headers: HeaderRules,
    /// Set and remove headers of responses, after tether's own.
    pub response_headers: HeaderRules,
    /// WebSocket upgrades on this route.
    pub websocket: WebSocketConfig,
    /// Paths with an encoded slash (`%2F`) are accepted here (refused with 400 otherwise).
    pub allow_encoded_slash: bool,
}

/// Headers a route sets (replacing any copies) and removes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HeaderRules {
    /// Set, in file order.
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Removed, every copy.
    pub remove: Vec<HeaderName>,
}

impl HeaderRules {
    /// No rule at all.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.remove.is_empty()
    }
}

/// WebSocket settings of a route.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WebSocketConfig {
    /// Origins whose pages may open a WebSocket here, besides the request's own origin.
    pub allowed_origins: Vec<OriginPattern>,
}

/// An allowed `Origin`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginPattern {
    /// `*`: any origin.
    Any,
    /// `https://app.example.com`: exactly this origin (port made explicit).
    Exact {
        /// `http` or `https`.
        scheme: String,
        /// Lowercase host.
        host: String,
        /// The port, the scheme's default when not written.
        port: u16,
    },
    /// `https://*.example.com`: any subdomain, at any depth.
    Subdomains {
        /// `http` or `https`.
        scheme: String,
        /// `.example.com`, lowercase.
        suffix: String,
        /// The port, the scheme's default when not written.
        port: u16,
    },
}

/// Which forwarding headers tether writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeaders {
    /// `X-Forwarded-For`, `-Proto`, `-Host`, `-Port` and `X-Real-IP`.
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded`.
    Rfc7239,
    /// Both.
    Both,
}

/// A named token verifier: where its token comes from, how it is checked, and what a
/// verified token tells the backend.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Its name, as routes refer to it.
    pub name: String,
    /// How tokens are verified.
    pub jwt: JwtConfig,
    /// Where the token is looked for; the first found wins.
    pub token_from: Vec<TokenSource>,
    /// The verified claim and the header that carries it to backends.
    pub identity: IdentityConfig,
    /// A request without a token is refused (401); otherwise it passes as anonymous.
    pub required: bool,
}

/// How a verifier checks a JWT.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Accepted `alg` values (never `none`).
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    /// The keys signatures are checked with.
    pub keys: JwtKeys,
    /// Required `iss`, when set.
    pub issuer: Option<String>,
    /// `aud` must name one of these, when any is set.
    pub audience: Vec<String>,
    /// Clock skew allowed for `exp` and `nbf`.
    pub leeway: Duration,
    /// A token without `exp` is refused.
    pub require_exp: bool,
}

/// Where a verifier's keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    /// Public keys read from `jwks_file` or `key_file` (read again at every reload).
    Files {
        /// The file, resolved.
        path: PathBuf,
        /// Its keys.
        keys: Arc<[JwtKey]>,
    },
    /// An HMAC secret in this environment variable, read where it is used.
    SecretEnv(String),
}

/// One verification key.
#[derive(Debug, Clone)]
pub struct JwtKey {
    /// Its `kid`, which tokens use to pick it.
    pub kid: Option<String>,
    /// The one algorithm it may verify, when its JWK says so.
    pub alg: Option<jsonwebtoken::Algorithm>,
    /// The key.
    pub key: jsonwebtoken::DecodingKey,
}

/// The verified claim forwarded to backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The claim (default `sub`).
    pub claim: String,
    /// The request header it is written to; client-sent copies are always removed.
    pub header: HeaderName,
}

/// A route's host rule.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum HostMatch {
    /// `"*"`
    #[default]
    Any,
    /// An exact host name, lowercase, without port.
    Exact(String),
    /// `"*.example.com"`, stored as `".example.com"` (lowercase): matches any name ending in it.
    Suffix(String),
}

/// A named group of backends and how requests are spread over them.
#[derive(Debug, Clone)]
pub struct UpstreamConfig {
    /// Unique name (routes, metrics, the admin API).
    pub name: String,
    /// Static backends, in file order. Ids are unique within the upstream.
    pub backends: Vec<BackendConfig>,
    /// DNS discovery of more backends, when set.
    pub discovery: Option<DiscoveryConfig>,
    /// How users are pinned to backends.
    pub affinity: AffinityConfig,
    /// `None`: no active checks, backends are judged passively only.
    pub health_check: Option<HealthCheckConfig>,
    /// Ejection after connect failures.
    pub passive: PassiveConfig,
    /// How a backend that leaves is drained.
    pub drain: DrainConfig,
    /// Moving tunnels when a backend becomes active.
    pub rebalance: RebalanceConfig,
}

/// One static backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendConfig {
    /// Stable identity: it goes on the hash ring and into sticky cookies, never the address.
    pub id: String,
    /// Where to connect.
    pub address: BackendAddress,
    /// >= 1.
    pub weight: u32,
}

/// `host:port` where host is an IP literal or a DNS name, resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendAddress {
    /// IPv6 literals are stored without brackets.
    pub host: String,
    /// TCP port.
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

/// Backends from the A/AAAA records of a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The name and the port every record's backend uses.
    pub dns: BackendAddress,
    /// How often the name is resolved again.
    pub interval: Duration,
}

/// How requests and tunnels are pinned to backends.
#[derive(Debug, Clone, PartialEq)]
pub struct AffinityConfig {
    /// Tried in order; the first that yields a non-empty value wins. Empty: no key affinity.
    pub keys: Vec<KeySource>,
    /// The consistent-hash ring the keys are hashed onto.
    pub hash: HashConfig,
    /// `None`: no sticky cookie is ever set.
    pub cookie: Option<CookieConfig>,
    /// How requests without a key or a usable pin are placed.
    pub fallback: Fallback,
}

/// Where an affinity key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A request header.
    Header(HeaderName),
    /// A request cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
    /// A claim of the token verified by the route's `auth`.
    VerifiedClaim(String),
    /// The 0-based segment of the request path (`/ws/{server}/{session}/xhr`: 1 is `{server}`),
    /// for clients that carry their session in the URL rather than a cookie (SockJS).
    PathSegment(usize),
    /// A claim of a JWT, decoded without verifying it (routing only).
    JwtClaim {
        /// Where the token is.
        from: TokenSource,
        /// The claim whose value is the key.
        claim: String,
    },
}

/// Where a JWT is read from: `header:NAME`, `cookie:NAME` or `query:NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// A header (`Authorization: Bearer` is understood).
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// A query parameter.
    Query(String),
}

/// The consistent-hash ring.
#[derive(Debug, Clone, PartialEq)]
pub struct HashConfig {
    /// Virtual nodes per unit of weight.
    pub vnodes: u32,
    /// 0 = exact stickiness; > 1 (e.g. 1.25) = consistent hashing with bounded loads.
    pub balance_factor: f64,
}

/// The signed sticky cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieConfig {
    /// Cookie name.
    pub name: String,
    /// Zero = session cookie.
    pub ttl: Duration,
    /// When the `Secure` attribute is set.
    pub secure: SecureMode,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite`.
    pub same_site: SameSite,
    /// `Path` (empty: none).
    pub path: String,
    /// `Domain`, when set.
    pub domain: Option<String>,
    /// Environment variable holding the HMAC key shared by all proxy replicas.
    pub key_env: Option<String>,
}

/// When the sticky cookie is marked `Secure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecureMode {
    /// Secure on TLS listeners only.
    Auto,
    /// On every listener.
    Always,
    /// Never.
    Never,
}

/// The sticky cookie's `SameSite` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Lax`.
    Lax,
    /// `SameSite=Strict`.
    Strict,
    /// `SameSite=None` (requires `Secure`).
    None,
}

/// How requests without a key or a usable pin are placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fallback {
    /// The backend with the least requests and tunnels.
    #[default]
    LeastConnections,
    /// Each backend in turn.
    RoundRobin,
    /// The less loaded of two random backends.
    RandomTwoChoices,
}

/// Active health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheckConfig {
    /// Path requested (`GET`).
    pub path: String,
    /// Time between checks.
    pub interval: Duration,
    /// How long a check may take.
    pub timeout: Duration,
    /// Good checks in a row before a backend is healthy again.
    pub healthy_after: u32,
    /// Failed checks in a row before a backend is down.
    pub unhealthy_after: u32,
}

/// Passive ejection after connect failures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveConfig {
    /// Failures in a row that eject a backend.
    pub consecutive_failures: u32,
    /// Length of the first ejection (doubled for each one in a row).
    pub ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
}

/// Draining a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainConfig {
    /// How long tunnels may stay before they get their Close.
    pub timeout: Duration,
    /// Window the Closes are spread over.
    pub close_spread: Duration,
    /// 1001 (going away) or 1012 (service restart).
    pub close_code: u16,
}

/// Rebalancing tunnels when a backend becomes active.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Off by default.
    pub enabled: bool,
    /// Pace of the closes.
    pub max_closes_per_second: u32,
}

/// Timeouts of connections and requests.
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
    /// A response or tunnel write that makes no progress (the peer stopped reading).
    pub send: Duration,
    /// No byte of a request body arriving (408).
    pub body_read: Duration,
}

/// Size and connection limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// >= 8 KiB (hyper's minimum read buffer).
    pub max_header_bytes: usize,
    /// Client connections (a tunnel counts once here but holds two file descriptors).
    pub max_connections: usize,
    /// Concurrent streams of one HTTP/2 connection (advertised in SETTINGS).
    pub max_streams_per_connection: u32,
    /// Requests and tunnels in flight across all connections; `None`: derived from the
    /// open-file limit when the proxy starts.
    pub max_in_flight: Option<usize>,
}

/// The access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogConfig {
    /// Format, or off.
    pub format: AccessLogFormat,
    /// Query parameters whose values are replaced by `REDACTED` in logged paths.
    pub redact_query: Vec<String>,
}

/// How access log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
    /// No access log.
    Off,
}

/// The SIGTERM sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownConfig {
    /// Keep accepting this long after SIGTERM, with `/readyz` answering 503.
    pub delay: Duration,
    /// Exit no later than this after SIGTERM.
    pub timeout: Duration,
}

/// Debugging aids.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DebugConfig {
    /// Add `X-Tether-Backend: <backend id>` to responses.
    pub backend_header: bool,
}

/// The async runtime the proxy runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RuntimeConfig {
    /// Worker threads; `None`: `TOKIO_WORKER_THREADS` if set, else the CPUs available.
    pub workers: Option<usize>,
}

/// Where the worker count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkersFrom {
    /// `runtime.workers`.
    Config,
    /// The `TOKIO_WORKER_THREADS` variable.
    Environment,
    /// The CPUs available to the process (affinity mask and cgroup quota).
    Cpus,
}

impl WorkersFrom {
    /// How the startup log names it.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkersFrom::Config => "runtime.workers",
            WorkersFrom::Environment => "TOKIO_WORKER_THREADS",
            WorkersFrom::Cpus => "available CPUs",
        }
    }
}

/// The most worker threads tether starts, whatever is asked for.
pub const MAX_WORKERS: usize = 1024;

impl RuntimeConfig {
    /// How many worker threads to run: `runtime.workers`, else `TOKIO_WORKER_THREADS` (its
    /// value `env`, ignored unless a whole number from 1 to [`MAX_WORKERS`]), else the CPUs
    /// `available`.
    pub fn workers(&self, env: Option<&str>, available: usize) -> (usize, WorkersFrom) {
        if let Some(n) = self.workers {
            return (n, WorkersFrom::Config);
        }
        match env.and_then(|v| v.trim().parse::<usize>().ok()) {
            Some(n) if (1..=MAX_WORKERS).contains(&n) => (n, WorkersFrom::Environment),
            _ => (available.clamp(1, MAX_WORKERS), WorkersFrom::Cpus),
        }
    }
}

impl Config {
    /// The upstream named `name`.
    pub fn upstream(&self, name: &str) -> Option<&UpstreamConfig> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}
