//! The compose topology of `docker/docker-compose.test.yml` as local processes: a real
//! redis-server, the two `tether backend` services started with the compose file's own
//! command lines (only addresses rewritten), and the real `tether proxy` binary started with
//! the very `docker/tether.compose.yaml` (addresses through its `${VAR:-default}`s, the JWKS
//! it mounts at its relative path). Users signed in with tokens of the example key stay pinned
//! and are who their token says, a forged X-User-Id names nobody, the compose health checks
//! tell ready from draining, and a rolling restart of one backend costs each of its clients
//! exactly one clean 1001 close and one reconnect, with no message published after the new
//! SUBSCRIBE's RECEIPT missed.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_yaml::Value;
use tokio_util::sync::CancellationToken;

use crate::support::admin::AdminClient;
use crate::support::app_process::AppProcess;
use crate::support::deploy_files::{
    compose, duration, example_token, flag, parse_config, port_of, read, repo_path, service, str_at, strings,
    with_flags,
};
use crate::support::http;
use crate::support::http_client;
use crate::support::proxy::TestProxy;
use crate::support::reconnecting_client::ReconnectingClient;
use crate::support::redis::TestRedis;
use crate::support::stomp_client::{ConnectOptions, StompClient};
use crate::support::{WAIT, until};

const TOPIC: &str = "/topic/deploy";
/// Clients pinned to the backend that restarts.
const USERS_ON_APP1: usize = 3;
const PUBLISH_EVERY: Duration = Duration::from_millis(50);
/// Bound on the publisher loop (it is stopped long before).
const MAX_PUBLISHED: u64 = 2_000;

/// A compose service's command line, with the addresses a container gets from compose
/// (0.0.0.0 listeners, `redis://redis:6379`, tether's fixed address on the stack's network)
/// replaced by local ones.
fn local_args(compose: &Value, name: &str, listen: &str, redis: &str) -> Vec<String> {
    let args = strings(&service(compose, name)["command"]);
    let changes = [("--listen", listen), ("--internal-listen", "127.0.0.1:0"), ("--redis", redis)];
    let args = with_flags(&args, &changes);
    assert!(flag(&args, "--trust-proxy").is_some(), "{name} trusts tether's address: {args:?}");
    with_flags(&args, &[("--trust-proxy", "127.0.0.1/32")])
}

/// `Authorization: Bearer` with a token for `user` of the example identity provider.
fn bearer(user: &str) -> (&'static str, String) {
    ("authorization", format!("Bearer {}", example_token(user)))
}

/// Runs a compose healthcheck (`["CMD", program, args..]`) the way the container would: after
/// compose's `$$` unescaping, with the container's port swapped for the local process's port.
async fn healthcheck_passes(test: &[String], container_port: u16, local_port: u16) -> bool {
    assert_eq!(test[0], "CMD");
    let from = format!("/dev/tcp/127.0.0.1/{container_port}");
    let to = format!("/dev/tcp/127.0.0.1/{local_port}");
    let args: Vec<String> = test[1..].iter().map(|a| a.replace("$$", "$").replace(&from, &to)).collect();
    assert!(args.iter().any(|a| a.contains(&to)), "the healthcheck does not probe port {container_port}: {test:?}");
    let status =
        tokio::time::timeout(WAIT, tokio::process::Command::new(&args[0]).args(&args[1..]).kill_on_drop(true).status())
            .await
            .expect("healthcheck finished")
            .expect("healthcheck ran");
    status.success()
}

async fn instance_for(proxy: SocketAddr, headers: &[(&str, &str)]) -> http::Reply {
    let reply = http::get(proxy, "/whoami", headers).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

fn instance_of(reply: &http::Reply) -> String {
    reply.json()["instance"].as_str().expect("instance").to_owned()
}

/// One POST /publish: its sequence number and when it started.
#[derive(Debug, Clone, Copy)]
struct Published {
    seq: u64,
    at: Instant,
}

/// Publishes `0, 1, 2, ...` to [`TOPIC`] every [`PUBLISH_EVERY`], round-robin over `targets`
/// (the backends' internal listeners, as the app's own event publishers would).
struct Publisher {
    targets: Arc<Mutex<Vec<SocketAddr>>>,
    log: Arc<Mutex<Vec<Published>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(targets: Vec<SocketAddr>) -> Publisher {
        let targets = Arc::new(Mutex::new(targets));
        let log = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (targets, log, stop) = (targets.clone(), log.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                for seq in 0..MAX_PUBLISHED {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let target = {
                        let t = targets.lock().expect("targets");
                        t[seq as usize % t.len()]
                    };
                    let at = Instant::now();
                    let path = format!("/publish?destination={}", TOPIC.replace('/', "%2F"));
                    let r = http_client::post(target, &path, seq.to_string()).await;
                    assert_eq!(r.status, 202, "publish {seq} via {target}: {}", r.body);
                    log.lock().expect("log").push(Published { seq, at });
                }
            }
        });
        Publisher { targets, log, stop, task }
    }

    fn set_targets(&self, targets: Vec<SocketAddr>) {
        *self.targets.lock().expect("targets") = targets;
    }

    fn count(&self) -> usize {
        self.log.lock().expect("log").len()
    }

    async fn finish(self) -> Vec<Published> {
        self.stop.cancel();
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => panic!("publisher did not stop: {other:?}"),
        }
        self.log.lock().expect("log").clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_topology_rolling_restart_costs_each_client_one_clean_reconnect() {
    let compose = compose();
    let redis = TestRedis::start().await;
    let app1_args = local_args(&compose, "app1", "127.0.0.1:0", &redis.url());
    let mut app1 = AppProcess::spawn(&app1_args).await;
    let app2 = AppProcess::spawn(&local_args(&compose, "app2", "127.0.0.1:0", &redis.url())).await;
    // The apps listen before their broker connects; subscriptions in between are refused.
    app1.wait_redis_up().await;
    app2.wait_redis_up().await;

    let (app1_addr, app2_addr) = (app1.addr.to_string(), app2.addr.to_string());
    let env = [
        ("APP1_ADDR", app1_addr.as_str()),
        ("APP2_ADDR", app2_addr.as_str()),
        ("TETHER_LISTEN", "127.0.0.1:0"),
        ("TETHER_ADMIN_BIND", "127.0.0.1:0"),
    ];
    let config = repo_path("docker/tether.compose.yaml");
    let mut proxy = env.iter().fold(TestProxy::builder().file(&config), |b, (k, v)| b.env(k, v)).spawn_process().await;
    let (public, admin) = (proxy.addr("public"), proxy.addr("admin"));
    let admin_api = AdminClient::new(admin);

    // The compose health checks, run against the live processes.
    let app_check = strings(&service(&compose, "app1")["healthcheck"]["test"]);
    let app_port = port_of(flag(&strings(&service(&compose, "app1")["command"]), "--listen").expect("--listen"));
    let tether_check = strings(&service(&compose, "tether")["healthcheck"]["test"]);
    assert!(healthcheck_passes(&app_check, app_port, app1.addr.port()).await, "app1 healthcheck");
    assert!(healthcheck_passes(&app_check, app_port, app2.addr.port()).await, "app2 healthcheck");
    // In the container the admin listener has its default bind.
    let defaults = parse_config(&config, &read("docker/tether.compose.yaml"), &[]);
    let admin_port = defaults.admin.as_ref().expect("admin listener").bind.port();
    assert!(healthcheck_passes(&tether_check, admin_port, admin.port()).await, "tether healthcheck");

    // A client naming itself names nobody: tether strips the header, the app hears no user.
    let forged = instance_for(public, &[("x-user-id", "alice")]).await;
    assert_eq!(forged.json()["user"], serde_json::Value::Null, "{}", forged.text());
    // A signed-in user is who the token says, end to end.
    let (name, value) = bearer("alice");
    let signed = instance_for(public, &[(name, &value), ("x-user-id", "mallory")]).await;
    assert_eq!(signed.json()["user"], "alice", "{}", signed.text());

    // Signed-in users are pinned by their verified id: find some on each backend (the admin
    // API says where a key goes); they stay there.
    let mut on_app1 = Vec::new();
    let mut on_app2 = None;
    for i in 0..200 {
        let user = format!("user-{i}");
        let (home, _) = admin_api.route("app", &user).await;
        match home.as_str() {
            "app1" if on_app1.len() < USERS_ON_APP1 => on_app1.push(user),
            "app2" if on_app2.is_none() => on_app2 = Some(user),
            _ => {}
        }
        if on_app1.len() == USERS_ON_APP1 && on_app2.is_some() {
            break;
        }
    }
    let on_app2 = on_app2.expect("a user on app2");
    assert_eq!(on_app1.len(), USERS_ON_APP1, "users hashed to app1");
    for (user, home) in on_app1.iter().map(|u| (u, "app1")).chain([(&on_app2, "app2")]) {
        let (name, value) = bearer(user);
        for _ in 0..3 {
            assert_eq!(instance_of(&instance_for(public, &[(name, &value)]).await), home, "{user}");
        }
    }

    // Anonymous users are pinned by the sticky cookie, for HTTP and for the WebSocket.
    let first = instance_for(public, &[]).await;
    let set_cookie = first.header("set-cookie").expect("a sticky cookie for an anonymous user").to_owned();
    assert!(set_cookie.starts_with("TETHER_AFFINITY="), "{set_cookie}");
    let cookie = set_cookie.split(';').next().expect("cookie pair").to_owned();
    let home = instance_of(&first);
    for _ in 0..3 {
        let again = instance_for(public, &[("cookie", &cookie)]).await;
        assert_eq!(instance_of(&again), home);
        assert_eq!(again.header("set-cookie"), None, "the pin did not change");
    }
    let mut options = ConnectOptions::default();
    options.headers.push(("Cookie".into(), cookie.clone()));
    let anonymous = StompClient::connect_with(&format!("ws://{public}/ws"), options).await;
    assert_eq!(anonymous.connected.get("tether-instance"), Some(home.as_str()));
    anonymous.disconnect().await;

    // WebSocket/STOMP sessions: three users on app1 (each allowed one reconnect), one on app2.
    let url = format!("ws://{public}/ws");
    let signed_in = |user: &str| {
        let (name, value) = bearer(user);
        ConnectOptions::default().header(name, &value)
    };
    let mut riders = Vec::new();
    for user in &on_app1 {
        riders.push(ReconnectingClient::start(&url, user, signed_in(user), TOPIC, 2).await);
    }
    let bystander = ReconnectingClient::start(&url, &on_app2, signed_in(&on_app2), TOPIC, 1).await;
    for rider in &riders {
        assert_eq!(rider.log().instances, ["app1"], "{}", rider.user);
    }
    assert_eq!(bystander.log().instances, ["app2"]);

    // Business events keep flowing through app2 (which stays up) for the whole restart.
    let app2_internal = app2.internal.expect("app2 internal listener");
    let publisher = Publisher::start(vec![app2_internal]);
    for client in riders.iter().chain([&bystander]) {
        client.wait_until("a message before the restart", WAIT, |log| !log.bodies(0).is_empty()).await;
    }

    // The rolling restart: SIGTERM (what `docker compose restart app1` sends) ...
    let delay = duration(flag(&app1_args, "--shutdown-delay").expect("--shutdown-delay"));
    let grace = duration(str_at(service(&compose, "app1"), &["stop_grace_period"]).expect("stop_grace_period"));
    app1.sigterm();
    // ... tether sees the 503 and stops sending app1 new sessions before app1 stops serving,
    // and the compose healthcheck reports app1 unhealthy.
    // (`drained` once its last tunnel is gone.)
    let sigterm_at = Instant::now();
    admin_api.wait_state("app", "app1", &["draining", "drained"]).await;
    let noticed = sigterm_at.elapsed();
    assert!(noticed < delay, "tether noticed the drain after {noticed:?}");
    assert!(!healthcheck_passes(&app_check, app_port, app1.addr.port()).await, "a draining app1 is unhealthy");
    // Each client of app1 gets one Close 1001 and reconnects, to app2, within the grace period.
    for rider in &riders {
        rider.wait_until("close and reconnect", grace, |log| log.subscribed_at.len() == 2).await;
    }
    let status = app1.wait_exit(grace).await;
    assert!(status.success(), "app1 exited with {status}");

    // ... and the container starts again on the same address.
    let restarted_args = with_flags(&app1_args, &[("--listen", &app1_addr)]);
    let app1 = AppProcess::spawn(&restarted_args).await;
    assert_eq!(app1.addr.to_string(), app1_addr);
    app1.wait_redis_up().await;
    assert!(healthcheck_passes(&app_check, app_port, app1.addr.port()).await, "restarted app1 healthcheck");
    admin_api.wait_state("app", "app1", &["active"]).await;
    // New sessions of app1's users go home again; the reconnected ones stay where they are.
    let (name, value) = bearer(&on_app1[0]);
    assert_eq!(instance_of(&instance_for(public, &[(name, &value)]).await), "app1");
    let app1_internal = app1.internal.expect("app1 internal listener");
    let before = publisher.count();
    publisher.set_targets(vec![app1_internal, app2_internal]);
    until("20 more publishes", async || publisher.count() >= before + 20).await;
    let published = publisher.finish().await;

    // Nothing published after a connection's SUBSCRIBE was receipted is missed, and nothing
    // arrives twice.
    let after = |at: Instant| -> BTreeSet<String> {
        published.iter().filter(|p| p.at > at).map(|p| p.seq.to_string()).collect()
    };
    for client in riders.iter().chain([&bystander]) {
        let log = client.log();
        let conn = log.subscribed_at.len() - 1;
        let expected = after(log.subscribed_at[conn]);
        assert!(expected.len() >= 20, "{}: only {} messages to check", client.user, expected.len());
        client
            .wait_until("every message published after its RECEIPT", WAIT, |log| {
                let got: BTreeSet<&str> = log.bodies(conn).into_iter().collect();
                expected.iter().all(|seq| got.contains(seq.as_str()))
            })
            .await;
    }
    for rider in riders {
        let user = rider.user.clone();
        let log = rider.stop().await;
        assert_eq!(log.closes, [Some(1001)], "{user}: exactly one clean close");
        assert_eq!(log.instances, ["app1", "app2"], "{user}: exactly one reconnect, away from the draining app1");
        assert!(log.unexpected.is_empty(), "{user}: {:?}", log.unexpected);
        let mut seen = BTreeSet::new();
        for (_, body) in &log.messages {
            assert!(seen.insert(body.clone()), "{user}: message {body} delivered twice");
        }
    }
    let log = bystander.stop().await;
    assert!(log.closes.is_empty(), "app2's client was not disturbed: {:?}", log.closes);
    assert!(log.unexpected.is_empty(), "{:?}", log.unexpected);
    // Every message once; not necessarily in publish order, since app2 delivers its own
    // publishes locally at once and app1's after their trip through Redis.
    let mut got: Vec<u64> = log.bodies(0).iter().map(|b| b.parse().expect("a sequence number")).collect();
    got.sort_unstable();
    let all: Vec<u64> = published.iter().map(|p| p.seq).collect();
    assert_eq!(got, all, "app2's client got every message exactly once");

    assert!(proxy.is_running(), "tether proxy is still running");
    drop(app2);
    drop(redis);
}
