//! Active health checks: `GET <path>` on every backend each `interval`, the first at once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::health::CheckOutcome;
use super::{BackendHandle, Singleton, Upstream, pool};
use crate::config::HealthCheckConfig;

/// Start the checker of `upstream` if its config asks for active checks. It follows config
/// changes (interval, path, or the section disappearing) at each round.
pub(super) fn spawn(upstream: &Arc<Upstream>) {
    upstream.keep_one(Singleton::Checker, |c| c.health_check.is_some(), |u| async move { run(&u).await });
}

/// Check `backend` once now, outside the regular rounds (a backend that just joined).
pub(super) fn check_now(upstream: &Arc<Upstream>, backend: &Arc<BackendHandle>) {
    let Some(check) = upstream.settings().config.health_check.clone() else { return };
    let (upstream, backend) = (upstream.clone(), backend.clone());
    let tasks = upstream.deps.tasks.clone();
    tasks.spawn(async move {
        let outcome = check_once(&backend, &check).await;
        upstream.on_check(&backend, outcome);
    });
}

async fn run(upstream: &Arc<Upstream>) {
    loop {
        let Some(check) = upstream.settings().config.health_check.clone() else { return };
        let round = async {
            let backends = upstream.membership().backends.clone();
            let checks = backends.iter().map(|b| async {
                let outcome = check_once(b, &check).await;
                upstream.on_check(b, outcome);
            });
            futures_util::future::join_all(checks).await;
        };
        let next = tokio::time::Instant::now() + check.interval;
        tokio::select! {
            _ = round => {}
            _ = upstream.cancelled().cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = upstream.cancelled().cancelled() => return,
        }
    }
}

/// One check on a fresh connection (so a pooled connection can never hide a dead backend).
async fn check_once(backend: &BackendHandle, check: &HealthCheckConfig) -> CheckOutcome {
    match tokio::time::timeout(check.timeout, probe(backend, &check.path, check.timeout)).await {
        Ok(Ok(status)) if status.is_success() => CheckOutcome::Healthy,
        Ok(Ok(StatusCode::SERVICE_UNAVAILABLE)) => CheckOutcome::NotReady,
        Ok(Ok(status)) => CheckOutcome::Failed(format!("answered {status}")),
        Ok(Err(e)) => CheckOutcome::Failed(e),
        Err(_) => {
            CheckOutcome::Failed(format!("no answer within {}", crate::config::units::format_duration(check.timeout)))
        }
    }
}

async fn probe(backend: &BackendHandle, path: &str, timeout: Duration) -> Result<StatusCode, String> {
    let address = backend.address();
    let stream = pool::connect_tcp(&address, timeout).await.map_err(|e| crate::report::Chain(&e).to_string())?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    let req = Request::get(path)
        .header(header::HOST, address.to_string())
        .header(header::USER_AGENT, "tether-health-check")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    // Drive the connection alongside the request; `Connection: close` ends it after the
    // answer, and the caller's timeout bounds both.
    let asked = async { sender.send_request(req).await.map(|resp| resp.status()).map_err(|e| e.to_string()) };
    let (result, _) = tokio::join!(asked, conn);
    result
}
