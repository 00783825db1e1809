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

/// A YAML mapping whose order matters (upstreams, in file order).
#[derive(Debug, Clone)]
pub(super) struct Ordered<T>(pub Vec<(String, T)>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Ordered<T> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedVisitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OrderedVisitor<T> {
            type Value = Ordered<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping of names to upstreams")
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
    pub listeners: Vec<FileListener>,
    pub admin: Option<FileAdmin>,
    pub routes: Vec<FileRoute>,
    pub upstreams: Ordered<FileUpstream>,
    pub timeouts: Option<FileTimeouts>,
    pub limits: Option<FileLimits>,
    pub trusted_proxies: Option<Vec<Text>>,
    pub access_log: Option<FileAccessLog>,
    pub shutdown: Option<FileShutdown>,
    pub debug: Option<FileDebug>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileListener {
    pub name: Text,
    pub bind: Text,
    pub tls: Option<FileTls>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileTls {
    pub certificates: Vec<FileCertificate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileCertificate {
    pub cert: Text,
    pub key: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAdmin {
    pub bind: Text,
    pub token_env: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileRoute {
    pub host: Option<Text>,
    pub path_prefix: Option<Text>,
    pub upstream: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileUpstream {
    pub backends: Option<Vec<FileBackend>>,
    pub discovery: Option<FileDiscovery>,
    pub affinity: Option<FileAffinity>,
    pub health_check: Option<FileHealthCheck>,
    pub passive: Option<FilePassive>,
    pub drain: Option<FileDrain>,
    pub rebalance: Option<FileRebalance>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileBackend {
    pub id: Text,
    pub address: Text,
    pub weight: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDiscovery {
    pub dns: Text,
    pub interval: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAffinity {
    pub key: Option<Vec<FileKeySource>>,
    pub hash: Option<FileHash>,
    pub cookie: Option<FileCookie>,
    pub fallback: Option<Text>,
}

/// Exactly one field must be set; `validate` checks that so the message can say so.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileKeySource {
    pub header: Option<Text>,
    pub cookie: Option<Text>,
    pub query: Option<Text>,
    pub jwt_claim: Option<FileJwtClaim>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileJwtClaim {
    pub from: Text,
    pub claim: Text,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileHash {
    pub vnodes: Option<u32>,
    pub balance_factor: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileCookie {
    pub name: Option<Text>,
    pub ttl: Option<Text>,
    /// `auto`, `true` or `false`.
    pub secure: Option<Text>,
    pub http_only: Option<bool>,
    pub same_site: Option<Text>,
    pub path: Option<Text>,
    pub domain: Option<Text>,
    pub key_env: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileHealthCheck {
    pub path: Option<Text>,
    pub interval: Option<Text>,
    pub timeout: Option<Text>,
    pub healthy_after: Option<u32>,
    pub unhealthy_after: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FilePassive {
    pub consecutive_failures: Option<u32>,
    pub ejection: Option<Text>,
    pub max_ejection: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDrain {
    pub timeout: Option<Text>,
    pub close_spread: Option<Text>,
    pub close_code: Option<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileRebalance {
    pub enabled: Option<bool>,
    pub max_closes_per_second: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileTimeouts {
    pub connect: Option<Text>,
    pub header_read: Option<Text>,
    pub request: Option<Text>,
    pub idle: Option<Text>,
    pub tunnel_idle: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileLimits {
    pub max_header_bytes: Option<Text>,
    pub max_connections: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileAccessLog {
    pub format: Option<Text>,
    pub redact_query: Option<Vec<Text>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileShutdown {
    pub delay: Option<Text>,
    pub timeout: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping")]
pub(super) struct FileDebug {
    pub backend_header: Option<bool>,
}
