//! What an instance believes about a request before any STOMP is spoken: whether its peer is a
//! trusted proxy (only then do the identity header and the forwarding headers count), and
//! whether the page that opened it may (`--allowed-origin`). Pure.
//!
//! A backend behind tether sees every request from tether's address; a client that reaches it
//! around tether must not be able to name itself by sending the identity header. Origins are
//! checked as tether checks them (`proxy::origin`): a browser page of another site must not
//! open a session with the user's cookies.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{HOST, HeaderMap, HeaderValue, ORIGIN};
use ipnet::IpNet;

use super::login::DemoLogin;
use crate::auth::Verifier;
use crate::config::OriginPattern;
use crate::proxy::origin::{self, Origin};

/// `--trust-proxy` when none is given: this host only.
pub(crate) const DEFAULT_TRUSTED: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Everything an instance trusts, and how it checks what it does not.
pub(crate) struct Trust {
    pub(crate) proxies: TrustedProxies,
    pub(crate) origins: Origins,
    /// `--jwt-*`: verifies CONNECT tokens.
    pub(crate) verifier: Option<Arc<Verifier>>,
    /// `--accept-login`.
    pub(crate) accept_login: bool,
    /// `/login` of `tether demo`.
    pub(crate) demo_login: Option<DemoLogin>,
}

impl Trust {
    /// The trust owed to a connection from `ip`.
    pub(crate) fn peer(&self, ip: IpAddr) -> Peer {
        Peer { ip, trusted: self.proxies.contains(ip) }
    }
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("proxies", &self.proxies)
            .field("origins", &self.origins)
            .field("verifier", &self.verifier.is_some())
            .field("accept_login", &self.accept_login)
            .field("demo_login", &self.demo_login.is_some())
            .finish()
    }
}

/// Peers whose identity and forwarding headers are believed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    pub(crate) fn new(nets: &[IpNet]) -> Self {
        Self(nets.iter().map(IpNet::trunc).collect())
    }

    /// Whether `ip` is one of them. An IPv4 peer on a dual-stack listener shows up as
    /// `::ffff:a.b.c.d`: it is the IPv4 address that is looked up.
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// A `--trust-proxy` value: a network (`10.0.0.0/8`, `fd00::/8`) or one address.
pub(crate) fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map(|net| net.trunc())
        .map_err(|_| format!("{text:?} is not an address or a network (10.0.0.0/8, 192.168.1.10, fd00::/8)"))
}

/// The request's connection, as far as trust goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Peer {
    pub(crate) ip: IpAddr,
    /// The peer is in `--trust-proxy`.
    pub(crate) trusted: bool,
}

/// What the `Origin` of a request means for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum OriginVerdict {
    /// No `Origin`: not a browser page (curl, a server-side client, a navigation).
    Absent,
    /// A page that may open sessions here; CORS answers echo it.
    Allowed(HeaderValue),
    /// A page of another origin: 403.
    Refused,
}

/// `--allowed-origin`: the pages, besides the request's own origin, that may open sessions.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Origins {
    allowed: Vec<OriginPattern>,
}

impl Origins {
    pub(crate) fn new(allowed: Vec<OriginPattern>) -> Self {
        Self { allowed }
    }

    /// The verdict on a request from `peer`. Its own origin is its `Host` on plain HTTP (the
    /// app has no TLS); behind a trusted proxy, the scheme and host the proxy says the client
    /// used (`X-Forwarded-Proto`/`-Host`, or RFC 7239 `Forwarded`), since a browser on
    /// `https://shop.example` talks to the proxy, not to us.
    pub(crate) fn check(&self, headers: &HeaderMap, peer: Peer) -> OriginVerdict {
        let Some(page) = headers.get(ORIGIN) else {
            return OriginVerdict::Absent;
        };
        let own = own_origin(headers, peer.trusted);
        if origin::is_allowed(page, own.as_ref(), &self.allowed) {
            OriginVerdict::Allowed(page.clone())
        } else {
            OriginVerdict::Refused
        }
    }
}

fn own_origin(headers: &HeaderMap, trusted_peer: bool) -> Option<Origin> {
    let (proto, host) = if trusted_peer { forwarded(headers) } else { (None, None) };
    let host = match host {
        Some(host) => host,
        None => headers.get(HOST)?.to_str().ok()?.to_owned(),
    };
    Origin::of_request(proto.is_some_and(|p| p.eq_ignore_ascii_case("https")), &host)
}

/// The client's scheme and host as a proxy reports them: `X-Forwarded-Proto`/`-Host` (first
/// value: the hop nearest the client), else the first element of `Forwarded`.
fn forwarded(headers: &HeaderMap) -> (Option<String>, Option<String>) {
    let first = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    let (mut proto, mut host) = (first("x-forwarded-proto"), first("x-forwarded-host"));
    if (proto.is_none() || host.is_none())
        && let Some(element) = first("forwarded")
    {
        for pair in element.split(';') {
            let Some((key, value)) = pair.split_once('=') else { continue };
            let value = value.trim().trim_matches('"').to_owned();
            match key.trim().to_ascii_lowercase().as_str() {
                "proto" if proto.is_none() => proto = Some(value),
                "host" if host.is_none() => host = Some(value),
                _ => {}
            }
        }
    }
    (proto, host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> TrustedProxies {
        TrustedProxies::new(&list.iter().map(|n| parse_cidr(n).expect("cidr")).collect::<Vec<_>>())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).expect("name"), HeaderValue::from_str(v).expect("v"));
        }
        h
    }

    const TRUSTED: Peer = Peer { ip: IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), trusted: true };
    const STRANGER: Peer = Peer { ip: IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 9)), trusted: false };

    #[test]
    fn trusted_proxies_match_networks_addresses_and_mapped_ipv4() {
        let default = nets(&DEFAULT_TRUSTED);
        assert!(default.contains("127.0.0.1".parse().unwrap()));
        assert!(default.contains("127.8.9.10".parse().unwrap()));
        assert!(default.contains("::1".parse().unwrap()));
        assert!(default.contains("::ffff:127.0.0.1".parse().unwrap()), "IPv4 on a dual-stack listener");
        assert!(!default.contains("10.0.0.1".parse().unwrap()));
        assert!(!default.contains("::2".parse().unwrap()));
        let proxy = nets(&["172.28.0.10", "10.244.0.0/16"]);
        assert!(proxy.contains("172.28.0.10".parse().unwrap()));
        assert!(!proxy.contains("172.28.0.11".parse().unwrap()));
        assert!(proxy.contains("10.244.3.7".parse().unwrap()));
        assert!(!proxy.contains("127.0.0.1".parse().unwrap()), "a list replaces the default");
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok("10.0.0.0/8".parse().unwrap()), "host bits are dropped");
        for bad in ["", "10.0.0.0/33", "example.com", "10.0.0/8"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn requests_without_origin_pass_and_same_origin_pages_are_allowed() {
        let origins = Origins::default();
        assert_eq!(origins.check(&headers(&[("host", "app.test:8080")]), STRANGER), OriginVerdict::Absent);
        let same = headers(&[("host", "app.test:8080"), ("origin", "http://app.test:8080")]);
        assert!(matches!(origins.check(&same, STRANGER), OriginVerdict::Allowed(_)));
        let foreign = headers(&[("host", "app.test:8080"), ("origin", "http://evil.test")]);
        assert_eq!(origins.check(&foreign, STRANGER), OriginVerdict::Refused);
        assert_eq!(
            origins.check(&headers(&[("host", "app.test"), ("origin", "null")]), STRANGER),
            OriginVerdict::Refused
        );
    }

    #[test]
    fn behind_a_trusted_proxy_the_clients_scheme_and_host_make_the_own_origin() {
        let origins = Origins::default();
        let via = |extra: &[(&str, &str)]| {
            let mut pairs = vec![("host", "app1:8080"), ("origin", "https://shop.example")];
            pairs.extend_from_slice(extra);
            headers(&pairs)
        };
        let x = via(&[("x-forwarded-proto", "https"), ("x-forwarded-host", "shop.example")]);
        assert!(matches!(origins.check(&x, TRUSTED), OriginVerdict::Allowed(_)));
        assert_eq!(
            origins.check(&x, STRANGER),
            OriginVerdict::Refused,
            "a stranger's forwarding headers count for nothing"
        );
        let rfc = via(&[("forwarded", "proto=https;host=\"shop.example\", proto=http")]);
        assert!(matches!(origins.check(&rfc, TRUSTED), OriginVerdict::Allowed(_)));
        // tether preserves Host and says the scheme: the common case.
        let host_kept = headers(&[
            ("host", "shop.example"),
            ("origin", "https://shop.example"),
            ("x-forwarded-proto", "https, http"),
        ]);
        assert!(matches!(origins.check(&host_kept, TRUSTED), OriginVerdict::Allowed(_)));
    }

    #[test]
    fn listed_origins_are_allowed_and_a_star_allows_any() {
        let listed = Origins::new(vec![crate::config::parse_origin("https://*.example.com").expect("origin")]);
        let h = headers(&[("host", "api.test"), ("origin", "https://app.example.com")]);
        assert!(matches!(listed.check(&h, STRANGER), OriginVerdict::Allowed(_)));
        let h = headers(&[("host", "api.test"), ("origin", "https://example.org")]);
        assert_eq!(listed.check(&h, STRANGER), OriginVerdict::Refused);
        let any = Origins::new(vec![OriginPattern::Any]);
        assert!(matches!(any.check(&h, STRANGER), OriginVerdict::Allowed(_)));
    }
}
