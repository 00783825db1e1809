//! `ReconnectingClient`: a user's STOMP session through the proxy that behaves like the seeds'
//! `@stomp/stompjs` client: on a close it reconnects (same credentials) and subscribes again,
//! up to a fixed number of connections. Everything it sees goes into a [`ClientLog`] the test
//! reads while it runs and asserts on at the end.

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
    /// When each connection's SUBSCRIBE was answered by its RECEIPT (read by the client).
    pub subscribed_at: Vec<Instant>,
    /// `(connection index, body)` of every MESSAGE.
    pub messages: Vec<(usize, String)>,
    /// Frames other than MESSAGE, rendered for the failure message.
    pub unexpected: Vec<String>,
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
        let log = Arc::new(Mutex::new(ClientLog::default()));
        let first = open(url, &options, destination, &log).await;
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(
            first,
            url.to_owned(),
            options,
            destination.to_owned(),
            max_connections,
            log.clone(),
            stop.clone(),
        ));
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

async fn open(url: &str, options: &ConnectOptions, destination: &str, log: &Mutex<ClientLog>) -> StompClient {
    let mut client = StompClient::connect_with(url, options.clone()).await;
    let instance = client.connected.get("tether-instance").unwrap_or("<none>").to_owned();
    let conn = {
        let mut log = log.lock().expect("client log");
        log.instances.push(instance);
        log.instances.len() - 1
    };
    client.subscribe(destination, &format!("sub-{conn}")).await;
    log.lock().expect("client log").subscribed_at.push(Instant::now());
    client
}

async fn run(
    mut client: StompClient,
    url: String,
    options: ConnectOptions,
    destination: String,
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
                log.lock().expect("client log").messages.push((conn, body));
            }
            Event::Frame(f) => log.lock().expect("client log").unexpected.push(format!("{f:?}")),
            Event::Closed(close) => {
                log.lock().expect("client log").closes.push(close.map(|c| u16::from(c.code)));
                if conn + 1 >= max_connections {
                    return;
                }
                conn += 1;
                client = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = open(&url, &options, &destination, &log) => c,
                };
            }
        }
    }
}
