//! `config`: the config loader ([`crate::config::parse`]), from YAML text to a validated
//! [`Config`].
//!
//! Input: the text of a config file (lossy UTF-8), read as if it were
//! `tests/fixtures/jwt/fuzz.yaml`, so that relative key files such as `jwks.json` or
//! `ec.pub.pem` exist. The environment is a fixed table (a cookie key, a short one, an HMAC
//! secret, an admin token, a port). Texts naming `/dev`, `/proc` or `/sys` are skipped: a
//! config may name any file as a key or certificate, and those can be endless or block.
//!
//! Invariants:
//! - the same text gives the same answer twice (the same problems in the same order, or the
//!   same warnings);
//! - a text with a NUL is refused (the YAML parser would take it for the end of the text and
//!   ignore the rest);
//! - a refusal lists at least one problem; each names the file, says something on one line,
//!   and has a position inside the text or at its end (only an empty file has none); problems
//!   come top to bottom;
//! - what loads holds what the rest of tether relies on: routes name existing upstreams and
//!   verifiers and start with `/`; names and backend ids are unique; weights are at least 1;
//!   each upstream's affinity builds a routing policy; each verifier builds; a backend
//!   address prints as text that parses back to it; warnings are one line each.

use std::collections::HashSet;
use std::path::Path;

use crate::auth::Verifier;
use crate::balance::{AffinityPolicy, CookieKey};
use crate::config::{BackendAddress, Config, ConfigErrors, Loaded, parse};

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/fuzz.yaml");

fn env(name: &str) -> Option<String> {
    let value = match name {
        "COOKIE_KEY" => "a cookie key of at least thirty-two bytes, for fuzzing",
        "SHORT_KEY" => "too short",
        "EMPTY" => "",
        "JWT_SECRET" => "a fuzzing secret that is at least thirty-two bytes long",
        "ADMIN_TOKEN" => "admin-token",
        "PORT" => "8080",
        "HOST" => "127.0.0.1",
        _ => return None,
    };
    Some(value.to_owned())
}

/// See the module doc.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if ["/dev", "/proc", "/sys"].iter().any(|special| text.contains(special)) {
        return;
    }
    let path = Path::new(PATH);
    let first = parse(path, &text, &env);
    if text.contains('\0') {
        // yaml-rust2 takes a NUL for the end of the input: what follows must not be ignored.
        assert!(first.is_err(), "a text with a NUL loaded");
    }
    let second = parse(path, &text, &env);
    match (&first, &second) {
        (Err(a), Err(b)) => assert_eq!(a, b, "the same text was refused differently twice"),
        (Ok(a), Ok(b)) => assert_eq!(a.warnings, b.warnings, "the same text warned differently twice"),
        _ => panic!("the same text was accepted once and refused once"),
    }
    match first {
        Ok(loaded) => check_loaded(&text, &loaded),
        Err(errors) => check_errors(&text, path, &errors),
    }
}

fn check_errors(text: &str, path: &Path, errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "a refusal without a problem");
    let lines = yaml_lines(text);
    for e in &errors.0 {
        assert_eq!(e.file, path, "a problem names another file: {e}");
        assert!(!e.message.trim().is_empty(), "a problem without a message: {e:?}");
        assert!(!e.to_string().contains(['\n', '\r']), "a problem on more than one line: {e:?}");
        match e.position {
            Some((line, column)) => {
                let width = lines.get(line.wrapping_sub(1)).copied();
                let inside = line >= 1 && column >= 1 && width.is_some_and(|w| column <= w + 1);
                // yaml-rust2 places the end of a text without a final line break at the start
                // of the line after the last.
                let at_end = line == lines.len() + 1 && column == 1;
                assert!(inside || at_end, "problem at {line}:{column}, outside the text ({} lines): {e}", lines.len());
            }
            None => assert!(
                errors.0.len() == 1 && e.message.starts_with("the file is empty"),
                "a problem without a position: {e}"
            ),
        }
    }
    let keys: Vec<(usize, usize)> = errors.0.iter().map(|e| e.position.unwrap_or((usize::MAX, usize::MAX))).collect();
    assert!(keys.is_sorted(), "problems are not in file order: {errors}");
}

/// The width in characters of each line, as YAML breaks lines (LF, CRLF or a lone CR); a
/// final line without a break counts, and so does the empty line after a final break.
fn yaml_lines(text: &str) -> Vec<usize> {
    let mut widths = vec![0];
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {
                chars.next_if_eq(&'\n');
                widths.push(0);
            }
            '\n' => widths.push(0),
            _ => *widths.last_mut().expect("never empty") += 1,
        }
    }
    widths
}

fn check_loaded(text: &str, loaded: &Loaded) {
    let config: &Config = &loaded.config;
    assert_eq!(config.source.text, text, "the source text is not the text loaded");
    for warning in &loaded.warnings {
        assert!(!warning.contains(['\n', '\r']), "a warning on more than one line: {warning:?}");
    }
    assert!(unique(config.listeners.iter().map(|l| l.name.as_str())), "two listeners share a name");
    assert!(unique(config.upstreams.iter().map(|u| u.name.as_str())), "two upstreams share a name");
    assert!(unique(config.auth.iter().map(|v| v.name.as_str())), "two verifiers share a name");
    for route in &config.routes {
        assert!(route.path_prefix.starts_with('/'), "route prefix {:?}", route.path_prefix);
        assert!(config.upstream(&route.upstream).is_some(), "a route names unknown upstream {:?}", route.upstream);
        if let Some(auth) = &route.auth {
            assert!(config.auth.iter().any(|v| &v.name == auth), "a route names unknown verifier {auth:?}");
        }
    }
    let key = CookieKey::from_bytes(&[7; 32]).expect("32 bytes is a valid cookie key");
    for upstream in &config.upstreams {
        assert!(unique(upstream.backends.iter().map(|b| b.id.as_str())), "two backends share an id");
        for backend in &upstream.backends {
            assert!(backend.weight >= 1, "backend {} has weight 0", backend.id);
            let printed = backend.address.to_string();
            assert_eq!(printed.parse::<BackendAddress>().as_ref(), Ok(&backend.address), "address {printed}");
        }
        if let Err(e) = AffinityPolicy::new(&upstream.affinity, key.clone()) {
            panic!("upstream {} loaded but its affinity cannot route: {e}", upstream.name);
        }
    }
    for verifier in &config.auth {
        assert!(!verifier.jwt.algorithms.is_empty(), "verifier {} has no algorithm", verifier.name);
        let _ = Verifier::new(verifier, &env);
    }
}

fn unique<'a>(names: impl Iterator<Item = &'a str>) -> bool {
    let mut seen = HashSet::new();
    names.into_iter().all(|n| seen.insert(n))
}
