//! nats-server children: one per test (free port, own store), and the
//! least-privilege mode in which every sidecar connects as a user allowed
//! only what its config needs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::{eventually, free_port, signal, wait_listening_or, DEADLINE};

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
    /// The text of a test's own config file (`-c` of `start_with`), put
    /// in this file: a second `-c` would replace it.
    include: String,
}

impl Users {
    fn write(&self) {
        let text = format!(
            "{}\njetstream: {{ store_dir: \"{}\" }}\naccounts: {{\n  APP: {{\n    jetstream: enabled\n    users: [\n      {{ user: \"{}\", password: \"{}\" }}\n{}\n    ]\n  }}\n}}\n",
            self.include,
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
            // The test's `-c FILE` goes into the users' file instead.
            let include = match n.extra_args.iter().position(|a| a == "-c") {
                Some(i) if i + 1 < n.extra_args.len() => {
                    let file = n.extra_args.remove(i + 1);
                    n.extra_args.remove(i);
                    std::fs::read_to_string(&file).expect("read the test's nats-server config")
                }
                _ => String::new(),
            };
            let users = Users {
                file: n.store.path().join("nats-server.conf"),
                store: n.store.path().to_path_buf(),
                pid: 0,
                entries: Vec::new(),
                include,
            };
            users.write();
            n.auth = Some(Arc::new(Mutex::new(users)));
        }
        // A port found free can be taken before the server binds it (by
        // another test binary's server): then another port.
        for _ in 0..5 {
            match n.spawn() {
                Started::Ready => break,
                Started::PortTaken => n.port = free_port(),
            }
        }
        assert!(n.child.is_some(), "no free port for the test's nats-server");
        if let Some(users) = &n.auth {
            SERVERS.lock().expect("lock").push((n.port, users.clone()));
        }
        n
    }

    fn spawn(&mut self) -> Started {
        let port = self.port.to_string();
        let from = log_len(&self.log_file());
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
            .stderr(server_log(&self.log_file()))
            .spawn()
            .expect("spawn nats-server");
        if let Some(users) = &self.auth {
            users.lock().expect("lock").pid = child.id();
        }
        // Held by `self` while it starts, so a test that fails here still
        // stops it.
        let log = self.log_file();
        let child = self.child.insert(child);
        let started = wait_server(child, self.port, "the test's nats-server", &log, from);
        if started == Started::PortTaken {
            self.child = None;
        }
        started
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
        assert!(
            self.spawn() == Started::Ready,
            "port {} was taken by another process while the test's nats-server was down: it cannot come back on it",
            self.port
        );
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
        match options.connect(self.url()).await {
            Ok(client) => client,
            Err(e) => panic!(
                "connect to the test's nats-server at {}: {e}; its log ends:\n{}",
                self.url(),
                self.log_tail()
            ),
        }
    }

    fn log_file(&self) -> PathBuf {
        log_file(self.store.path())
    }

    /// The last lines of the server's log, for a failure's message.
    fn log_tail(&self) -> String {
        log_tail(&self.log_file())
    }
}

/// Where the log of a test's nats-server with its store in `store` goes
/// (unless `NATS_SERVER_LOG` is set).
pub fn log_file(store: &Path) -> PathBuf {
    store.join("nats-server.log")
}

/// How a nats-server just spawned came up.
#[derive(Debug, PartialEq, Eq)]
pub enum Started {
    Ready,
    /// It exited because another process holds its port.
    PortTaken,
}

/// Waits until the nats-server `what` (`child`, logging to `log` from
/// byte `from` on) is ready on `port`. Its own log tells: something that
/// answers on the port may be another process (one that took the port
/// while this server was down). A server that exits because its port is
/// taken gives [`Started::PortTaken`]; one that exits otherwise, or is not
/// ready by the deadline, fails the test with the end of its log.
pub fn wait_server(child: &mut Child, port: u16, what: &str, log: &Path, from: u64) -> Started {
    if std::env::var_os("NATS_SERVER_LOG").is_some() {
        // The log goes to the terminal: only the port can tell.
        wait_listening_or(port, || format!("{what} did not start"));
        return Started::Ready;
    }
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        if log_since(log, from).contains("Server is ready") {
            wait_listening_or(port, || {
                format!("{what} is ready but not listening on {port}")
            });
            return Started::Ready;
        }
        if let Ok(Some(status)) = child.try_wait() {
            if log_since(log, from).contains("address already in use") {
                return Started::PortTaken;
            }
            panic!(
                "{what} exited ({status}) before it was ready; its log ends:\n{}",
                log_tail(log)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} was not ready after {DEADLINE:?}; its log ends:\n{}",
            log_tail(log)
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Starts the cluster node `name` from `command` (its arguments set) into
/// `slot`, logging to a file in its `store`, and waits until it is ready.
/// The node is held by `slot` while it starts, so a test that fails here
/// still stops it. Its client and route ports (`ports`) are known to its
/// peers, so a taken one fails the test.
pub fn start_node(
    command: &mut Command,
    slot: &mut Option<Child>,
    name: &str,
    ports: (u16, u16),
    store: &Path,
) {
    let log = log_file(store);
    let from = log_len(&log);
    let child = command
        .stdout(Stdio::null())
        // Opened here, so a node run as another user needs no right to it.
        .stderr(server_log(&log))
        .spawn()
        .expect("spawn nats-server");
    let what = format!("nats-server {name}");
    let started = wait_server(slot.insert(child), ports.0, &what, &log, from);
    assert!(
        started == Started::Ready,
        "{what}: port {} or {} is taken by another process",
        ports.0,
        ports.1
    );
}

/// How long `log` is now: where the next server's lines start.
fn log_len(log: &Path) -> u64 {
    std::fs::metadata(log).map_or(0, |m| m.len())
}

/// What `log` gained after its first `from` bytes.
fn log_since(log: &Path, from: u64) -> String {
    let bytes = std::fs::read(log).unwrap_or_default();
    let from = usize::try_from(from).unwrap_or(usize::MAX);
    String::from_utf8_lossy(bytes.get(from..).unwrap_or_default()).into_owned()
}

/// Where a test's nats-server writes its log: `NATS_SERVER_LOG=1` shows it
/// (permission violations, for one); otherwise it goes to `file`, whose
/// end a failure to reach the server shows ([`log_tail`]).
pub fn server_log(file: &Path) -> Stdio {
    if std::env::var_os("NATS_SERVER_LOG").is_some() {
        return Stdio::inherit();
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_or_else(|_| Stdio::null(), Stdio::from)
}

/// The last 20 lines of a server's log file, for a failure's message.
fn log_tail(file: &Path) -> String {
    let log = std::fs::read_to_string(file).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
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

/// How many messages the ORDERS stream holds.
pub async fn stored_count(nats: &Nats) -> u64 {
    let js = nats.client().await;
    let mut stream = js.get_stream("ORDERS").await.expect("ORDERS exists");
    stream.info().await.expect("stream info").state.messages
}

pub async fn stored(nats: &Nats, seq: u64) -> async_nats::jetstream::message::StreamMessage {
    let js = nats.client().await;
    let stream = js.get_stream("ORDERS").await.expect("ORDERS exists");
    stream.get_raw_message(seq).await.expect("stored message")
}

/// Every message of the dead-letter stream, read with a plain client.
pub async fn dlq_stream(nats: &Nats) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let js = nats.client().await;
    let mut stream = js
        .get_stream("JETWAY_DLQ")
        .await
        .expect("JETWAY_DLQ exists");
    let state = stream.info().await.expect("info").state.clone();
    let mut out = Vec::new();
    if state.messages == 0 {
        return out;
    }
    for seq in state.first_sequence..=state.last_sequence {
        if let Ok(m) = stream.get_raw_message(seq).await {
            out.push(m);
        }
    }
    out
}

pub fn nats_header<'a>(
    m: &'a async_nats::jetstream::message::StreamMessage,
    name: &str,
) -> Option<&'a str> {
    m.headers.get(name).map(|v| v.as_str())
}
