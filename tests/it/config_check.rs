//! `tether check` end to end: the real binary on config files in a temporary directory, with
//! its output compared to golden text (file:line:column included), and `config::load` of the
//! shipped example.

use std::net::SocketAddr;
use std::path::Path;

use tether::config::{self, HostMatch, KeySource, SecureMode};

use crate::support::check::{CheckRun, ConfigDir, run_check};

/// A failed check: nothing on stdout, exactly `errors` (one per line) on stderr, exit 1.
fn failed(errors: &[&str]) -> CheckRun {
    CheckRun { code: Some(1), stdout: String::new(), stderr: errors.iter().map(|e| format!("{e}\n")).collect() }
}

fn passed(file: &str, warnings: &[&str]) -> CheckRun {
    CheckRun {
        code: Some(0),
        stdout: format!("{file}: ok\n"),
        stderr: warnings.iter().map(|w| format!("warning: {w}\n")).collect(),
    }
}

async fn check_text(text: &str, env: &[(&str, &str)]) -> CheckRun {
    let dir = ConfigDir::new();
    dir.write("config.yaml", text);
    dir.check("config.yaml", env).await
}

#[tokio::test]
async fn an_unknown_key_is_reported_at_the_key_with_the_allowed_keys() {
    let text = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - upstream: app
    prefix: /
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:6:5: routes[0].prefix: unknown key \"prefix\"; allowed keys: host, \
             path_prefix, upstream, auth, request_headers, response_headers, websocket, path"])
    );
}

#[tokio::test]
async fn a_port_out_of_range_is_reported_with_line_column_and_field() {
    let text = "\
# tether
# two backends, one with a typo
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - id: app-1
        address: \"127.0.0.1:9001\"
      - id: app-2
        address: \"127.0.0.1:99999\"
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:14:18: upstreams.app.backends[1].address: invalid socket address \
             \"127.0.0.1:99999\": port 99999 is out of range (1-65535)"])
    );
}

#[tokio::test]
async fn missing_tls_files_are_both_reported() {
    let text = "\
listeners:
  - name: secure
    bind: \"127.0.0.1:8443\"
    tls:
      certificates:
        - cert: certs/missing.crt
          key: certs/missing.key
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&[
            "config.yaml:6:17: listeners[0].tls.certificates[0].cert: certificate file \
             \"certs/missing.crt\" does not exist",
            "config.yaml:7:16: listeners[0].tls.certificates[0].key: key file \
             \"certs/missing.key\" does not exist",
        ])
    );
}

#[tokio::test]
async fn an_unknown_upstream_lists_the_defined_ones() {
    let text = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - { host: \"api.example.com\", upstream: api }
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
  web:
    backends:
      - { id: web-1, address: \"web:80\" }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:5:42: routes[0].upstream: unknown upstream \"api\" (defined upstreams: \
             app, web)"])
    );
}

#[tokio::test]
async fn a_duplicate_backend_id_names_the_first_one() {
    let text = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
      - { id: app-1, address: \"127.0.0.1:9002\" }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:10:15: upstreams.app.backends[1].id: duplicate backend id \"app-1\" \
             (also upstreams.app.backends[0])"])
    );
}

#[tokio::test]
async fn a_duration_without_unit_states_the_expected_form() {
    let text = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
timeouts: { connect: 2s, idle: 90 }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:10:32: timeouts.idle: invalid duration \"90\": expected a whole number \
             followed by ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)"])
    );
}

#[tokio::test]
async fn every_problem_in_a_file_is_reported_together_top_to_bottom() {
    let text = "\
listeners:
  - name: public
    bind: \"0.0.0.0:8080\"
  - name: public-2
    bind: \"127.0.0.1:8080\"
    tls:
      certificates:
        - { cert: nope.crt, key: nope.key }
routes:
  - { path_prefix: api, upstream: app }
  - { upstream: ap }
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\", weight: 0 }
      - { id: app-1, address: \"app:0\" }
    affinity:
      hash: { balance_factor: 0.9 }
timeouts: { request: 1.5s }
shutdown: { delay: 30s, timeout: 20s }
";
    assert_eq!(
        check_text(text, &[]).await,
        failed(&[
            "config.yaml:5:11: listeners[1].bind: bind 127.0.0.1:8080 is also used by \
             listeners[0]",
            "config.yaml:8:19: listeners[1].tls.certificates[0].cert: certificate file \
             \"nope.crt\" does not exist",
            "config.yaml:8:34: listeners[1].tls.certificates[0].key: key file \"nope.key\" does \
             not exist",
            "config.yaml:10:20: routes[0].path_prefix: \"api\" must start with \"/\"",
            "config.yaml:11:17: routes[1].upstream: unknown upstream \"ap\" (defined upstreams: \
             app)",
            "config.yaml:15:57: upstreams.app.backends[0].weight: weight must be between 1 and \
             1000, got 0",
            "config.yaml:16:15: upstreams.app.backends[1].id: duplicate backend id \"app-1\" \
             (also upstreams.app.backends[0])",
            "config.yaml:16:31: upstreams.app.backends[1].address: invalid socket address \
             \"app:0\": port 0 is out of range (1-65535)",
            "config.yaml:18:31: upstreams.app.affinity.hash.balance_factor: balance_factor must \
             be 0 (off) or greater than 1.0 (e.g. 1.25), got 0.9",
            "config.yaml:19:22: timeouts.request: invalid duration \"1.5s\": expected a whole \
             number followed by ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)",
            "config.yaml:20:34: shutdown.timeout: timeout (20s) must be longer than delay (30s)",
        ])
    );
}

const ENV_CONFIG: &str = "\
listeners:
  - name: public
    bind: \"${BIND:-127.0.0.1:8080}\"
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"${APP_ADDR}\" }
      - { id: app-2, address: \"$${literal}:80\" }
";

#[tokio::test]
async fn an_unset_variable_without_default_is_located_at_its_value() {
    assert_eq!(
        check_text(ENV_CONFIG, &[]).await,
        failed(&["config.yaml:9:31: upstreams.app.backends[0].address: environment variable APP_ADDR \
             is not set (write ${APP_ADDR:-default} to give a default)"])
    );
}

#[tokio::test]
async fn expanded_values_are_validated_where_they_were_written() {
    // `$${literal}` stays the text "${literal}", which is not a host name.
    assert_eq!(
        check_text(ENV_CONFIG, &[("APP_ADDR", "app:9001"), ("BIND", "nowhere")]).await,
        failed(&[
            "config.yaml:3:11: listeners[0].bind: invalid socket address \"nowhere\"; expected \
             IP:port (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")",
            "config.yaml:10:31: upstreams.app.backends[1].address: invalid socket address \
             \"${literal}:80\": \"${literal}\" is neither an IP address nor a DNS name",
        ])
    );
}

#[tokio::test]
async fn variables_and_defaults_expand_end_to_end() {
    let dir = ConfigDir::new();
    let text = ENV_CONFIG.replace("$${literal}", "${SECOND_HOST:-app-2.internal}");
    let path = dir.write("config.yaml", &text);
    assert_eq!(dir.check("config.yaml", &[("APP_ADDR", "10.1.2.3:9001")]).await, passed("config.yaml", &[]));
    let env = |name: &str| match name {
        "APP_ADDR" => Some("10.1.2.3:9001".to_owned()),
        "BIND" => Some("127.0.0.1:7000".to_owned()),
        _ => None,
    };
    let loaded = config::parse(&path, &text, &env).expect("valid");
    let c = loaded.config;
    assert_eq!(c.listeners[0].bind, "127.0.0.1:7000".parse::<SocketAddr>().unwrap());
    let addresses: Vec<String> = c.upstreams[0].backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(addresses, ["10.1.2.3:9001", "app-2.internal:80"]);
    // The source keeps the text as written, for /admin/config.
    assert_eq!(c.source.text, text);
}

#[tokio::test]
async fn a_certificate_with_the_wrong_key_is_rejected() {
    let dir = ConfigDir::new();
    dir.write_self_signed("a", &["a.test"]);
    dir.write_self_signed("b", &["b.test"]);
    dir.write(
        "config.yaml",
        "\
listeners:
  - name: secure
    bind: \"127.0.0.1:8443\"
    tls:
      certificates:
        - { cert: b.crt, key: b.key }
        - { cert: a.crt, key: b.key }
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
",
    );
    assert_eq!(
        dir.check("config.yaml", &[]).await,
        failed(&["config.yaml:7:31: listeners[0].tls.certificates[1].key: private key \"b.key\" does \
             not match certificate \"a.crt\""])
    );
}

#[tokio::test]
async fn a_syntax_error_stops_at_the_first_problem() {
    let text = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes: [ { upstream: app }
upstreams:
  app: { backends: [] }
";
    // One message, where the parser gave up (the line after the unclosed `[`).
    assert_eq!(
        check_text(text, &[]).await,
        failed(&["config.yaml:5:1: YAML syntax error: invalid indentation in flow construct"])
    );
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    let dir = ConfigDir::new();
    assert_eq!(dir.check("absent.yaml", &[]).await, failed(&["absent.yaml: file not found"]));
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test]
async fn the_example_config_passes_with_an_empty_environment() {
    let text = std::fs::read_to_string(repo_root().join("config.example.yaml")).expect("example");
    let (line, column) = text
        .lines()
        .enumerate()
        .find_map(|(i, l)| l.find("key_env: TETHER_COOKIE_KEY").map(|c| (i + 1, c + 10)))
        .expect("the example names TETHER_COOKIE_KEY");
    let warning = format!(
        "config.example.yaml:{line}:{column}: upstreams.app.affinity.cookie.key_env: \
         environment variable TETHER_COOKIE_KEY is not set; replicas will not share sticky \
         cookies; a random per-process key will be used"
    );
    // The sample TLS key is checked out with the mode the umask gives it: readable by others
    // (the usual 022) is worth a warning, since a private key should not be.
    let mut warnings = Vec::new();
    let key_mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(repo_root().join("docker/tls/localhost.key")).expect("key").permissions(),
    );
    let key_warning = (key_mode & 0o077 != 0).then(|| {
        let (line, column) = text
            .lines()
            .enumerate()
            .find_map(|(i, l)| l.find("key: docker/tls/localhost.key").map(|c| (i + 1, c + 6)))
            .expect("the example names the key");
        let by = if key_mode & 0o007 != 0 { "everyone" } else { "its group" };
        format!(
            "config.example.yaml:{line}:{column}: listeners[1].tls.certificates[0].key: private key \
             docker/tls/localhost.key is readable by {by} (mode {:o}); restrict it with chmod 600",
            key_mode & 0o777
        )
    });
    warnings.extend(key_warning.iter().map(String::as_str));
    warnings.push(&warning);
    assert_eq!(run_check(repo_root(), "config.example.yaml", &[]).await, passed("config.example.yaml", &warnings));
    let key = "0123456789abcdef0123456789abcdef";
    assert_eq!(
        run_check(repo_root(), "config.example.yaml", &[("TETHER_COOKIE_KEY", key)]).await,
        passed("config.example.yaml", &warnings[..warnings.len() - 1])
    );
}

#[test]
fn loading_the_example_yields_its_listeners_and_upstreams() {
    let loaded = config::load(&repo_root().join("config.example.yaml")).expect("example loads");
    let c = loaded.config;
    let listeners: Vec<(&str, SocketAddr, bool)> =
        c.listeners.iter().map(|l| (l.name.as_str(), l.bind, l.tls.is_some())).collect();
    assert_eq!(
        listeners,
        [("public", "0.0.0.0:8080".parse().unwrap(), false), ("public-tls", "0.0.0.0:8443".parse().unwrap(), true),]
    );
    let tls = c.listeners[1].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates.len(), 1);
    assert_eq!(tls.certificates[0].names, ["localhost"]);
    assert_eq!(tls.certificates[0].cert_path, repo_root().join("docker/tls/localhost.crt"));
    assert!(tls.certificates[0].certified.keys_match().is_ok());

    let admin = c.admin.as_ref().expect("admin");
    assert_eq!(admin.bind, "127.0.0.1:9901".parse::<SocketAddr>().unwrap());
    assert_eq!(admin.token_env, None);

    assert_eq!(c.routes.len(), 1);
    assert_eq!(c.routes[0].host, HostMatch::Any);
    assert_eq!(c.routes[0].upstream, "app");

    assert_eq!(c.upstreams.len(), 1);
    let app = c.upstream("app").expect("upstream app");
    let backends: Vec<(&str, String, u32)> =
        app.backends.iter().map(|b| (b.id.as_str(), b.address.to_string(), b.weight)).collect();
    assert_eq!(backends, [("app-1", "127.0.0.1:9001".to_owned(), 1), ("app-2", "127.0.0.1:9002".to_owned(), 1),]);
    assert_eq!(app.affinity.keys, [KeySource::VerifiedClaim("sub".into())]);
    assert_eq!(c.routes[0].auth.as_deref(), Some("users"));
    let users = &c.auth[0];
    assert_eq!((users.name.as_str(), users.required), ("users", false));
    assert_eq!(users.identity.header, http::HeaderName::from_static("x-user-id"));
    let tether::config::JwtKeys::Files { path, keys } = &users.jwt.keys else { panic!("a JWKS file") };
    assert_eq!(path, &repo_root().join("docker/jwt/jwks.json"));
    assert_eq!(keys.iter().map(|k| k.kid.as_deref()).collect::<Vec<_>>(), [Some("local-only")]);
    assert_eq!(c.routes[0].response_headers.set.len(), 1, "the HSTS example");
    let cookie = app.affinity.cookie.as_ref().expect("sticky cookie");
    assert_eq!(cookie.name, "TETHER_AFFINITY");
    assert_eq!(cookie.secure, SecureMode::Auto);
    assert_eq!(cookie.key_env.as_deref(), Some("TETHER_COOKIE_KEY"));
    assert!(app.discovery.is_none());
    assert!(app.health_check.is_some());
    assert_eq!(c.limits.max_header_bytes, 16 * 1024);
}
