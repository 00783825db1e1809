//! A minimal HTTP/1.1 client (hyper, one connection per request) for probes and `/publish`.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;

use super::WAIT;

pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl HttpResponse {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }
}

/// Sends one request and reads the whole response, bounded by the harness wait.
pub async fn request(
    addr: SocketAddr,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let body = body.into();
    let fut = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", addr.to_string());
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).expect("valid request");
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(WAIT, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => panic!("HTTP request to {addr}{path} failed: {e}"),
        Err(_) => panic!("HTTP request to {addr}{path} timed out"),
    }
}

pub async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    request(addr, Method::GET, path, &[], Bytes::new()).await
}

pub async fn post(addr: SocketAddr, path: &str, body: impl Into<Bytes>) -> HttpResponse {
    request(addr, Method::POST, path, &[], body).await
}
