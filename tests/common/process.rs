//! The jetway binary as a child process.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{
    free_port, least_privilege_env, metric_value, metrics_text, signal, wait_ready, DEADLINE,
};

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
        Process::spawn_without_env(yaml, &[])
    }

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

    /// [`Process::spawn`], once it is ready.
    pub async fn start(yaml: &str) -> Process {
        let p = Process::spawn(yaml);
        p.wait_ready().await;
        p
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    /// A URL on the metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.metrics).await;
    }

    /// Its `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        metrics_text(&reqwest::Client::new(), self.metrics).await
    }

    /// The value of one series (0 when absent), as `Sidecar::metric`.
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.metrics_text().await, name, labels).unwrap_or(0.0)
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
