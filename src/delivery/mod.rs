//! Delivery (SPEC section 4): one durable pull consumer per subscription,
//! each message POSTed to the app's endpoint, acknowledged only after a 2xx
//! or after its dead letter's PubAck.
//!
//! Each subscription has one worker task. At most `concurrency` requests
//! reach the app at once (slots), and the worker holds a bounded look-ahead
//! beyond them (so a freed slot never waits for a pull round trip), pulled
//! on one long-lived inbox subscription (`puller.rs`); a backlog never floods
//! the app. It stops fetching while the app is
//! down, paused or failing its health check. Every message gets its own
//! task, which keeps the message alive in JetStream with in-progress acks
//! while it waits for a slot and while the endpoint works on it.

mod attempt;
mod connections;
mod consumer;
mod endpoint;
mod puller;
mod recovery;
mod replay;
pub mod request;
pub mod retry;
mod subscription;
mod worker;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::{watch, Mutex};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Config};
use crate::dead_letter::DeadLetters;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::telemetry::Tracer;

pub use consumer::{
    ack_wait, compare, consumer_config, max_ack_pending, Comparison, Difference, ProvisionError,
};
pub use replay::{Replayed, Selection};
pub use subscription::{State, Status, Subscription};

/// Delay of the NAK that hands back a message this sidecar cannot deliver
/// now (app down, unhealthy, or subscription paused). Longer than a pull
/// request lives, so the message never bounces straight back into the pull
/// it came from (each bounce would cost an attempt); other replicas take
/// it after the delay.
const HAND_BACK_DELAY: Duration = Duration::from_secs(puller::FETCH_WAIT.as_secs() + 1);

/// The HTTP client for endpoints: keep-alive pool, no TLS (the app is local).
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Builds the pooled client shared by every subscription.
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Every subscription of the sidecar.
pub struct Delivery {
    subscriptions: Vec<Arc<Subscription>>,
    js: jetstream::Context,
    /// Where a subscription that cannot run says so to `/readyz`.
    health: Arc<Health>,
    http: HttpClient,
    app: AppConfig,
    configured_streams: Vec<crate::config::StreamConfig>,
    pub dead_letters: DeadLetters,
    app_healthy: watch::Sender<bool>,
    /// Stop fetching; deliveries in flight go on.
    stop: CancellationToken,
    /// The grace period is over: hand back what is still in flight.
    abort: CancellationToken,
    workers: Mutex<JoinSet<()>>,
    /// Replays under way, each in a task no HTTP connection owns.
    replays: TaskTracker,
    tracer: Tracer,
    /// `dead_letter.stream`, for the dead-letter span's name.
    dlq_stream: String,
    /// A pull said a consumer may be gone: look the consumers up now.
    look_up_consumers: tokio::sync::Notify,
}

impl Delivery {
    pub fn new(
        config: &Config,
        js: jetstream::Context,
        metrics: Metrics,
        health: Arc<Health>,
        tracer: Tracer,
    ) -> Arc<Delivery> {
        let subscriptions = config
            .subscriptions
            .iter()
            .map(|s| Arc::new(Subscription::new(s.clone(), &config.app_id, &metrics)))
            .collect();
        Arc::new(Delivery {
            subscriptions,
            dead_letters: DeadLetters::new(
                js.clone(),
                config.dead_letter.stream.clone(),
                config.app_id.clone(),
            ),
            js,
            health,
            http: http_client(),
            app: config.app.clone(),
            configured_streams: config.streams.clone(),
            // With a health URL, nothing is delivered before the app is
            // first seen healthy.
            app_healthy: watch::Sender::new(config.app.health_url.is_none()),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            workers: Mutex::new(JoinSet::new()),
            replays: TaskTracker::new(),
            tracer,
            dlq_stream: config.dead_letter.stream.clone(),
            look_up_consumers: tokio::sync::Notify::new(),
        })
    }

    pub fn subscriptions(&self) -> &[Arc<Subscription>] {
        &self.subscriptions
    }

    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| s.name() == name)
    }

    /// Starts the workers (after `provision` succeeded).
    pub async fn start(self: &Arc<Self>) {
        let mut workers = self.workers.lock().await;
        if let Some(url) = self.app.health_url.clone() {
            workers.spawn(self.clone().watch_app_health(url));
        }
        for sub in &self.subscriptions {
            workers.spawn(self.clone().run(sub.clone()));
        }
        workers.spawn(self.clone().refresh_lag());
    }

    /// Stops fetching, gives deliveries in flight `grace` to finish, then
    /// hands the rest back to JetStream at once (a NAK without delay, so
    /// another replica takes them).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        let mut workers = self.workers.lock().await;
        // Replays stop taking dead letters on `stop` too; theirs in flight
        // get the same grace.
        self.replays.close();
        let drained = tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
            self.replays.wait().await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "deliveries still in flight after the grace period; handing them back"
            );
            self.abort.cancel();
            while workers.join_next().await.is_some() {}
            self.replays.wait().await;
        }
    }

    pub fn pause(&self, sub: &Subscription) {
        sub.paused.send_replace(true);
        tracing::info!(subscription = sub.name(), "paused");
    }

    pub fn resume(&self, sub: &Subscription) {
        sub.paused.send_replace(false);
        tracing::info!(subscription = sub.name(), "resumed");
    }
}
