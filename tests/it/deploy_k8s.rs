//! The Kubernetes rolling update of `docker/k8s/`, without a cluster: the reference backend
//! pods are `tether backend` processes started with the Deployment's own arguments, the
//! headless Service is a name whose records the test controls, and tether runs in-process
//! with the ConfigMap's config. One pod is replaced the way `RollingUpdate` with maxSurge 1 /
//! maxUnavailable 0 does it: the new pod starts and becomes ready first, then the old one gets
//! SIGTERM (readiness 503 at once) and exits; its DNS record goes with the SIGTERM or, as a
//! stale cache would have it, only after the exit. Steady HTTP load (users signed in with
//! tokens of the example key, verified with the JWKS the Secret would hold, and an anonymous
//! browser) sees no failed request, and every WebSocket client of the old pod reconnects
//! exactly once.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use serde_yaml::Value;
use tokio_util::sync::CancellationToken;

use crate::support::app_process::AppProcess;
use crate::support::deploy_files::{
    JWKS_FILE_VAR, at, config_map_file, container, example_jwks, example_token, find, manifests, strings, with_flags,
};
use crate::support::http;
use crate::support::http_client;
use crate::support::proxy::TestProxy;
use crate::support::reconnecting_client::ReconnectingClient;
use crate::support::redis::TestRedis;
use crate::support::resolver::{Answer, ScriptedResolver};
use crate::support::stomp_client::ConnectOptions;
use crate::support::{WAIT, until};

const TOPIC: &str = "/topic/rollout";
/// What the ConfigMap's discovery resolves (the headless Service in namespace tether-demo).
const HEADLESS: &str = "app-headless.tether-demo.svc.cluster.local";
/// Load workers with a user id (each cycles through its own users) plus one anonymous
/// worker that keeps its sticky cookie, like a browser.
const KEYED_WORKERS: usize = 3;
const USERS_PER_WORKER: usize = 16;
/// Request pace per worker: steady, light load (about 200 requests/s in all).
const PACE: Duration = Duration::from_millis(20);
/// Bound on any one load request: a stalled request counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the load loop (it is stopped long before).
const MAX_REQUESTS_PER_WORKER: usize = 20_000;
const WS_USERS_ON_OLD_POD: usize = 2;

/// The app Deployment's container arguments, for a pod named `pod` on this machine: here the
/// pod network that `--trust-proxy` names is this machine's loopback.
fn pod_args(template: &[String], pod: &str, redis: &str) -> Vec<String> {
    assert!(template.iter().any(|a| a == "--trust-proxy"), "{template:?}");
    // In a pod the instance name defaults to the hostname, i.e. the pod name.
    with_flags(
        template,
        &[
            ("--listen", "127.0.0.1:0"),
            ("--internal-listen", "127.0.0.1:0"),
            ("--redis", redis),
            ("--id", pod),
            ("--trust-proxy", "127.0.0.1/32"),
        ],
    )
}

/// `Bearer <token>` for `user`, signed by the example identity provider.
fn bearer(user: &str) -> String {
    format!("Bearer {}", example_token(user))
}

#[derive(Default)]
struct LoadReport {
    ok: usize,
    failures: Vec<String>,
    by_instance: BTreeMap<String, usize>,
}

/// Steady HTTP load through tether: `GET /whoami` on keep-alive connections.
struct Load {
    report: Arc<Mutex<LoadReport>>,
    stop: CancellationToken,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let report = Arc::new(Mutex::new(LoadReport::default()));
        let stop = CancellationToken::new();
        let mut workers = Vec::new();
        for w in 0..=KEYED_WORKERS {
            // Signed in up front, so the load keeps its pace.
            let users: Vec<(String, String)> = if w < KEYED_WORKERS {
                (0..USERS_PER_WORKER).map(|n| format!("load-{w}-{n}")).map(|u| (bearer(&u), u)).collect()
            } else {
                Vec::new()
            };
            workers.push(tokio::spawn(worker(proxy, users, report.clone(), stop.clone())));
        }
        Load { report, stop, workers }
    }

    fn served_by(&self, instance: &str) -> usize {
        self.report.lock().expect("report").by_instance.get(instance).copied().unwrap_or(0)
    }

    fn ok(&self) -> usize {
        self.report.lock().expect("report").ok
    }

    async fn finish(self) -> LoadReport {
        self.stop.cancel();
        for w in self.workers {
            match tokio::time::timeout(WAIT, w).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                other => panic!("load worker did not stop: {other:?}"),
            }
        }
        std::mem::take(&mut *self.report.lock().expect("report"))
    }
}

type Sender = http1::SendRequest<Empty<Bytes>>;

async fn connect(proxy: SocketAddr) -> Result<Sender, String> {
    let stream = tokio::net::TcpStream::connect(proxy).await.map_err(|e| format!("connect: {e}"))?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// One request (with a bearer token, or a cookie); returns the status, the instance that
/// answered, and a new sticky cookie.
async fn whoami(
    sender: &mut Option<Sender>,
    proxy: SocketAddr,
    authorization: Option<&str>,
    cookie: Option<&str>,
) -> Result<(u16, String, Option<String>), String> {
    if sender.as_ref().is_none_or(|s| s.is_closed()) {
        *sender = Some(connect(proxy).await?);
    }
    let s = sender.as_mut().expect("connected above");
    s.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
    let mut req = ::http::Request::get("/whoami").header("host", "app.test");
    if let Some(authorization) = authorization {
        req = req.header("authorization", authorization);
    }
    if let Some(cookie) = cookie {
        req = req.header("cookie", cookie);
    }
    let resp = s.send_request(req.body(Empty::new()).expect("request")).await.map_err(|e| format!("send: {e}"))?;
    let status = resp.status().as_u16();
    let set_cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let body = resp.into_body().collect().await.map_err(|e| format!("body: {e}"))?.to_bytes();
    let instance = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["instance"].as_str().map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    Ok((status, instance, set_cookie))
}

/// Requests at [`PACE`]: cycling through `users` (`(authorization, name)`), or, without
/// users, as one anonymous browser keeping its sticky cookie.
async fn worker(
    proxy: SocketAddr,
    users: Vec<(String, String)>,
    report: Arc<Mutex<LoadReport>>,
    stop: CancellationToken,
) {
    let mut sender = None;
    let mut cookie: Option<String> = None;
    let mut tick = tokio::time::interval(PACE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0..MAX_REQUESTS_PER_WORKER {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let signed_in = (!users.is_empty()).then(|| &users[n % users.len()]);
        let (authorization, user) = (signed_in.map(|(a, _)| a.as_str()), signed_in.map(|(_, u)| u.as_str()));
        let started = Instant::now();
        let outcome =
            tokio::time::timeout(REQUEST_TIMEOUT, whoami(&mut sender, proxy, authorization, cookie.as_deref())).await;
        let mut report = report.lock().expect("report");
        match outcome {
            Ok(Ok((200, instance, set_cookie))) => {
                report.ok += 1;
                *report.by_instance.entry(instance).or_insert(0) += 1;
                if set_cookie.is_some() {
                    cookie = set_cookie;
                }
            }
            Ok(Ok((status, body, _))) => report.failures.push(format!("{user:?}: status {status}: {body}")),
            Ok(Err(e)) => {
                report.failures.push(format!("{user:?}: {e}"));
                sender = None;
            }
            Err(_) => {
                report.failures.push(format!("{user:?}: no answer within {:?}", started.elapsed()));
                sender = None;
            }
        }
    }
}

async fn backend_states(admin: SocketAddr) -> BTreeMap<String, String> {
    let reply = http::get(admin, "/admin/upstreams/app", &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let doc = reply.json();
    doc["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .map(|b| (b["id"].as_str().expect("id").to_owned(), b["state"].as_str().expect("state").to_owned()))
        .collect()
}

/// Polls tether's admin API until `pred` holds for its view of the backends.
async fn wait_backends(admin: SocketAddr, what: &str, pred: impl Fn(&BTreeMap<String, String>) -> bool) {
    until(&format!("tether to see {what}"), async || pred(&backend_states(admin).await)).await;
}

/// tether in-process with the ConfigMap's config, discovering pods through `records`, its
/// JWKS (the Secret's mount in a pod) the example one.
async fn start_proxy(records: Arc<ScriptedResolver>) -> TestProxy {
    let docs = manifests("docker/k8s/tether-config.yaml");
    let text = config_map_file(find(&docs, "ConfigMap", "tether-config"), "tether.yaml");
    let jwks = example_jwks();
    TestProxy::builder()
        .yaml(text)
        .env("TETHER_LISTEN", "127.0.0.1:0")
        .env("TETHER_ADMIN_BIND", "127.0.0.1:0")
        .env(JWKS_FILE_VAR, jwks.to_str().expect("utf-8 path"))
        .resolver(records)
        .edit(|config| {
            let discovery = config.upstreams[0].discovery.clone().expect("discovery");
            assert_eq!((discovery.dns.host.as_str(), discovery.dns.port), (HEADLESS, 8080));
        })
        .spawn()
        .await
}

/// When the old pod's record leaves the headless Service's DNS answer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum RecordRemoval {
    /// With the SIGTERM: the EndpointSlice update reaches tether's next lookup at once.
    AtSigterm,
    /// Only after the pod exited, as a cluster DNS cache may keep it: tether must not depend
    /// on the DNS update to stop routing to a terminating pod.
    AfterExit,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_rolling_update_fails_no_request_and_reconnects_each_client_once() {
    rolling_update(RecordRemoval::AtSigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_rolling_update_with_a_stale_dns_answer_fails_no_request_either() {
    rolling_update(RecordRemoval::AfterExit).await;
}

async fn rolling_update(removal: RecordRemoval) {
    let docs = manifests("docker/k8s/app.yaml");
    let deployment = find(&docs, "Deployment", "app");
    let template = strings(&container(deployment, "app")["args"]);
    let grace = Duration::from_secs(
        at(deployment, &["spec", "template", "spec", "terminationGracePeriodSeconds"])
            .and_then(Value::as_u64)
            .expect("terminationGracePeriodSeconds"),
    );

    let redis = TestRedis::start().await;
    let mut old = AppProcess::spawn(&pod_args(&template, "pod-old", &redis.url())).await;
    let stays = AppProcess::spawn(&pod_args(&template, "pod-stays", &redis.url())).await;
    // A pod listens before its broker connects; subscriptions in between are refused.
    old.wait_redis_up().await;
    stays.wait_redis_up().await;
    let records = Arc::new(ScriptedResolver::new(vec![old.addr, stays.addr]));
    let proxy = start_proxy(records.clone()).await;
    let public = proxy.addr("public");
    let admin = proxy.addr("admin");
    let (old_id, stays_id) = (old.addr.to_string(), stays.addr.to_string());
    wait_backends(admin, "both discovered pods active", |s| {
        s.get(&old_id).is_some_and(|st| st == "active") && s.get(&stays_id).is_some_and(|st| st == "active")
    })
    .await;
    assert!(
        records.asked().iter().all(|(host, port)| (host.as_str(), *port) == (HEADLESS, 8080)),
        "tether looked up the headless Service's name: {:?}",
        records.asked()
    );

    // WebSocket clients: users on the old pod (one reconnect allowed each), one elsewhere.
    let url = format!("ws://{public}/ws");
    let mut on_old = Vec::new();
    let mut elsewhere = None;
    for i in 0..200 {
        let user = format!("ws-user-{i}");
        let reply = http::get(public, "/whoami", &[("authorization", &bearer(&user))]).await;
        assert_eq!(reply.json()["user"], user.as_str(), "the pod heard the verified name");
        match reply.json()["instance"].as_str() {
            Some("pod-old") if on_old.len() < WS_USERS_ON_OLD_POD => on_old.push(user),
            Some("pod-stays") if elsewhere.is_none() => elsewhere = Some(user),
            _ => {}
        }
        if on_old.len() == WS_USERS_ON_OLD_POD && elsewhere.is_some() {
            break;
        }
    }
    assert_eq!(on_old.len(), WS_USERS_ON_OLD_POD, "users hashed to the old pod");
    let signed_in = |user: &str| ConnectOptions::default().header("Authorization", &bearer(user));
    let mut riders = Vec::new();
    for user in &on_old {
        riders.push(ReconnectingClient::start(&url, user, signed_in(user), TOPIC, 2).await);
    }
    let elsewhere = elsewhere.expect("a user on the other pod");
    let bystander = ReconnectingClient::start(&url, &elsewhere, signed_in(&elsewhere), TOPIC, 1).await;
    for rider in &riders {
        assert_eq!(rider.log().instances, ["pod-old"]);
    }
    assert_eq!(bystander.log().instances, ["pod-stays"]);

    let load = Load::start(public);

    // maxSurge 1: the new pod starts, passes its readinessProbe, and only then appears in the
    // headless Service's records; tether adds it after its own healthy check.
    let new = AppProcess::spawn(&pod_args(&template, "pod-new", &redis.url())).await;
    assert_eq!(http_client::get(new.addr, "/readyz").await.status, 200, "new pod ready");
    new.wait_redis_up().await;
    records.set(Answer::Addrs(vec![old.addr, stays.addr, new.addr]));
    let new_id = new.addr.to_string();
    wait_backends(admin, "the new pod active", |s| s.get(&new_id).is_some_and(|st| st == "active")).await;
    until("a load request to reach the new pod", async || load.served_by("pod-new") > 0).await;

    // maxUnavailable 0: only now is the old pod terminated. SIGTERM flips its readiness to
    // 503 at once; its record goes away now or after it exited.
    assert!(load.served_by("pod-old") > 0, "the load reached the old pod before the update");
    if removal == RecordRemoval::AtSigterm {
        records.set(Answer::Addrs(vec![stays.addr, new.addr]));
    }
    old.sigterm();
    for rider in &riders {
        rider.wait_until("close and reconnect", grace, |log| log.subscribed_at.len() == 2).await;
    }
    let status = old.wait_exit(grace).await;
    assert!(status.success(), "the old pod exited by itself within its grace period: {status}");
    records.set(Answer::Addrs(vec![stays.addr, new.addr]));
    wait_backends(admin, "the old pod gone", |s| !s.contains_key(&old_id)).await;

    // Keep the load going a little after the old pod is gone, then stop it.
    let ok_then = load.ok();
    until("100 more answered load requests", async || load.ok() >= ok_then + 100).await;
    let report = load.finish().await;
    assert!(
        report.failures.is_empty(),
        "{} of {} requests failed during the rolling update, first ones: {:?}",
        report.failures.len(),
        report.failures.len() + report.ok,
        &report.failures[..report.failures.len().min(10)]
    );
    for pod in ["pod-old", "pod-stays", "pod-new"] {
        assert!(
            report.by_instance.get(pod).is_some_and(|n| *n > 0),
            "no request served by {pod}: {:?}",
            report.by_instance
        );
    }

    // Every session is alive at the end: one more event reaches all of them.
    let r = http_client::post(stays.operator_addr(), &format!("/publish?destination={TOPIC}"), "after-rollout").await;
    assert_eq!(r.status, 202, "{}", r.body);
    for client in riders.iter().chain([&bystander]) {
        let conn = client.log().instances.len() - 1;
        client.wait_until("the event after the rollout", WAIT, |log| log.bodies(conn).contains(&"after-rollout")).await;
    }
    for rider in riders {
        let user = rider.user.clone();
        let log = rider.stop().await;
        assert_eq!(log.closes, [Some(1001)], "{user}: one clean close");
        assert_eq!(log.instances.len(), 2, "{user}: exactly one reconnect");
        assert!(["pod-stays", "pod-new"].contains(&log.instances[1].as_str()), "{user}: {:?}", log.instances);
        assert!(log.unexpected.is_empty(), "{user}: {:?}", log.unexpected);
    }
    let log = bystander.stop().await;
    assert!(log.closes.is_empty(), "a client of another pod was disturbed: {:?}", log.closes);

    // The in-process proxy stops and the child processes die on drop.
    drop((proxy, stays, new, redis));
}
