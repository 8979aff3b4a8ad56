//! The network namespace each scenario runs in, and the nftables rules
//! that cut links between cluster nodes inside it.
//!
//! A test cannot move itself into a namespace once threads run, so each
//! scenario re-executes this test binary under `unshare --net` with
//! `PARTITIONS_NETNS` naming the scenario; the inner run brings loopback
//! up and runs it. Everything (nats-servers, jetway, the endpoint, the
//! test's clients) then talks over that namespace's own loopback.
//!
//! All nodes share 127.0.0.1, so a link is told by who dialled it: each
//! nats-server runs as a uid of its own, the first packet of every
//! connection marks the connection (conntrack mark = the node's index + 1)
//! by the uid of the socket that sent it, and a cut between nodes i and j
//! drops every packet of a connection that i dialled to j's cluster port
//! or j dialled to i's, both directions, in the output hook (every packet
//! on loopback passes it). Client connections are never touched.

use std::io::Write;
use std::process::{Command, Stdio};

/// Set in the inner run to the name of the scenario it runs.
pub const INNER: &str = "PARTITIONS_NETNS";

const TABLE: &str = "jepsen";

/// Runs `scenario` inside a fresh network namespace: re-executes this test
/// binary there (outer run) or runs it (inner run). Without a namespace
/// (not root, no `unshare`) it says so loudly and returns: skipped, not
/// passed. As root without `nft` it fails: the suite cannot check
/// anything then, and that is a setup error.
pub fn run<F>(name: &str, scenario: F)
where
    F: std::future::Future<Output = ()>,
{
    if std::env::var(INNER).as_deref() == Ok(name) {
        sh("ip", &["link", "set", "lo", "up"]);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        runtime.block_on(scenario);
        return;
    }
    let can = Command::new("unshare")
        .args(["--net", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !can {
        eprintln!(
            "\n!!! SKIPPED {name}: cannot make a network namespace here (`unshare --net` needs root); \
             the partition scenarios did NOT run !!!\n"
        );
        return;
    }
    let nft = Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        nft,
        "{name}: `nft` not found: apt-get install -y nftables (the partition scenarios need it)"
    );
    let exe = std::env::current_exe().expect("the test binary's path");
    let status = Command::new("unshare")
        .arg("--net")
        .arg(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(INNER, name)
        .status()
        .expect("run the scenario under unshare --net");
    assert!(status.success(), "{name} failed inside its namespace");
}

fn sh(cmd: &str, args: &[&str]) {
    let status = Command::new(cmd)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(status.success(), "{cmd} {args:?} failed");
}

fn nft(script: &str) {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawn nft");
    child
        .stdin
        .take()
        .expect("nft stdin")
        .write_all(script.as_bytes())
        .expect("write the nft rules");
    let status = child.wait().expect("nft");
    assert!(status.success(), "nft refused:\n{script}");
}

/// The uid node `i` runs as.
pub fn uid(i: usize) -> u32 {
    64001 + i as u32
}

/// The links between the nodes, as nftables rules.
pub struct Firewall {
    /// The cluster (route) port of each node.
    cluster_ports: Vec<u16>,
}

impl Firewall {
    /// Installs the table: connection marks by uid and an empty `cuts`
    /// chain.
    pub fn install(cluster_ports: Vec<u16>) -> Firewall {
        let marks: String = (0..cluster_ports.len())
            .map(|i| {
                format!(
                    "    ct state new meta skuid {} ct mark set {}\n",
                    uid(i),
                    i + 1
                )
            })
            .collect();
        nft(&format!(
            "table inet {TABLE} {{\n  chain cuts {{\n  }}\n  chain out {{\n    type filter hook output priority 0; policy accept;\n{marks}    jump cuts\n  }}\n}}\n"
        ));
        Firewall { cluster_ports }
    }

    /// Cuts every link between a node of `side` and a node not in it (and
    /// heals every other link).
    pub fn isolate(&self, side: &[usize]) {
        let mut rules = String::new();
        for i in side {
            for j in (0..self.cluster_ports.len()).filter(|j| !side.contains(j)) {
                for (dialer, listener) in [(*i, j), (j, *i)] {
                    rules.push_str(&format!(
                        "add rule inet {TABLE} cuts ct mark {} meta l4proto tcp ct original proto-dst {} drop\n",
                        dialer + 1,
                        self.cluster_ports[listener]
                    ));
                }
            }
        }
        nft(&format!("flush chain inet {TABLE} cuts\n{rules}"));
    }

    /// Every link up again.
    pub fn heal(&self) {
        nft(&format!("flush chain inet {TABLE} cuts\n"));
    }
}
