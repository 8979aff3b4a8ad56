//! `jetway dev`: a throwaway nats-server in a temporary folder on a free
//! port, the sidecar against it, and (with the built-in config) an echo
//! endpoint that prints every delivery. Everything stops on Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use tokio::net::TcpListener;
use tokio::process::Command;

use crate::config::{Config, ConfigError};
use crate::{run, shutdown, Listeners, RunError};

/// Why `jetway dev` could not start.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(
        "nats-server was not found in PATH (or NATS_SERVER_BIN).\n\
         Install it:\n  Debian/Ubuntu: sudo apt-get install -y nats-server\n  \
         macOS:         brew install nats-server\n  \
         Go:            go install github.com/nats-io/nats-server/v2@latest\n\
         or set NATS_SERVER_BIN=/path/to/nats-server"
    )]
    NoNatsServer,
    #[error("cannot start nats-server {bin}: {source}")]
    Spawn {
        bin: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("nats-server did not accept connections on port {0} within 10s")]
    NotReady(u16),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {addr}: {source} (is another jetway running?)")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("io error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Run(#[from] RunError),
}

/// Finds nats-server: `NATS_SERVER_BIN`, else the first one in `PATH`.
pub fn find_nats_server() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
        let bin = PathBuf::from(bin);
        return bin.is_file().then_some(bin);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

/// A nats-server child process with JetStream in its own folder; killed
/// when dropped.
pub struct NatsServer {
    child: tokio::process::Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts one on a free loopback port and waits until it accepts.
    pub async fn start(bin: &Path) -> Result<NatsServer, DevError> {
        let store = tempfile::Builder::new().prefix("jetway-dev-").tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| DevError::Spawn {
                bin: bin.to_path_buf(),
                source,
            })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if tokio::time::Instant::now() > deadline {
                return Err(DevError::NotReady(port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(NatsServer {
            child,
            port,
            _store: store,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

async fn echo(headers: HeaderMap, body: axum::body::Bytes) -> axum::http::StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let preview = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
    println!(
        "delivered  subscription={} subject={} seq={} attempt={}  {}",
        h("jetway-subscription"),
        h("jetway-subject"),
        h("jetway-sequence"),
        h("jetway-attempt"),
        preview
    );
    axum::http::StatusCode::NO_CONTENT
}

async fn bind(addr: std::net::SocketAddr) -> Result<TcpListener, DevError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| DevError::Bind {
            addr: addr.to_string(),
            source,
        })
}

/// Runs the whole local setup until Ctrl-C.
pub async fn dev(config_file: Option<&Path>) -> Result<(), DevError> {
    let bin = find_nats_server().ok_or(DevError::NoNatsServer)?;
    let mut config = match config_file {
        Some(path) => Config::load(path)?,
        None => Config::from_yaml(crate::config::EXAMPLE, std::env::vars())?,
    };
    crate::telemetry::init(&config.log);
    let nats = NatsServer::start(&bin).await?;
    config.nats.urls = vec![nats.url()];
    config.nats.auth = crate::config::NatsAuth::None;
    config.nats.tls = Default::default();

    let mut echo_server = None;
    if config_file.is_none() {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        for sub in &mut config.subscriptions {
            sub.endpoint = format!("http://{addr}/events/{}", sub.name)
                .parse()
                .map_err(|e| std::io::Error::other(format!("echo endpoint: {e}")))?;
        }
        let app = axum::Router::new().route("/events/{*rest}", post(echo));
        echo_server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        }));
    }
    let listeners = Listeners {
        api: bind(config.api.listen).await?,
        metrics: bind(config.metrics.listen).await?,
    };
    let api = config.api.listen;
    let subject = config
        .publish
        .allow
        .as_ref()
        .and_then(|a| a.first())
        .map(|p| p.replace(">", "created").replace('*', "x"))
        .unwrap_or_else(|| "orders.created".into());
    println!(
        "jetway dev: nats-server {} (JetStream in a temp folder) from {}\n\
         \n  publish:        curl -s -XPOST http://{api}/v1/publish/{subject} -H 'content-type: application/json' -d '{{\"id\":1}}'\
         \n  with a key:     curl -s -XPOST http://{api}/v1/publish/{subject} -H 'idempotency-key: order-1' -d 'hello'\
         \n  batch:          curl -s -XPOST http://{api}/v1/publish -H 'content-type: application/x-ndjson' --data-binary $'{{\"subject\":\"{subject}\",\"data\":{{\"n\":1}}}}\\n'\
         \n  subscriptions:  curl -s http://{api}/v1/subscriptions\
         \n  dead letters:   curl -s http://{api}/v1/dead-letters/{}\
         \n  metrics:        curl -s http://{}/metrics\
         \n\nDeliveries are printed below. Ctrl-C stops everything.\n",
        nats.url(),
        bin.display(),
        config
            .subscriptions
            .first()
            .map(|s| s.name.as_str())
            .unwrap_or("SUBSCRIPTION"),
        config.metrics.listen,
    );
    tokio::spawn(crate::memory::give_back_when_quiet());
    let result = run(config, listeners, shutdown::signal()).await;
    if let Some(echo) = echo_server {
        echo.abort();
    }
    drop(nats);
    Ok(result?)
}
