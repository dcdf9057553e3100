//! A real Redis Cluster for the tests: 3 masters + 3 replicas, `redis-server` children on free
//! loopback ports (`--cluster-enabled yes`), created with
//! `redis-cli --cluster create … --cluster-replicas 1 --cluster-yes`. Every wait (the cluster
//! coming up, a replica promoted, replicas in sync) polls the servers for the event; none is a
//! fixed sleep.
//!
//! The nodes use a 1 s `cluster-node-timeout` (a failover within a few seconds) and
//! `cluster-require-full-coverage no` (a shard that is down does not stop the others), and persist
//! to an append-only file (fsync every second) in their own directories.
#![allow(dead_code, reason = "each test target uses a different subset")]

use std::collections::BTreeMap;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// One node: its port and, while it runs, its process.
struct Node {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

/// A 6-node Redis Cluster on 127.0.0.1; every node is killed on drop.
pub struct RedisCluster {
    nodes: Vec<Node>,
    _dir: tempfile::TempDir,
}

/// A node's role in `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: String,
    pub port: u16,
    pub master: bool,
    /// The master's id for a replica.
    pub master_id: Option<String>,
    pub failed: bool,
    /// Slot ranges (inclusive) a master serves.
    pub slots: Vec<(u16, u16)>,
}

fn installed(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Ports handed out to the clusters of this test process (each test starts its own cluster, and
/// tests run in parallel).
static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());

/// A port `p` with `p` and its cluster bus port `p + 10000` both free, never handed out before in
/// this process (nor its bus port).
fn free_port_pair() -> u16 {
    loop {
        let port = 20_000 + fastrand::u16(..30_000);
        let mut handed_out = HANDED_OUT.lock().unwrap();
        if handed_out
            .iter()
            .any(|&p| p.abs_diff(port) == 0 || p.abs_diff(port) == 10_000)
        {
            continue;
        }
        if let (Ok(a), Ok(b)) = (
            TcpListener::bind(("127.0.0.1", port)),
            TcpListener::bind(("127.0.0.1", port + 10_000)),
        ) {
            drop((a, b));
            handed_out.push(port);
            return port;
        }
    }
}

/// Polls `check` every 20 ms until it returns `Some`; panics with `what` after `limit` (a
/// deadline for a broken cluster, not a timing assumption: the event normally comes far sooner).
pub fn poll<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl RedisCluster {
    /// Starts and creates the cluster, or `None` (with a message) when `redis-server` or
    /// `redis-cli` is missing outside CI.
    pub fn start() -> Option<RedisCluster> {
        if !installed("redis-server") || !installed("redis-cli") {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server and redis-cli are required under CI (install redis-server)"
            );
            eprintln!("SKIPPED: redis-server or redis-cli is not installed");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut ports = Vec::new();
        for _ in 0..6 {
            ports.push(free_port_pair());
        }
        let nodes = ports
            .iter()
            .map(|&port| {
                let node_dir = dir.path().join(port.to_string());
                std::fs::create_dir(&node_dir).unwrap();
                Node {
                    port,
                    dir: node_dir,
                    child: None,
                }
            })
            .collect();
        let mut cluster = RedisCluster { nodes, _dir: dir };
        for i in 0..6 {
            cluster.launch_index(i, true);
        }
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for port in &ports {
            create.arg(format!("127.0.0.1:{port}"));
        }
        let out = create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        Some(cluster)
    }

    /// Starts node `i`'s server and waits until it answers. A server that exits instead lost its
    /// port to another process between our probe and its bind (another test binary probing ports
    /// on a busy machine): before the cluster exists (`may_move`) the node moves to a new port;
    /// after, it tries its own port again.
    fn launch_index(&mut self, i: usize, may_move: bool) {
        for _ in 0..5 {
            let node = &mut self.nodes[i];
            let mut child = Command::new("redis-server")
                .args(["--port", &node.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--cluster-enabled", "yes"])
                .args(["--cluster-config-file", "nodes.conf"])
                .args(["--cluster-node-timeout", "1000"])
                .args(["--cluster-require-full-coverage", "no"])
                .args(["--save", "", "--appendonly", "yes"])
                .args(["--appendfsync", "everysec"])
                .arg("--dir")
                .arg(&node.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server");
            let port = node.port;
            let up = poll(
                &format!("redis-server on port {port}"),
                Duration::from_secs(30),
                || {
                    if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                        return Some(true);
                    }
                    matches!(child.try_wait(), Ok(Some(_))).then_some(false)
                },
            );
            if up {
                node.child = Some(child);
                return;
            }
            eprintln!("redis-server could not bind port {port}; trying again");
            if may_move {
                // A fresh node on a fresh port: nothing of the failed start may carry over.
                let _ = std::fs::remove_file(node.dir.join("nodes.conf"));
                node.port = free_port_pair();
            } else {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        panic!("redis-server for node {i} exited five times");
    }

    /// The nodes' URLs (seed nodes for the cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.port).collect()
    }

    fn running(&self) -> impl Iterator<Item = u16> + '_ {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.port)
    }

    /// Runs `redis-cli -p port args…`; its output, or `None` if the node did not answer.
    pub fn cli(&self, port: u16, args: &[&str]) -> Option<String> {
        let out = Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success() && !text.starts_with("Could not connect")).then_some(text)
    }

    /// `CLUSTER NODES` as seen by the running node `port`.
    pub fn nodes_seen_by(&self, port: u16) -> Option<Vec<NodeInfo>> {
        let text = self.cli(port, &["CLUSTER", "NODES"])?;
        let mut nodes = Vec::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 8 {
                return None;
            }
            let addr = fields[1].split('@').next()?;
            let port = addr.rsplit(':').next()?.parse().ok()?;
            let flags = fields[2];
            let slots = fields[8..]
                .iter()
                .filter(|s| !s.starts_with('['))
                .filter_map(|s| match s.split_once('-') {
                    Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                    None => s.parse().ok().map(|a| (a, a)),
                })
                .collect();
            nodes.push(NodeInfo {
                id: fields[0].to_owned(),
                port,
                master: flags.contains("master"),
                master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
                failed: flags.contains("fail") && !flags.contains("fail?"),
                slots,
            });
        }
        Some(nodes)
    }

    fn info_field(&self, port: u16, section: &[&str], field: &str) -> Option<String> {
        let text = self.cli(port, section)?;
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{field}:")))
            .map(|v| v.trim().to_owned())
    }

    /// Waits until every running node says `cluster_state:ok` with all 16384 slots ok, and every
    /// master with slots has a replica whose link is up (a `WAIT 1` can be answered).
    pub fn wait_ok(&self) {
        poll("cluster_state:ok", Duration::from_secs(60), || {
            for port in self.running() {
                let state = self.info_field(port, &["CLUSTER", "INFO"], "cluster_state")?;
                let slots = self.info_field(port, &["CLUSTER", "INFO"], "cluster_slots_ok")?;
                if state != "ok" || slots != "16384" {
                    return None;
                }
            }
            let masters = self.masters();
            if masters.len() != 3 {
                return None;
            }
            for master in masters {
                let replicas =
                    self.info_field(master, &["INFO", "replication"], "connected_slaves")?;
                if replicas.parse::<u32>().ok()? < 1 {
                    return None;
                }
            }
            for port in self.running() {
                if self.info_field(port, &["INFO", "replication"], "role")? == "slave"
                    && self.info_field(port, &["INFO", "replication"], "master_link_status")?
                        != "up"
                {
                    return None;
                }
            }
            Some(())
        });
    }

    /// The ports of the masters that serve slots, as the running nodes agree.
    pub fn masters(&self) -> Vec<u16> {
        let Some(port) = self.running().next() else {
            return Vec::new();
        };
        let mut masters: Vec<u16> = self
            .nodes_seen_by(port)
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.master && !n.failed && !n.slots.is_empty())
            .map(|n| n.port)
            .filter(|p| self.running().any(|r| r == *p))
            .collect();
        masters.sort_unstable();
        masters
    }

    /// The replica ports of master `port`.
    pub fn replicas_of(&self, port: u16) -> Vec<u16> {
        let nodes = self.nodes_seen_by(port).unwrap_or_default();
        let Some(id) = nodes.iter().find(|n| n.port == port).map(|n| n.id.clone()) else {
            return Vec::new();
        };
        nodes
            .iter()
            .filter(|n| n.master_id.as_deref() == Some(id.as_str()))
            .map(|n| n.port)
            .collect()
    }

    /// Slot → master port, from a running node's view.
    pub fn slot_owners(&self) -> BTreeMap<u16, u16> {
        let port = self.running().next().unwrap();
        let mut owners = BTreeMap::new();
        for node in self.nodes_seen_by(port).unwrap() {
            if node.master {
                for (a, b) in node.slots {
                    for slot in a..=b {
                        owners.insert(slot, node.port);
                    }
                }
            }
        }
        owners
    }

    /// The slot of `key` (computed by a node: `CLUSTER KEYSLOT`).
    pub fn keyslot(&self, key: &str) -> u16 {
        let port = self.running().next().unwrap();
        self.cli(port, &["CLUSTER", "KEYSLOT", key])
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// The number of keys on node `port`.
    pub fn dbsize(&self, port: u16) -> u64 {
        self.cli(port, &["DBSIZE"]).unwrap().trim().parse().unwrap()
    }

    fn index(&self, port: u16) -> usize {
        self.nodes.iter().position(|n| n.port == port).unwrap()
    }

    /// SIGKILLs node `port` (no shutdown, no goodbye to the cluster).
    pub fn kill(&mut self, port: u16) {
        let i = self.index(port);
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `port` again (it rejoins with its `nodes.conf`).
    pub fn restart(&mut self, port: u16) {
        let i = self.index(port);
        assert!(self.nodes[i].child.is_none(), "node {port} is running");
        self.launch_index(i, false);
    }

    /// The process id of node `port`, to SIGSTOP / SIGCONT it.
    pub fn pid(&self, port: u16) -> u32 {
        self.nodes[self.index(port)].child.as_ref().unwrap().id()
    }

    /// Waits until a former replica of the dead master `dead` serves all of its `slots` as master,
    /// as every running node sees it, and the cluster state is ok again; returns its port.
    pub fn wait_promoted(&self, dead: u16, slots: &[(u16, u16)]) -> u16 {
        poll(
            &format!("a replica of {dead} promoted"),
            Duration::from_secs(60),
            || {
                let mut promoted = None;
                for port in self.running() {
                    let nodes = self.nodes_seen_by(port)?;
                    let owner = nodes
                        .iter()
                        .find(|n| n.master && !n.failed && n.slots == slots && n.port != dead)?;
                    if promoted.is_some_and(|p| p != owner.port) {
                        return None;
                    }
                    promoted = Some(owner.port);
                    if self.info_field(port, &["CLUSTER", "INFO"], "cluster_state")? != "ok" {
                        return None;
                    }
                }
                promoted
            },
        )
    }

    /// The slot ranges master `port` serves.
    pub fn slots_of(&self, port: u16) -> Vec<(u16, u16)> {
        self.nodes_seen_by(port)
            .unwrap()
            .into_iter()
            .find(|n| n.port == port)
            .map(|n| n.slots)
            .unwrap_or_default()
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// SIGSTOP or SIGCONT process `pid`.
pub fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid}");
}
