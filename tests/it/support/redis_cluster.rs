//! `TestRedisCluster`: a real three-master Redis Cluster on 127.0.0.1 (`redis-server
//! --cluster-enabled yes` three times, joined by `redis-cli --cluster create`), optionally with
//! a replica per master, each node in its own temp dir, every node killed on drop. Nodes give
//! up on a silent peer after one second (`cluster-node-timeout`), so a failover takes a few
//! seconds, not the default fifteen.
//!
//! Cluster nodes need TCP ports (and the bus port, port + 10000): each is one the kernel just
//! handed out for 127.0.0.1:0 whose bus port was free too.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

/// How long the cluster may take to start and agree on its slots.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const MASTERS: usize = 3;

struct Node {
    port: u16,
    /// None once killed for good ([`TestRedisCluster::kill_node`]).
    child: Option<Child>,
    /// Holds `nodes.conf`, so a restarted node rejoins with its identity and slots.
    dir: TempDir,
}

fn spawn_node(port: u16, dir: &TempDir) -> Child {
    Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
        .args(["--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "1000"])
        // A replica takes over however long ago it last heard from its master (the default
        // refuses after ten node timeouts, which a loaded test machine can exceed).
        .args(["--cluster-replica-validity-factor", "0"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .arg("--logfile")
        .arg(dir.path().join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server (run scripts/test-deps.sh): {e}"))
}

pub struct TestRedisCluster {
    nodes: Vec<Node>,
}

/// A port free on 127.0.0.1 whose cluster bus port (+10000) is free too.
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("addr").port();
        if port > 55_000 {
            continue;
        }
        if TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair for a cluster node");
}

/// How many fresh port pairs a node start may try: a port found free can be taken (by another
/// process's outgoing connection, say) before redis-server binds it.
const START_ATTEMPTS: usize = 5;

/// Starts one node on a free port pair and waits until it answers PING; tries another pair when
/// redis-server exits at startup (its port was taken meanwhile).
async fn start_node() -> Node {
    for _ in 0..START_ATTEMPTS {
        let dir = tempfile::Builder::new().prefix("tether-redis-cluster").tempdir().expect("temp dir");
        let port = free_port_pair();
        let mut child = spawn_node(port, &dir);
        let url = format!("redis://127.0.0.1:{port}");
        let up = super::eventually_within("a cluster node to answer PING or exit", READY_TIMEOUT, async || {
            if let Ok(Some(_)) = child.try_wait() {
                return Some(false);
            }
            let client = redis::Client::open(url.as_str()).ok()?;
            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING").query_async::<String>(&mut conn).await.ok().map(|_| true)
        })
        .await;
        if up {
            return Node { port, child: Some(child), dir };
        }
    }
    panic!("no cluster node started in {START_ATTEMPTS} attempts");
}

impl TestRedisCluster {
    /// Starts three masters and creates the cluster over them; returns once every node
    /// reports `cluster_state:ok`.
    pub async fn start() -> TestRedisCluster {
        Self::start_with_replicas(0).await
    }

    /// Three masters with `replicas` replicas each.
    pub async fn start_with_replicas(replicas: usize) -> TestRedisCluster {
        let count = MASTERS * (1 + replicas);
        let mut cluster = TestRedisCluster { nodes: Vec::with_capacity(count) };
        for _ in 0..count {
            let node = start_node().await;
            cluster.nodes.push(node);
        }
        let mut create = tokio::process::Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(READY_TIMEOUT, create.output())
            .await
            .expect("redis-cli --cluster create finished")
            .expect("redis-cli ran");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok().await;
        cluster
    }

    /// Waits until every live node reports `cluster_state:ok`.
    async fn wait_ok(&self) {
        for node in self.nodes.iter().filter(|n| n.child.is_some()) {
            let url = format!("redis://127.0.0.1:{}", node.port);
            super::eventually_within("the cluster to agree on its slots", READY_TIMEOUT, async || {
                let client = redis::Client::open(url.as_str()).ok()?;
                let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                let info: String = redis::cmd("CLUSTER").arg("INFO").query_async(&mut conn).await.ok()?;
                info.lines().any(|l| l.trim() == "cluster_state:ok").then_some(())
            })
            .await;
        }
    }

    /// The index of the node that owns `key`'s slot, and the slot.
    pub async fn owner_of(&self, key: &str) -> (usize, u16) {
        match self.try_owner_of(key).await {
            (Some(owner), slot) => (owner, slot),
            (None, slot) => panic!("no live node owns slot {slot}"),
        }
    }

    /// [`Self::owner_of`], None while no node that is not failing owns the slot.
    async fn try_owner_of(&self, key: &str) -> (Option<usize>, u16) {
        let live = self.nodes.iter().position(|n| n.child.is_some()).expect("a live node");
        let slot: i64 = self.query_node(live, &["CLUSTER", "KEYSLOT", key]).await;
        let slot = u16::try_from(slot).expect("a slot");
        let nodes: String = self.query_node(live, &["CLUSTER", "NODES"]).await;
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1].split(['@', ':']).nth(1).and_then(|p| p.parse().ok()).expect("ip:port@bus");
            for range in &fields[8..] {
                let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                let (Ok(lo), Ok(hi)) = (lo.parse::<u16>(), hi.parse::<u16>()) else { continue };
                if (lo..=hi).contains(&slot) {
                    return (self.nodes.iter().position(|n| n.port == port), slot);
                }
            }
        }
        (None, slot)
    }

    async fn node_id(&self, index: usize) -> String {
        self.query_node(index, &["CLUSTER", "MYID"]).await
    }

    /// Moves `slot` from node `from` to node `to` the way `redis-cli --cluster reshard` does:
    /// IMPORTING/MIGRATING, MIGRATE of its keys, then SETSLOT NODE on every master.
    pub async fn move_slot(&self, slot: u16, from: usize, to: usize) {
        let (from_id, to_id) = (self.node_id(from).await, self.node_id(to).await);
        let slot = slot.to_string();
        let _: () = self.query_node(to, &["CLUSTER", "SETSLOT", &slot, "IMPORTING", &from_id]).await;
        let _: () = self.query_node(from, &["CLUSTER", "SETSLOT", &slot, "MIGRATING", &to_id]).await;
        loop {
            let keys: Vec<String> = self.query_node(from, &["CLUSTER", "GETKEYSINSLOT", &slot, "100"]).await;
            if keys.is_empty() {
                break;
            }
            let port = self.nodes[to].port.to_string();
            let mut args = vec!["MIGRATE", "127.0.0.1", &port, "", "0", "5000", "KEYS"];
            args.extend(keys.iter().map(String::as_str));
            let _: redis::Value = self.query_node(from, &args).await;
        }
        for i in [to, from].into_iter().chain((0..self.nodes.len()).filter(|i| *i != to && *i != from)) {
            let _: () = self.query_node(i, &["CLUSTER", "SETSLOT", &slot, "NODE", &to_id]).await;
        }
        self.wait_ok().await;
    }

    /// SIGKILLs node `index` and starts it again on the same port with its `nodes.conf`; waits
    /// until the cluster is whole again.
    pub async fn restart_node(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        if let Some(mut child) = node.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        node.child = Some(spawn_node(node.port, &node.dir));
        self.wait_ok().await;
    }

    /// SIGKILLs node `index` for good (a lost machine); with replicas, one of its replicas is
    /// promoted once the others notice.
    pub fn kill_node(&mut self, index: usize) {
        if let Some(mut child) = self.nodes[index].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until a live node owns `key`'s slot and the live nodes agree the cluster is ok;
    /// returns that node.
    pub async fn wait_owner(&self, key: &str) -> usize {
        let owner = super::eventually_within("a live node to own the slot", READY_TIMEOUT, async || {
            let (owner, _) = self.try_owner_of(key).await;
            owner.filter(|o| self.nodes[*o].child.is_some())
        })
        .await;
        self.wait_ok().await;
        owner
    }

    /// `PUBSUB SHARDNUMSUB channel` on node `index`: its subscribers there.
    pub async fn shard_subscribers(&self, index: usize, channel: &str) -> i64 {
        let reply: Vec<redis::Value> = self.query_node(index, &["PUBSUB", "SHARDNUMSUB", channel]).await;
        match reply.get(1) {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("PUBSUB SHARDNUMSUB {channel}: {other:?}"),
        }
    }

    /// The node list `--redis-cluster` takes: `redis://127.0.0.1:p1,redis://127.0.0.1:p2,...`.
    pub fn node_list(&self) -> String {
        self.node_urls().join(",")
    }

    /// Every node's URL, the nodes a client first connects to.
    pub fn node_urls(&self) -> Vec<String> {
        self.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port)).collect()
    }

    /// Runs one command on node `index`.
    pub async fn query_node<T: redis::FromRedisValue>(&self, index: usize, args: &[&str]) -> T {
        let url = format!("redis://127.0.0.1:{}", self.nodes[index].port);
        let client = redis::Client::open(url).expect("redis url");
        let mut conn = client.get_multiplexed_async_connection().await.expect("connect to a cluster node");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query_async(&mut conn).await.unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

impl Drop for TestRedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
