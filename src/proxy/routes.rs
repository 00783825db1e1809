//! Route matching: (host, path) -> the route. Pure; first match wins, in config order.

use std::sync::Arc;

use super::path::prefix_matches;
use crate::auth::{Verifier, Verifiers};
use crate::config::{HostMatch, RouteConfig};

/// One route, with its verifier resolved.
pub(crate) struct Route {
    pub(crate) config: RouteConfig,
    pub(crate) verifier: Option<Arc<Verifier>>,
}

/// Routes in config order.
#[derive(Default)]
pub(crate) struct RouteTable {
    routes: Vec<Route>,
}

impl RouteTable {
    /// `routes` with their verifiers looked up in `verifiers` (config validation guarantees
    /// every name exists).
    pub(crate) fn new(routes: &[RouteConfig], verifiers: &Verifiers) -> Self {
        let routes = routes
            .iter()
            .map(|r| Route {
                config: r.clone(),
                verifier: r.auth.as_deref().and_then(|name| verifiers.get(name)).cloned(),
            })
            .collect();
        Self { routes }
    }

    /// The first route matching `host` (lowercase, without port or trailing dot; None when the
    /// request named no host) and `path` (normalised), its prefix by whole segments.
    pub(crate) fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| host_matches(&r.config.host, host) && prefix_matches(&r.config.path_prefix, path))
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
        RouteConfig { host, path_prefix: prefix.into(), upstream: upstream.into(), ..RouteConfig::default() }
    }

    fn table() -> RouteTable {
        RouteTable::new(
            &[
                route(HostMatch::Exact("api.test".into()), "/v2/", "api-v2"),
                route(HostMatch::Exact("api.test".into()), "/", "api"),
                route(HostMatch::Suffix(".ws.test".into()), "/", "sockets"),
                route(HostMatch::Any, "/static/", "static"),
            ],
            &Verifiers::default(),
        )
    }

    fn find<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.find(host, path).map(|r| r.config.upstream.as_str())
    }

    #[test]
    fn first_matching_route_wins_in_config_order() {
        let t = table();
        assert_eq!(find(&t, Some("api.test"), "/v2/users"), Some("api-v2"));
        assert_eq!(find(&t, Some("api.test"), "/v1/users"), Some("api"));
        assert_eq!(find(&t, Some("api.test"), "/static/x"), Some("api"));
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let t = table();
        assert_eq!(find(&t, Some("eu.ws.test"), "/ws"), Some("sockets"));
        assert_eq!(find(&t, Some("a.eu.ws.test"), "/ws"), Some("sockets"));
        assert_eq!(find(&t, Some("ws.test"), "/ws"), None);
    }

    #[test]
    fn any_host_and_missing_host() {
        let t = table();
        assert_eq!(find(&t, None, "/static/app.js"), Some("static"));
        assert_eq!(find(&t, None, "/other"), None);
        assert_eq!(find(&t, Some("unknown.test"), "/"), None);
    }
}
