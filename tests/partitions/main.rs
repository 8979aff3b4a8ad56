//! Network partitions, leader step-downs and a whole-cluster crash, under
//! publish and delivery load, judged by a Jepsen-style checker
//! (`checker.rs`). Each scenario runs in a network namespace of its own
//! (`netns.rs`) with a 3-node cluster on its loopback (`cluster.rs`), the
//! jetway binary and a recording endpoint, and prints one line:
//!
//! `JEPSEN|scenario|server-version|attempts|ok|failed|unknown|lost|unexpected|recovered|dup_stored|missing|dup_delivered|divergence`
//!
//! It passes only with lost = unexpected = missing = 0; on nats-server 2.9,
//! whose replicas were seen to diverge, missing keys that all sit where
//! they did are recorded instead (`Run::finish`). Quick profile by
//! default; `JETWAY_FAULTS=full` for the long one.
#![forbid(unsafe_code)]

#[path = "../common/mod.rs"]
mod common;

mod checker;
mod cluster;
mod netns;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use axum::http::StatusCode;
use axum::response::IntoResponse;

use checker::{Attempt, Outcome};
use cluster::Cluster;
use common::{Endpoint, Process};

struct Profile {
    /// How long one cut lasts.
    fault: Duration,
    /// How long the flapping scenario flaps.
    flapping: Duration,
    /// How many step-downs of each kind.
    stepdowns: usize,
    /// How long deliveries may take to catch up after the faults.
    settle: Duration,
}

fn profile() -> Profile {
    if std::env::var("JETWAY_FAULTS").as_deref() == Ok("full") {
        Profile {
            fault: Duration::from_secs(20),
            flapping: Duration::from_secs(30),
            stepdowns: 10,
            settle: Duration::from_secs(180),
        }
    } else {
        Profile {
            fault: Duration::from_secs(5),
            flapping: Duration::from_secs(12),
            stepdowns: 3,
            settle: Duration::from_secs(60),
        }
    }
}

const PUBLISHERS: usize = 4;
const PACE: Duration = Duration::from_millis(20);
const DURABLE: &str = "jp-s1";

/// Polls `check` every 100 ms until it gives `Some`, or panics after `limit`.
async fn within<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------
// Load: publishers each attempt fresh keys one after the other and record
// every outcome; no retries, so each attempt is one key.
// ---------------------------------------------------------------------

struct Load {
    stop: Arc<AtomicBool>,
    attempts: Arc<Mutex<Vec<Attempt>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(api: &str) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
        let http = reqwest::Client::builder()
            // request_timeout (2 s) and room to answer.
            .timeout(Duration::from_secs(6))
            .build()
            .expect("http client");
        let tasks = (0..PUBLISHERS)
            .map(|p| {
                let (stop, attempts, http) = (stop.clone(), attempts.clone(), http.clone());
                let url = format!("{api}/v1/publish/orders.created");
                tokio::spawn(async move {
                    let mut n = 0usize;
                    while !stop.load(Ordering::SeqCst) {
                        let key = format!("p{p}-{n}");
                        n += 1;
                        let answer = http
                            .post(&url)
                            .header("idempotency-key", &key)
                            .body(key.clone())
                            .send()
                            .await;
                        let outcome = match answer {
                            Ok(r) => {
                                let status = r.status().as_u16();
                                if status == 503
                                    && std::env::var_os("PARTITIONS_SHOW_503").is_some()
                                {
                                    eprintln!(
                                        "503 for {key}: {}",
                                        r.text().await.unwrap_or_default()
                                    );
                                }
                                Outcome::of_status(status)
                            }
                            Err(_) => Outcome::Unknown,
                        };
                        attempts
                            .lock()
                            .expect("lock")
                            .push(Attempt { key, outcome });
                        tokio::time::sleep(PACE).await;
                    }
                })
            })
            .collect();
        Load {
            stop,
            attempts,
            tasks,
        }
    }

    fn ok(&self) -> usize {
        self.attempts
            .lock()
            .expect("lock")
            .iter()
            .filter(|a| a.outcome == Outcome::Ok)
            .count()
    }

    /// Waits until `n` more publishes were acknowledged than now: the
    /// cluster took writes again.
    async fn wait_more_ok(&self, n: usize, limit: Duration, what: &str) {
        let target = self.ok() + n;
        within(limit, what, || async {
            (self.ok() >= target).then_some(())
        })
        .await;
    }

    async fn finish(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.expect("publisher task");
        }
        let attempts = self.attempts.lock().expect("lock").clone();
        attempts
    }
}

// ---------------------------------------------------------------------
// A run: cluster, stream, endpoint, jetway.
// ---------------------------------------------------------------------

struct Run {
    cluster: Cluster,
    endpoint: Endpoint,
    jetway: Option<Process>,
    version: String,
    /// The test's client, on every node.
    admin: async_nats::Client,
    js: jetstream::Context,
}

impl Run {
    /// Starts the cluster and the R3 stream; then jetway, connected to
    /// `jetway_urls(cluster, leader index)`.
    async fn start(jetway_urls: impl FnOnce(&Cluster, usize) -> String) -> Run {
        let cluster = Cluster::start();
        let all: Vec<async_nats::ServerAddr> = (0..3)
            .map(|i| cluster.url(i).parse().expect("a server address"))
            .collect();
        let admin = within(
            Duration::from_secs(30),
            "the test's client connects",
            || {
                let all = all.clone();
                async move {
                    async_nats::ConnectOptions::new()
                        .connection_timeout(Duration::from_secs(2))
                        .connect(all)
                        .await
                        .ok()
                }
            },
        )
        .await;
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(3))
            .build(admin.clone());
        within(Duration::from_secs(60), "ORDERS created (R3)", || async {
            js.get_or_create_stream(cluster::orders_config()).await.ok()
        })
        .await;
        let leader = within(Duration::from_secs(60), "ORDERS settled", || {
            cluster::settled_leader(&js)
        })
        .await;
        let leader = cluster.index(&leader);
        let endpoint = Endpoint::start(|_, _| async { StatusCode::OK.into_response() }).await;
        let urls = jetway_urls(&cluster, leader);
        let yaml = format!(
            "app_id: jp\n\
             shutdown_grace: 5s\n\
             nats: {{ url: \"{urls}\", request_timeout: 2s, connect_timeout: 2s }}\n\
             streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"], replicas: 3, duplicate_window: 2m }}\n\
             subscriptions:\n  - {{ name: s1, subject: \"orders.>\", endpoint: \"{}\", concurrency: 16 }}\n",
            endpoint.url("/hook")
        );
        let jetway = Process::spawn_without_env(&yaml, &["JETWAY_FAULTS"]);
        jetway.wait_ready().await;
        within(Duration::from_secs(30), "jetway's consumer", || async {
            let stream = js.get_stream("ORDERS").await.ok()?;
            stream
                .get_consumer::<jetstream::consumer::pull::Config>(DURABLE)
                .await
                .ok()
        })
        .await;
        Run {
            cluster,
            endpoint,
            jetway: Some(jetway),
            version: cluster::server_version(),
            admin,
            js,
        }
    }

    /// The index of the stream leader, once settled.
    async fn leader(&self) -> usize {
        let name = within(Duration::from_secs(60), "ORDERS settled", || {
            cluster::settled_leader(&self.js)
        })
        .await;
        self.cluster.index(&name)
    }

    /// Sends a JetStream API request (a step-down) from the test's client.
    async fn api_request(&self, subject: String) {
        let answer = self
            .admin
            .request(subject.clone(), "".into())
            .await
            .unwrap_or_else(|e| panic!("{subject}: {e}"));
        let text = String::from_utf8_lossy(&answer.payload);
        assert!(text.contains("\"success\":true"), "{subject}: {text}");
    }

    fn api(&self) -> String {
        self.jetway.as_ref().expect("jetway runs").url("")
    }

    fn delivered(&self) -> Vec<String> {
        self.endpoint
            .received()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect()
    }

    /// The stream as its leader has it, once every replica is current.
    async fn stored(&self) -> Vec<(u64, String)> {
        within(
            Duration::from_secs(90),
            "ORDERS settled after the faults",
            || cluster::settled_leader(&self.js),
        )
        .await;
        let mut stream = within(Duration::from_secs(30), "ORDERS info", || async {
            self.js.get_stream("ORDERS").await.ok()
        })
        .await;
        let state = stream.info().await.expect("ORDERS info").state.clone();
        let mut out = Vec::new();
        for seq in state.first_sequence..=state.last_sequence {
            let read = within(Duration::from_secs(30), "a stored message", || async {
                match stream.get_raw_message(seq).await {
                    Ok(m) => Some(Some(m)),
                    Err(e) if e.to_string().contains("not found") => Some(None),
                    Err(_) => None,
                }
            })
            .await;
            if let Some(m) = read {
                out.push((seq, String::from_utf8_lossy(&m.payload).into_owned()));
            }
        }
        out
    }

    /// Waits (up to the profile's settle time) until every stored key was
    /// delivered; what is still missing then the checker counts.
    async fn wait_delivered(&self, stored: &[(u64, String)]) {
        let deadline = tokio::time::Instant::now() + profile().settle;
        loop {
            let delivered: std::collections::HashSet<String> =
                self.delivered().into_iter().collect();
            let missing = stored
                .iter()
                .filter(|(_, k)| !delivered.contains(k))
                .count();
            if missing == 0 || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each node's own copy: a direct get sent to a node that holds a
    /// replica is answered by that replica (a server prefers its own queue
    /// subscribers). Cutting the node off first would be stricter, but an
    /// isolated follower stops answering direct gets within seconds.
    async fn node_copies(&self, last: u64) -> Vec<Option<Vec<(u64, String)>>> {
        let mut copies = Vec::new();
        for i in 0..self.cluster.nodes.len() {
            copies.push(self.node_copy(i, last).await);
        }
        copies
    }

    async fn node_copy(&self, i: usize, last: u64) -> Option<Vec<(u64, String)>> {
        let js = cluster::js(&self.cluster.url(i), Duration::from_secs(2)).await?;
        let stream = js.get_stream_no_info("ORDERS").await.ok()?;
        let mut out = Vec::new();
        for seq in 1..=last + 2 {
            let mut tries = 0;
            loop {
                match stream.direct_get(seq).await {
                    Ok(m) => {
                        out.push((seq, String::from_utf8_lossy(&m.payload).into_owned()));
                        break;
                    }
                    Err(e) if e.kind() == jetstream::stream::DirectGetErrorKind::NotFound => break,
                    Err(e) => {
                        tries += 1;
                        if tries > 10 {
                            eprintln!(
                                "node {} could not be read at {seq}: {e}",
                                self.cluster.nodes[i].name
                            );
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                }
            }
        }
        Some(out)
    }

    /// Stops the load, lets everything settle, checks, prints the line and
    /// asserts.
    async fn finish(self, scenario: &str, load: Load) {
        let report = self.check(scenario, load).await;
        // nats-server 2.9 under CPU contention was seen to let an R3
        // stream's replicas diverge after a leader was cut off: a node
        // holds another message at a sequence, and a consumer reading that
        // copy delivers it instead (RELIABILITY.md). That is written
        // down, not asserted, only there and only when every missing key
        // sits at such a sequence; anything else fails the run.
        if report.fails_only_by_divergence()
            && !cluster::version_at_least(&self.version, (2, 10, 0))
        {
            eprintln!(
                "RECORDED, not asserted (nats-server {}): every missing key is at a sequence where the replicas diverged: {report:?}",
                self.version
            );
            return;
        }
        assert!(report.passed(), "{scenario}: {report:?}");
    }

    /// Like `finish`, without asserting: for what a server is known to get
    /// wrong, written down instead.
    async fn record(self, scenario: &str, load: Load) {
        let report = self.check(scenario, load).await;
        if !report.passed() {
            eprintln!(
                "RECORDED, not asserted (nats-server {}): {report:?}",
                self.version
            );
        }
    }

    async fn check(&self, scenario: &str, load: Load) -> checker::Report {
        let attempts = load.finish().await;
        self.cluster.firewall.heal();
        let stored = self.stored().await;
        self.wait_delivered(&stored).await;
        let delivered = self.delivered();
        let last = stored.last().map(|(s, _)| *s).unwrap_or(0);
        let nodes = self.node_copies(last).await;
        let report = checker::check(&attempts, &stored, &nodes, &delivered);
        println!("{}", report.line(scenario, &self.version));
        if !report.passed() || report.divergence > 0 {
            let got: std::collections::HashSet<&String> = delivered.iter().collect();
            let missing: Vec<&(u64, String)> =
                stored.iter().filter(|(_, k)| !got.contains(k)).collect();
            let sizes: Vec<Option<usize>> =
                nodes.iter().map(|n| n.as_ref().map(Vec::len)).collect();
            let consumer =
                match self.js.get_stream("ORDERS").await {
                    Ok(s) => match s.consumer_info(DURABLE).await {
                        Ok(c) => format!(
                        "delivered {:?}, ack floor {:?}, pending {}, ack pending {}, leader {:?}",
                        c.delivered, c.ack_floor, c.num_pending, c.num_ack_pending,
                        c.cluster.as_ref().and_then(|c| c.leader.clone())
                    ),
                        Err(e) => format!("consumer info: {e}"),
                    },
                    Err(e) => format!("stream: {e}"),
                };
            eprintln!(
                "{scenario}: stored {} (last {last}), node copies {sizes:?}, missing {missing:?}, consumer {consumer}",
                stored.len()
            );
            // Where each node's copy differs from the leader's, and what
            // the endpoint got that the leader does not hold.
            let reference: std::collections::HashSet<&(u64, String)> = stored.iter().collect();
            for (node, copy) in self.cluster.nodes.iter().zip(&nodes) {
                if let Some(copy) = copy {
                    let only_here: Vec<&(u64, String)> = copy
                        .iter()
                        .filter(|p| !reference.contains(p))
                        .take(10)
                        .collect();
                    if !only_here.is_empty() {
                        eprintln!(
                            "{scenario}: node {} holds, unlike the leader: {only_here:?}",
                            node.name
                        );
                    }
                }
            }
            let stored_keys: std::collections::HashSet<&String> =
                stored.iter().map(|(_, k)| k).collect();
            let foreign: Vec<&String> = delivered
                .iter()
                .filter(|k| !stored_keys.contains(k))
                .take(10)
                .collect();
            if !foreign.is_empty() {
                eprintln!("{scenario}: delivered, not in the leader's stream: {foreign:?}");
            }
        }
        report
    }
}

// ---------------------------------------------------------------------
// Scenarios.
// ---------------------------------------------------------------------

/// (a) The stream leader cut off from both followers while jetway is
/// connected to it (the minority side): no 200 for what the majority did
/// not store; after the heal every acked event stored and delivered.
#[test]
fn a_leader_isolated() {
    netns::run("a_leader_isolated", async {
        let run = Run::start(|c, leader| c.url(leader)).await;
        let load = Load::start(&run.api());
        load.wait_more_ok(40, Duration::from_secs(30), "acks before the cut")
            .await;
        let i = run.leader().await;
        run.cluster.firewall.isolate(&[i]);
        tokio::time::sleep(profile().fault).await;
        run.cluster.firewall.heal();
        load.wait_more_ok(40, Duration::from_secs(60), "acks after the heal")
            .await;
        run.finish("leader_isolated", load).await;
    });
}

/// (b) jetway's own server (a follower) cut off from the cluster, then
/// healed.
#[test]
fn b_jetway_server_isolated() {
    netns::run("b_jetway_server_isolated", async {
        let run = Run::start(|c, leader| c.url((leader + 1) % 3)).await;
        let load = Load::start(&run.api());
        load.wait_more_ok(40, Duration::from_secs(30), "acks before the cut")
            .await;
        let leader = run.leader().await;
        let own = (leader + 1) % 3;
        run.cluster.firewall.isolate(&[own]);
        tokio::time::sleep(profile().fault).await;
        run.cluster.firewall.heal();
        load.wait_more_ok(40, Duration::from_secs(60), "acks after the heal")
            .await;
        run.finish("jetway_server_isolated", load).await;
    });
}

/// (c) Consumer and stream leader step-downs during deliveries: after
/// each, deliveries go on (no stall), and nothing is skipped.
#[test]
fn c_leader_stepdowns() {
    netns::run("c_leader_stepdowns", async {
        let run = Run::start(|c, _| (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",")).await;
        let load = Load::start(&run.api());
        load.wait_more_ok(40, Duration::from_secs(30), "acks before the step-downs")
            .await;
        for n in 0..profile().stepdowns * 2 {
            let subject = if n % 2 == 0 {
                format!("$JS.API.CONSUMER.LEADER.STEPDOWN.ORDERS.{DURABLE}")
            } else {
                run.leader().await;
                "$JS.API.STREAM.LEADER.STEPDOWN.ORDERS".to_string()
            };
            let before = run.endpoint.count();
            run.api_request(subject.clone()).await;
            within(
                Duration::from_secs(30),
                &format!("deliveries after {subject}"),
                || async { (run.endpoint.count() >= before + 20).then_some(()) },
            )
            .await;
        }
        run.finish("leader_stepdowns", load).await;
    });
}

/// (d) A flapping partition: each node in turn cut off, then healed,
/// every few seconds.
#[test]
fn d_flapping_partition() {
    netns::run("d_flapping_partition", async {
        let run = Run::start(|c, leader| c.url(leader)).await;
        let load = Load::start(&run.api());
        load.wait_more_ok(40, Duration::from_secs(30), "acks before the flapping")
            .await;
        let end = tokio::time::Instant::now() + profile().flapping;
        let mut n = 0;
        while tokio::time::Instant::now() < end {
            run.cluster.firewall.isolate(&[n % 3]);
            tokio::time::sleep(Duration::from_secs(2)).await;
            run.cluster.firewall.heal();
            tokio::time::sleep(Duration::from_secs(2)).await;
            n += 1;
        }
        load.wait_more_ok(40, Duration::from_secs(60), "acks after the flapping")
            .await;
        run.finish("flapping_partition", load).await;
    });
}

/// (e) All three nodes killed with SIGKILL at once and restarted on their
/// stores: the stream survives, nothing acknowledged is lost. Servers
/// before 2.10.23 can forget a whole stream (nats-server#6888): there the
/// line is recorded, and the run asserts only on later servers.
#[test]
fn e_all_nodes_killed() {
    netns::run("e_all_nodes_killed", async {
        let mut run =
            Run::start(|c, _| (0..3).map(|i| c.url(i)).collect::<Vec<_>>().join(",")).await;
        let load = Load::start(&run.api());
        load.wait_more_ok(40, Duration::from_secs(30), "acks before the kill")
            .await;
        for i in 0..3 {
            run.cluster.kill(i);
        }
        for i in 0..3 {
            run.cluster.spawn(i);
        }
        load.wait_more_ok(40, Duration::from_secs(90), "acks after the restart")
            .await;
        if cluster::version_at_least(&run.version, (2, 10, 23)) {
            run.finish("all_nodes_killed", load).await;
        } else {
            run.record("all_nodes_killed", load).await;
        }
    });
}
