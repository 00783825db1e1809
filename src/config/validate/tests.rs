//! One test per validation rule: each feeds a config text to [`parse`] and asserts the exact
//! outcome (typed values, or every located message).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;

use super::*;
use jsonwebtoken::Algorithm;

use crate::config::{
    AccessLogFormat, AffinityConfig, BackendAddress, BackendConfig, CookieConfig, DiscoveryConfig, DrainConfig,
    Fallback, ForwardedHeaders, HashConfig, HealthCheckConfig, HostMatch, JwtKeys, KeySource, OriginPattern,
    PassiveConfig, RebalanceConfig, RouteConfig, SameSite, SecureMode, TokenSource, WorkersFrom,
};

/// A small valid config; tests append top-level sections or write their own text.
const BASE: &str = "\
listeners:
  - name: public
    bind: \"127.0.0.1:8080\"
routes:
  - upstream: app
upstreams:
  app:
    backends:
      - { id: app-1, address: \"127.0.0.1:9001\" }
";

fn check_with(text: &str, env: &[(&str, &str)]) -> Result<Loaded, Vec<String>> {
    let lookup = |name: &str| env.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
    parse(Path::new("c.yaml"), text, &lookup).map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
}

fn ok(text: &str) -> Loaded {
    match check_with(text, &[]) {
        Ok(loaded) => loaded,
        Err(errors) => panic!("expected a valid config, got:\n{}", errors.join("\n")),
    }
}

fn errors(text: &str) -> Vec<String> {
    match check_with(text, &[]) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(errors) => errors,
    }
}

fn upstream_with(body: &str) -> String {
    format!(
        "listeners:\n  - name: public\n    bind: \"127.0.0.1:8080\"\nroutes:\n  - upstream: app\n\
         upstreams:\n  app:\n{body}"
    )
}

#[test]
fn problems_in_the_yaml_text_are_listed_top_to_bottom() {
    assert_eq!(
        errors("a: !t\n  b: !u\n"),
        vec!["c.yaml:2:3: a.b: unsupported tag !u", "c.yaml:2:4: a: unsupported tag !t"]
    );
}

#[test]
fn a_minimal_config_gets_every_default() {
    let loaded = ok(BASE);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let c = loaded.config;
    assert_eq!(c.source.text, BASE);
    assert_eq!(c.listeners.len(), 1);
    assert_eq!(c.listeners[0].name, "public");
    assert_eq!(c.listeners[0].bind, "127.0.0.1:8080".parse::<SocketAddr>().unwrap());
    assert!(c.listeners[0].tls.is_none());
    assert!(c.admin.is_none());
    assert_eq!(
        c.routes,
        vec![RouteConfig {
            host: HostMatch::Any,
            path_prefix: "/".into(),
            upstream: "app".into(),
            ..RouteConfig::default()
        }]
    );
    let u = &c.upstreams[0];
    assert_eq!(u.name, "app");
    assert_eq!(
        u.backends,
        vec![BackendConfig {
            id: "app-1".into(),
            address: BackendAddress { host: "127.0.0.1".into(), port: 9001 },
            weight: 1
        }]
    );
    assert!(u.discovery.is_none());
    assert_eq!(
        u.affinity,
        AffinityConfig {
            keys: vec![],
            hash: HashConfig { vnodes: 1000, balance_factor: 0.0 },
            cookie: None,
            fallback: Fallback::LeastConnections,
        }
    );
    assert!(u.health_check.is_none());
    assert_eq!(
        u.passive,
        PassiveConfig {
            consecutive_failures: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300)
        }
    );
    assert_eq!(
        u.drain,
        DrainConfig { timeout: Duration::from_secs(25), close_spread: Duration::from_secs(5), close_code: 1001 }
    );
    assert_eq!(u.rebalance, RebalanceConfig { enabled: false, max_closes_per_second: 50 });
    assert_eq!(
        c.timeouts,
        Timeouts {
            connect: Duration::from_secs(2),
            header_read: Duration::from_secs(10),
            request: Duration::from_secs(60),
            idle: Duration::from_secs(90),
            tunnel_idle: Duration::from_secs(3600),
            send: Duration::from_secs(30),
            body_read: Duration::from_secs(30),
        }
    );
    assert_eq!(
        c.limits,
        Limits {
            max_header_bytes: 16384,
            max_connections: 100_000,
            max_streams_per_connection: 100,
            max_in_flight: None
        }
    );
    assert!(c.trusted_proxies.is_empty());
    assert_eq!(
        c.access_log,
        AccessLogConfig {
            format: AccessLogFormat::Json,
            redact_query: vec!["access_token".into(), "token".into(), "jwt".into(), "password".into()],
        }
    );
    assert_eq!(c.shutdown, ShutdownConfig { delay: Duration::from_secs(5), timeout: Duration::from_secs(25) });
    assert!(!c.debug.backend_header);
}

// ----- structural errors ---------------------------------------------------------------------

#[test]
fn an_unknown_key_is_located_at_the_key_and_lists_the_allowed_keys() {
    let text = BASE.replace("    bind:", "    bnid: x\n    bind:");
    assert_eq!(
        errors(&text),
        vec!["c.yaml:3:5: listeners[0].bnid: unknown key \"bnid\"; allowed keys: name, bind, tls"]
    );
    assert_eq!(
        errors(&format!("{BASE}debug: {{ backend_headers: true }}\n")),
        vec![
            "c.yaml:10:10: debug.backend_headers: unknown key \"backend_headers\"; allowed \
             keys: backend_header"
        ]
    );
}

#[test]
fn a_missing_required_key_points_at_the_enclosing_mapping() {
    let text = BASE.replace("{ id: app-1, address: \"127.0.0.1:9001\" }", "{ id: app-1 }");
    assert_eq!(errors(&text), vec!["c.yaml:9:9: upstreams.app.backends[0]: missing required key \"address\""]);
    assert_eq!(errors("listeners: []\nroutes: []\n"), vec!["c.yaml:1:1: missing required key \"upstreams\""]);
}

#[test]
fn a_wrong_type_stops_with_its_path() {
    assert_eq!(
        errors(&format!("{BASE}limits: {{ max_connections: many }}\n")),
        vec!["c.yaml:10:28: limits.max_connections: invalid type: string \"many\", expected u64"]
    );
    assert_eq!(errors("listeners: {}\n"), vec!["c.yaml:1:12: listeners: invalid type: map, expected a sequence"]);
}

#[test]
fn numbers_where_text_is_expected_get_the_semantic_message() {
    assert_eq!(
        errors(&format!("{BASE}timeouts: {{ connect: 5 }}\n")),
        vec![
            "c.yaml:10:22: timeouts.connect: invalid duration \"5\": expected a whole number \
             followed by ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)"
        ]
    );
}

#[test]
fn the_empty_file_is_an_error() {
    assert_eq!(errors(""), vec!["c.yaml: the file is empty; expected a mapping with listeners, routes and upstreams"]);
}

// ----- listeners -----------------------------------------------------------------------------

#[test]
fn listeners_need_unique_names_and_distinct_binds() {
    let text = "\
listeners:
  - { name: a, bind: \"127.0.0.1:8080\" }
  - { name: a, bind: \"127.0.0.1:8080\" }
  - { name: b, bind: \"0.0.0.0:8081\" }
  - { name: c, bind: \"127.0.0.2:8081\" }
  - { name: d, bind: \"[::]:8080\" }
  - { name: 'e f', bind: \"localhost:80\" }
routes: [{ upstream: app }]
upstreams: { app: { backends: [{ id: x, address: \"127.0.0.1:1\" }] } }
";
    assert_eq!(
        errors(text),
        vec![
            "c.yaml:3:13: listeners[1].name: duplicate listener name \"a\" (also listeners[0])",
            "c.yaml:3:22: listeners[1].bind: bind 127.0.0.1:8080 is also used by listeners[0]",
            "c.yaml:5:22: listeners[3].bind: bind 127.0.0.2:8081 is also used by listeners[2]",
            "c.yaml:7:13: listeners[5].name: invalid listener name \"e f\"; expected 1 to 128 \
             letters, digits or - _ . :",
            "c.yaml:7:26: listeners[5].bind: invalid socket address \"localhost:80\"; expected \
             IP:port (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")",
        ]
    );
}

#[test]
fn port_zero_binds_never_conflict() {
    let text = BASE.replace(
        "  - name: public\n    bind: \"127.0.0.1:8080\"\n",
        "  - { name: a, bind: \"127.0.0.1:0\" }\n  - { name: b, bind: \"127.0.0.1:0\" }\n",
    );
    assert_eq!(ok(&text).config.listeners.len(), 2);
}

#[test]
fn at_least_one_listener_route_and_upstream() {
    assert_eq!(
        errors("listeners: []\nroutes: []\nupstreams: {}\n"),
        vec![
            "c.yaml:1:12: listeners: at least one listener is required",
            "c.yaml:2:9: routes: at least one route is required",
            "c.yaml:3:12: upstreams: at least one upstream is required",
        ]
    );
}

// ----- admin ---------------------------------------------------------------------------------

#[test]
fn a_loopback_admin_needs_no_token() {
    let loaded = ok(&format!("{BASE}admin: {{ bind: \"127.0.0.1:9901\" }}\n"));
    let admin = loaded.config.admin.expect("admin");
    assert_eq!(admin.bind, "127.0.0.1:9901".parse::<SocketAddr>().unwrap());
    assert_eq!(admin.token_env, None);
    assert!(loaded.warnings.is_empty());
}

#[test]
fn a_public_admin_without_token_env_is_an_error() {
    assert_eq!(
        errors(&format!("{BASE}admin: {{ bind: \"0.0.0.0:9901\" }}\n")),
        vec![
            "c.yaml:10:16: admin.bind: admin bind 0.0.0.0:9901 is not a loopback address: set \
             token_env so that /admin/* requires a bearer token"
        ]
    );
}

#[test]
fn an_unset_admin_token_is_a_warning_and_a_set_one_is_silent() {
    let text = format!("{BASE}admin:\n  bind: \"0.0.0.0:9901\"\n  token_env: ADMIN_TOKEN\n");
    let loaded = check_with(&text, &[]).expect("valid");
    assert_eq!(
        loaded.warnings,
        vec![
            "c.yaml:12:14: admin.token_env: environment variable ADMIN_TOKEN is not set; tether \
             proxy will refuse to start until it is set"
        ]
    );
    assert_eq!(loaded.config.admin.expect("admin").token_env.as_deref(), Some("ADMIN_TOKEN"));
    let loaded = check_with(&text, &[("ADMIN_TOKEN", "a-random-token-of-at-least-32-bytes!")]).expect("valid");
    assert!(loaded.warnings.is_empty());
    let short = check_with(&text, &[("ADMIN_TOKEN", "secret")]).expect_err("a short token");
    assert_eq!(
        short,
        vec![
            "c.yaml:12:14: admin.token_env: the token in ADMIN_TOKEN is 6 bytes long; use at least 32 random \
             bytes (e.g. openssl rand -hex 32)"
        ]
    );
}

#[test]
fn the_admin_bind_must_differ_from_listener_binds() {
    assert_eq!(
        errors(&format!("{BASE}admin: {{ bind: \"127.0.0.1:8080\" }}\n")),
        vec!["c.yaml:10:16: admin.bind: admin bind 127.0.0.1:8080 is also used by listeners[0]"]
    );
}

#[test]
fn token_env_must_be_a_variable_name() {
    assert_eq!(
        errors(&format!("{BASE}admin: {{ bind: \"127.0.0.1:9\", token_env: \"A-B\" }}\n")),
        vec![
            "c.yaml:10:42: admin.token_env: invalid environment variable name \"A-B\"; expected \
             letters, digits and _ (not starting with a digit)"
        ]
    );
}

// ----- routes --------------------------------------------------------------------------------

#[test]
fn route_hosts_parse_into_matchers() {
    let text = BASE.replace(
        "  - upstream: app\n",
        "  - { host: \"API.Example.com\", path_prefix: /v1, upstream: app }\n  - { host: \
         \"*.Example.com\", upstream: app }\n  - { host: \"[::1]\", upstream: app }\n  - { \
         host: \"*\", upstream: app }\n",
    );
    let routes = ok(&text).config.routes;
    assert_eq!(routes[0].host, HostMatch::Exact("api.example.com".into()));
    assert_eq!(routes[0].path_prefix, "/v1");
    assert_eq!(routes[1].host, HostMatch::Suffix(".example.com".into()));
    assert_eq!(routes[2].host, HostMatch::Exact("[::1]".into()));
    assert_eq!(routes[3].host, HostMatch::Any);
}

#[test]
fn bad_routes_are_all_reported() {
    let text = BASE.replace(
        "  - upstream: app\n",
        "  - { host: \"a.*.com\", upstream: app }\n  - { host: \"example.com:8080\", upstream: \
         app }\n  - { path_prefix: api, upstream: app }\n  - { upstream: ap }\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:5:13: routes[0].host: invalid host \"a.*.com\"; a wildcard is only allowed \
             as \"*\" or a leading \"*.\" (e.g. \"*.example.com\")",
            "c.yaml:6:13: routes[1].host: invalid host \"example.com:8080\"; write the host \
             name without a port",
            "c.yaml:7:20: routes[2].path_prefix: \"api\" must start with \"/\"",
            "c.yaml:8:17: routes[3].upstream: unknown upstream \"ap\" (defined upstreams: app)",
        ]
    );
}

// ----- upstreams and backends ----------------------------------------------------------------

#[test]
fn backend_ids_are_unique_and_weights_bounded() {
    let text = upstream_with(
        "    backends:\n      - { id: a, address: \"127.0.0.1:1\", weight: 3 }\n      - { id: a, \
         address: \"127.0.0.1:2\" }\n      - { id: b, address: \"127.0.0.1:3\", weight: 0 }\n      \
         - { id: c, address: \"127.0.0.1:4\", weight: 1001 }\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:10:15: upstreams.app.backends[1].id: duplicate backend id \"a\" (also \
             upstreams.app.backends[0])",
            "c.yaml:11:50: upstreams.app.backends[2].weight: weight must be between 1 and 1000, \
             got 0",
            "c.yaml:12:50: upstreams.app.backends[3].weight: weight must be between 1 and 1000, \
             got 1001",
        ]
    );
}

#[test]
fn backend_addresses_accept_ips_and_names_without_resolving() {
    let text = upstream_with(
        "    backends:\n      - { id: a, address: \"10.0.0.1:80\" }\n      - { id: b, address: \
         \"[::1]:8080\" }\n      - { id: c, address: \"App_1.internal:9000\" }\n      - { id: d, \
         address: \"no-such-host.invalid:1\" }\n",
    );
    let backends = &ok(&text).config.upstreams[0].backends;
    let addresses: Vec<String> = backends.iter().map(|b| b.address.to_string()).collect();
    assert_eq!(addresses, ["10.0.0.1:80", "[::1]:8080", "app_1.internal:9000", "no-such-host.invalid:1"]);
    assert_eq!(backends[1].address.host, "::1");
}

#[test]
fn the_issue_example_error_is_reproduced_exactly() {
    let text = upstream_with(
        "    backends:\n      - { id: app-1, address: \"127.0.0.1:9001\" }\n      - { id: app-2, \
         address: \"127.0.0.1:99999\" }\n",
    );
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:10:31: upstreams.app.backends[1].address: invalid socket address \
             \"127.0.0.1:99999\": port 99999 is out of range (1-65535)"
        ]
    );
}

#[test]
fn an_upstream_needs_backends_unless_discovery_is_set() {
    assert_eq!(
        errors(&upstream_with("    backends: []\n")),
        vec![
            "c.yaml:8:15: upstreams.app.backends: at least one backend is required unless \
             discovery is set"
        ]
    );
    let loaded = ok(&upstream_with("    discovery: { dns: \"app:8080\" }\n"));
    let u = &loaded.config.upstreams[0];
    assert!(u.backends.is_empty());
    assert_eq!(
        u.discovery,
        Some(DiscoveryConfig {
            dns: BackendAddress { host: "app".into(), port: 8080 },
            interval: Duration::from_secs(5)
        })
    );
    assert_eq!(
        errors(&upstream_with("    discovery: { dns: app, interval: 0s }\n")),
        vec![
            "c.yaml:8:23: upstreams.app.discovery.dns: invalid socket address \"app\": expected \
             host:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\" or \"app:8080\")",
            "c.yaml:8:38: upstreams.app.discovery.interval: must be greater than 0s",
        ]
    );
}

#[test]
fn upstreams_keep_file_order() {
    let text = "\
listeners: [{ name: l, bind: \"127.0.0.1:1\" }]
routes: [{ upstream: zeta }, { upstream: alpha }]
upstreams:
  zeta: { backends: [{ id: z, address: \"127.0.0.1:2\" }] }
  alpha: { backends: [{ id: a, address: \"127.0.0.1:3\" }] }
  mid: { backends: [{ id: m, address: \"127.0.0.1:4\" }] }
";
    let names: Vec<String> = ok(text).config.upstreams.into_iter().map(|u| u.name).collect();
    assert_eq!(names, ["zeta", "alpha", "mid"]);
}

// ----- affinity ------------------------------------------------------------------------------

const ONE_BACKEND: &str = "    backends: [{ id: a, address: \"127.0.0.1:1\" }]\n";

#[test]
fn affinity_keys_of_every_kind() {
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    affinity:\n      key:\n        - header: X-User-Id\n        - cookie: \
         user_id\n        - query: uid\n        - path_segment: 1\n        - jwt_claim: {{ from: \
         \"header:Authorization\", claim: sub }}\n        - jwt_claim: {{ from: \"cookie:jwt\", claim: sub }}\n        - \
         jwt_claim: {{ from: \"query:access_token\", claim: uid }}\n      hash: {{ vnodes: 40, \
         balance_factor: 1.25 }}\n      fallback: round_robin\n"
    ));
    let a = ok(&text).config.upstreams.remove(0).affinity;
    assert_eq!(
        a.keys,
        vec![
            KeySource::Header(HeaderName::from_static("x-user-id")),
            KeySource::Cookie("user_id".into()),
            KeySource::Query("uid".into()),
            KeySource::PathSegment(1),
            KeySource::JwtClaim {
                from: TokenSource::Header(HeaderName::from_static("authorization")),
                claim: "sub".into()
            },
            KeySource::JwtClaim { from: TokenSource::Cookie("jwt".into()), claim: "sub".into() },
            KeySource::JwtClaim { from: TokenSource::Query("access_token".into()), claim: "uid".into() },
        ]
    );
    assert_eq!(a.hash, HashConfig { vnodes: 40, balance_factor: 1.25 });
    assert_eq!(a.fallback, Fallback::RoundRobin);
    assert_eq!(a.cookie, None);
}

#[test]
fn affinity_problems_are_all_reported() {
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    affinity:\n      key:\n        - {{}}\n        - {{ header: a, query: b \
         }}\n        - header: \"X User\"\n        - cookie: \"a;b\"\n        - jwt_claim: {{ \
         from: \"body:x\", claim: \"\" }}\n      hash: {{ vnodes: 10001, balance_factor: 1.0 }}\n      \
         fallback: sticky\n"
    ));
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:11:11: upstreams.app.affinity.key[0]: set exactly one of header, cookie, \
             query, path_segment, jwt_claim or verified_claim (found none)",
            "c.yaml:12:11: upstreams.app.affinity.key[1]: set exactly one of header, cookie, \
             query, path_segment, jwt_claim or verified_claim (found header and query)",
            "c.yaml:13:19: upstreams.app.affinity.key[2].header: invalid header name \"X User\"",
            "c.yaml:14:19: upstreams.app.affinity.key[3].cookie: invalid cookie name \"a;b\"; \
             expected an RFC 6265 token (no spaces, quotes or separators)",
            "c.yaml:15:30: upstreams.app.affinity.key[4].jwt_claim.from: invalid token source \
             \"body:x\"; expected header:NAME, cookie:NAME or query:NAME",
            "c.yaml:15:47: upstreams.app.affinity.key[4].jwt_claim.claim: claim must not be \
             empty",
            "c.yaml:16:23: upstreams.app.affinity.hash.vnodes: vnodes must be between 1 and \
             10000, got 10001",
            "c.yaml:16:46: upstreams.app.affinity.hash.balance_factor: balance_factor must be 0 \
             (off) or greater than 1.0 (e.g. 1.25), got 1",
            "c.yaml:17:17: upstreams.app.affinity.fallback: unknown fallback \"sticky\"; \
             expected least_connections, round_robin or random_two_choices",
        ]
    );
}

#[test]
fn balance_factor_between_zero_and_one_is_rejected() {
    for bad in ["0.5", "-1", "1", ".nan"] {
        let text = upstream_with(&format!("{ONE_BACKEND}    affinity: {{ hash: {{ balance_factor: {bad} }} }}\n"));
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{bad}: {errs:?}");
        assert!(errs[0].contains("balance_factor must be 0 (off) or greater than 1.0"), "{bad}");
    }
    for good in ["0", "1.01", "2"] {
        let text = upstream_with(&format!("{ONE_BACKEND}    affinity: {{ hash: {{ balance_factor: {good} }} }}\n"));
        ok(&text);
    }
}

#[test]
fn cookie_defaults_and_explicit_values() {
    let defaults = ok(&upstream_with(&format!("{ONE_BACKEND}    affinity: {{ cookie: {{}} }}\n")));
    assert_eq!(
        defaults.config.upstreams[0].affinity.cookie,
        Some(CookieConfig {
            name: "TETHER_AFFINITY".into(),
            ttl: Duration::ZERO,
            secure: SecureMode::Auto,
            http_only: true,
            same_site: SameSite::Lax,
            path: "/".into(),
            domain: None,
            key_env: None,
        })
    );
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    affinity:\n      cookie:\n        name: sticky\n        ttl: 1h\n        \
         secure: true\n        http_only: false\n        same_site: none\n        path: /app\n        \
         domain: Example.com\n        key_env: KEY\n"
    ));
    let key = "k".repeat(32);
    let loaded = check_with(&text, &[("KEY", &key)]).expect("valid");
    assert!(loaded.warnings.is_empty());
    assert_eq!(
        loaded.config.upstreams[0].affinity.cookie,
        Some(CookieConfig {
            name: "sticky".into(),
            ttl: Duration::from_secs(3600),
            secure: SecureMode::Always,
            http_only: false,
            same_site: SameSite::None,
            path: "/app".into(),
            domain: Some("example.com".into()),
            key_env: Some("KEY".into()),
        })
    );
}

#[test]
fn same_site_none_needs_a_secure_cookie() {
    let text =
        upstream_with(&format!("{ONE_BACKEND}    affinity: {{ cookie: {{ secure: false, same_site: none }} }}\n"));
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:9:53: upstreams.app.affinity.cookie.same_site: same_site none requires \
             secure auto or true (browsers reject SameSite=None cookies that are not Secure)"
        ]
    );
}

#[test]
fn cookie_key_env_unset_warns_and_short_is_an_error() {
    let text = upstream_with(&format!("{ONE_BACKEND}    affinity: {{ cookie: {{ key_env: COOKIE_KEY }} }}\n"));
    let loaded = check_with(&text, &[]).expect("valid");
    assert_eq!(
        loaded.warnings,
        vec![
            "c.yaml:9:36: upstreams.app.affinity.cookie.key_env: environment variable \
             COOKIE_KEY is not set; replicas will not share sticky cookies; a random \
             per-process key will be used"
        ]
    );
    let short = "k".repeat(31);
    assert_eq!(
        check_with(&text, &[("COOKIE_KEY", &short)]).map(|_| ()),
        Err(vec![
            "c.yaml:9:36: upstreams.app.affinity.cookie.key_env: environment variable \
             COOKIE_KEY holds 31 bytes; the cookie key must be at least 32 bytes"
                .to_owned()
        ])
    );
}

#[test]
fn bad_cookie_fields_are_reported() {
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    affinity:\n      cookie: {{ name: \"a b\", ttl: -1s, secure: maybe, \
         same_site: loose, path: \"/a;b\", domain: \"ex ample.com\" }}\n"
    ));
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:10:23: upstreams.app.affinity.cookie.name: invalid cookie name \"a b\"; \
             expected an RFC 6265 token (no spaces, quotes or separators)",
            "c.yaml:10:35: upstreams.app.affinity.cookie.ttl: invalid duration \"-1s\": must \
             not be negative; expected a whole number followed by ms, s, m or h (e.g. 250ms, \
             10s, 5m, 1h)",
            "c.yaml:10:48: upstreams.app.affinity.cookie.secure: invalid secure \"maybe\"; \
             expected auto, true or false",
            "c.yaml:10:66: upstreams.app.affinity.cookie.same_site: invalid same_site \"loose\"; \
             expected lax, strict or none",
            "c.yaml:10:79: upstreams.app.affinity.cookie.path: \"/a;b\" must not contain \";\"",
            "c.yaml:10:95: upstreams.app.affinity.cookie.domain: invalid cookie domain \"ex \
             ample.com\"",
        ]
    );
}

// ----- health, passive, drain, rebalance -----------------------------------------------------

#[test]
fn a_present_health_check_section_gets_field_defaults() {
    let loaded = ok(&upstream_with(&format!("{ONE_BACKEND}    health_check: {{}}\n")));
    assert_eq!(
        loaded.config.upstreams[0].health_check,
        Some(HealthCheckConfig {
            path: "/readyz".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            healthy_after: 2,
            unhealthy_after: 3,
        })
    );
}

#[test]
fn health_check_timeout_must_be_shorter_than_interval_and_counts_positive() {
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    health_check: {{ path: health, interval: 1s, timeout: 1s, \
         healthy_after: 0, unhealthy_after: 0 }}\n"
    ));
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:9:27: upstreams.app.health_check.path: \"health\" must start with \"/\"",
            "c.yaml:9:58: upstreams.app.health_check.timeout: timeout (1s) must be shorter \
             than interval (1s)",
            "c.yaml:9:77: upstreams.app.health_check.healthy_after: must be at least 1",
            "c.yaml:9:97: upstreams.app.health_check.unhealthy_after: must be at least 1",
        ]
    );
}

#[test]
fn passive_drain_and_rebalance_rules() {
    let text = upstream_with(&format!(
        "{ONE_BACKEND}    passive: {{ consecutive_failures: 0, ejection: 1m, max_ejection: 30s \
         }}\n    drain: {{ timeout: 5s, close_spread: 10s, close_code: 1000 }}\n    rebalance: {{ \
         enabled: true, max_closes_per_second: 0 }}\n"
    ));
    assert_eq!(
        errors(&text),
        vec![
            "c.yaml:9:38: upstreams.app.passive.consecutive_failures: must be at least 1",
            "c.yaml:9:69: upstreams.app.passive.max_ejection: max_ejection (30s) must not be \
             shorter than ejection (1m)",
            "c.yaml:10:41: upstreams.app.drain.close_spread: close_spread (10s) must not be \
             longer than timeout (5s)",
            "c.yaml:10:58: upstreams.app.drain.close_code: close_code must be 1001 (going away) \
             or 1012 (service restart), got 1000",
            "c.yaml:11:56: upstreams.app.rebalance.max_closes_per_second: must be at least 1",
        ]
    );
    let text =
        upstream_with(&format!("{ONE_BACKEND}    drain: {{ close_code: 1012 }}\n    rebalance: {{ enabled: true }}\n"));
    let u = ok(&text).config.upstreams.remove(0);
    assert_eq!(u.drain.close_code, 1012);
    assert_eq!(u.rebalance, RebalanceConfig { enabled: true, max_closes_per_second: 50 });
}

// ----- global sections -----------------------------------------------------------------------

#[test]
fn timeouts_must_be_positive() {
    assert_eq!(
        errors(&format!(
            "{BASE}timeouts: {{ connect: 0s, header_read: 0ms, request: 1m, idle: 1s, \
             tunnel_idle: 0h }}\n"
        )),
        vec![
            "c.yaml:10:22: timeouts.connect: must be greater than 0s",
            "c.yaml:10:39: timeouts.header_read: must be greater than 0s",
            "c.yaml:10:80: timeouts.tunnel_idle: must be greater than 0s",
        ]
    );
    let t = ok(&format!("{BASE}timeouts: {{ request: 250ms, tunnel_idle: 2h }}\n")).config.timeouts;
    assert_eq!(t.request, Duration::from_millis(250));
    assert_eq!(t.tunnel_idle, Duration::from_secs(7200));
    assert_eq!(t.connect, Duration::from_secs(2));
}

#[test]
fn limits_have_floors() {
    assert_eq!(
        errors(&format!("{BASE}limits: {{ max_header_bytes: 4KiB, max_connections: 0 }}\n")),
        vec![
            "c.yaml:10:29: limits.max_header_bytes: max_header_bytes must be at least 8KiB \
             (hyper's smallest read buffer), got \"4KiB\"",
            "c.yaml:10:52: limits.max_connections: max_connections must be at least 1",
        ]
    );
    assert_eq!(
        errors(&format!("{BASE}limits: {{ max_header_bytes: 16384 }}\n")),
        vec![
            "c.yaml:10:29: limits.max_header_bytes: invalid size \"16384\": expected a whole \
             number followed by B, KiB, MiB or GiB (e.g. 512B, 16KiB, 1MiB), or KB, MB, GB for \
             powers of 1000"
        ]
    );
    let l = ok(&format!(
        "{BASE}limits: {{ max_header_bytes: 8KiB, max_connections: 7, max_streams_per_connection: 3, max_in_flight: 9 }}\n"
    ))
    .config
    .limits;
    assert_eq!(
        l,
        Limits { max_header_bytes: 8192, max_connections: 7, max_streams_per_connection: 3, max_in_flight: Some(9) }
    );
    assert_eq!(
        errors(&format!("{BASE}limits: {{ max_streams_per_connection: 0, max_in_flight: 0 }}\n")),
        vec![
            "c.yaml:10:39: limits.max_streams_per_connection: must be at least 1",
            "c.yaml:10:57: limits.max_in_flight: must be at least 1",
        ]
    );
}

#[test]
fn trusted_proxies_take_cidrs_and_bare_ips() {
    let c = ok(&format!("{BASE}trusted_proxies: [10.1.2.3/8, 192.168.0.7, \"::1\", \"fd00::/8\"]\n")).config;
    let nets: Vec<String> = c.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.168.0.7/32", "::1/128", "fd00::/8"]);
    assert_eq!(
        errors(&format!("{BASE}trusted_proxies: [10.0.0.0/33, proxy]\n")),
        vec![
            "c.yaml:10:19: trusted_proxies[0]: invalid CIDR \"10.0.0.0/33\"; expected a network \
             such as \"10.0.0.0/8\" or an IP address",
            "c.yaml:10:32: trusted_proxies[1]: invalid CIDR \"proxy\"; expected a network such \
             as \"10.0.0.0/8\" or an IP address",
        ]
    );
}

#[test]
fn access_log_shutdown_and_debug() {
    let c = ok(&format!(
        "{BASE}access_log: {{ format: text, redact_query: [sig] }}\nshutdown: {{ delay: 0s, \
         timeout: 1s }}\ndebug: {{ backend_header: true }}\n"
    ))
    .config;
    assert_eq!(c.access_log, AccessLogConfig { format: AccessLogFormat::Text, redact_query: vec!["sig".into()] });
    assert_eq!(c.shutdown, ShutdownConfig { delay: Duration::ZERO, timeout: Duration::from_secs(1) });
    assert!(c.debug.backend_header);
    assert_eq!(
        errors(&format!(
            "{BASE}access_log: {{ format: xml, redact_query: [\"\"] }}\nshutdown: {{ delay: 30s \
             }}\n"
        )),
        vec![
            "c.yaml:10:23: access_log.format: unknown access log format \"xml\"; expected json, \
             text or off",
            "c.yaml:10:43: access_log.redact_query[0]: invalid query parameter name \"\"",
            "c.yaml:11:11: shutdown.timeout: timeout (25s) must be longer than delay (30s)",
        ]
    );
}

// ----- environment ---------------------------------------------------------------------------

#[test]
fn environment_references_expand_before_validation() {
    let text = BASE
        .replace("\"127.0.0.1:8080\"", "\"${BIND:-127.0.0.1:8081}\"")
        .replace("\"127.0.0.1:9001\"", "\"${BACKEND}\"");
    let c = check_with(&text, &[("BACKEND", "app:9009")]).expect("valid").config;
    assert_eq!(c.listeners[0].bind, "127.0.0.1:8081".parse::<SocketAddr>().unwrap());
    assert_eq!(c.upstreams[0].backends[0].address.to_string(), "app:9009");
    // The source keeps the text as written.
    assert!(c.source.text.contains("${BACKEND}"));
    assert_eq!(
        check_with(&text, &[]).map(|_| ()),
        Err(vec![
            "c.yaml:9:31: upstreams.app.backends[0].address: environment variable BACKEND is \
             not set (write ${BACKEND:-default} to give a default)"
                .to_owned()
        ])
    );
}

// ----- TLS -----------------------------------------------------------------------------------

struct TlsFiles {
    dir: tempfile::TempDir,
}

impl TlsFiles {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let one = rcgen::generate_simple_self_signed(vec!["One.example".into(), "*.one.example".into()]).expect("cert");
        let two = rcgen::generate_simple_self_signed(vec!["two.example".into()]).expect("cert");
        std::fs::write(dir.path().join("one.crt"), one.cert.pem()).expect("write");
        std::fs::write(dir.path().join("one.key"), one.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("two.crt"), two.cert.pem()).expect("write");
        std::fs::write(dir.path().join("two.key"), two.signing_key.serialize_pem()).expect("write");
        std::fs::write(dir.path().join("junk.pem"), "not pem at all\n").expect("write");
        Self { dir }
    }

    fn check(&self, certificates: &str) -> Result<Loaded, Vec<String>> {
        let text = format!(
            "listeners:\n  - name: tls\n    bind: \"127.0.0.1:0\"\n    tls:\n      \
             certificates:\n{certificates}routes: [{{ upstream: app }}]\nupstreams: {{ app: {{ \
             backends: [{{ id: a, address: \"127.0.0.1:1\" }}] }} }}\n"
        );
        let path = self.dir.path().join("config.yaml");
        parse(&path, &text, &|_| None).map_err(|errors| errors.0.iter().map(ToString::to_string).collect())
    }

    fn dir(&self) -> String {
        self.dir.path().display().to_string()
    }
}

#[test]
fn tls_certificates_load_with_their_dns_names_relative_to_the_config() {
    let files = TlsFiles::new();
    let loaded = files
        .check("        - { cert: one.crt, key: one.key }\n        - { cert: two.crt, key: two.key }\n")
        .expect("valid");
    let tls = loaded.config.listeners[0].tls.as_ref().expect("tls");
    assert_eq!(tls.certificates.len(), 2);
    assert_eq!(tls.certificates[0].names, ["one.example", "*.one.example"]);
    assert_eq!(tls.certificates[1].names, ["two.example"]);
    assert_eq!(tls.certificates[0].cert_path, files.dir.path().join("one.crt"));
    assert_eq!(tls.certificates[1].key_path, files.dir.path().join("two.key"));
    assert!(tls.certificates[0].certified.keys_match().is_ok());
}

#[test]
fn tls_problems_are_all_reported() {
    let files = TlsFiles::new();
    let dir = files.dir();
    let errors = files
        .check(
            "        - { cert: one.crt, key: two.key }\n        - { cert: missing.crt, key: \
             junk.pem }\n        - { cert: junk.pem, key: one.crt }\n",
        )
        .map(|_| ())
        .expect_err("invalid");
    assert_eq!(
        errors,
        vec![
            format!(
                "{dir}/config.yaml:6:33: listeners[0].tls.certificates[0].key: private key \
                 \"two.key\" does not match certificate \"one.crt\""
            ),
            format!(
                "{dir}/config.yaml:7:19: listeners[0].tls.certificates[1].cert: certificate file \
                 \"missing.crt\" (resolved to \"{dir}/missing.crt\") does not exist"
            ),
            format!(
                "{dir}/config.yaml:7:37: listeners[0].tls.certificates[1].key: key file \
                 \"junk.pem\" (resolved to \"{dir}/junk.pem\") holds no PEM private key \
                 (PKCS#8, PKCS#1 or SEC1)"
            ),
            format!(
                "{dir}/config.yaml:8:19: listeners[0].tls.certificates[2].cert: certificate file \
                 \"junk.pem\" (resolved to \"{dir}/junk.pem\") holds no PEM certificate \
                 (-----BEGIN CERTIFICATE-----)"
            ),
            format!(
                "{dir}/config.yaml:8:34: listeners[0].tls.certificates[2].key: key file \
                 \"one.crt\" (resolved to \"{dir}/one.crt\") holds no PEM private key \
                 (PKCS#8, PKCS#1 or SEC1)"
            ),
        ]
    );
}

#[test]
fn a_tls_section_needs_a_certificate() {
    let files = TlsFiles::new();
    let dir = files.dir();
    assert_eq!(
        files.check("        []\n").map(|_| ()),
        Err(vec![format!(
            "{dir}/config.yaml:6:9: listeners[0].tls.certificates: at least one certificate is \
             required"
        )])
    );
}

// ----- all together --------------------------------------------------------------------------

#[test]
fn every_semantic_problem_is_reported_together_in_file_order() {
    let text = "\
upstreams:
  app:
    backends:
      - { id: a, address: \"127.0.0.1:99999\" }
routes:
  - upstream: nope
listeners:
  - name: public
    bind: \"nowhere\"
timeouts: { idle: 10 }
";
    assert_eq!(
        errors(text),
        vec![
            "c.yaml:4:27: upstreams.app.backends[0].address: invalid socket address \
             \"127.0.0.1:99999\": port 99999 is out of range (1-65535)",
            "c.yaml:6:15: routes[0].upstream: unknown upstream \"nope\" (defined upstreams: app)",
            "c.yaml:9:11: listeners[0].bind: invalid socket address \"nowhere\"; expected \
             IP:port (e.g. \"0.0.0.0:8080\" or \"[::]:8080\")",
            "c.yaml:10:19: timeouts.idle: invalid duration \"10\": expected a whole number \
             followed by ms, s, m or h (e.g. 250ms, 10s, 5m, 1h)",
        ]
    );
}

// ----- auth, route rules, origins, forwarding -------------------------------------------------

fn fixtures() -> String {
    format!("{}/tests/fixtures/jwt", env!("CARGO_MANIFEST_DIR"))
}

/// BASE with `extra` appended and route 0 given `route_extra`.
fn with_auth(auth: &str, route_extra: &str) -> String {
    let base = BASE.replace("  - upstream: app\n", &format!("  - {{ upstream: app{route_extra} }}\n"));
    format!("{base}auth:\n{auth}")
}

#[test]
fn verifiers_read_their_keys_and_routes_refer_to_them() {
    let dir = fixtures();
    let text = with_auth(
        &format!(
            "  users:\n    jwt:\n      algorithms: [RS256, ES256, EdDSA]\n      jwks_file: {dir}/jwks.json\n      \
             issuer: https://id.test\n      audience: [chat]\n      leeway: 10s\n    \
             token_from: [\"header:Authorization\", \"query:access_token\"]\n    \
             identity: {{ claim: sub, header: X-User-Id }}\n    required: false\n  \
             pem:\n    jwt: {{ algorithms: [PS256, RS256], key_file: {dir}/rsa.pub.pem, require_exp: false }}\n  \
             hmac:\n    jwt: {{ algorithms: [HS256], secret_env: JWT_SECRET }}\n"
        ),
        ", auth: users",
    );
    let loaded = check_with(&text, &[("JWT_SECRET", "a secret of thirty-two bytes or more!")]).expect("valid");
    let c = loaded.config;
    assert_eq!(c.routes[0].auth.as_deref(), Some("users"));
    let users = &c.auth[0];
    assert_eq!(users.name, "users");
    assert_eq!(users.jwt.algorithms, vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]);
    let JwtKeys::Files { keys, .. } = &users.jwt.keys else { panic!("files") };
    let kids: Vec<_> = keys.iter().map(|k| k.kid.as_deref()).collect();
    assert_eq!(kids, vec![Some("rsa-1"), Some("ec-1"), Some("ed-1")]);
    assert_eq!(users.jwt.issuer.as_deref(), Some("https://id.test"));
    assert_eq!(users.jwt.audience, vec!["chat".to_owned()]);
    assert_eq!(users.jwt.leeway, Duration::from_secs(10));
    assert!(users.jwt.require_exp);
    assert_eq!(
        users.token_from,
        vec![TokenSource::Header(http::header::AUTHORIZATION), TokenSource::Query("access_token".into())]
    );
    assert_eq!(users.identity.header, HeaderName::from_static("x-user-id"));
    assert!(!users.required);
    assert!(!c.auth[1].jwt.require_exp);
    assert!(c.auth[1].required, "required by default");
    assert_eq!(
        c.auth[1].token_from,
        vec![TokenSource::Header(http::header::AUTHORIZATION)],
        "Authorization by default"
    );
    assert!(matches!(&c.auth[2].jwt.keys, JwtKeys::SecretEnv(v) if v == "JWT_SECRET"));
    assert_eq!(c.auth[2].jwt.leeway, Duration::from_secs(30), "30 s by default");
}

#[test]
fn unsafe_verifier_settings_are_refused() {
    let dir = fixtures();
    let problems = |auth: &str| match check_with(
        &with_auth(auth, ""),
        &[("SHORT", "too short"), ("GOOD", "a secret of thirty-two bytes or more!")],
    ) {
        Ok(_) => panic!("expected problems for {auth}"),
        Err(e) => e.join("\n"),
    };
    let none = problems(&format!("  a:\n    jwt: {{ algorithms: [RS256, none], jwks_file: {dir}/jwks.json }}\n"));
    assert!(none.contains("auth.a.jwt.algorithms[1]: \"none\" is never accepted"), "{none}");
    let unknown = problems(&format!("  a:\n    jwt: {{ algorithms: [RS999], jwks_file: {dir}/jwks.json }}\n"));
    assert!(unknown.contains("unknown algorithm \"RS999\""), "{unknown}");
    let missing = problems("  a:\n    jwt: { jwks_file: x.json }\n");
    assert!(missing.contains("auth.a.jwt.algorithms: list the accepted algorithms"), "{missing}");
    let hs_with_file = problems(&format!("  a:\n    jwt: {{ algorithms: [HS256], key_file: {dir}/rsa.pub.pem }}\n"));
    assert!(hs_with_file.contains("HS256/HS384/HS512 need secret_env"), "{hs_with_file}");
    let rs_with_secret = problems("  a:\n    jwt: { algorithms: [HS256, RS256], secret_env: GOOD }\n");
    assert!(rs_with_secret.contains("secret_env verifies HS256/HS384/HS512 only"), "{rs_with_secret}");
    let short = problems("  a:\n    jwt: { algorithms: [HS256], secret_env: SHORT }\n");
    assert!(short.contains("the secret in SHORT is 9 bytes long"), "{short}");
    let two = problems(&format!(
        "  a:\n    jwt: {{ algorithms: [RS256], key_file: {dir}/rsa.pub.pem, jwks_file: {dir}/jwks.json }}\n"
    ));
    assert!(
        two.contains("set exactly one of jwks_file, key_file or secret_env (found jwks_file and key_file)"),
        "{two}"
    );
    let mixed = problems(&format!("  a:\n    jwt: {{ algorithms: [RS256, ES256], key_file: {dir}/rsa.pub.pem }}\n"));
    assert!(mixed.contains("must be of one family"), "{mixed}");
    let wrong_key = problems(&format!("  a:\n    jwt: {{ algorithms: [ES256], key_file: {dir}/rsa.pub.pem }}\n"));
    assert!(wrong_key.contains("is not a PEM EC public key"), "{wrong_key}");
    let no_file = problems("  a:\n    jwt: { algorithms: [RS256], jwks_file: nowhere.json }\n");
    assert!(no_file.contains("jwks_file \"nowhere.json\""), "{no_file}");
    let reserved = problems(&format!(
        "  a:\n    jwt: {{ algorithms: [RS256], jwks_file: {dir}/jwks.json }}\n    identity: {{ header: Authorization }}\n"
    ));
    assert!(
        reserved.contains("auth.a.identity.header: authorization is written by tether or describes one hop"),
        "{reserved}"
    );
    let no_usable = problems(&format!("  a:\n    jwt: {{ algorithms: [PS384], jwks_file: {dir}/jwks.json }}\n"));
    assert!(no_usable.contains("holds no key usable for PS384"), "{no_usable}");
    let unknown_route = match check_with(
        &with_auth(&format!("  a:\n    jwt: {{ algorithms: [RS256], jwks_file: {dir}/jwks.json }}\n"), ", auth: b"),
        &[],
    ) {
        Ok(_) => panic!("an unknown verifier"),
        Err(e) => e.join("\n"),
    };
    assert!(unknown_route.contains("routes[0].auth: unknown verifier \"b\" (defined: a)"), "{unknown_route}");
}

#[test]
fn a_jwks_with_a_symmetric_key_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        r#"{"keys":[{"kty":"oct","kid":"s","k":"c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}"#,
    )
    .expect("write");
    let text = with_auth(&format!("  a:\n    jwt: {{ algorithms: [RS256], jwks_file: {} }}\n", jwks.display()), "");
    let errors = check_with(&text, &[]).expect_err("refused").join("\n");
    assert!(errors.contains("key \"s\" is a symmetric (\"oct\") key"), "{errors}");
}

#[test]
fn route_header_rules_and_origins_are_checked() {
    let dir = fixtures();
    let auth = format!(
        "  users:\n    jwt: {{ algorithms: [RS256], jwks_file: {dir}/jwks.json }}\n    identity: {{ header: X-User-Id }}\n"
    );
    let good = with_auth(
        &auth,
        ", request_headers: { set: { X-Env: prod }, remove: [X-Debug] }, response_headers: { set: { Strict-Transport-Security: \"max-age=63072000\" } }, websocket: { allowed_origins: [\"https://app.example.com\", \"https://*.example.com:8443\"] }",
    );
    let c = check_with(&good, &[]).expect("valid").config;
    let route = &c.routes[0];
    assert_eq!(
        route.request_headers.set,
        vec![(HeaderName::from_static("x-env"), http::HeaderValue::from_static("prod"))]
    );
    assert_eq!(route.request_headers.remove, vec![HeaderName::from_static("x-debug")]);
    assert_eq!(route.response_headers.set[0].0, HeaderName::from_static("strict-transport-security"));
    assert_eq!(
        route.websocket.allowed_origins,
        vec![
            OriginPattern::Exact { scheme: "https".into(), host: "app.example.com".into(), port: 443 },
            OriginPattern::Subdomains { scheme: "https".into(), suffix: ".example.com".into(), port: 8443 },
        ]
    );
    for (rule, expected) in [
        ("request_headers: { set: { X-User-Id: bob } }", "x-user-id carries the identity verified by users"),
        ("request_headers: { remove: [x-user-id] }", "x-user-id carries the identity verified by users"),
        ("request_headers: { set: { Connection: close } }", "connection describes one hop or frames the body"),
        ("response_headers: { set: { Transfer-Encoding: chunked } }", "transfer-encoding describes one hop"),
        ("request_headers: { set: { X-A: \"a\\nb\" } }", "invalid header value"),
        ("websocket: { allowed_origins: [\"app.example.com\"] }", "invalid origin \"app.example.com\""),
    ] {
        let errors = check_with(&with_auth(&auth, &format!(", {rule}")), &[]).expect_err(rule).join("\n");
        assert!(errors.contains(expected), "{rule}: {errors}");
    }
}

#[test]
fn forwarded_headers_and_admin_hosts_are_read() {
    let c = ok(&format!("{BASE}forwarded_headers: both\n")).config;
    assert_eq!(c.forwarded_headers, ForwardedHeaders::Both);
    assert_eq!(ok(BASE).config.forwarded_headers, ForwardedHeaders::XForwarded);
    assert_eq!(
        errors(&format!("{BASE}forwarded_headers: rfc9999\n")),
        vec!["c.yaml:10:20: forwarded_headers: invalid value \"rfc9999\"; expected x-forwarded, rfc7239 or both"]
    );
    let admin = ok(&format!(
        "{BASE}admin: {{ bind: \"127.0.0.1:9901\", allowed_hosts: [Admin.Example.COM], metrics_public: true }}\n"
    ))
    .config
    .admin
    .expect("admin");
    assert_eq!(admin.allowed_hosts, vec!["admin.example.com".to_owned()]);
    assert!(admin.metrics_public);
}

#[test]
fn a_verified_claim_is_an_affinity_key() {
    let text = BASE.replace("    backends:", "    affinity: { key: [ { verified_claim: sub } ] }\n    backends:");
    let c = ok(&text).config;
    assert_eq!(c.upstreams[0].affinity.keys, vec![KeySource::VerifiedClaim("sub".into())]);
}

#[test]
fn a_private_key_others_can_read_is_a_warning_or_with_strict_permissions_an_error() {
    use std::os::unix::fs::PermissionsExt as _;
    let files = TlsFiles::new();
    let key = files.dir.path().join("one.key");
    let one = "        - { cert: one.crt, key: one.key }\n";
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(files.check(one).expect("valid").warnings, Vec::<String>::new());
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let warnings = files.check(one).expect("valid").warnings;
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("listeners[0].tls.certificates[0].key: private key")
            && warnings[0].contains("is readable by its group (mode 640)"),
        "{warnings:?}"
    );
    let strict = files.check(&format!("{one}      strict_key_permissions: true\n")).expect_err("refused");
    assert_eq!(strict.len(), 1, "{strict:?}");
    assert!(strict[0].contains("is readable by its group (mode 640); restrict it with chmod 600"), "{strict:?}");
}

#[test]
fn runtime_workers_are_bounded() {
    assert_eq!(ok(BASE).config.runtime, RuntimeConfig { workers: None });
    assert_eq!(ok(&format!("{BASE}runtime: {{ workers: 3 }}\n")).config.runtime, RuntimeConfig { workers: Some(3) });
    assert_eq!(
        errors(&format!("{BASE}runtime: {{ workers: 0 }}\n")),
        vec!["c.yaml:10:21: runtime.workers: must be from 1 to 1024"]
    );
    assert_eq!(
        errors(&format!("{BASE}runtime: {{ workers: 5000 }}\n")),
        vec!["c.yaml:10:21: runtime.workers: must be from 1 to 1024"]
    );
}

#[test]
fn the_worker_count_comes_from_the_config_then_the_environment_then_the_cpus() {
    let set = RuntimeConfig { workers: Some(3) };
    let unset = RuntimeConfig::default();
    assert_eq!(set.workers(Some("8"), 2), (3, WorkersFrom::Config));
    assert_eq!(unset.workers(Some("8"), 2), (8, WorkersFrom::Environment));
    assert_eq!(unset.workers(Some(" 4 "), 2), (4, WorkersFrom::Environment));
    for ignored in ["0", "-1", "two", "", "1025"] {
        assert_eq!(unset.workers(Some(ignored), 2), (2, WorkersFrom::Cpus), "{ignored:?}");
    }
    assert_eq!(unset.workers(None, 6), (6, WorkersFrom::Cpus));
    assert_eq!(unset.workers(None, 0), (1, WorkersFrom::Cpus));
    assert_eq!(unset.workers(None, 4096), (MAX_WORKERS, WorkersFrom::Cpus));
}
