//! HTTP clients for tests: HTTP/1.1 over TCP, HTTP/2 over TLS, and raw bytes.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }
}

async fn read_whole(resp: Response<hyper::body::Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// A keep-alive HTTP/1.1 client connection.
pub struct H1 {
    sender: http1::SendRequest<Full<Bytes>>,
    /// The `Host` a browser would send: the address connected to.
    host: String,
}

impl H1 {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = within("TCP connect", TcpStream::connect(addr)).await.expect("connect");
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.expect("handshake");
        tokio::spawn(conn);
        Self { sender, host: addr.to_string() }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Reply {
        within("HTTP/1.1 response", async {
            self.sender.ready().await.expect("connection ready");
            read_whole(self.sender.send_request(req).await.expect("response")).await
        })
        .await
    }

    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut b = Request::get(path);
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            b = b.header("host", &self.host);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        self.send(b.body(Full::new(Bytes::new())).expect("request")).await
    }

    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// One GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    H1::connect(addr).await.get(path, headers).await
}

/// An HTTP/2 client over TLS (ALPN h2), trusting `config`'s roots.
pub async fn h2_tls(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> (http2::SendRequest<Full<Bytes>>, Vec<u8>) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from(server_name.to_owned()).expect("server name");
    let tls = within("TLS handshake", connector.connect(name, tcp)).await.expect("TLS handshake");
    let alpn = tls.get_ref().1.alpn_protocol().unwrap_or_default().to_vec();
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.expect("h2 handshake");
    tokio::spawn(conn);
    (sender, alpn)
}

pub async fn send_h2(sender: &mut http2::SendRequest<Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    within("HTTP/2 response", async {
        sender.ready().await.expect("h2 ready");
        read_whole(sender.send_request(req).await.expect("h2 response")).await
    })
    .await
}

/// Write `bytes` and read until the server closes (or [`super::WAIT`] passes).
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = within("server to close the connection", stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}
