//! Which web pages may open a WebSocket: the request's own origin, or one a route lists.
//! Pure. Without this check any page a user visits could open a WebSocket to the backend
//! with the user's cookies (cross-site WebSocket hijacking).

use http::HeaderValue;

use crate::config::OriginPattern;

/// An origin, normalised: lowercase scheme and host, explicit port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// The origin of a request as tether sees it: its scheme, and the host and port it names
    /// (the `Host` header or URI authority).
    pub(crate) fn of_request(is_tls: bool, host: &str) -> Option<Self> {
        let scheme = if is_tls { "https" } else { "http" };
        Self::parse(&format!("{scheme}://{host}"))
    }

    /// `scheme://host[:port]`; `None` for anything else (including the opaque `null`).
    fn parse(text: &str) -> Option<Self> {
        let (scheme, rest) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" => 80,
            _ => return None,
        };
        if rest.is_empty() || rest.contains(['/', '?', '#', '@']) {
            return None;
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']')?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().ok()?,
                None if after.is_empty() => default_port,
                None => return None,
            };
            (format!("[{addr}]"), port)
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host.to_owned(), port.parse().ok()?),
                None => (rest.to_owned(), default_port),
            }
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        (!host.is_empty()).then_some(Self { scheme, host, port })
    }
}

/// Whether a page of `origin` may open a WebSocket on a request of origin `own`.
pub(crate) fn is_allowed(origin: &HeaderValue, own: Option<&Origin>, allowed: &[OriginPattern]) -> bool {
    if allowed.contains(&OriginPattern::Any) {
        return true;
    }
    let Some(origin) = origin.to_str().ok().and_then(Origin::parse) else { return false };
    if own == Some(&origin) {
        return true;
    }
    allowed.iter().any(|pattern| match pattern {
        OriginPattern::Any => true,
        OriginPattern::Exact { scheme, host, port } => {
            *scheme == origin.scheme && *host == origin.host && *port == origin.port
        }
        OriginPattern::Subdomains { scheme, suffix, port } => {
            *scheme == origin.scheme && *port == origin.port && origin.host.ends_with(suffix.as_str())
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(origin: &str, own: &str, is_tls: bool, patterns: &[OriginPattern]) -> bool {
        is_allowed(&HeaderValue::from_str(origin).expect("value"), Origin::of_request(is_tls, own).as_ref(), patterns)
    }

    fn exact(scheme: &str, host: &str, port: u16) -> OriginPattern {
        OriginPattern::Exact { scheme: scheme.into(), host: host.into(), port }
    }

    #[test]
    fn the_request_s_own_origin_is_allowed_with_default_ports_made_explicit() {
        assert!(allowed("http://app.test", "app.test", false, &[]));
        assert!(allowed("http://app.test:80", "App.Test", false, &[]));
        assert!(allowed("https://app.test", "app.test:443", true, &[]));
        assert!(allowed("http://127.0.0.1:8080", "127.0.0.1:8080", false, &[]));
        assert!(allowed("http://[::1]:8080", "[::1]:8080", false, &[]));
        assert!(!allowed("https://app.test", "app.test", false, &[]), "scheme differs");
        assert!(!allowed("http://app.test:8080", "app.test", false, &[]), "port differs");
        assert!(!allowed("http://evil.test", "app.test", false, &[]));
        assert!(!allowed("null", "app.test", false, &[]));
        assert!(!allowed("http://app.test/path", "app.test", false, &[]));
    }

    #[test]
    fn listed_origins_and_wildcards_are_allowed() {
        let patterns = [
            exact("https", "app.example.com", 443),
            OriginPattern::Subdomains { scheme: "https".into(), suffix: ".example.org".into(), port: 443 },
        ];
        assert!(allowed("https://app.example.com", "api.test", false, &patterns));
        assert!(allowed("https://a.b.example.org", "api.test", false, &patterns));
        assert!(!allowed("https://example.org", "api.test", false, &patterns), "the parent is not a subdomain");
        assert!(!allowed("https://evil-example.org", "api.test", false, &patterns));
        assert!(!allowed("http://app.example.com", "api.test", false, &patterns));
        assert!(allowed("http://anything", "api.test", false, &[OriginPattern::Any]));
        assert!(allowed("null", "api.test", false, &[OriginPattern::Any]));
    }
}
