//! External load generators, run as bounded child processes: `wrk` (HTTP/1.1 keep-alive) and
//! `h2load` (HTTP/2 over TLS). A run that overstays its limit is killed by its pid.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Run `command` (stdout captured, stderr discarded), killing it if it is still running after
/// `limit`. Returns its stdout.
pub fn run_bounded(command: &mut Command, limit: Duration) -> Result<String, String> {
    let mut child =
        command.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().map_err(|e| format!("cannot start: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let text = reader.join().unwrap_or_default();
    match status {
        Some(s) if s.success() => Ok(text),
        Some(s) => Err(format!("exited with {s}:\n{text}")),
        None => Err(format!("still running after {limit:?}: killed")),
    }
}

#[derive(Debug, Clone)]
pub struct WrkResult {
    pub rps: f64,
    pub requests: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx answers plus socket errors.
    pub errors: u64,
}

/// `wrk -t{threads} -c{connections} -d{seconds}s --latency` against `http://addr{path}`.
pub fn wrk(
    wrk: &Path,
    addr: SocketAddr,
    path: &str,
    threads: u32,
    connections: u32,
    seconds: f64,
) -> Result<WrkResult, String> {
    // wrk takes whole seconds.
    let seconds = seconds.round().max(1.0) as u64;
    let text = run_bounded(
        Command::new(wrk)
            .args([&format!("-t{threads}"), &format!("-c{connections}"), &format!("-d{seconds}s")])
            .args(["--latency", "--timeout", "5s"])
            .arg(format!("http://{addr}{path}")),
        Duration::from_secs(seconds + 30),
    )?;
    parse_wrk(&text)
}

pub fn parse_wrk(text: &str) -> Result<WrkResult, String> {
    let field =
        |prefix: &str| text.lines().find_map(|l| l.trim().strip_prefix(prefix).map(|rest| rest.trim().to_owned()));
    let rps =
        field("Requests/sec:").and_then(|v| v.parse().ok()).ok_or_else(|| format!("unexpected wrk output:\n{text}"))?;
    // "  640123 requests in 10.00s, 90.12MB read"
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| format!("no request count in wrk output:\n{text}"))?;
    let p50_ms = field("50%").map(|v| millis(&v)).unwrap_or(f64::NAN);
    let p99_ms = field("99%").map(|v| millis(&v)).unwrap_or(f64::NAN);
    let non_2xx: u64 = field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0);
    let socket_errors: u64 = field("Socket errors:")
        .map(|v| {
            v.split(',').filter_map(|part| part.split_whitespace().nth(1).and_then(|n| n.parse::<u64>().ok())).sum()
        })
        .unwrap_or(0);
    Ok(WrkResult { rps, requests, p50_ms, p99_ms, errors: non_2xx + socket_errors })
}

/// wrk prints latencies as `812.00us`, `1.20ms` or `2.01s`.
fn millis(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, f64::NAN)
    };
    number.trim().parse::<f64>().map_or(f64::NAN, |n| n * factor)
}

#[derive(Debug, Clone)]
pub struct H2Result {
    pub rps: f64,
    /// Requests that succeeded (2xx).
    pub requests: u64,
    /// Failed, errored and timed-out requests.
    pub errors: u64,
}

/// What an h2load run is bounded by.
#[derive(Clone, Copy, Debug)]
pub enum H2Amount {
    Seconds(f64),
    Requests(u64),
}

/// `h2load -t1 -c{clients} -m{streams}` over TLS (ALPN h2) against `https://addr{path}`.
pub fn h2load(
    h2load: &Path,
    addr: SocketAddr,
    path: &str,
    clients: u32,
    streams: u32,
    amount: H2Amount,
) -> Result<H2Result, String> {
    let mut command = Command::new(h2load);
    command.args(["-t1", &format!("-c{clients}"), &format!("-m{streams}")]);
    let limit = match amount {
        H2Amount::Seconds(s) => {
            command.arg(format!("-D{}", s.round().max(1.0) as u64));
            Duration::from_secs_f64(s) + Duration::from_secs(30)
        }
        H2Amount::Requests(n) => {
            command.arg(format!("-n{n}"));
            Duration::from_secs(60)
        }
    };
    let text = run_bounded(command.arg(format!("https://{addr}{path}")), limit)?;
    parse_h2load(&text)
}

pub fn parse_h2load(text: &str) -> Result<H2Result, String> {
    // "finished in 10.00s, 12345.60 req/s, 1.23MB/s"
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .and_then(|rest| rest.split(',').nth(1)?.trim().strip_suffix(" req/s")?.parse().ok())
        .ok_or_else(|| format!("unexpected h2load output:\n{text}"))?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let line = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("requests: "))
        .ok_or_else(|| format!("no request counts in h2load output:\n{text}"))?;
    let count = |what: &str| {
        line.split(',').find_map(|part| {
            let mut words = part.split_whitespace();
            let n = words.next()?.parse::<u64>().ok()?;
            (words.next()? == what).then_some(n)
        })
    };
    let requests = count("succeeded").unwrap_or(0);
    let errors = count("failed").unwrap_or(0) + count("errored").unwrap_or(0) + count("timeout").unwrap_or(0);
    Ok(H2Result { rps, requests, errors })
}
