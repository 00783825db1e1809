//! `ReconnectingClient`: a user's STOMP session through the proxy that behaves like a browser's
//! `@stomp/stompjs` client: on a close it reconnects (same credentials) and subscribes again,
//! up to a fixed number of connections. Everything it sees goes into a [`ClientLog`] the test
//! reads while it runs and asserts on at the end.
//!
//! A resuming client ([`ReconnectingClient::start_resuming`]) does what the README's stompjs
//! snippet does: it remembers the `x-stream-id` of the last MESSAGE and subscribes again with
//! `x-resume-from: <that id>`; it also keeps the sticky cookie a proxy pinned it with, like a
//! browser.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tether::app::stomp::Command;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::stomp_client::{ConnectOptions, Event, StompClient};

#[derive(Debug, Clone, Default)]
pub struct ClientLog {
    /// The `tether-instance` of each connection's CONNECTED, in order.
    pub instances: Vec<String>,
    /// Close codes received, in order (`None`: the connection ended without a Close frame).
    pub closes: Vec<Option<u16>>,
    /// When each close was read.
    pub closed_at: Vec<Instant>,
    /// When each connection's SUBSCRIBE was answered by its RECEIPT (read by the client).
    pub subscribed_at: Vec<Instant>,
    /// `(connection index, body)` of every MESSAGE.
    pub messages: Vec<(usize, String)>,
    /// Frames other than MESSAGE, rendered for the failure message.
    pub unexpected: Vec<String>,
    /// The `x-stream-id` of the last MESSAGE.
    pub last_stream_id: Option<String>,
    /// How many MESSAGEs carried `x-resume-gap: true`.
    pub gaps: usize,
}

impl ClientLog {
    /// Bodies received on connection `conn`.
    pub fn bodies(&self, conn: usize) -> Vec<&str> {
        self.messages.iter().filter(|(c, _)| *c == conn).map(|(_, b)| b.as_str()).collect()
    }
}

pub struct ReconnectingClient {
    /// Who it is, for messages.
    pub user: String,
    log: Arc<Mutex<ClientLog>>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl ReconnectingClient {
    /// Connects as `user` (with `options`: its token, say) and subscribes to `destination`
    /// (waiting for the RECEIPT) before returning; then keeps reading in the background,
    /// reconnecting with the same options after a close while fewer than `max_connections`
    /// were opened.
    pub async fn start(
        url: &str,
        user: &str,
        options: ConnectOptions,
        destination: &str,
        max_connections: usize,
    ) -> ReconnectingClient {
        Self::launch(url, user, options, destination, max_connections, None).await
    }

    /// [`Self::start`], resuming on every reconnect from the last `x-stream-id` it received,
    /// and sending back the sticky cookie it was given. It waits `reconnect_delay` before each
    /// reconnect, as stompjs's `reconnectDelay` does: messages published meanwhile reach it
    /// only through the replay.
    pub async fn start_resuming(
        url: &str,
        user: &str,
        options: ConnectOptions,
        destination: &str,
        max_connections: usize,
        reconnect_delay: Duration,
    ) -> ReconnectingClient {
        Self::launch(url, user, options, destination, max_connections, Some(reconnect_delay)).await
    }

    async fn launch(
        url: &str,
        user: &str,
        options: ConnectOptions,
        destination: &str,
        max_connections: usize,
        resume: Option<Duration>,
    ) -> ReconnectingClient {
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let mut how = How { url: url.to_owned(), options, destination: destination.to_owned(), resume };
        let first = open(&mut how, &log).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(first, how, max_connections, log.clone(), stop.clone()));
        ReconnectingClient { user: user.to_owned(), log, stop, task: Some(task) }
    }

    /// A copy of the log as it is now.
    pub fn log(&self) -> ClientLog {
        self.log.lock().expect("client log").clone()
    }

    /// Polls the log until `pred` holds, failing the test after `within`.
    pub async fn wait_until(&self, what: &str, within: Duration, pred: impl Fn(&ClientLog) -> bool) {
        let what = format!("{}: {what}", self.user);
        super::eventually_within(&what, within, async || {
            if pred(&self.log.lock().expect("client log")) {
                return Some(());
            }
            if let Some(task) = &self.task
                && task.is_finished()
            {
                panic!("{what}: the client task ended while waiting; log: {:?}", self.log());
            }
            None
        })
        .await;
    }

    /// Stops reading and returns the final log; re-raises a panic of the client task.
    pub async fn stop(mut self) -> ClientLog {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(super::WAIT, task).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Ok(Err(e)) => panic!("{}: client task failed: {e}", self.user),
                Err(_) => panic!("{}: client task did not stop", self.user),
            }
        }
        self.log()
    }
}

impl Drop for ReconnectingClient {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Where and how the client (re)connects.
struct How {
    url: String,
    options: ConnectOptions,
    destination: String,
    /// Resume, reconnecting after this delay (`None`: plain resubscribe at once).
    resume: Option<Duration>,
}

async fn open(how: &mut How, log: &Mutex<ClientLog>) -> StompClient {
    let mut client = StompClient::connect_with(&how.url, how.options.clone()).await;
    if how.resume.is_some()
        && let Some(pin) = client.set_cookie.as_deref().and_then(|c| c.split(';').next())
    {
        how.options.headers.retain(|(k, _)| !k.eq_ignore_ascii_case("cookie"));
        how.options.headers.push(("Cookie".into(), pin.to_owned()));
    }
    let instance = client.connected.get("tether-instance").unwrap_or("<none>").to_owned();
    let (conn, resume_from) = {
        let mut log = log.lock().expect("client log");
        log.instances.push(instance);
        (log.instances.len() - 1, log.last_stream_id.clone().filter(|_| how.resume.is_some()))
    };
    let id = format!("sub-{conn}");
    match resume_from {
        Some(from) => client.subscribe_with(&how.destination, &id, &[("x-resume-from", &from)]).await,
        None => client.subscribe(&how.destination, &id).await,
    }
    log.lock().expect("client log").subscribed_at.push(Instant::now());
    client
}

async fn run(
    mut client: StompClient,
    mut how: How,
    max_connections: usize,
    log: Arc<Mutex<ClientLog>>,
    stop: CancellationToken,
) {
    let mut conn = 0;
    loop {
        // `read_event` only awaits the socket's next message, so dropping it on stop loses
        // nothing that was already decoded.
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            event = client.read_event() => event,
        };
        match event {
            Event::Frame(f) if f.command == Command::Message => {
                let body = String::from_utf8_lossy(&f.body).into_owned();
                let mut log = log.lock().expect("client log");
                log.messages.push((conn, body));
                if let Some(id) = f.get("x-stream-id") {
                    log.last_stream_id = Some(id.to_owned());
                }
                if f.get("x-resume-gap") == Some("true") {
                    log.gaps += 1;
                }
            }
            Event::Frame(f) => log.lock().expect("client log").unexpected.push(format!("{f:?}")),
            Event::Closed(close) => {
                {
                    let mut l = log.lock().expect("client log");
                    l.closes.push(close.map(|c| u16::from(c.code)));
                    l.closed_at.push(Instant::now());
                }
                if conn + 1 >= max_connections {
                    return;
                }
                conn += 1;
                if let Some(delay) = how.resume {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        // The client's own back-off, the behaviour under test, not a wait for
                        // an event.
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
                client = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = open(&mut how, &log) => c,
                };
            }
        }
    }
}
