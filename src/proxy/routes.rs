//! Route matching: (host, path) -> upstream name. Pure; first match wins, in config order.

use crate::config::{HostMatch, RouteConfig};

/// Routes in config order.
#[derive(Debug, Clone, Default)]
pub(crate) struct RouteTable {
    routes: Vec<RouteConfig>,
}

impl RouteTable {
    pub(crate) fn new(routes: &[RouteConfig]) -> Self {
        Self { routes: routes.to_vec() }
    }

    /// The upstream of the first route matching `host` (lowercase, without port; None when the
    /// request named no host) and `path`.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&str> {
        self.routes
            .iter()
            .find(|r| host_matches(&r.host, host) && path.starts_with(r.path_prefix.as_str()))
            .map(|r| r.upstream.as_str())
    }
}

fn host_matches(rule: &HostMatch, host: Option<&str>) -> bool {
    match (rule, host) {
        (HostMatch::Any, _) => true,
        (HostMatch::Exact(name), Some(h)) => name == h,
        // "*.example.com" matches "a.example.com" and "a.b.example.com", not "example.com".
        (HostMatch::Suffix(suffix), Some(h)) => h.len() > suffix.len() && h.ends_with(suffix.as_str()),
        (_, None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: HostMatch, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig { host, path_prefix: prefix.into(), upstream: upstream.into() }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route(HostMatch::Exact("api.test".into()), "/v2/", "api-v2"),
            route(HostMatch::Exact("api.test".into()), "/", "api"),
            route(HostMatch::Suffix(".ws.test".into()), "/", "sockets"),
            route(HostMatch::Any, "/static/", "static"),
        ])
    }

    #[test]
    fn first_matching_route_wins_in_config_order() {
        let t = table();
        assert_eq!(t.find(Some("api.test"), "/v2/users"), Some("api-v2"));
        assert_eq!(t.find(Some("api.test"), "/v1/users"), Some("api"));
        assert_eq!(t.find(Some("api.test"), "/static/x"), Some("api"));
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let t = table();
        assert_eq!(t.find(Some("eu.ws.test"), "/ws"), Some("sockets"));
        assert_eq!(t.find(Some("a.eu.ws.test"), "/ws"), Some("sockets"));
        assert_eq!(t.find(Some("ws.test"), "/ws"), None);
    }

    #[test]
    fn any_host_and_missing_host() {
        let t = table();
        assert_eq!(t.find(None, "/static/app.js"), Some("static"));
        assert_eq!(t.find(None, "/other"), None);
        assert_eq!(t.find(Some("unknown.test"), "/"), None);
    }
}
