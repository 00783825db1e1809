//! Forwarding headers: what tether tells a backend about the client (`X-Forwarded-*`,
//! `X-Real-IP`, RFC 7239 `Forwarded`), pure functions over `http` types.
//!
//! From a peer outside `trusted_proxies` every inbound forwarding header is a claim nobody
//! verified: all of them are removed and replaced by tether's own values. From a trusted peer
//! they are kept and extended with this hop.

use std::net::IpAddr;

use http::header::{Entry, FORWARDED, HeaderMap, HeaderName, HeaderValue};
use ipnet::IpNet;

use super::headers::remove_all;
use crate::config::ForwardedHeaders;

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
pub(crate) const X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
pub(crate) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Every header that carries forwarding information.
const ALL: [HeaderName; 7] =
    [FORWARDED, X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_REAL_IP];

/// What the proxy knows about the client side of one request. The texts are rendered once per
/// client connection, not per request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientFacts<'a> {
    pub(crate) peer: IpAddr,
    /// `peer` as header text, an IPv4-mapped address written as IPv4.
    pub(crate) peer_text: &'a HeaderValue,
    pub(crate) is_tls: bool,
    /// The host the client asked for (Host header, or the URI authority for HTTP/2), as sent.
    pub(crate) host: Option<&'a str>,
    /// The port the client connected to, as header text.
    pub(crate) port: &'a HeaderValue,
}

/// Write this hop's forwarding headers in `mode`, replacing or extending what arrived.
pub(crate) fn set_forwarding(
    headers: &mut HeaderMap,
    client: ClientFacts<'_>,
    trusted: &[IpNet],
    mode: ForwardedHeaders,
) {
    let peer = client.peer.to_canonical();
    let is_trusted = trusted.iter().any(|net| net.contains(&peer));
    if !is_trusted {
        remove_all(headers, &ALL);
    }
    let proto = if client.is_tls { "https" } else { "http" };
    // From an untrusted peer none of these headers is left, so each is added without looking
    // for an earlier copy; from a trusted one, lists are extended and single values kept.
    let list = |headers: &mut HeaderMap, name: HeaderName, item: HeaderValue| {
        if is_trusted {
            append_list(headers, name, &item);
        } else {
            headers.append(name, item);
        }
    };
    let single = |headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>| match value {
        Some(value) if is_trusted => set_unless_present(headers, name, value),
        Some(value) => {
            headers.append(name, value);
        }
        None => {}
    };
    if matches!(mode, ForwardedHeaders::XForwarded | ForwardedHeaders::Both) {
        list(headers, X_FORWARDED_FOR, client.peer_text.clone());
        single(headers, X_FORWARDED_PROTO, Some(HeaderValue::from_static(proto)));
        single(headers, X_FORWARDED_HOST, client.host.and_then(|host| HeaderValue::from_str(host).ok()));
        single(headers, X_FORWARDED_PORT, Some(client.port.clone()));
        single(headers, X_REAL_IP, Some(client.peer_text.clone()));
    }
    if matches!(mode, ForwardedHeaders::Rfc7239 | ForwardedHeaders::Both)
        && let Ok(element) = HeaderValue::from_str(&forwarded_element(peer, client.peer_text, proto, client.host))
    {
        list(headers, FORWARDED, element);
    }
}

/// One `Forwarded` element (RFC 7239 section 4): `for=`, `proto=` and `host=`, quoted where
/// the value is not a token (IPv6 addresses, hosts with a port).
fn forwarded_element(peer: IpAddr, peer_text: &HeaderValue, proto: &str, host: Option<&str>) -> String {
    let peer_text = peer_text.to_str().unwrap_or_default();
    let mut element = String::with_capacity(32 + peer_text.len() + host.map_or(0, str::len));
    match peer {
        IpAddr::V4(_) => {
            element.push_str("for=");
            element.push_str(peer_text);
        }
        IpAddr::V6(_) => {
            element.push_str("for=\"[");
            element.push_str(peer_text);
            element.push_str("]\"");
        }
    }
    element.push_str(";proto=");
    element.push_str(proto);
    if let Some(host) = host {
        element.push_str(";host=");
        if host.bytes().all(is_tchar) {
            element.push_str(host);
        } else {
            element.push_str(&quoted(host));
        }
    }
    element
}

/// RFC 9110 `tchar`.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 `quoted-string`.
fn quoted(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// Append `item` to the comma-separated list in `name` (all its copies joined into one).
fn append_list(headers: &mut HeaderMap, name: HeaderName, item: &HeaderValue) {
    let mut entry = match headers.entry(name) {
        Entry::Vacant(vacant) => {
            vacant.insert(item.clone());
            return;
        }
        Entry::Occupied(occupied) => occupied,
    };
    let prior: Vec<&str> =
        entry.iter().filter_map(|v| v.to_str().ok()).map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut list = prior.join(", ");
    if !list.is_empty() {
        list.push_str(", ");
    }
    list.push_str(item.to_str().unwrap_or_default());
    match HeaderValue::from_str(&list) {
        Ok(value) => {
            entry.insert(value);
        }
        Err(_) => {
            entry.remove();
        }
    }
}

fn set_unless_present(headers: &mut HeaderMap, name: HeaderName, value: HeaderValue) {
    if let Entry::Vacant(vacant) = headers.entry(name) {
        vacant.insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Header texts outlive the facts that borrow them.
    fn texts(peer: &str) -> (IpAddr, HeaderValue, HeaderValue) {
        let peer: IpAddr = peer.parse().expect("ip");
        let text = HeaderValue::from_str(&peer.to_canonical().to_string()).expect("ip text");
        (peer, text, HeaderValue::from_static("8443"))
    }

    fn facts<'a>(
        texts: &'a (IpAddr, HeaderValue, HeaderValue),
        is_tls: bool,
        host: Option<&'a str>,
    ) -> ClientFacts<'a> {
        ClientFacts { peer: texts.0, peer_text: &texts.1, is_tls, host, port: &texts.2 }
    }

    fn forged() -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("forwarded", "for=6.6.6.6;host=evil"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil"),
            ("X-Forwarded-Port", "1"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "6.6.6.6"),
        ] {
            h.append(HeaderName::from_bytes(name.as_bytes()).expect("name"), HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn an_untrusted_peer_gets_every_forwarding_header_replaced() {
        let mut h = forged();
        set_forwarding(&mut h, facts(&texts("10.0.0.9"), false, Some("app.test")), &[], ForwardedHeaders::XForwarded);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        assert_eq!(h[X_FORWARDED_PROTO], "http");
        assert_eq!(h[X_FORWARDED_HOST], "app.test");
        assert_eq!(h[X_FORWARDED_PORT], "8443");
        assert_eq!(h[X_REAL_IP], "10.0.0.9");
        assert!(h.get(X_FORWARDED_PREFIX).is_none(), "tether sets no prefix, so none passes");
        assert!(h.get(FORWARDED).is_none(), "not emitted in x-forwarded mode");

        let mut h = forged();
        set_forwarding(&mut h, facts(&texts("10.0.0.9"), true, Some("app.test")), &[], ForwardedHeaders::Rfc7239);
        assert_eq!(h[FORWARDED], "for=10.0.0.9;proto=https;host=app.test");
        for name in
            [X_FORWARDED_FOR, X_FORWARDED_PROTO, X_FORWARDED_HOST, X_FORWARDED_PORT, X_FORWARDED_PREFIX, X_REAL_IP]
        {
            assert!(h.get(&name).is_none(), "{name} removed");
        }
    }

    #[test]
    fn a_trusted_peer_has_its_chain_extended_and_its_values_kept() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("1.1.1.1"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("2.2.2.2"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        h.insert(X_FORWARDED_PREFIX, HeaderValue::from_static("/api"));
        h.insert(FORWARDED, HeaderValue::from_static("for=1.1.1.1"));
        set_forwarding(&mut h, facts(&texts("10.1.2.3"), false, Some("h")), &trusted, ForwardedHeaders::Both);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 10.1.2.3");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "h");
        assert_eq!(h[X_FORWARDED_PREFIX], "/api");
        assert_eq!(h[FORWARDED], "for=1.1.1.1, for=10.1.2.3;proto=http;host=h");
    }

    #[test]
    fn rfc7239_quotes_ipv6_and_hosts_with_ports() {
        let mut h = HeaderMap::new();
        set_forwarding(
            &mut h,
            facts(&texts("2001:db8::1"), false, Some("app.test:8080")),
            &[],
            ForwardedHeaders::Rfc7239,
        );
        assert_eq!(h[FORWARDED], "for=\"[2001:db8::1]\";proto=http;host=\"app.test:8080\"");
    }

    #[test]
    fn an_ipv4_mapped_peer_matches_ipv4_trust_and_is_written_as_ipv4() {
        let trusted: Vec<IpNet> = vec!["127.0.0.1/32".parse().expect("net")];
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("9.9.9.9"));
        set_forwarding(&mut h, facts(&texts("::ffff:127.0.0.1"), true, None), &trusted, ForwardedHeaders::XForwarded);
        assert_eq!(h[X_FORWARDED_FOR], "9.9.9.9, 127.0.0.1");
    }
}
