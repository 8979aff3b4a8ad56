//! A whole sidecar running inside the test process.

use std::net::SocketAddr;

use tokio::net::TcpListener;

use super::config::{config_yaml, one_subscription_yaml};
use super::{least_privilege_env, metric_value, metrics_text, wait_ready, Endpoint, Nats};

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
        let s = Sidecar::spawn_with_limits(yaml, limits).await;
        s.wait_ready().await;
        s
    }

    /// A sidecar that is not waited for: it may start before NATS is
    /// reachable, and `/readyz` tells when it is ready.
    pub async fn start_unready(yaml: &str) -> Sidecar {
        Sidecar::spawn_with_limits(yaml, jetway::server::Limits::BUILT_IN).await
    }

    /// Binds the listeners and runs `jetway::run_with_limits` in a task,
    /// without waiting for readiness.
    pub async fn spawn_with_limits(yaml: &str, limits: jetway::server::Limits) -> Sidecar {
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
        Sidecar {
            api: api_addr,
            metrics: metrics_addr,
            stop: Some(tx),
            task: Some(task),
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.api)
    }

    pub async fn wait_ready(&self) {
        wait_ready(self.metrics).await;
    }

    /// A URL on the metrics listener (`/metrics`, `/healthz`, `/readyz`).
    pub fn metrics_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.metrics)
    }

    pub async fn metrics_text(&self) -> String {
        metrics_text(&self.http, self.metrics).await
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

/// The shortest whole setup: a nats-server, an endpoint that answers 200,
/// and a sidecar whose subscription `s1` of `orders.>` delivers to it.
pub async fn start_one_subscription() -> (Nats, Endpoint, Sidecar) {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let sidecar = Sidecar::start(&one_subscription_yaml(&nats, &endpoint.url("/e"))).await;
    (nats, endpoint, sidecar)
}

/// A nats-server of its own and a sidecar of [`config_yaml`] with
/// `extra` for it.
pub async fn start_sidecar(extra: &str) -> (Nats, Sidecar) {
    start_sidecar_with_limits(extra, jetway::server::Limits::BUILT_IN).await
}

/// [`start_sidecar`] whose API listener has `limits`.
pub async fn start_sidecar_with_limits(
    extra: &str,
    limits: jetway::server::Limits,
) -> (Nats, Sidecar) {
    let nats = Nats::start();
    let sidecar = Sidecar::start_with_limits(&config_yaml(&nats, extra), limits).await;
    (nats, sidecar)
}
