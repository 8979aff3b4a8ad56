//! A 3-node nats-server cluster, for replicated streams and leader loss.

use std::process::{Child, Command};

use super::nats::start_node;
use super::{free_port, nats_server_bin};

/// One server of a [`Cluster`].
pub struct Node {
    pub name: String,
    pub port: u16,
    pub cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

/// A 3-node nats-server cluster with JetStream, each node on its own
/// port and store, that nodes can leave (`kill`) and rejoin (`spawn`).
pub struct Cluster {
    pub nodes: Vec<Node>,
}

impl Cluster {
    /// Starts the 3 nodes, routed to each other.
    pub fn start() -> Cluster {
        let nodes = (0..3)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                store: tempfile::tempdir().expect("tempdir"),
                child: None,
            })
            .collect();
        let mut c = Cluster { nodes };
        for i in 0..3 {
            c.spawn(i);
        }
        c
    }

    /// The client URLs of every node, comma-separated (as `nats.url`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts node `i` (again, on its port and store) and waits until it
    /// listens.
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
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &node.port.to_string(),
                "-n",
                &node.name,
            ])
            .arg("-sd")
            .arg(node.store.path())
            .args(["--cluster_name", "c", "--cluster"])
            .arg(format!("nats://127.0.0.1:{}", node.cluster_port))
            .args(["--routes", &routes]);
        start_node(
            &mut command,
            &mut node.child,
            &node.name,
            (node.port, node.cluster_port),
            node.store.path(),
        );
    }

    /// Kills the node called `name` (SIGKILL); returns its index.
    pub fn kill(&mut self, name: &str) -> usize {
        let i = self
            .nodes
            .iter()
            .position(|n| n.name == name)
            .expect("known node");
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        i
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
