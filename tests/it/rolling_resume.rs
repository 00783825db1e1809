//! A rolling update end to end, with nothing lost: two `tether backend` processes with
//! `--history` on one Redis, tether in front with cookie affinity, 200 STOMP subscribers on 10
//! destinations, a publisher at 200 messages/s through `POST /publish`. Backend A goes away
//! (drained through tether's admin API, or SIGTERMed) while the publisher runs; its clients
//! reconnect through tether (to B) and resume from the last `x-stream-id` they saw. Every
//! subscriber receives every message of its destination exactly once, in publish order; the
//! test prints messages published, delivered, lost and duplicated.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::support::app_process::AppProcess;
use crate::support::config::Yaml;
use crate::support::http_client;
use crate::support::proxy::TestProxy;
use crate::support::reconnecting_client::{ClientLog, ReconnectingClient};
use crate::support::redis::TestRedis;
use crate::support::stomp_client::ConnectOptions;
use crate::support::{WAIT, until};

const SUBSCRIBERS: usize = 200;
const DESTINATIONS: usize = 10;
/// 200 messages/s.
const PUBLISH_EVERY: Duration = Duration::from_millis(5);
/// Connections a subscriber may open: its first, the reconnect away from A, and slack for a
/// reconnect that reaches A again before tether noticed A going away (it is closed again and
/// resumes again; that is part of what is tested).
const MAX_CONNECTIONS: usize = 4;
/// Messages published after every moved subscriber resumed.
const AFTER_RESUME: u64 = 200;
/// How long a subscriber waits before it reconnects (stompjs's `reconnectDelay`, shortened):
/// about 50 messages are published meanwhile, which reach it only through the replay.
const RECONNECT_DELAY: Duration = Duration::from_millis(250);

fn destination(d: usize) -> String {
    format!("/topic/room-{d}")
}

/// How backend A goes away.
#[derive(Clone, Copy, Debug)]
enum Departure {
    /// `POST /admin/upstreams/app/backends/app-a/drain`: tether closes A's tunnels (1001).
    Drain,
    /// SIGTERM to A: it turns unready, then closes its sessions (1001) and exits.
    Sigterm,
}

/// Where the fan-out goes through.
enum Fanout<'a> {
    Redis(&'a TestRedis),
    Cluster(&'a crate::support::redis_cluster::TestRedisCluster),
}

impl Fanout<'_> {
    fn flags(&self) -> Vec<String> {
        match self {
            Fanout::Redis(r) => vec!["--redis".into(), r.url()],
            Fanout::Cluster(c) => vec!["--redis-cluster".into(), c.node_list()],
        }
    }
}

async fn spawn_backend(id: &str, fanout: &Fanout<'_>) -> AppProcess {
    let mut args: Vec<String> = [
        "backend",
        "--listen",
        "127.0.0.1:0",
        "--internal-listen",
        "127.0.0.1:0",
        "--id",
        id,
        "--history",
        "5m",
        "--shutdown-delay",
        "1s",
        "--drain-spread",
        "500ms",
    ]
    .map(String::from)
    .to_vec();
    args.extend(fanout.flags());
    let app = AppProcess::spawn(&args).await;
    // Clients arrive through the proxy at once: the broker must be connected before then.
    app.wait_redis_up().await;
    app
}

/// Publishes message `n` (body `n`) to destination `n % DESTINATIONS`, one at a time, each
/// answered before the next: the publish order of a destination is the order of its `n`s.
struct Publisher {
    /// Each message's number and when its publish was answered.
    published: Arc<Mutex<Vec<(u64, Instant)>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn start(target: SocketAddr) -> Publisher {
        let published = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (published, stop) = (published.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(PUBLISH_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for n in 0u64.. {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    let d = destination(n as usize % DESTINATIONS);
                    let query: String =
                        form_urlencoded::Serializer::new(String::new()).append_pair("destination", &d).finish();
                    let r = http_client::post(target, &format!("/publish?{query}"), n.to_string()).await;
                    assert_eq!(r.status, 202, "publish {n}: {}", r.body);
                    published.lock().expect("published").push((n, Instant::now()));
                }
            }
        });
        Publisher { published, stop, task }
    }

    fn count(&self) -> u64 {
        self.published.lock().expect("published").len() as u64
    }

    async fn finish(self) -> Vec<(u64, Instant)> {
        self.stop.cancel();
        match tokio::time::timeout(WAIT, self.task).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            other => panic!("the publisher did not stop: {other:?}"),
        }
        Arc::try_unwrap(self.published).expect("publisher stopped").into_inner().expect("published")
    }
}

/// What one subscriber got against what was published to its destination.
#[derive(Default, Debug)]
struct Tally {
    published: usize,
    delivered: usize,
    lost: usize,
    duplicated: usize,
    out_of_order: usize,
}

fn tally(expected: &[u64], got: &[u64]) -> Tally {
    let mut seen = HashSet::new();
    let duplicated = got.iter().filter(|n| !seen.insert(**n)).count();
    let lost = expected.iter().filter(|n| !seen.contains(n)).count();
    let out_of_order = got.windows(2).filter(|w| w[0] >= w[1]).count();
    Tally { published: expected.len(), delivered: got.len(), lost, duplicated, out_of_order }
}

async fn rolling_update_loses_nothing(fanout: Fanout<'_>, departure: Departure) {
    let mut a = spawn_backend("app-a", &fanout).await;
    let b = spawn_backend("app-b", &fanout).await;
    let proxy = TestProxy::start(
        Yaml::app(|u| {
            u.backend("app-a", a.addr)
                .backend("app-b", b.addr)
                .affinity("{ cookie: { name: TETHER_AFFINITY } }")
                .health_check(
                    "{ path: /readyz, interval: 200ms, timeout: 150ms, healthy_after: 2, unhealthy_after: 2 }",
                )
                .drain("{ timeout: 1s, close_spread: 500ms }")
        })
        .set("access_log", "{ format: off }"),
    )
    .await;
    let url = format!("ws://{}/ws", proxy.addr("public"));

    let mut clients = Vec::with_capacity(SUBSCRIBERS);
    for i in 0..SUBSCRIBERS {
        let user = format!("subscriber-{i}");
        let d = destination(i % DESTINATIONS);
        clients.push(
            ReconnectingClient::start_resuming(
                &url,
                &user,
                ConnectOptions::default(),
                &d,
                MAX_CONNECTIONS,
                RECONNECT_DELAY,
            )
            .await,
        );
    }
    let on_a: Vec<usize> = (0..SUBSCRIBERS).filter(|&i| clients[i].log().instances == ["app-a"]).collect();
    assert!(on_a.len() >= SUBSCRIBERS / 4, "tether spread new users over both backends: {} on app-a", on_a.len());

    let publisher = Publisher::start(b.internal.expect("app-b internal listener"));
    for c in &clients {
        c.wait_until("a first message (a point to resume from)", WAIT, |log| !log.messages.is_empty()).await;
    }

    let admin = proxy.admin();
    match departure {
        Departure::Drain => {
            admin.drain("app", "app-a").await;
        }
        Departure::Sigterm => a.sigterm(),
    }
    for &i in &on_a {
        let moved = |log: &ClientLog| log.instances.last().map(String::as_str) == Some("app-b");
        clients[i].wait_until("a reconnect away from app-a", WAIT, moved).await;
    }
    if let Departure::Sigterm = departure {
        let status = a.wait_exit(WAIT).await;
        assert!(status.success(), "app-a exited with {status}; stderr:\n{}", a.stderr());
    }
    let before = publisher.count();
    until("more messages after every moved subscriber resumed", async || publisher.count() >= before + AFTER_RESUME)
        .await;
    let published = publisher.finish().await;

    let expected: Vec<Vec<u64>> = (0..DESTINATIONS)
        .map(|d| published.iter().map(|(n, _)| *n).filter(|n| *n as usize % DESTINATIONS == d).collect())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let want = expected[i % DESTINATIONS].len();
        c.wait_until("every message of its destination", WAIT, |log| log.messages.len() >= want).await;
    }
    let mut total = Tally::default();
    let mut failures = Vec::new();
    // Deliveries that only a replay could make: messages of a moved subscriber's destination
    // published after its first connection closed and before its last SUBSCRIBE.
    let mut missed_while_away = 0;
    for (i, c) in clients.into_iter().enumerate() {
        let user = c.user.clone();
        let log = c.stop().await;
        let got: Vec<u64> = log
            .messages
            .iter()
            .map(|(_, body)| body.parse().unwrap_or_else(|_| panic!("{user}: body {body:?}")))
            .collect();
        let t = tally(&expected[i % DESTINATIONS], &got);
        if t.lost + t.duplicated + t.out_of_order > 0 || !log.unexpected.is_empty() || log.gaps > 0 {
            failures.push(format!(
                "{user} ({:?}, closes {:?}): {t:?}, gaps {}, unexpected {:?}",
                log.instances, log.closes, log.gaps, log.unexpected
            ));
        }
        if on_a.contains(&i) {
            let (away, back) = (log.closed_at[0], *log.subscribed_at.last().expect("subscribed"));
            missed_while_away += published
                .iter()
                .filter(|(n, at)| *n as usize % DESTINATIONS == i % DESTINATIONS && *at > away && *at < back)
                .count();
            assert!(log.closes.iter().all(|c| *c == Some(1001)), "{user}: graceful closes only: {:?}", log.closes);
        } else {
            assert!(log.closes.is_empty(), "{user} on app-b was not disturbed: {:?}", log.closes);
        }
        total.published += t.published;
        total.delivered += t.delivered;
        total.lost += t.lost;
        total.duplicated += t.duplicated;
        total.out_of_order += t.out_of_order;
    }
    println!(
        "rolling update ({departure:?}): {} messages published to {DESTINATIONS} destinations, {} subscribers ({} moved, \
         {} deliveries published while they were away), {} deliveries expected, {} delivered, {} lost, {} duplicated, \
         {} out of order",
        published.len(),
        SUBSCRIBERS,
        on_a.len(),
        missed_while_away,
        total.published,
        total.delivered,
        total.lost,
        total.duplicated,
        total.out_of_order
    );
    assert!(
        failures.is_empty(),
        "{} subscribers did not get every message exactly once in order:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!((total.lost, total.duplicated, total.out_of_order), (0, 0, 0));
    assert_eq!(total.delivered, total.published);
    assert!(missed_while_away > 0, "the publisher ran while subscribers were away: the replay was exercised");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backend_mid_stream_loses_and_duplicates_nothing_for_resuming_clients() {
    let redis = TestRedis::start().await;
    rolling_update_loses_nothing(Fanout::Redis(&redis), Departure::Drain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_of_a_backend_mid_stream_loses_and_duplicates_nothing_for_resuming_clients() {
    let redis = TestRedis::start().await;
    rolling_update_loses_nothing(Fanout::Redis(&redis), Departure::Sigterm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_a_backend_on_redis_cluster_loses_and_duplicates_nothing_for_resuming_clients() {
    let cluster = crate::support::redis_cluster::TestRedisCluster::start().await;
    rolling_update_loses_nothing(Fanout::Cluster(&cluster), Departure::Drain).await;
}
