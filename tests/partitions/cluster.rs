//! A 3-node nats-server cluster on the namespace's loopback, each node as
//! a uid of its own (see `netns`), with an R3 `ORDERS` stream.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::Duration;

use async_nats::jetstream;

use crate::common::nats::start_node;
use crate::common::{free_port, nats_server_bin};
use crate::netns::{uid, Firewall};

pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

pub struct Cluster {
    pub nodes: Vec<Node>,
    pub firewall: Firewall,
}

impl Cluster {
    pub fn start() -> Cluster {
        let nodes: Vec<Node> = (0..3)
            .map(|i| {
                let store = tempfile::tempdir().expect("tempdir");
                std::os::unix::fs::chown(store.path(), Some(uid(i)), Some(uid(i)))
                    .expect("chown the node's store");
                Node {
                    name: format!("n{i}"),
                    port: free_port(),
                    cluster_port: free_port(),
                    store,
                    child: None,
                }
            })
            .collect();
        let firewall = Firewall::install(nodes.iter().map(|n| n.cluster_port).collect());
        let mut c = Cluster { nodes, firewall };
        for i in 0..3 {
            c.spawn(i);
        }
        c
    }

    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    pub fn index(&self, name: &str) -> usize {
        self.nodes
            .iter()
            .position(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node named {name}"))
    }

    pub fn spawn(&mut self, i: usize) {
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &mut self.nodes[i];
        let mut command = Command::new(nats_server_bin());
        command
            .args(["-js", "-a", "127.0.0.1", "-p", &node.port.to_string()])
            .args(["-n", &node.name])
            .arg("-sd")
            .arg(node.store.path())
            .args(["--cluster_name", "jepsen", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
            .args(["--routes", &routes])
            .uid(uid(i))
            .gid(uid(i));
        start_node(
            &mut command,
            &mut node.child,
            &node.name,
            (node.port, node.cluster_port),
            node.store.path(),
        );
    }

    /// SIGKILL, and waits for the process.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// The `nats-server --version` of the binary in use, e.g. `2.9.10`.
pub fn server_version() -> String {
    let out = Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .expect("nats-server --version");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or("?")
        .trim_start_matches('v')
        .to_string()
}

/// Whether the server is at least `major.minor.patch`.
pub fn version_at_least(version: &str, wanted: (u32, u32, u32)) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    have >= wanted
}

/// A JetStream context on one node, bounded by `timeout`.
pub async fn js(url: &str, timeout: Duration) -> Option<jetstream::Context> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .ignore_discovered_servers()
        .connect(url)
        .await
        .ok()?;
    Some(
        jetstream::ContextBuilder::new()
            .timeout(timeout)
            .build(client),
    )
}

/// The stream as jetway would create it (`jetway::nats::wanted_stream`),
/// made by the test first so it knows the leader before jetway connects.
pub fn orders_config() -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        storage: jetstream::stream::StorageType::File,
        num_replicas: 3,
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    }
}

/// The stream leader once every replica is current, or `None`.
pub async fn settled_leader(js: &jetstream::Context) -> Option<String> {
    let mut s = js.get_stream("ORDERS").await.ok()?;
    let info = s.info().await.ok()?;
    let cluster = info.cluster.as_ref()?;
    let current =
        cluster.replicas.len() == 2 && cluster.replicas.iter().all(|r| r.current && !r.offline);
    if current {
        cluster.leader.clone()
    } else {
        None
    }
}
