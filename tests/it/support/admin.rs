//! Talking to tether's admin listener from tests: the JSON API, `/metrics` (parsed strictly),
//! drains, the route helper, and waiting for a backend state.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::eventually;
use super::http::{H1, Reply};
use super::prom::{self, Scrape};

#[derive(Clone, Debug)]
pub struct AdminClient {
    pub addr: SocketAddr,
    pub token: Option<String>,
}

impl AdminClient {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, token: None }
    }

    pub fn with_token(addr: SocketAddr, token: &str) -> Self {
        Self { addr, token: Some(token.to_owned()) }
    }

    pub async fn request(&self, method: Method, path: &str) -> Reply {
        let mut req = Request::builder().method(method).uri(path).header("host", self.addr.to_string());
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        H1::connect(self.addr).await.send(req.body(Full::new(Bytes::new())).expect("request")).await
    }

    /// GET `path`, which must answer 200 with JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let reply = self.request(Method::GET, path).await;
        assert_eq!(reply.status, StatusCode::OK, "GET {path}: {}", reply.text());
        reply.json()
    }

    pub async fn post(&self, path: &str) -> (StatusCode, Value) {
        let reply = self.request(Method::POST, path).await;
        (reply.status, reply.json())
    }

    /// Scrape `/metrics`; the whole text must parse.
    pub async fn metrics(&self) -> Scrape {
        let reply = self.request(Method::GET, "/metrics").await;
        assert_eq!(reply.status, StatusCode::OK);
        prom::parse(&reply.text()).unwrap_or_else(|e| panic!("/metrics does not parse: {e}\n{}", reply.text()))
    }

    /// One value of `/metrics` (0 for a series not created yet).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.metrics().await.value(name, labels)
    }

    /// Wait until metric `name{labels}` is `value`; returns the scrape that showed it.
    pub async fn wait_metric(&self, name: &str, labels: &[(&str, &str)], value: f64) -> Scrape {
        eventually(&format!("{name}{labels:?} to be {value}"), async || {
            let m = self.metrics().await;
            (m.value(name, labels) == value).then_some(m)
        })
        .await
    }

    /// The backend `id` of `upstream` as `/admin/upstreams/{upstream}` shows it, if listed.
    pub async fn backend(&self, upstream: &str, id: &str) -> Option<Value> {
        let doc = self.get_json(&format!("/admin/upstreams/{upstream}")).await;
        doc["backends"].as_array().and_then(|all| all.iter().find(|b| b["id"] == id).cloned())
    }

    /// Like [`AdminClient::backend`], for a backend that must be listed.
    pub async fn listed(&self, upstream: &str, id: &str) -> Value {
        self.backend(upstream, id).await.unwrap_or_else(|| panic!("backend {upstream}/{id} is not listed"))
    }

    /// Ids of the backends `/admin/upstreams/{upstream}` lists, in its order.
    pub async fn backend_ids(&self, upstream: &str) -> Vec<String> {
        let doc = self.get_json(&format!("/admin/upstreams/{upstream}")).await;
        doc["backends"]
            .as_array()
            .map(|all| all.iter().filter_map(|b| b["id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    /// Wait until backend `id` is listed in one of `states`; returns its JSON.
    pub async fn wait_state(&self, upstream: &str, id: &str, states: &[&str]) -> Value {
        eventually(&format!("backend {upstream}/{id} to be {states:?}"), async || {
            self.backend(upstream, id).await.filter(|b| states.iter().any(|s| b["state"] == *s))
        })
        .await
    }

    /// The generation `/admin/upstreams` reports.
    pub async fn generation(&self) -> u64 {
        self.get_json("/admin/upstreams").await["generation"].as_u64().expect("generation is a number")
    }

    /// Wait until the config generation is `generation`.
    pub async fn wait_generation(&self, generation: u64) {
        eventually(&format!("config generation {generation}"), async || {
            (self.generation().await == generation).then_some(())
        })
        .await
    }

    /// `POST .../drain` of backend `id`, which must succeed; returns the backend's JSON.
    pub async fn drain(&self, upstream: &str, id: &str) -> Value {
        let (status, body) = self.post(&format!("/admin/upstreams/{upstream}/backends/{id}/drain")).await;
        assert_eq!(status, StatusCode::OK, "drain {upstream}/{id}: {body}");
        body
    }

    /// `POST .../undrain` of backend `id`, which must succeed; returns the backend's JSON.
    pub async fn undrain(&self, upstream: &str, id: &str) -> Value {
        let (status, body) = self.post(&format!("/admin/upstreams/{upstream}/backends/{id}/undrain")).await;
        assert_eq!(status, StatusCode::OK, "undrain {upstream}/{id}: {body}");
        body
    }

    /// The route helper's answer for `key`: the backend it routes to now and the whole ring
    /// order.
    pub async fn route(&self, upstream: &str, key: &str) -> (String, Vec<String>) {
        let v = self.get_json(&format!("/admin/upstreams/{upstream}/route?key={key}")).await;
        let backend = v["backend"].as_str().unwrap_or_else(|| panic!("no backend for {key}: {v}")).to_owned();
        let candidates = v["candidates"]
            .as_array()
            .unwrap_or_else(|| panic!("no candidates for {key}: {v}"))
            .iter()
            .map(|c| c.as_str().expect("a backend id").to_owned())
            .collect();
        (backend, candidates)
    }

    /// The first `n` keys `{prefix}{i}` (i = 0..limit) that `upstream` routes to `backend` now.
    pub async fn keys_on(&self, upstream: &str, backend: &str, prefix: &str, n: usize) -> Vec<String> {
        const LIMIT: usize = 1000;
        let mut found = Vec::new();
        for i in 0..LIMIT {
            let key = format!("{prefix}{i}");
            if self.route(upstream, &key).await.0 == backend {
                found.push(key);
                if found.len() == n {
                    return found;
                }
            }
        }
        panic!("fewer than {n} of {LIMIT} keys {prefix}* route to {upstream}/{backend}");
    }

    /// A key `{prefix}{i}` that `upstream` routes to `backend` now.
    pub async fn key_on(&self, upstream: &str, backend: &str, prefix: &str) -> String {
        self.keys_on(upstream, backend, prefix, 1).await.remove(0)
    }
}
