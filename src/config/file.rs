//! Serde mirror of the YAML file: its shape, not its meaning.
//!
//! Owns: which keys exist where (`deny_unknown_fields` everywhere), which are required, and
//! which are numbers, booleans, lists or mappings. Must not: interpret values. Addresses,
//! durations, sizes, CIDRs, names and enumerations stay [`Text`] here so that `validate` can
//! report every semantic problem together instead of stopping at the first.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};

/// A scalar kept as text for `validate` to interpret. Numbers and booleans are accepted and
/// rendered back to text, so `timeout: 5` is reported as "invalid duration "5"" (with the
/// expected form) rather than as a type error that would hide every other problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Text(pub String);

impl Text {
    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl Visitor<'_> for TextVisitor {
            type Value = Text;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text, E> {
                Ok(Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Text, E> {
                Ok(Text(v))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Text, E> {
                Ok(Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// A YAML mapping whose order matters (upstreams and verifiers in file order, header values).
#[derive(Debug, Clone)]
pub(super) struct Ordered<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered<T>, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = map.next_entry::<String, T>()? {
                    entries.push((key, value));
                }
                Ok(Ordered(entries))
            }
        }
        deserializer.deserialize_map(OrderedVisitor(std::marker::PhantomData))
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileConfig {
    pub(crate) listeners: Vec<FileListener>,
    pub(crate) admin: Option<FileAdmin>,
    pub(crate) routes: Vec<FileRoute>,
    pub(crate) upstreams: Ordered<FileUpstream>,
    pub(crate) timeouts: Option<FileTimeouts>,
    pub(crate) limits: Option<FileLimits>,
    pub(crate) trusted_proxies: Option<Vec<Text>>,
    pub(crate) access_log: Option<FileAccessLog>,
    pub(crate) shutdown: Option<FileShutdown>,
    pub(crate) debug: Option<FileDebug>,
    pub(crate) auth: Option<Ordered<FileVerifier>>,
    pub(crate) forwarded_headers: Option<Text>,
    pub(crate) runtime: Option<FileRuntime>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileListener {
    pub(crate) name: Text,
    pub(crate) bind: Text,
    pub(crate) tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileTls {
    pub(crate) certificates: Vec<FileCertificate>,
    pub(crate) strict_key_permissions: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileCertificate {
    pub(crate) cert: Text,
    pub(crate) key: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAdmin {
    pub(crate) bind: Text,
    pub(crate) token_env: Option<Text>,
    pub(crate) allowed_hosts: Option<Vec<Text>>,
    pub(crate) metrics_public: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileRoute {
    pub(crate) host: Option<Text>,
    pub(crate) path_prefix: Option<Text>,
    pub(crate) upstream: Text,
    pub(crate) auth: Option<Text>,
    pub(crate) request_headers: Option<FileHeaderRules>,
    pub(crate) response_headers: Option<FileHeaderRules>,
    pub(crate) websocket: Option<FileWebSocket>,
    pub(crate) path: Option<FilePathRules>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FilePathRules {
    pub(crate) allow_encoded_slash: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileHeaderRules {
    pub(crate) set: Option<Ordered<Text>>,
    pub(crate) remove: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileWebSocket {
    pub(crate) allowed_origins: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileVerifier {
    pub(crate) jwt: FileJwt,
    pub(crate) token_from: Option<Vec<Text>>,
    pub(crate) identity: Option<FileIdentity>,
    pub(crate) required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileJwt {
    pub(crate) algorithms: Option<Vec<Text>>,
    pub(crate) jwks_file: Option<Text>,
    pub(crate) key_file: Option<Text>,
    pub(crate) secret_env: Option<Text>,
    pub(crate) issuer: Option<Text>,
    pub(crate) audience: Option<Vec<Text>>,
    pub(crate) leeway: Option<Text>,
    pub(crate) require_exp: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileIdentity {
    pub(crate) claim: Option<Text>,
    pub(crate) header: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileUpstream {
    pub(crate) backends: Option<Vec<FileBackend>>,
    pub(crate) discovery: Option<FileDiscovery>,
    pub(crate) affinity: Option<FileAffinity>,
    pub(crate) health_check: Option<FileHealthCheck>,
    pub(crate) passive: Option<FilePassive>,
    pub(crate) drain: Option<FileDrain>,
    pub(crate) rebalance: Option<FileRebalance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileBackend {
    pub(crate) id: Text,
    pub(crate) address: Text,
    pub(crate) weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDiscovery {
    pub(crate) dns: Text,
    pub(crate) interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAffinity {
    pub(crate) key: Option<Vec<FileKeySource>>,
    pub(crate) hash: Option<FileHash>,
    pub(crate) cookie: Option<FileCookie>,
    pub(crate) fallback: Option<Text>,
}

/// Exactly one field must be set; `validate` checks that so the message can say so.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileKeySource {
    pub(crate) header: Option<Text>,
    pub(crate) cookie: Option<Text>,
    pub(crate) query: Option<Text>,
    pub(crate) path_segment: Option<usize>,
    pub(crate) jwt_claim: Option<FileJwtClaim>,
    pub(crate) verified_claim: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileJwtClaim {
    pub(crate) from: Text,
    pub(crate) claim: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileHash {
    pub(crate) vnodes: Option<u32>,
    pub(crate) balance_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileCookie {
    pub(crate) name: Option<Text>,
    pub(crate) ttl: Option<Text>,
    /// `auto`, `true` or `false`.
    pub(crate) secure: Option<Text>,
    pub(crate) http_only: Option<bool>,
    pub(crate) same_site: Option<Text>,
    pub(crate) path: Option<Text>,
    pub(crate) domain: Option<Text>,
    pub(crate) key_env: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileHealthCheck {
    pub(crate) path: Option<Text>,
    pub(crate) interval: Option<Text>,
    pub(crate) timeout: Option<Text>,
    pub(crate) healthy_after: Option<u32>,
    pub(crate) unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FilePassive {
    pub(crate) consecutive_failures: Option<u32>,
    pub(crate) ejection: Option<Text>,
    pub(crate) max_ejection: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDrain {
    pub(crate) timeout: Option<Text>,
    pub(crate) close_spread: Option<Text>,
    pub(crate) close_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileRebalance {
    pub(crate) enabled: Option<bool>,
    pub(crate) max_closes_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileTimeouts {
    pub(crate) connect: Option<Text>,
    pub(crate) header_read: Option<Text>,
    pub(crate) request: Option<Text>,
    pub(crate) idle: Option<Text>,
    pub(crate) tunnel_idle: Option<Text>,
    pub(crate) send: Option<Text>,
    pub(crate) body_read: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileLimits {
    pub(crate) max_header_bytes: Option<Text>,
    pub(crate) max_connections: Option<u64>,
    pub(crate) max_streams_per_connection: Option<u32>,
    pub(crate) max_in_flight: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAccessLog {
    pub(crate) format: Option<Text>,
    pub(crate) redact_query: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileShutdown {
    pub(crate) delay: Option<Text>,
    pub(crate) timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDebug {
    pub(crate) backend_header: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileRuntime {
    pub(crate) workers: Option<u64>,
}
