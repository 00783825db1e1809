//! Fan-out: how fast, how completely and at what CPU cost a message published to a STOMP
//! destination reaches 8,000 WebSocket subscribers, through one tether proxy and straight to the
//! backends.
//!
//! ```sh
//! cargo bench --bench fanout                       # full run, about 2 minutes once built
//! FANOUT_OUT=fanout.jsonl cargo bench --bench fanout   # also append the JSON lines to a file
//! ```
//!
//! # The system under test
//! One `redis-server` (loopback, free port, no persistence); two `tether backend` instances
//! sharing it (`--redis`); one `tether proxy` with a signed sticky cookie (`affinity.cookie`,
//! round robin for clients without one, which is every subscriber here, so they split 4,000 and
//! 4,000: each record says how the backends' sessions actually split). Release builds: `cargo
//! bench` builds the `tether` binary with the release profile.
//!
//! Descriptors: the open-file limit is 20,000 per process. The proxy holds 16,000 (8,000 client
//! and 8,000 upstream sockets; `limits.max_connections` and `limits.max_in_flight` are set to
//! 9,000, the default would be clamped to 9,968), each backend 4,000, and this process (the
//! subscribers) 8,000 plus a handful, so every process stays under the limit.
//!
//! # Scenarios (each through tether, then straight to the backends)
//! - **a**: 100 destinations x 80 subscribers, 1 publish per second per destination (100
//!   publishes/s evenly spaced, 8,000 deliveries/s); 30 s measured after 3 s of warm-up.
//!   Targets: p99 < 5 ms, p99.9 < 15 ms, nothing lost or duplicated.
//! - **b**: 1 destination x 8,000 subscribers, 10 publishes/s: every publish is a burst of 8,000
//!   deliveries (80,000/s); 15 s measured after 3 s of warm-up. Target: p99 < 150 ms through
//!   tether, nothing lost; the direct figure shows what the proxy adds.
//!
//! The subscribers stay connected across scenarios of one target (a new SUBSCRIBE, receipted,
//! replaces the previous subscription). Publishing starts once every SUBSCRIBE is receipted
//! (which means Redis confirmed the channel on every instance).
//!
//! # How latency is measured, and why the client is not the bound
//! Publishers (`fanout/publisher.rs`) `POST /publish` straight to the backends, alternating, on
//! keep-alive connections, with the `CLOCK_REALTIME` instant read just before each request is
//! written in the body. Subscribers (`fanout/subscriber.rs`) read with `recvmsg(2)` on sockets
//! with `SO_TIMESTAMPNS`, so each read also returns the `CLOCK_REALTIME` instant at which the
//! *kernel* received the data (loopback: when the sender's segment entered the receive path).
//! Latency = kernel receive stamp − publisher's stamp: publish request, backend, Redis, the other
//! backend, the proxy's relay, up to the subscriber's socket. How long the data then waits for
//! this client to read it is excluded (and reported separately as `read_lag`: the time the
//! client would have added had it used its own clock). The client is also cheap (one read and a
//! 200-byte scan per delivery, one thread for all 8,000 sockets, another for the publishers);
//! its CPU per delivery (this whole process, publishers included) is reported next to the
//! backends' and the proxy's, so a reader can see it takes a small share of the 2 cores.
//!
//! # CPU per delivery
//! utime + stime (`/proc/PID/stat`, every thread) of the proxy, of both backends (summed), of
//! Redis and of this process, read when the first timed publish is due and again once every
//! confirmed message has been delivered (or the drain limit passed), divided by the deliveries
//! counted in between. On this kernel softirq time is charged to whichever task was running, so
//! loopback TCP work lands roughly on the sender or the receiver (what the kernel defers to its
//! ksoftirqd threads is reported apart). The rest of the machine's CPU in the window is *other
//! load*: above 0.3 cores the output flags the window, whose latency then mostly says how much
//! CPU the stack was left, not how fast it is.
//!
//! # Counting
//! Each subscriber keeps, per sequence number, how often it arrived. Lost: a publish the
//! backend answered 202 for that never reached a subscriber of its destination; duplicated:
//! every arrival past the first. A publish that failed (not 202) is counted as such, and not
//! expected.
//!
//! Every wait is bounded (start-up, connecting, subscribing, each publish, the drain); the
//! processes started here are stopped by process group id when their guards drop, or on
//! SIGINT/SIGTERM. Traffic stays on 127.0.0.1.
//!
//! Settings (environment): `FANOUT_SUBSCRIBERS` (8000), `FANOUT_A_DESTINATIONS` (100),
//! `FANOUT_A_RATE` (1, per destination), `FANOUT_B_RATE` (10), `FANOUT_A_SECONDS` (30),
//! `FANOUT_B_SECONDS` (15), `FANOUT_WARMUP` (3), `FANOUT_TARGETS` (`tether,direct`),
//! `FANOUT_SCENARIOS` (`a,b`), `FANOUT_OUT` (a file the JSON lines are appended to).
//!
//! Without `--bench` (`cargo test --all-targets`), a smoke run of a few seconds: 200 subscribers,
//! both scenarios scaled down, through tether and direct, asserting that nothing is lost or
//! duplicated and that every timed delivery got a kernel stamp.

mod common;
#[path = "fanout/publisher.rs"]
mod publisher;
#[path = "fanout/stack.rs"]
mod stack;
#[path = "fanout/subscriber.rs"]
mod subscriber;

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use publisher::Schedule;
use subscriber::{Conn, Plan, Progress, Tally};

/// Handshakes in flight while connecting the subscribers.
const CONNECT_CONCURRENCY: usize = 200;
/// Bound on connecting (and on subscribing) all subscribers.
const CONNECT_LIMIT: Duration = Duration::from_secs(180);
/// After the last publish is answered, how long deliveries may still take to arrive.
const DRAIN_LIMIT: Duration = Duration::from_secs(20);
/// Bound on the subscriber tasks handing their connections back.
const COLLECT_LIMIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Target {
    Tether,
    Direct,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Tether => "tether",
            Target::Direct => "direct",
        }
    }
}

/// One scenario's shape.
#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    destinations: u32,
    /// Publishes per second per destination.
    rate: f64,
    warmup_s: f64,
    measured_s: f64,
}

impl Scenario {
    fn schedule(&self) -> Schedule {
        let rounds = ((self.warmup_s + self.measured_s) * self.rate).round().max(1.0) as u32;
        let timed_from = ((self.warmup_s * self.rate).round() as u32).min(rounds - 1);
        Schedule { scenario: self.name, destinations: self.destinations, rate: self.rate, rounds, timed_from }
    }
}

struct Settings {
    subscribers: usize,
    scenarios: Vec<Scenario>,
    targets: Vec<Target>,
    out: Option<std::path::PathBuf>,
}

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

impl Settings {
    fn from_env() -> Result<Settings, String> {
        let subscribers = common::env_or("FANOUT_SUBSCRIBERS", 8000usize).max(1);
        // The proxy holds two descriptors per subscriber; it must stay under 20,000.
        if subscribers > stack::PROXY_MAX_CONNECTIONS {
            return Err(format!("FANOUT_SUBSCRIBERS: at most {}", stack::PROXY_MAX_CONNECTIONS));
        }
        let warmup = common::env_or("FANOUT_WARMUP", 3.0f64).max(0.0);
        let a = Scenario {
            name: "a",
            destinations: common::env_or("FANOUT_A_DESTINATIONS", 100u32).clamp(1, subscribers as u32),
            rate: common::env_or("FANOUT_A_RATE", 1.0f64).max(0.1),
            warmup_s: warmup,
            measured_s: common::env_or("FANOUT_A_SECONDS", 30.0f64).max(1.0),
        };
        let b = Scenario {
            name: "b",
            destinations: 1,
            rate: common::env_or("FANOUT_B_RATE", 10.0f64).max(0.1),
            warmup_s: warmup,
            measured_s: common::env_or("FANOUT_B_SECONDS", 15.0f64).max(1.0),
        };
        let scenarios = list("FANOUT_SCENARIOS", "a,b")
            .iter()
            .map(|s| match s.as_str() {
                "a" => Ok(a),
                "b" => Ok(b),
                _ => Err(format!("FANOUT_SCENARIOS: unknown {s} (a, b)")),
            })
            .collect::<Result<_, _>>()?;
        let targets = list("FANOUT_TARGETS", "tether,direct")
            .iter()
            .map(|s| match s.as_str() {
                "tether" => Ok(Target::Tether),
                "direct" => Ok(Target::Direct),
                _ => Err(format!("FANOUT_TARGETS: unknown {s} (tether, direct)")),
            })
            .collect::<Result<_, _>>()?;
        let out = std::env::var_os("FANOUT_OUT").map(Into::into);
        Ok(Settings { subscribers, scenarios, targets, out })
    }
}

fn main() {
    if !common::bench_mode() {
        smoke();
        return;
    }
    common::stop_all_on_signal();
    let settings = match Settings::from_env() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::exit(2);
        }
    };
    let started = Instant::now();
    let mut bench = match Bench::start() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("fanout: {e}");
            std::process::exit(1);
        }
    };
    let mut out = settings.out.as_ref().map(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", p.display()))
    });
    let mut emit = |record: &Value| {
        println!("{record}");
        if let Some(f) = out.as_mut() {
            let _ = writeln!(f, "{record}");
        }
    };
    emit(&bench.meta(&settings));
    let mut records = Vec::new();
    for &target in &settings.targets {
        match bench.target(target, settings.subscribers, &settings.scenarios, &mut |r| {
            emit(r);
            records.push(r.clone());
        }) {
            Ok(()) => {}
            Err(e) => {
                let record = json!({"type": "error", "target": target.name(), "error": e});
                eprintln!("fanout: {}: {e}", target.name());
                emit(&record);
            }
        }
    }
    emit(&json!({"type": "end", "seconds": started.elapsed().as_secs_f64(), "loadavg": loadavg()}));
    eprintln!("\n{}", table(&records));
    eprintln!("fanout: done in {:.0} s", started.elapsed().as_secs_f64());
}

/// CPU readings at one instant (clock ticks), and the deliveries counted so far.
#[derive(Clone, Copy)]
struct Sample {
    at: Instant,
    proxy: u64,
    backends: u64,
    redis: u64,
    client: u64,
    subscriber_thread: u64,
    ksoftirqd: u64,
    machine_busy: u64,
    steal: u64,
    delivered: u64,
}

#[derive(Clone, Copy)]
struct Pids {
    proxy: u32,
    backends: [u32; 2],
    redis: u32,
    /// The thread all subscribers run on (in this process).
    subscriber_thread: i32,
}

/// The kernel's softirq threads: loopback receive work the kernel defers under load runs there,
/// charged to no process of ours, so it is reported apart from other work.
fn ksoftirqd_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
                .filter(|pid| {
                    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.starts_with("ksoftirqd/"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// utime + stime of one thread of this process, clock ticks (fields 14 and 15 of
/// `/proc/self/task/TID/stat`; `/proc/TID/stat` would sum the whole process).
fn thread_ticks(tid: i32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")) else { return 0 };
    let Some((_, rest)) = stat.rsplit_once(')') else { return 0 };
    rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum()
}

impl Sample {
    fn take(pids: &Pids, progress: &Progress) -> Sample {
        let (machine_busy, steal) = common::machine_ticks();
        Sample {
            at: Instant::now(),
            proxy: common::cpu_ticks(&[pids.proxy]),
            backends: common::cpu_ticks(&pids.backends),
            redis: common::cpu_ticks(&[pids.redis]),
            client: common::cpu_ticks(&[std::process::id()]),
            subscriber_thread: thread_ticks(pids.subscriber_thread),
            ksoftirqd: common::cpu_ticks(&KSOFTIRQD.get_or_init(ksoftirqd_pids)[..]),
            machine_busy,
            steal,
            delivered: progress.delivered.load(Ordering::Relaxed),
        }
    }
}

fn cpu_fields(before: &Sample, after: &Sample, has_proxy: bool) -> Value {
    let tps = common::ticks_per_second();
    let wall = after.at.duration_since(before.at).as_secs_f64().max(1e-9);
    let deliveries = after.delivered.saturating_sub(before.delivered);
    let d = |a: u64, b: u64| a.saturating_sub(b) as f64;
    let (proxy, backends, redis, client) = (
        d(after.proxy, before.proxy),
        d(after.backends, before.backends),
        d(after.redis, before.redis),
        d(after.client, before.client),
    );
    let busy = d(after.machine_busy, before.machine_busy);
    let per = |ticks: f64| if deliveries > 0 { ticks / tps * 1e6 / deliveries as f64 } else { f64::NAN };
    let cores = |ticks: f64| ticks / tps / wall;
    json!({
        "window_s": wall,
        "window_deliveries": deliveries,
        // serde_json writes NaN as null: no proxy straight to the backends.
        "proxy_cpu_us": if has_proxy { per(proxy) } else { f64::NAN },
        "backends_cpu_us": per(backends),
        "redis_cpu_us": per(redis),
        "client_cpu_us": per(client),
        "subscriber_thread_cpu_us": per(d(after.subscriber_thread, before.subscriber_thread)),
        "proxy_cores": if has_proxy { cores(proxy) } else { f64::NAN },
        "backends_cores": cores(backends),
        "redis_cores": cores(redis),
        "client_cores": cores(client),
        "subscriber_thread_cores": cores(d(after.subscriber_thread, before.subscriber_thread)),
        "ksoftirqd_cores": cores(d(after.ksoftirqd, before.ksoftirqd)),
        // Everything else the machine did in the window: other work on this shared machine.
        "other_cores": cores((busy - proxy - backends - redis - client - d(after.ksoftirqd, before.ksoftirqd)).max(0.0)),
        "steal_cores": cores(d(after.steal, before.steal)),
    })
}

/// Other work above this many cores during a window makes its latency a figure of the machine.
const BUSY_CORES: f64 = 0.3;

static KSOFTIRQD: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();

/// Nearest-rank percentile of sorted values, in ms.
fn pct_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1e3
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The running system and the client's two runtimes.
struct Bench {
    dir: tempfile::TempDir,
    redis: stack::Guard,
    backends: Vec<stack::Guard>,
    proxy: stack::Guard,
    /// Every subscriber, on one thread.
    subscribers: tokio::runtime::Runtime,
    /// The publishers, on another (so a busy subscriber thread never delays a publish).
    publishers: tokio::runtime::Runtime,
    subscriber_thread: i32,
}

fn one_thread(name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("runtime")
}

impl Bench {
    fn start() -> Result<Bench, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let redis = stack::redis(dir.path())?;
        let backends = (1..=2).map(|n| stack::backend(dir.path(), n, redis.addr)).collect::<Result<Vec<_>, _>>()?;
        let addrs: Vec<SocketAddr> = backends.iter().map(|b| b.addr).collect();
        let proxy = stack::proxy(dir.path(), &addrs)?;
        let subscribers = one_thread("fanout-subscribers");
        // SAFETY: gettid(2) has no preconditions.
        let subscriber_thread =
            subscribers.block_on(subscribers.spawn(async { unsafe { libc::gettid() } })).map_err(|e| e.to_string())?;
        Ok(Bench {
            dir,
            redis,
            backends,
            proxy,
            subscribers,
            publishers: one_thread("fanout-publishers"),
            subscriber_thread,
        })
    }

    fn backend_addrs(&self) -> Vec<SocketAddr> {
        self.backends.iter().map(|b| b.addr).collect()
    }

    fn pids(&self) -> Pids {
        Pids {
            proxy: self.proxy.pid(),
            backends: [self.backends[0].pid(), self.backends[1].pid()],
            redis: self.redis.pid(),
            subscriber_thread: self.subscriber_thread,
        }
    }

    fn meta(&self, s: &Settings) -> Value {
        let git = |args: &[&str]| {
            std::process::Command::new("git")
                .args(args)
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        json!({
            "type": "meta",
            "subscribers": s.subscribers,
            "scenarios": s.scenarios.iter().map(|c| json!({"name": c.name, "destinations": c.destinations,
                "rate_per_destination": c.rate, "warmup_s": c.warmup_s, "measured_s": c.measured_s})).collect::<Vec<_>>(),
            "targets": s.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "commit": git(&["rev-parse", "--short", "HEAD"]),
            "branch": git(&["rev-parse", "--abbrev-ref", "HEAD"]),
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "kernel": kernel.trim(),
            "loadavg": loadavg(),
            "proxy_startup": stack::proxy_startup_line(self.dir.path()),
            "ticks_per_second": common::ticks_per_second(),
        })
    }

    /// Connect the subscribers to `target`, run every scenario on them, disconnect.
    fn target(
        &mut self,
        target: Target,
        n: usize,
        scenarios: &[Scenario],
        emit: &mut dyn FnMut(&Value),
    ) -> Result<(), String> {
        let addrs = match target {
            Target::Tether => vec![self.proxy.addr],
            Target::Direct => self.backend_addrs(),
        };
        let opened = Instant::now();
        let conns = self.subscribers.block_on(subscriber::open_all(&addrs, n, CONNECT_CONCURRENCY, CONNECT_LIMIT))?;
        let connect_s = opened.elapsed().as_secs_f64();
        let sessions: Vec<Option<u64>> = self.backends.iter().map(|b| stack::sessions(b.addr)).collect();
        eprintln!(
            "fanout: {n} subscribers connected to {} in {connect_s:.1} s (backend sessions {sessions:?})",
            target.name()
        );
        let mut conns = Some(conns);
        for (i, scenario) in scenarios.iter().enumerate() {
            let (back, mut record) = self.scenario(target, conns.take().expect("returned"), i as u32, scenario)?;
            conns = Some(back);
            if let Some(o) = record.as_object_mut() {
                o.insert("connect_s".into(), json!(connect_s));
                o.insert("backend_sessions".into(), json!(sessions));
            }
            eprintln!("{}", line(&record));
            emit(&record);
        }
        // Closing 8,000 sockets: the backends end their sessions on their own.
        drop(conns);
        Ok(())
    }

    fn scenario(
        &mut self,
        target: Target,
        conns: Vec<Conn>,
        index: u32,
        scenario: &Scenario,
    ) -> Result<(Vec<Conn>, Value), String> {
        let n = conns.len();
        let schedule = scenario.schedule();
        let progress = Arc::new(Progress::default());
        let stop = CancellationToken::new();
        let mut handles: Vec<_> = conns
            .into_iter()
            .enumerate()
            .map(|(i, conn)| {
                let plan = Plan {
                    scenario: scenario.name,
                    subscription: index,
                    destination: (i % scenario.destinations as usize) as u32,
                    timed_from: schedule.timed_from,
                };
                self.subscribers.spawn(subscriber::run(conn, plan, progress.clone(), stop.clone()))
            })
            .collect();
        // Every SUBSCRIBE receipted (bounded); a subscriber that ended already has failed.
        let deadline = Instant::now() + CONNECT_LIMIT;
        while progress.subscribed.load(Ordering::Acquire) < n {
            if let Some(h) = handles.iter().position(|h| h.is_finished()) {
                stop.cancel();
                let failed = handles.swap_remove(h);
                let error = self.subscribers.block_on(async {
                    match failed.await {
                        Ok(Err(e)) => e,
                        Ok(Ok(_)) => "ended early".to_owned(),
                        Err(e) => e.to_string(),
                    }
                });
                return Err(format!("scenario {}: subscriber {h}: {error}", scenario.name));
            }
            if Instant::now() > deadline {
                stop.cancel();
                return Err(format!("scenario {}: not all subscribed within {CONNECT_LIMIT:?}", scenario.name));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let pids = self.pids();
        let has_proxy = target == Target::Tether;
        let sample_progress = progress.clone();
        let backends = self.backend_addrs();
        let started = Instant::now();
        let outcome = self
            .publishers
            .block_on(publisher::run(&backends, schedule, move || Sample::take(&pids, &sample_progress)));
        let publishing_s = started.elapsed().as_secs_f64();
        // Every confirmed publish, times the subscribers of its destination.
        let subscribers_of = |d: usize| {
            (n / scenario.destinations as usize + usize::from(d < n % scenario.destinations as usize)) as u64
        };
        let expected: u64 = outcome
            .confirmed
            .iter()
            .enumerate()
            .map(|(d, seqs)| seqs.iter().filter(|c| **c).count() as u64 * subscribers_of(d))
            .sum();
        let drain_deadline = Instant::now() + DRAIN_LIMIT;
        while progress.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let pids = self.pids();
        let after = Sample::take(&pids, &progress);
        stop.cancel();
        let collected = self.subscribers.block_on(async {
            tokio::time::timeout(COLLECT_LIMIT, async {
                let mut back = Vec::with_capacity(n);
                for h in handles {
                    back.push(h.await.map_err(|e| e.to_string())??);
                }
                Ok::<_, String>(back)
            })
            .await
            .map_err(|_| format!("subscribers not collected within {COLLECT_LIMIT:?}"))?
        })?;
        let (mut lost, mut dup, mut unconfirmed, mut misrouted, mut unstamped) = (0u64, 0u64, 0u64, 0u64, 0u64);
        let mut latency = Vec::new();
        let mut lag = Vec::new();
        let mut conns = Vec::with_capacity(n);
        for (i, (conn, tally)) in collected.into_iter().enumerate() {
            let Tally { seen, latency_us, read_lag_us, misrouted: m, unstamped: u } = tally;
            let d = i % scenario.destinations as usize;
            for (seq, confirmed) in outcome.confirmed[d].iter().enumerate() {
                let count = seen.get(seq).copied().unwrap_or(0) as u64;
                match (confirmed, count) {
                    (true, 0) => lost += 1,
                    (true, c) => dup += c - 1,
                    (false, c) => unconfirmed += c,
                }
            }
            misrouted += m;
            unstamped += u;
            latency.extend(latency_us);
            lag.extend(read_lag_us);
            conns.push(conn);
        }
        latency.sort_unstable();
        lag.sort_unstable();
        let mean = if latency.is_empty() {
            f64::NAN
        } else {
            latency.iter().map(|&v| v as f64).sum::<f64>() / latency.len() as f64 / 1e3
        };
        let cpu = outcome.timed_start.map_or(Value::Null, |before| cpu_fields(&before, &after, has_proxy));
        let mut record = json!({
            "type": "run",
            "target": target.name(),
            "scenario": scenario.name,
            "subscribers": n,
            "destinations": scenario.destinations,
            "rate_per_destination": scenario.rate,
            "published": schedule.total(),
            "rounds": schedule.rounds,
            "timed_from_round": schedule.timed_from,
            "publish_failed": outcome.failed,
            "publish_error": outcome.first_error,
            "publisher_max_behind_ms": outcome.max_behind_ms,
            "publishing_s": publishing_s,
            "expected": expected,
            "delivered": progress.delivered.load(Ordering::Relaxed),
            "lost": lost,
            "duplicated": dup,
            "unconfirmed_delivered": unconfirmed,
            "misrouted": misrouted,
            "unstamped_reads": unstamped,
            "samples": latency.len(),
            "p50_ms": pct_ms(&latency, 0.50),
            "p99_ms": pct_ms(&latency, 0.99),
            "p999_ms": pct_ms(&latency, 0.999),
            "max_ms": latency.last().map_or(f64::NAN, |&v| v as f64 / 1e3),
            "mean_ms": mean,
            "read_lag_p50_ms": pct_ms(&lag, 0.50),
            "read_lag_p99_ms": pct_ms(&lag, 0.99),
            "read_lag_max_ms": lag.last().map_or(f64::NAN, |&v| v as f64 / 1e3),
            "loadavg": loadavg(),
        });
        if let (Some(r), Value::Object(c)) = (record.as_object_mut(), cpu) {
            r.extend(c);
        }
        Ok((conns, record))
    }
}

fn num(r: &Value, k: &str) -> f64 {
    r.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

fn int(r: &Value, k: &str) -> u64 {
    r.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// One progress line for a run record.
fn line(r: &Value) -> String {
    format!(
        "  {:<6} {}: p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.1} ms; {} samples, lost {} dup {} failed {}; \
         CPU/delivery proxy {:.2} us, backends {:.2} us, redis {:.2} us, client {:.2} us (subscribers {:.2} us); \
         client read lag p99 {:.1} ms; ksoftirqd {:.2} cores, other load {:.2} cores{}",
        r["target"].as_str().unwrap_or_default(),
        r["scenario"].as_str().unwrap_or_default(),
        num(r, "p50_ms"),
        num(r, "p99_ms"),
        num(r, "p999_ms"),
        num(r, "max_ms"),
        int(r, "samples"),
        int(r, "lost"),
        int(r, "duplicated"),
        int(r, "publish_failed"),
        num(r, "proxy_cpu_us"),
        num(r, "backends_cpu_us"),
        num(r, "redis_cpu_us"),
        num(r, "client_cpu_us"),
        num(r, "subscriber_thread_cpu_us"),
        num(r, "read_lag_p99_ms"),
        num(r, "ksoftirqd_cores"),
        num(r, "other_cores"),
        if num(r, "other_cores") > BUSY_CORES {
            " (busy machine: the latency reflects the CPU share left)"
        } else {
            ""
        },
    )
}

/// The readable summary: one row per run.
fn table(records: &[Value]) -> String {
    let mut t = String::from(
        "| scenario | target | p50 ms | p99 ms | p99.9 ms | max ms | deliveries timed | lost | dup | proxy µs/delivery | backends µs/delivery | redis µs/delivery | client µs/delivery (subscriber thread) | client read lag p99 ms | other load, cores |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in records {
        let f = |k: &str, digits: usize| {
            let v = num(r, k);
            if v.is_nan() { "—".to_owned() } else { format!("{v:.digits$}") }
        };
        let client = format!("{} ({})", f("client_cpu_us", 2), f("subscriber_thread_cpu_us", 2));
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r["scenario"].as_str().unwrap_or_default(),
            r["target"].as_str().unwrap_or_default(),
            f("p50_ms", 2),
            f("p99_ms", 2),
            f("p999_ms", 2),
            f("max_ms", 1),
            int(r, "samples"),
            int(r, "lost"),
            int(r, "duplicated"),
            f("proxy_cpu_us", 2),
            f("backends_cpu_us", 2),
            f("redis_cpu_us", 2),
            client,
            f("read_lag_p99_ms", 2),
            f("other_cores", 2),
        ));
    }
    t
}

// ---------------------------------------------------------------------------------------------
// Test mode: the same code paths, scaled down to a few seconds.

fn smoke() {
    let started = Instant::now();
    let mut bench = Bench::start().unwrap_or_else(|e| panic!("fanout smoke: {e}"));
    let scenarios = [
        Scenario { name: "a", destinations: 2, rate: 4.0, warmup_s: 0.5, measured_s: 1.5 },
        Scenario { name: "b", destinations: 1, rate: 10.0, warmup_s: 0.5, measured_s: 1.0 },
    ];
    let mut records = Vec::new();
    for target in [Target::Tether, Target::Direct] {
        bench
            .target(target, 200, &scenarios, &mut |r| records.push(r.clone()))
            .unwrap_or_else(|e| panic!("fanout smoke, {}: {e}", target.name()));
    }
    assert_eq!(records.len(), 4, "one record per target and scenario");
    for r in &records {
        let what = format!("{} {}", r["target"], r["scenario"]);
        assert_eq!(int(r, "publish_failed"), 0, "{what}: {r}");
        assert!(int(r, "expected") > 0, "{what}: nothing expected: {r}");
        assert_eq!(int(r, "delivered"), int(r, "expected"), "{what}: {r}");
        assert_eq!(int(r, "lost"), 0, "{what}: {r}");
        assert_eq!(int(r, "duplicated"), 0, "{what}: {r}");
        assert_eq!(int(r, "misrouted"), 0, "{what}: {r}");
        assert_eq!(int(r, "unstamped_reads"), 0, "{what}: every read carries a kernel stamp: {r}");
        // Every timed delivery was measured, from its kernel stamp: each round reaches every
        // subscriber once.
        let timed_rounds = int(r, "rounds") - int(r, "timed_from_round");
        assert_eq!(int(r, "samples"), timed_rounds * 200, "{what}: {r}");
        for k in ["p50_ms", "p99_ms", "p999_ms", "max_ms"] {
            let v = num(r, k);
            assert!((0.0..10_000.0).contains(&v), "{what}: {k} = {v}: {r}");
        }
        assert!(num(r, "p50_ms") <= num(r, "p99_ms") && num(r, "p99_ms") <= num(r, "max_ms"), "{what}: {r}");
        assert!(num(r, "backends_cpu_us").is_finite(), "{what}: no CPU figure: {r}");
    }
    // Through tether, round robin spread the subscribers over both backends.
    let tether_sessions = records[0]["backend_sessions"].as_array().cloned().unwrap_or_default();
    assert!(
        tether_sessions.len() == 2 && tether_sessions.iter().all(|s| s.as_u64().is_some_and(|n| n >= 50)),
        "subscribers through tether were not spread over both backends: {tether_sessions:?}"
    );
    println!("fanout smoke: done in {:.1} s (cargo bench --bench fanout to measure)", started.elapsed().as_secs_f64());
}
