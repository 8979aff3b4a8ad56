//! Test harness: a real nats-server per test (free port, own store), a
//! whole sidecar in-process or as the real binary, and an HTTP endpoint
//! that records what it receives.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;

/// How long any polled condition may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Polls `check` until it returns `Some`, or panics after `DEADLINE`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/readyz` on a metrics address until it answers 200.
pub async fn wait_ready(metrics: SocketAddr) {
    let url = format!("http://{metrics}/readyz");
    let http = reqwest::Client::new();
    eventually(&format!("jetway ready at {metrics}"), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            match http.get(&url).send().await {
                Ok(r) if r.status() == 200 => Some(()),
                _ => None,
            }
        }
    })
    .await;
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

pub fn nats_server_bin() -> PathBuf {
    jetway::dev::find_nats_server()
        .expect("nats-server not found: apt-get install -y nats-server or set NATS_SERVER_BIN")
}

/// A nats-server child process with JetStream, its own store and port.
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub store: tempfile::TempDir,
    extra_args: Vec<String>,
    /// With `NATS_LEAST_PRIVILEGE=1`: the server's users, each sidecar
    /// granted exactly what `jetway::permissions` lists for its config.
    auth: Option<Arc<Mutex<Users>>>,
}

/// Whether this run checks the least-privilege permissions: every
/// sidecar connects as a user allowed only what its config needs, the
/// test's own clients as an admin of the same account.
pub fn least_privilege() -> bool {
    std::env::var("NATS_LEAST_PRIVILEGE").is_ok_and(|v| v == "1")
}

const ADMIN: (&str, &str) = ("admin", "admin");

/// The users of a least-privilege server, written to its config file.
struct Users {
    file: PathBuf,
    /// In the file too: a reload without it would turn JetStream off.
    store: PathBuf,
    pid: u32,
    entries: Vec<String>,
}

impl Users {
    fn write(&self) {
        let text = format!(
            "jetstream: {{ store_dir: \"{}\" }}\naccounts: {{\n  APP: {{\n    jetstream: enabled\n    users: [\n      {{ user: \"{}\", password: \"{}\" }}\n{}\n    ]\n  }}\n}}\n",
            self.store.display(),
            ADMIN.0,
            ADMIN.1,
            self.entries.join("\n")
        );
        std::fs::write(&self.file, text).expect("write nats-server config");
    }
}

/// Least-privilege servers by port, so a sidecar's config finds its own.
static SERVERS: Mutex<Vec<(u16, Arc<Mutex<Users>>)>> = Mutex::new(Vec::new());
static USER_SEQ: AtomicUsize = AtomicUsize::new(0);

/// The environment overrides that make a sidecar of `yaml` connect as a
/// user with exactly its permissions (least-privilege runs only; empty
/// otherwise, or when the config names no server of this test or brings
/// its own credentials).
pub fn least_privilege_env(yaml: &str) -> Vec<(String, String)> {
    if !least_privilege() {
        return Vec::new();
    }
    let Ok(config) = jetway::Config::from_yaml(yaml, Vec::new()) else {
        return Vec::new();
    };
    if !matches!(config.nats.auth, jetway::config::NatsAuth::None) {
        return Vec::new();
    }
    let Some(port) = config
        .nats
        .urls
        .first()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.trim_end_matches('/').parse::<u16>().ok())
    else {
        return Vec::new();
    };
    let users = SERVERS
        .lock()
        .expect("lock")
        .iter()
        .find(|(p, _)| *p == port)
        .map(|(_, u)| u.clone());
    let Some(users) = users else {
        return Vec::new();
    };
    let name = format!("jw{}", USER_SEQ.fetch_add(1, Ordering::SeqCst));
    let block = jetway::permissions::for_config(&config).to_server_config();
    {
        let mut users = users.lock().expect("lock");
        users.entries.push(format!(
            "      {{ user: \"{name}\", password: \"{name}\", {} }}",
            block.replace('\n', " ")
        ));
        users.write();
        signal(users.pid, "HUP");
    }
    wait_for_user(port, &name);
    vec![
        ("JETWAY_NATS__USER".to_string(), name.clone()),
        ("JETWAY_NATS__PASSWORD".to_string(), name),
    ]
}

/// Waits until the server has reloaded its config and knows `user` (on a
/// thread of its own, so it works from sync and async callers alike).
fn wait_for_user(port: u16, user: &str) {
    // A stopped server reads the file when it starts again.
    if std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        return;
    }
    let user = user.to_string();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            eventually(&format!("nats-server knows user {user}"), || {
                let user = user.clone();
                async move {
                    let client =
                        async_nats::ConnectOptions::with_user_and_password(user.clone(), user)
                            .connect(format!("nats://127.0.0.1:{port}"))
                            .await
                            .ok()?;
                    client.flush().await.ok()
                }
            })
            .await
        })
    })
    .join()
    .expect("user check");
}

impl Nats {
    pub fn start() -> Nats {
        Nats::start_with(&[])
    }

    pub fn start_with(extra_args: &[&str]) -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            store: tempfile::tempdir().expect("tempdir"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            auth: None,
        };
        if least_privilege() {
            let users = Users {
                file: n.store.path().join("nats-server.conf"),
                store: n.store.path().to_path_buf(),
                pid: 0,
                entries: Vec::new(),
            };
            users.write();
            let users = Arc::new(Mutex::new(users));
            SERVERS.lock().expect("lock").push((n.port, users.clone()));
            n.auth = Some(users);
        }
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let port = self.port.to_string();
        let mut command = Command::new(nats_server_bin());
        command.args(["-a", "127.0.0.1", "-p", &port]);
        match &self.auth {
            // JetStream and its store come from the file, which reloads
            // keep.
            Some(users) => command.arg("-c").arg(&users.lock().expect("lock").file),
            None => command.arg("-js").arg("-sd").arg(self.store.path()),
        };
        let child = command
            .args(&self.extra_args)
            .stdout(Stdio::null())
            // NATS_SERVER_LOG=1 shows the server's log (permission
            // violations, for one).
            .stderr(if std::env::var_os("NATS_SERVER_LOG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("spawn nats-server");
        if let Some(users) = &self.auth {
            users.lock().expect("lock").pid = child.id();
        }
        self.child = Some(child);
        let deadline = std::time::Instant::now() + DEADLINE;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Stops the server (SIGKILL) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    /// A client for checking what was stored (the admin in a
    /// least-privilege run).
    pub async fn client(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.core_client().await)
    }

    /// A core NATS client of the test (the admin in a least-privilege run).
    pub async fn core_client(&self) -> async_nats::Client {
        let options = if self.auth.is_some() {
            async_nats::ConnectOptions::with_user_and_password(ADMIN.0.into(), ADMIN.1.into())
        } else {
            async_nats::ConnectOptions::new()
        };
        options.connect(self.url()).await.expect("connect")
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        SERVERS
            .lock()
            .expect("lock")
            .retain(|(port, _)| *port != self.port);
        if let Some(c) = &self.child {
            signal(c.id(), "CONT");
        }
        self.stop();
    }
}

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// A config with one stream (`ORDERS`, subjects `orders.>`) for `nats`,
/// plus `extra` YAML appended (subscriptions and the like).
pub fn config_yaml(nats: &Nats, extra: &str) -> String {
    format!(
        "app_id: test\n\
         shutdown_grace: 5s\n\
         nats: {{ url: \"{}\", request_timeout: 2s, connect_timeout: 2s }}\n\
         streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"], duplicate_window: 2m }}\n\
         {extra}",
        nats.url()
    )
}

/// A whole sidecar running inside the test process.
pub struct Sidecar {
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Result<(), jetway::RunError>>>,
    pub http: reqwest::Client,
}

impl Sidecar {
    pub async fn start(yaml: &str) -> Sidecar {
        Sidecar::start_with_limits(yaml, jetway::server::Limits::BUILT_IN).await
    }

    /// A sidecar whose API listener has `limits` instead of the built-in ones.
    pub async fn start_with_limits(yaml: &str, limits: jetway::server::Limits) -> Sidecar {
        let config =
            jetway::Config::from_yaml(yaml, least_privilege_env(yaml)).expect("valid test config");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (api_addr, metrics_addr) = (
            api.local_addr().expect("addr"),
            metrics.local_addr().expect("addr"),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(jetway::run_with_limits(
            config,
            jetway::Listeners { api, metrics },
            limits,
            async move {
                let _ = rx.await;
            },
        ));
        let s = Sidecar {
            api: api_addr,
            metrics: metrics_addr,
            stop: Some(tx),
            task: Some(task),
            http: reqwest::Client::new(),
        };
        s.wait_ready().await;
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.metrics).await;
    }

    pub async fn metrics_text(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.metrics))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The value of one series, e.g. `metric("jetway_publish_total", &[("outcome","ok")])`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text().await, name, labels).unwrap_or(0.0)
    }

    pub async fn publish(&self, subject: &str, body: &'static [u8]) -> reqwest::Response {
        self.http
            .post(self.url(&format!("/v1/publish/{subject}")))
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("publish request: {e:?}"))
    }

    /// Graceful shutdown, as on SIGTERM; waits until `run` returned.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("join").expect("run ended cleanly");
        }
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Parses the Prometheus text for a series whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let all = labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|p| p == format!("{k}=\"{v}\""))
        });
        if all {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}

/// One request the endpoint received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

type Behaviour = dyn Fn(&Received, usize) -> BoxedAnswer + Send + Sync;
type BoxedAnswer = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// An HTTP endpoint that records every request and answers as told.
#[derive(Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    task: Arc<tokio::task::JoinHandle<()>>,
}

impl Endpoint {
    /// Answers 200 to everything.
    pub async fn ok() -> Endpoint {
        Endpoint::start(|_, _| async { StatusCode::OK.into_response() }).await
    }

    /// Answers with `behave(request, n)` where n counts requests from 0.
    pub async fn start<F, Fut>(behave: F) -> Endpoint
    where
        F: Fn(&Received, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Endpoint::serve(listener, behave)
    }

    /// Serves on a given listener (to come up on a port chosen earlier).
    pub fn serve<F, Fut>(listener: TcpListener, behave: F) -> Endpoint
    where
        F: Fn(&Received, usize) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Response> + Send + 'static,
    {
        let addr = listener.local_addr().expect("addr");
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let in_flight = Arc::new(AtomicUsize::new(0));
        let max_in_flight = Arc::new(AtomicUsize::new(0));
        let behave: Arc<Behaviour> = Arc::new(move |r, n| Box::pin(behave(r, n)));
        let (rec, inf, max) = (received.clone(), in_flight.clone(), max_in_flight.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (rec, inf, max, behave) = (rec.clone(), inf.clone(), max.clone(), behave.clone());
            async move {
                let now = inf.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(now, Ordering::SeqCst);
                let r = Received { headers, body };
                let n = {
                    let mut all = rec.lock().expect("lock");
                    all.push(r.clone());
                    all.len() - 1
                };
                let answer = behave(&r, n).await;
                inf.fetch_sub(1, Ordering::SeqCst);
                answer
            }
        });
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Endpoint {
            addr,
            received,
            in_flight,
            max_in_flight,
            task: Arc::new(task),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").len()
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    /// Requests per Idempotency-Key.
    pub fn by_key(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for r in self.received() {
            *m.entry(r.header("idempotency-key").unwrap_or_default())
                .or_default() += 1;
        }
        m
    }

    /// Stops serving; the port then refuses connections.
    pub fn shutdown(&self) {
        self.task.abort();
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_for(&self, n: usize) {
        let me = self.clone();
        eventually(&format!("{n} requests at the endpoint"), || {
            let c = me.count();
            async move { (c >= n).then_some(()) }
        })
        .await;
    }
}

/// The jetway binary as a child process.
pub struct Process {
    pub child: Child,
    pub api: SocketAddr,
    pub metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Writes `yaml` (plus free api/metrics ports) and runs `jetway run`.
    pub fn spawn(yaml: &str) -> Process {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let path = dir.path().join("jetway.yaml");
        std::fs::write(
            &path,
            format!("{yaml}\napi: {{ listen: \"{api}\" }}\nmetrics: {{ listen: \"{metrics}\" }}\n"),
        )
        .expect("write config");
        let child = Command::new(env!("CARGO_BIN_EXE_jetway"))
            .args(["run", "--config"])
            .arg(&path)
            .envs(least_privilege_env(yaml))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn jetway");
        Process {
            child,
            api,
            metrics,
            _dir: dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.metrics).await;
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        signal(self.child.id(), "TERM");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "jetway did not exit after SIGTERM"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    /// Like `spawn`, with `remove` taken out of jetway's environment: a
    /// test's own `JETWAY_*` variable (e.g. `JETWAY_FAULTS`) would be read
    /// as a config override and refused as an unknown key.
    pub fn spawn_without_env(yaml: &str, remove: &[&str]) -> Process {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let path = dir.path().join("jetway.yaml");
        std::fs::write(
            &path,
            format!("{yaml}\napi: {{ listen: \"{api}\" }}\nmetrics: {{ listen: \"{metrics}\" }}\n"),
        )
        .expect("write config");
        let mut command = Command::new(env!("CARGO_BIN_EXE_jetway"));
        command
            .args(["run", "--config"])
            .arg(&path)
            .envs(least_privilege_env(yaml))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for name in remove {
            command.env_remove(name);
        }
        let child = command.spawn().expect("spawn jetway");
        Process {
            child,
            api,
            metrics,
            _dir: dir,
        }
    }
}
