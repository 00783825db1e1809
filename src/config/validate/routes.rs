//! Routes: what they match, where they send requests, the verifier they use, their header
//! rules and the origins allowed to open WebSockets.

use http::{HeaderName, HeaderValue};

use super::{Checked, Validator};
use crate::config::file::{FileConfig, FileHeaderRules, FileRoute, FileWebSocket, Text};
use crate::config::values::parse_host_match;
use crate::config::{HeaderRules, HostMatch, OriginPattern, RouteConfig, VerifierConfig, WebSocketConfig};

/// Headers that describe one hop or frame the body: no rule may set or remove them.
const FRAMING_HEADERS: [&str; 8] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "content-length"];

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        routes: &[FileRoute],
        file: &FileConfig,
        verifiers: &[VerifierConfig],
    ) -> Checked<Vec<RouteConfig>> {
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
            let auth = self.route_auth(&format!("{path}.auth"), route.auth.as_ref(), verifiers);
            let request_headers =
                self.header_rules(&format!("{path}.request_headers"), route.request_headers.as_ref(), verifiers);
            let response_headers =
                self.header_rules(&format!("{path}.response_headers"), route.response_headers.as_ref(), verifiers);
            let websocket = self.websocket(&format!("{path}.websocket"), route.websocket.as_ref());
            let route = (|| {
                Ok(RouteConfig {
                    host: host?,
                    path_prefix: path_prefix?,
                    upstream: upstream?,
                    auth: auth?,
                    request_headers: request_headers?,
                    response_headers: response_headers?,
                    websocket: websocket?,
                    allow_encoded_slash: route.path.as_ref().and_then(|p| p.allow_encoded_slash).unwrap_or(false),
                })
            })();
            match (route, &mut out) {
                (Ok(route), Ok(out)) => out.push(route),
                (Err(r), _) => out = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    fn route_auth(&mut self, path: &str, auth: Option<&Text>, verifiers: &[VerifierConfig]) -> Checked<Option<String>> {
        let Some(name) = auth else { return Ok(None) };
        if verifiers.iter().any(|v| v.name == name.as_str()) {
            return Ok(Some(name.0.clone()));
        }
        let defined: Vec<&str> = verifiers.iter().map(|v| v.name.as_str()).collect();
        let defined = if defined.is_empty() {
            "no verifiers are defined under auth".to_owned()
        } else {
            format!("defined: {}", defined.join(", "))
        };
        Err(self.error(path, format!("unknown verifier {:?} ({defined})", name.as_str())))
    }

    /// `set` and `remove` lists; hop-by-hop and framing headers and identity headers cannot be
    /// touched (they would break the exchange or the identity guarantee).
    fn header_rules(
        &mut self,
        path: &str,
        rules: Option<&FileHeaderRules>,
        verifiers: &[VerifierConfig],
    ) -> Checked<HeaderRules> {
        let Some(rules) = rules else { return Ok(HeaderRules::default()) };
        let mut out = Ok(HeaderRules::default());
        let check = |v: &mut Self, item: &str, name: &str| -> Checked<HeaderName> {
            let name = v.header_name(item, name)?;
            if let Some(verifier) = verifiers.iter().find(|x| x.identity.header == name) {
                return Err(v.error(
                    item,
                    format!("{name} carries the identity verified by {}; it cannot be changed here", verifier.name),
                ));
            }
            if FRAMING_HEADERS.contains(&name.as_str()) {
                return Err(
                    v.error(item, format!("{name} describes one hop or frames the body; it cannot be changed here"))
                );
            }
            Ok(name)
        };
        for (name, value) in rules.set.as_ref().map(|s| s.0.as_slice()).unwrap_or_default() {
            let item = format!("{path}.set.{name}");
            let name = check(self, &item, name);
            let value = HeaderValue::from_str(value.as_str())
                .map_err(|_| self.error(&item, format!("invalid header value {:?}", value.as_str())));
            match (name, value, &mut out) {
                (Ok(n), Ok(v), Ok(out)) => out.set.push((n, v)),
                (Err(r), ..) | (_, Err(r), _) => out = Err(r),
                _ => {}
            }
        }
        for (i, name) in rules.remove.iter().flatten().enumerate() {
            match (check(self, &format!("{path}.remove[{i}]"), name.as_str()), &mut out) {
                (Ok(n), Ok(out)) => out.remove.push(n),
                (Err(r), _) => out = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        out
    }

    fn websocket(&mut self, path: &str, ws: Option<&FileWebSocket>) -> Checked<WebSocketConfig> {
        let mut allowed_origins = Ok(Vec::new());
        for (i, text) in ws.and_then(|w| w.allowed_origins.as_ref()).into_iter().flatten().enumerate() {
            let parsed =
                parse_origin(text.as_str()).map_err(|m| self.error(&format!("{path}.allowed_origins[{i}]"), m));
            match (parsed, &mut allowed_origins) {
                (Ok(o), Ok(list)) => list.push(o),
                (Err(r), _) => allowed_origins = Err(r),
                (Ok(_), Err(_)) => {}
            }
        }
        Ok(WebSocketConfig { allowed_origins: allowed_origins? })
    }
}

/// `*`, or `scheme://host[:port]` where host may start with `*.`.
pub(crate) fn parse_origin(text: &str) -> Result<OriginPattern, String> {
    if text == "*" {
        return Ok(OriginPattern::Any);
    }
    let expected = "expected \"*\" or an origin such as \"https://app.example.com\" or \"https://*.example.com\"";
    let Some((scheme, rest)) = text.split_once("://") else {
        return Err(format!("invalid origin {text:?}; {expected}"));
    };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return Err(format!("invalid origin {text:?}: the scheme must be http or https")),
    };
    if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
        return Err(format!("invalid origin {text:?}: an origin has no path, query or user; {expected}"));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || rest.starts_with('[') => match port.parse::<u16>() {
            Ok(p) if p > 0 => (host, p),
            _ => return Err(format!("invalid origin {text:?}: bad port {port:?}")),
        },
        _ => (rest, default_port),
    };
    let host = host.to_ascii_lowercase();
    match host.strip_prefix("*.") {
        Some(parent)
            if !parent.is_empty() && parse_host_match(parent).is_ok_and(|m| matches!(m, HostMatch::Exact(_))) =>
        {
            Ok(OriginPattern::Subdomains { scheme, suffix: format!(".{parent}"), port })
        }
        Some(_) => Err(format!("invalid origin {text:?}: a wildcard is only \"*.\" before a domain")),
        None if host.is_empty() || host.contains('*') => Err(format!("invalid origin {text:?}; {expected}")),
        None => Ok(OriginPattern::Exact { scheme, host, port }),
    }
}

#[cfg(test)]
mod origin_tests {
    use super::*;

    #[test]
    fn origins_parse_with_explicit_ports() {
        assert_eq!(parse_origin("*"), Ok(OriginPattern::Any));
        assert_eq!(
            parse_origin("https://App.Example.com"),
            Ok(OriginPattern::Exact { scheme: "https".into(), host: "app.example.com".into(), port: 443 })
        );
        assert_eq!(
            parse_origin("http://localhost:8080"),
            Ok(OriginPattern::Exact { scheme: "http".into(), host: "localhost".into(), port: 8080 })
        );
        assert_eq!(
            parse_origin("https://*.example.com"),
            Ok(OriginPattern::Subdomains { scheme: "https".into(), suffix: ".example.com".into(), port: 443 })
        );
        for bad in [
            "example.com",
            "ftp://x",
            "https://",
            "https://a/b",
            "https://*",
            "https://a.*.com",
            "https://x:0",
            "https://x:y",
        ] {
            assert!(parse_origin(bad).is_err(), "{bad}");
        }
    }
}
