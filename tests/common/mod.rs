//! Test harness: a real nats-server per test (free port, own store), a
//! whole sidecar in-process or as the real binary, and an HTTP endpoint
//! that records what it receives. Every suite starts them from here.
//!
//! - `nats`: [`Nats`], least-privilege users; `cluster`: [`Cluster`].
//! - `sidecar`: [`Sidecar`] in-process; `process`: [`Process`], the binary.
//! - `endpoint`: [`Endpoint`], the service a sidecar delivers to.
//! - `config`: test configs; `metrics`: reading and asserting series.
//! - `api`: the `/v1` API as a client sees it; `raw`: raw-socket HTTP.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

pub mod api;
pub mod cluster;
pub mod config;
pub mod endpoint;
pub mod metrics;
pub mod nats;
mod ports;
pub mod process;
pub mod raw;
pub mod sidecar;

#[allow(unused_imports)]
pub use cluster::Cluster;
#[allow(unused_imports)]
pub use config::config_yaml;
#[allow(unused_imports)]
pub use endpoint::{Endpoint, Received};
#[allow(unused_imports)]
pub use metrics::{
    assert_counts, assert_metric, metric_value, metrics_text, wait_metric, wait_metric_at_least,
};
#[allow(unused_imports)]
pub use nats::{least_privilege, least_privilege_env, nats_server_bin, Nats};
#[allow(unused_imports)]
pub use ports::free_port;
#[allow(unused_imports)]
pub use process::Process;
#[allow(unused_imports)]
pub use sidecar::{start_one_subscription, start_sidecar, start_sidecar_with_limits, Sidecar};

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

pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{sig}"), &pid.to_string()])
        .status();
}

/// Blocks until something listens on `127.0.0.1:port`, or panics after
/// `DEADLINE` (`what` names it in the panic).
pub fn wait_listening(port: u16, what: &str) {
    wait_listening_or(port, || format!("{what} did not start"));
}

/// Waits until something listens on `port`; past `DEADLINE`, panics with
/// what `failure` says (a server's log, for one).
pub fn wait_listening_or(port: u16, failure: impl Fn() -> String) {
    let deadline = std::time::Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(std::time::Instant::now() < deadline, "{}", failure());
        std::thread::sleep(Duration::from_millis(20));
    }
}
