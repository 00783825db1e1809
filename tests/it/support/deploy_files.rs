//! The deployment files under `docker/`, as the deploy tests read them: the compose file (with
//! its `<<: *anchor` merge keys applied), multi-document Kubernetes manifests, the configs
//! they embed, and the command lines they give `tether`, rewritten for local processes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize as _;
use serde_yaml::Value;

/// A path inside the repository.
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// `docker/docker-compose.test.yml`, merge keys applied as compose applies them.
pub fn compose() -> Value {
    let text = read("docker/docker-compose.test.yml");
    let mut value: Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("compose file: {e}"));
    value.apply_merge().unwrap_or_else(|e| panic!("compose file merge keys: {e}"));
    value
}

/// One compose service.
pub fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose.get("services").and_then(|s| s.get(name)).unwrap_or_else(|| panic!("compose file has no service {name}"))
}

/// Every document of a (multi-document) manifest file.
pub fn manifests(relative: &str) -> Vec<Value> {
    let text = read(relative);
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{relative}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// The document of `kind` named `name`.
pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| str_at(d, &["kind"]) == Some(kind) && str_at(d, &["metadata", "name"]) == Some(name))
        .unwrap_or_else(|| panic!("no {kind} named {name}"))
}

/// The value at `path` (mapping keys; numbers index sequences).
pub fn at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| match key.parse::<usize>() {
        Ok(i) if v.is_sequence() => v.get(i),
        _ => v.get(*key),
    })
}

pub fn str_at<'a>(value: &'a Value, path: &[&str]) -> Option<&'a str> {
    at(value, path).and_then(Value::as_str)
}

/// A sequence of scalars as strings (numbers and booleans as YAML writes them).
pub fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("expected a sequence, got {value:?}"))
        .iter()
        .map(|v| match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => panic!("expected a scalar, got {other:?}"),
        })
        .collect()
}

/// The container named `name` of a Deployment's pod template.
pub fn container<'a>(deployment: &'a Value, name: &str) -> &'a Value {
    at(deployment, &["spec", "template", "spec", "containers"])
        .and_then(Value::as_sequence)
        .and_then(|cs| cs.iter().find(|c| str_at(c, &["name"]) == Some(name)))
        .unwrap_or_else(|| panic!("no container {name}"))
}

/// The value following `flag` in a command line.
pub fn flag<'a>(args: &'a [String], flag: &str) -> Option<&'a str> {
    args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).map(String::as_str)
}

/// `args` with the value of each `(flag, value)` replaced, or the pair appended when the
/// command line does not have the flag.
pub fn with_flags(args: &[String], changes: &[(&str, &str)]) -> Vec<String> {
    let mut out = args.to_vec();
    for (name, value) in changes {
        match out.iter().position(|a| a == name) {
            Some(i) if i + 1 < out.len() => out[i + 1] = (*value).to_owned(),
            _ => out.extend([(*name).to_owned(), (*value).to_owned()]),
        }
    }
    out
}

/// The port of a `host:port` string.
pub fn port_of(address: &str) -> u16 {
    address.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or_else(|| panic!("{address:?} is not host:port"))
}

/// A compose or tether duration (`30s`, `500ms`, `1m`).
pub fn duration(text: &str) -> Duration {
    tether::config::units::parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// Parses a tether config as `tether proxy` would, with `env` as the whole environment.
pub fn parse_config(path: &Path, text: &str, env: &[(&str, &str)]) -> tether::config::Config {
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    tether::config::parse(path, text, &lookup).unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display())).config
}

/// The config file a ConfigMap carries under `key`.
pub fn config_map_file(config_map: &Value, key: &str) -> String {
    str_at(config_map, &["data", key]).unwrap_or_else(|| panic!("ConfigMap has no data.{key}")).to_owned()
}

/// The example JWKS of `docker/jwt` (LOCAL USE ONLY): what the compose file mounts, and what
/// stands in for the Kubernetes Secret `tether-jwks` when the manifests' configs run here.
pub fn example_jwks() -> PathBuf {
    repo_path("docker/jwt/jwks.json")
}

/// The variable through which the Kubernetes configs name their JWKS (the Secret's mount).
pub const JWKS_FILE_VAR: &str = "TETHER_JWKS_FILE";

/// A token for `sub`, valid ten minutes, signed with the example key of `docker/jwt` (whose
/// private half is in the repository: LOCAL USE ONLY), as a local identity provider would.
pub fn example_token(sub: &str) -> String {
    let pem = std::fs::read(repo_path("docker/jwt/local-only.key")).expect("docker/jwt/local-only.key");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("an RSA private key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("local-only".into());
    let claims = serde_json::json!({ "sub": sub, "exp": jsonwebtoken::get_current_timestamp() + 600 });
    jsonwebtoken::encode(&header, &claims, &key).expect("sign")
}
