//! What the admin listener refuses before looking at a request: foreign `Host` names (DNS
//! rebinding), state changes from other origins (CSRF), and how failed token attempts are
//! logged. Pure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use http::header::{HOST, HeaderMap, ORIGIN};
use http::{Method, Uri};

/// Failed token attempts are logged at most this often per client address.
const LOG_EVERY: Duration = Duration::from_secs(1);
/// Client addresses remembered for that; beyond it the oldest entries are forgotten, so a flood
/// from many addresses cannot grow memory.
const MAX_TRACKED: usize = 4096;

/// The `Host` a request names (the URI authority, else the header), without its port.
fn host_of(headers: &HeaderMap, uri: &Uri) -> Option<String> {
    let raw = match uri.authority() {
        Some(a) => a.as_str().to_owned(),
        None => headers.get(HOST)?.to_str().ok()?.to_owned(),
    };
    let host = if let Some(v6) = raw.strip_prefix('[') {
        format!("[{}]", v6.split(']').next()?)
    } else {
        raw.rsplit_once(':').map_or(raw.as_str(), |(h, _)| h).to_owned()
    };
    Some(host.trim_end_matches('.').to_ascii_lowercase())
}

/// IP literals, `localhost` and the configured names answer; any other name is a page that
/// rebound its own DNS name to our address. Requests without a `Host` (HTTP/1.0 probes) are
/// not from a browser and pass.
pub(super) fn is_allowed_host(headers: &HeaderMap, uri: &Uri, allowed: &[String]) -> bool {
    if uri.authority().is_none() && !headers.contains_key(HOST) {
        return true;
    }
    let Some(host) = host_of(headers, uri) else { return false };
    host.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok()
        || host == "localhost"
        || allowed.contains(&host)
}

/// A request that changes something, sent by a page of another origin: browsers attach
/// `Origin` to such requests, and the admin's own page sends its own origin.
pub(super) fn is_cross_origin_write(method: &Method, headers: &HeaderMap) -> bool {
    if !matches!(*method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE) {
        return false;
    }
    if headers.get("sec-fetch-site").is_some_and(|v| v.as_bytes() == b"cross-site") {
        return true;
    }
    let Some(origin) = headers.get(ORIGIN) else { return false };
    let own = headers.get(HOST).and_then(|h| h.to_str().ok()).map(|h| format!("http://{}", h.to_ascii_lowercase()));
    origin.to_str().map(str::to_ascii_lowercase).ok() != own
}

/// Failed token attempts per client address, for a rate-limited log line.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    by_client: HashMap<IpAddr, (Instant, u64)>,
}

impl Failures {
    /// Count a failure from `client` at `now`; `Some(n)` when it is time to log the `n`
    /// failures counted since its last line.
    pub(super) fn record(&mut self, client: IpAddr, now: Instant) -> Option<u64> {
        if self.by_client.len() >= MAX_TRACKED && !self.by_client.contains_key(&client) {
            self.by_client.retain(|_, (since, _)| now.duration_since(*since) < LOG_EVERY);
            if self.by_client.len() >= MAX_TRACKED {
                self.by_client.clear();
            }
        }
        match self.by_client.get_mut(&client) {
            Some((since, count)) if now.duration_since(*since) < LOG_EVERY => {
                *count += 1;
                None
            }
            Some((since, count)) => {
                let n = *count + 1;
                *since = now;
                *count = 0;
                Some(n)
            }
            None => {
                self.by_client.insert(client, (now, 0));
                Some(1)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.insert(http::HeaderName::from_bytes(n.as_bytes()).expect("name"), v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn only_ip_literals_localhost_and_listed_names_are_served() {
        let uri = Uri::from_static("/admin/upstreams");
        let allowed = vec!["admin.internal".to_owned()];
        for host in [
            "127.0.0.1:9901",
            "10.1.2.3:9901",
            "[::1]:9901",
            "localhost:8080",
            "LOCALHOST",
            "admin.internal:9901",
            "admin.internal.",
        ] {
            assert!(is_allowed_host(&headers(&[("host", host)]), &uri, &allowed), "{host}");
        }
        for host in ["evil.test:9901", "localhost.evil.test", "admin.internal.evil", ""] {
            assert!(!is_allowed_host(&headers(&[("host", host)]), &uri, &allowed), "{host}");
        }
        assert!(is_allowed_host(&HeaderMap::new(), &uri, &allowed), "no Host at all: not a browser");
    }

    #[test]
    fn state_changes_from_other_origins_are_refused() {
        let own = [("host", "127.0.0.1:9901"), ("origin", "http://127.0.0.1:9901")];
        assert!(!is_cross_origin_write(&Method::POST, &headers(&own)));
        assert!(!is_cross_origin_write(&Method::POST, &headers(&[("host", "127.0.0.1:9901")])), "curl sends no Origin");
        let evil = [("host", "127.0.0.1:9901"), ("origin", "http://evil.test")];
        assert!(is_cross_origin_write(&Method::POST, &headers(&evil)));
        assert!(is_cross_origin_write(&Method::DELETE, &headers(&evil)));
        assert!(!is_cross_origin_write(&Method::GET, &headers(&evil)), "reading is the token's business");
        assert!(is_cross_origin_write(
            &Method::POST,
            &headers(&[("host", "127.0.0.1:9901"), ("sec-fetch-site", "cross-site")])
        ));
        assert!(is_cross_origin_write(&Method::POST, &headers(&[("host", "127.0.0.1:9901"), ("origin", "null")])));
    }

    #[test]
    fn failures_are_logged_once_a_second_per_client_with_a_count() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        let mut f = Failures::default();
        assert_eq!(f.record(a, at(0)), Some(1));
        assert_eq!(f.record(a, at(10)), None);
        assert_eq!(f.record(b, at(20)), Some(1), "another client has its own line");
        assert_eq!(f.record(a, at(500)), None);
        assert_eq!(f.record(a, at(1000)), Some(3));
        assert_eq!(f.record(a, at(1500)), None);
    }
}
