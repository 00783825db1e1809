//! The syntax of single config values: names, host patterns, backend addresses, binds.
//!
//! Owns: pure predicates and parsers that need no context beyond the value itself (and the
//! bind-overlap rule). Must not: know field paths or positions; `validate` attaches those.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{BackendAddress, HostMatch};

/// Names (listeners, upstreams, backend ids) appear in logs, metrics labels, the
/// `X-Tether-Backend` header and sticky cookies: keep them short and free of separators.
pub(super) const MAX_NAME_BYTES: usize = 128;

/// Two binds that cannot both succeed. Port 0 asks the kernel for a fresh port each time,
/// so such binds never conflict (tests bind several listeners on `127.0.0.1:0`).
pub(super) fn binds_conflict(a: SocketAddr, b: SocketAddr) -> bool {
    if a.port() == 0 || a.port() != b.port() || a.is_ipv4() != b.is_ipv4() {
        return false;
    }
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

pub(super) fn invalid_name_message(what: &str, name: &str) -> String {
    format!("invalid {what} {name:?}; expected 1 to {MAX_NAME_BYTES} letters, digits or - _ . :")
}

pub(super) fn has_space_or_control(s: &str) -> bool {
    s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// RFC 6265 cookie-name: an RFC 2616 token.
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_graphic()
                && !matches!(
                    b,
                    b'(' | b')'
                        | b'<'
                        | b'>'
                        | b'@'
                        | b','
                        | b';'
                        | b':'
                        | b'\\'
                        | b'"'
                        | b'/'
                        | b'['
                        | b']'
                        | b'?'
                        | b'='
                        | b'{'
                        | b'}'
                )
        })
}

/// A DNS name as written in configs: labels of letters, digits, `-` and `_` (compose and
/// Kubernetes service names use `_` in places), 1 to 63 bytes each, 253 in all.
pub(super) fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// `"*"`, `"*.example.com"`, an exact name, an IPv4 literal or a bracketed IPv6 literal.
pub(super) fn parse_host_match(host: &str) -> Result<HostMatch, String> {
    if host == "*" {
        return Ok(HostMatch::Any);
    }
    let lower = host.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("*.")
        && is_dns_name(rest)
    {
        return Ok(HostMatch::Suffix(format!(".{rest}")));
    }
    if lower.contains('*') {
        return Err(format!(
            "invalid host {host:?}; a wildcard is only allowed as \"*\" or a leading \"*.\" \
             (e.g. \"*.example.com\")"
        ));
    }
    let is_ipv6 =
        lower.strip_prefix('[').and_then(|h| h.strip_suffix(']')).is_some_and(|h| h.parse::<Ipv6Addr>().is_ok());
    if is_ipv6 || is_dns_name(&lower) {
        return Ok(HostMatch::Exact(lower));
    }
    if lower.contains(':') {
        return Err(format!("invalid host {host:?}; write the host name without a port"));
    }
    Err(format!("invalid host {host:?}; expected an exact name, \"*.example.com\" or \"*\""))
}

/// Why a backend address was rejected (shown after `invalid socket address "..."`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    #[error("expected host:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\" or \"app:8080\")")]
    /// Not `host:port`.
    Form,
    #[error("the host is empty")]
    /// Nothing before the port.
    EmptyHost,
    #[error("IPv6 addresses must be in brackets (e.g. \"[::1]:8080\")")]
    /// An IPv6 literal without brackets.
    UnbracketedIpv6,
    #[error("{0:?} is neither an IP address nor a DNS name")]
    /// A host that is neither an IP address nor a DNS name.
    BadHost(String),
    #[error("the port {0:?} is not a number")]
    /// A port that is not a number.
    PortNotNumber(String),
    #[error("port {0} is out of range (1-65535)")]
    /// A port outside 1-65535.
    PortOutOfRange(String),
}

/// `host:port` with an IPv4 literal, a bracketed IPv6 literal or a DNS name. Names are not
/// resolved here.
pub(super) fn parse_backend_address(text: &str) -> Result<BackendAddress, AddressError> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:").ok_or(AddressError::Form)?;
        host.parse::<Ipv6Addr>().map_err(|_| AddressError::BadHost(host.to_owned()))?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or(AddressError::Form)?;
        if host.contains(':') {
            return Err(AddressError::UnbracketedIpv6);
        }
        if host.is_empty() {
            return Err(AddressError::EmptyHost);
        }
        let is_ipv4 = host.parse::<Ipv4Addr>().is_ok();
        let looks_numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
        if !is_ipv4 && (looks_numeric || !is_dns_name(host)) {
            return Err(AddressError::BadHost(host.to_owned()));
        }
        (host, port)
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(AddressError::PortNotNumber(port.to_owned()));
    }
    match port.parse::<u16>() {
        Ok(number) if number != 0 => Ok(BackendAddress { host: host.to_ascii_lowercase(), port: number }),
        _ => Err(AddressError::PortOutOfRange(port.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_addresses_keep_names_unresolved_and_ipv6_unbracketed() {
        let cases = [
            ("127.0.0.1:9001", "127.0.0.1", 9001),
            ("[::1]:8080", "::1", 8080),
            ("App:80", "app", 80),
            ("app_1.svc.cluster.local:65535", "app_1.svc.cluster.local", 65535),
        ];
        for (text, host, port) in cases {
            let address = parse_backend_address(text).expect(text);
            assert_eq!(address, BackendAddress { host: host.into(), port }, "{text}");
        }
        assert_eq!(parse_backend_address("[::1]:8080").map(|a| a.to_string()), Ok("[::1]:8080".to_owned()));
    }

    #[test]
    fn backend_address_errors_say_what_is_wrong() {
        let cases = [
            ("127.0.0.1:99999", "port 99999 is out of range (1-65535)"),
            ("127.0.0.1:0", "port 0 is out of range (1-65535)"),
            ("127.0.0.1", "expected host:port (e.g. \"127.0.0.1:9001\", \"[::1]:9001\" or \"app:8080\")"),
            (":80", "the host is empty"),
            ("::1:80", "IPv6 addresses must be in brackets (e.g. \"[::1]:8080\")"),
            ("[zz]:80", "\"zz\" is neither an IP address nor a DNS name"),
            ("999.1.1.1:80", "\"999.1.1.1\" is neither an IP address nor a DNS name"),
            ("a b:80", "\"a b\" is neither an IP address nor a DNS name"),
            ("app:http", "the port \"http\" is not a number"),
            ("app:", "the port \"\" is not a number"),
            ("app:99999999999999999999999", "port 99999999999999999999999 is out of range (1-65535)"),
        ];
        for (text, reason) in cases {
            let err = parse_backend_address(text).expect_err(text);
            assert_eq!(err.to_string(), reason, "{text}");
        }
    }

    #[test]
    fn host_patterns() {
        assert_eq!(parse_host_match("*"), Ok(HostMatch::Any));
        assert_eq!(parse_host_match("*.Example.COM"), Ok(HostMatch::Suffix(".example.com".into())));
        assert_eq!(parse_host_match("Api.Example.com"), Ok(HostMatch::Exact("api.example.com".into())));
        assert_eq!(parse_host_match("10.0.0.1"), Ok(HostMatch::Exact("10.0.0.1".into())));
        assert_eq!(parse_host_match("[::1]"), Ok(HostMatch::Exact("[::1]".into())));
        for bad in ["", "*.", "**", "a.*.com", "*example.com", "a b", "host:80", "a..b"] {
            assert!(parse_host_match(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn binds_conflict_on_the_same_port_unless_it_is_zero() {
        let conflict = |a: &str, b: &str| binds_conflict(a.parse().expect("addr"), b.parse().expect("addr"));
        assert!(conflict("127.0.0.1:80", "127.0.0.1:80"));
        assert!(conflict("0.0.0.0:80", "127.0.0.1:80"));
        assert!(conflict("127.0.0.1:80", "0.0.0.0:80"));
        assert!(conflict("[::]:80", "[::1]:80"));
        assert!(!conflict("127.0.0.1:80", "127.0.0.2:80"));
        assert!(!conflict("127.0.0.1:80", "127.0.0.1:81"));
        assert!(!conflict("127.0.0.1:0", "127.0.0.1:0"));
        // Whether [::] also takes IPv4 depends on IPV6_V6ONLY, which the server decides.
        assert!(!conflict("[::]:80", "0.0.0.0:80"));
    }

    #[test]
    fn names_and_cookie_tokens() {
        for good in ["app-1", "app_1", "a.b", "10.0.0.1:80", "X"] {
            assert!(is_valid_name(good), "{good}");
        }
        let long = "a".repeat(MAX_NAME_BYTES + 1);
        for bad in ["", "a b", "a/b", "é", long.as_str()] {
            assert!(!is_valid_name(bad), "{bad}");
        }
        for good in ["TETHER_AFFINITY", "sid", "a-b.c!#$%&'*+^`|~"] {
            assert!(is_token(good), "{good}");
        }
        for bad in ["", "a b", "a;b", "a=b", "a\"b", "a,b", "é"] {
            assert!(!is_token(bad), "{bad}");
        }
    }
}
