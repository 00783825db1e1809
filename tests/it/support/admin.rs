//! Talking to tether's admin listener from tests: JSON API, `/metrics` (parsed strictly), and
//! polling a condition with a deadline instead of sleeping.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

use super::WAIT;
use super::http::{H1, Reply};
use super::prom::{self, Scrape};

/// How often [`eventually`] looks again.
const POLL: Duration = Duration::from_millis(25);

/// Poll `probe` every 25 ms until it yields `Some`, failing the test with `what` after
/// [`WAIT`].
pub async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

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
        let mut req = Request::builder().method(method).uri(path).header("host", "admin.test");
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

    /// The backend `id` of `upstream` as `/admin/upstreams/{upstream}` shows it, if listed.
    pub async fn backend(&self, upstream: &str, id: &str) -> Option<Value> {
        let doc = self.get_json(&format!("/admin/upstreams/{upstream}")).await;
        doc["backends"].as_array().and_then(|all| all.iter().find(|b| b["id"] == id).cloned())
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
}
