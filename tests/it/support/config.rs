//! [`Yaml`]: the one builder of tether config files for tests.
//!
//! ```ignore
//! let yaml = Yaml::new()
//!     .listener("public")
//!     .admin()
//!     .route("app")
//!     .upstream("app", |u| u.backend("a", a.addr).affinity("{ key: [ { header: X-User-Id } ] }"))
//!     .set("timeouts", "{ connect: 1s }")
//!     .build();
//! ```
//!
//! Values of settings are YAML flow text (`{ timeout: 2s, close_spread: 1s }`), written as
//! given: the builder only lays out the document, so what a test configures stays readable in
//! the test. Every listener binds `127.0.0.1:0`.

use std::fmt::{Display, Write as _};

/// A tether config under construction. Sections come out in the order `listeners`, `admin`,
/// `routes`, `upstreams`, then top-level settings and raw text in the order they were added.
#[derive(Clone, Debug, Default)]
pub struct Yaml {
    listeners: Vec<String>,
    admin: Option<String>,
    routes: Vec<String>,
    upstreams: Vec<String>,
    tail: String,
}

impl Yaml {
    pub fn new() -> Self {
        Self::default()
    }

    /// The usual shape: listener `public`, an admin listener, every request routed to upstream
    /// `app`, built by `upstream`.
    pub fn app(upstream: impl FnOnce(Upstream) -> Upstream) -> Self {
        Self::new().listener("public").admin().route("app").upstream("app", upstream)
    }

    /// A plain listener named `name`.
    pub fn listener(mut self, name: &str) -> Self {
        self.listeners.push(format!("  - name: {name}\n    bind: \"127.0.0.1:0\"\n"));
        self
    }

    /// A TLS listener named `name` with `(cert, key)` file pairs (relative to the config file);
    /// the first pair is the default certificate.
    pub fn tls_listener(mut self, name: &str, certificates: &[(&str, &str)]) -> Self {
        let mut l = format!("  - name: {name}\n    bind: \"127.0.0.1:0\"\n    tls:\n      certificates:\n");
        for (cert, key) in certificates {
            writeln!(l, "        - {{ cert: {cert}, key: {key} }}").expect("write to a String");
        }
        self.listeners.push(l);
        self
    }

    /// An admin listener.
    pub fn admin(mut self) -> Self {
        self.admin = Some("admin:\n  bind: \"127.0.0.1:0\"\n".to_owned());
        self
    }

    /// An admin listener whose bearer token is read from environment variable `var`.
    pub fn admin_with_token_env(mut self, var: &str) -> Self {
        self.admin = Some(format!("admin:\n  bind: \"127.0.0.1:0\"\n  token_env: {var}\n"));
        self
    }

    /// A route sending every request to `upstream`.
    pub fn route(mut self, upstream: &str) -> Self {
        self.routes.push(format!("  - upstream: {upstream}\n"));
        self
    }

    /// A route with match fields, e.g. `route_when("host: api.test, path_prefix: /v2/", "api")`.
    pub fn route_when(mut self, matches: &str, upstream: &str) -> Self {
        self.routes.push(format!("  - {{ {matches}, upstream: {upstream} }}\n"));
        self
    }

    /// Upstream `name`, built by `build`.
    pub fn upstream(mut self, name: &str, build: impl FnOnce(Upstream) -> Upstream) -> Self {
        self.upstreams.push(build(Upstream::new(name)).render());
        self
    }

    /// A top-level setting: `key: value`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        writeln!(self.tail, "{key}: {value}").expect("write to a String");
        self
    }

    /// Raw YAML appended at the end, for what the builder has no word for.
    pub fn raw(mut self, text: &str) -> Self {
        self.tail.push_str(text);
        self
    }

    pub fn build(&self) -> String {
        let mut y = String::from("listeners:\n");
        self.listeners.iter().for_each(|l| y.push_str(l));
        if let Some(admin) = &self.admin {
            y.push_str(admin);
        }
        y.push_str("routes:\n");
        self.routes.iter().for_each(|r| y.push_str(r));
        y.push_str("upstreams:\n");
        self.upstreams.iter().for_each(|u| y.push_str(u));
        y.push_str(&self.tail);
        y
    }
}

impl From<Yaml> for String {
    fn from(yaml: Yaml) -> String {
        yaml.build()
    }
}

impl From<&Yaml> for String {
    fn from(yaml: &Yaml) -> String {
        yaml.build()
    }
}

/// One upstream of a [`Yaml`]: its backends, then its settings in the order they were set.
#[derive(Clone, Debug)]
pub struct Upstream {
    name: String,
    backends: Vec<String>,
    settings: String,
}

impl Upstream {
    fn new(name: &str) -> Self {
        Self { name: name.to_owned(), backends: Vec::new(), settings: String::new() }
    }

    /// A static backend. `address` is written as given (any `Display`, so a test can write an
    /// invalid one).
    pub fn backend(mut self, id: &str, address: impl Display) -> Self {
        self.backends.push(format!("      - {{ id: {id}, address: \"{address}\" }}\n"));
        self
    }

    /// A static backend with a weight.
    pub fn weighted(mut self, id: &str, address: impl Display, weight: u32) -> Self {
        self.backends.push(format!("      - {{ id: {id}, address: \"{address}\", weight: {weight} }}\n"));
        self
    }

    /// Every `(id, address)` pair as a static backend.
    pub fn backends<A: Display>(self, list: impl IntoIterator<Item = (impl AsRef<str>, A)>) -> Self {
        list.into_iter().fold(self, |u, (id, addr)| u.backend(id.as_ref(), addr))
    }

    /// `discovery: { dns: "<dns>", interval: <interval> }`.
    pub fn discovery(self, dns: &str, interval: &str) -> Self {
        self.set("discovery", &format!("{{ dns: \"{dns}\", interval: {interval} }}"))
    }

    pub fn affinity(self, value: &str) -> Self {
        self.set("affinity", value)
    }

    pub fn health_check(self, value: &str) -> Self {
        self.set("health_check", value)
    }

    pub fn passive(self, value: &str) -> Self {
        self.set("passive", value)
    }

    pub fn drain(self, value: &str) -> Self {
        self.set("drain", value)
    }

    pub fn rebalance(self, value: &str) -> Self {
        self.set("rebalance", value)
    }

    /// Any other key of the upstream: `key: value`.
    pub fn set(mut self, key: &str, value: &str) -> Self {
        writeln!(self.settings, "    {key}: {value}").expect("write to a String");
        self
    }

    fn render(&self) -> String {
        let mut u = format!("  {}:\n", self.name);
        if self.backends.is_empty() {
            u.push_str("    backends: []\n");
        } else {
            u.push_str("    backends:\n");
            self.backends.iter().for_each(|b| u.push_str(b));
        }
        u.push_str(&self.settings);
        u
    }
}

#[test]
fn the_usual_shape_is_valid_tether_config() {
    let yaml = Yaml::app(|u| {
        u.backend("a", "127.0.0.1:1")
            .weighted("b", "127.0.0.1:2", 3)
            .affinity("{ key: [ { header: X-User-Id } ], cookie: { name: PIN } }")
            .drain("{ timeout: 2s, close_spread: 1s }")
    })
    .listener("second")
    .set("timeouts", "{ connect: 1s }")
    .build();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tether.yaml");
    let loaded = tether::config::parse(&path, &yaml, &|_| None).unwrap_or_else(|e| panic!("{e}\n---\n{yaml}"));
    let config = loaded.config;
    assert_eq!(config.listeners.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(), ["public", "second"]);
    assert!(config.admin.is_some());
    assert_eq!(config.upstreams.len(), 1);
    let empty = Yaml::new().listener("public").route("app").upstream("app", |u| u.discovery("app:80", "1s")).build();
    assert!(empty.contains("    backends: []\n"), "{empty}");
    tether::config::parse(&path, &empty, &|_| None).unwrap_or_else(|e| panic!("{e}\n---\n{empty}"));
}
