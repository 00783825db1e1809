//! A backend whose readiness the test switches: `GET /readyz` answers 200 when ready and
//! 500 otherwise (a process still starting); every other request answers `200 <id>` with
//! `x-backend-id` and is counted in `served`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub struct GatedBackend {
    pub id: String,
    pub addr: SocketAddr,
    ready: Arc<AtomicBool>,
    /// Requests other than `/readyz`.
    pub served: Arc<AtomicUsize>,
    /// `/readyz` requests (health checks).
    pub checks: Arc<AtomicUsize>,
    stop: CancellationToken,
}

impl GatedBackend {
    pub async fn start(id: &str, ready: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind gated backend");
        let addr = listener.local_addr().expect("local addr");
        let stop = CancellationToken::new();
        let ready = Arc::new(AtomicBool::new(ready));
        let served = Arc::new(AtomicUsize::new(0));
        let checks = Arc::new(AtomicUsize::new(0));
        let (token, id_owned) = (stop.clone(), id.to_owned());
        let (r, s, c) = (ready.clone(), served.clone(), checks.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(x) => x, Err(_) => continue },
                    _ = token.cancelled() => return,
                };
                let (id, r, s, c, token) = (id_owned.clone(), r.clone(), s.clone(), c.clone(), token.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let reply = if req.uri().path() == "/readyz" {
                            c.fetch_add(1, Ordering::SeqCst);
                            if r.load(Ordering::SeqCst) {
                                (StatusCode::OK, "ready".to_owned())
                            } else {
                                (StatusCode::INTERNAL_SERVER_ERROR, "starting".to_owned())
                            }
                        } else {
                            s.fetch_add(1, Ordering::SeqCst);
                            (StatusCode::OK, id.clone())
                        };
                        let resp = Response::builder()
                            .status(reply.0)
                            .header("x-backend-id", id.as_str())
                            .body(Full::new(Bytes::from(reply.1)))
                            .expect("response");
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let conn =
                        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = token.cancelled() => {}
                    }
                });
            }
        });
        Self { id: id.to_owned(), addr, ready, served, checks, stop }
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }
}

impl Drop for GatedBackend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
