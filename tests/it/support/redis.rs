//! `TestRedis`: a real `redis-server` on a private Unix socket in a temp dir, killed on drop.
//! It can be killed and restarted on the same address to simulate an outage.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long a freshly started redis-server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct TestRedis {
    dir: TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

impl TestRedis {
    /// Starts redis-server. Panics with instructions when it is not installed: tests that need
    /// Redis always run, they never skip.
    pub async fn start() -> TestRedis {
        let dir =
            tempfile::Builder::new().prefix("tether-redis").tempdir().expect("create a temp dir for redis-server");
        let socket = dir.path().join("redis.sock");
        let mut redis = TestRedis { dir, socket, child: None };
        redis.spawn().await;
        redis
    }

    /// `redis+unix://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    /// Kills the server (SIGKILL, like a crashed or evicted Redis) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same socket.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// `PUBSUB CHANNELS pattern`, sorted.
    pub async fn pubsub_channels(&self, pattern: &str) -> Vec<String> {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to test redis");
        let mut channels: Vec<String> =
            redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern).query_async(&mut conn).await.expect("PUBSUB CHANNELS");
        channels.sort();
        channels
    }

    /// Runs one command on a fresh connection.
    pub async fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let client = redis::Client::open(self.url()).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to test redis");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    /// How many times Redis ran `command` (lowercase) since it started (`INFO commandstats`).
    pub async fn command_calls(&self, command: &str) -> u64 {
        let info: String = self.query(&["INFO", "commandstats"]).await;
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().expect("a call count"))
    }

    /// `CLIENT PAUSE ms ALL`: every client's next command waits that long, as with a Redis
    /// that is slow to answer (not down: connections stay up).
    pub async fn pause(&self, ms: u64) {
        let _: () = self.query(&["CLIENT", "PAUSE", &ms.to_string(), "ALL"]).await;
    }

    async fn spawn(&mut self) {
        let log = self.dir.path().join("redis.log");
        let child = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(&self.socket)
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
        let child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("redis-server is not installed; run scripts/test-deps.sh (the Redis tests never skip)")
            }
            Err(e) => panic!("cannot start redis-server: {e}"),
        };
        self.child = Some(child);
        self.wait_ready(&log).await;
    }

    async fn wait_ready(&mut self, log: &std::path::Path) {
        let client = redis::Client::open(self.url()).expect("redis url");
        super::eventually_within("redis-server to accept connections", READY_TIMEOUT, async || {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return Some(());
                }
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("redis-server exited with {status} during startup:\n{log}");
            }
            None
        })
        .await;
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
