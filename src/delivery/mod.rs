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

mod puller;
pub mod request;
pub mod retry;

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{
    self,
    consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer},
    message::{AckKind, StreamMessage},
};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{watch, Mutex, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Config, Deliver, SubscriptionConfig};
use crate::dead_letter::{self, DeadLetters, DlqError, Failure};
use crate::metrics::{Metrics, SubscriptionMetrics};
use crate::subject;
use crate::telemetry::tracer::{self, ProcessSpan};
use crate::telemetry::Tracer;
use request::{Envelope, Target};
use retry::{Action, Outcome, Reason};

/// Messages held beyond the in-flight ones, at least: at low concurrency a
/// look-ahead of one would cost a pull request per message.
const MIN_LOOK_AHEAD: usize = 16;
/// First and longest wait before pulling again after a failed pull.
const FIRST_FETCH_DELAY: Duration = Duration::from_millis(100);
const MAX_FETCH_DELAY: Duration = Duration::from_secs(2);
/// Delay of the NAK that hands back a message this sidecar cannot deliver
/// now (app down, unhealthy, or subscription paused). Longer than a pull
/// request lives, so the message never bounces straight back into the pull
/// it came from (each bounce would cost an attempt); other replicas take
/// it after the delay.
const HAND_BACK_DELAY: Duration = Duration::from_secs(puller::FETCH_WAIT.as_secs() + 1);
/// Longest wait between probes of a down endpoint.
const MAX_PROBE_DELAY: Duration = Duration::from_secs(2);
/// How often consumer lag is read for the metrics.
const LAG_REFRESH: Duration = Duration::from_secs(5);
/// Most bytes of a response body read (the first KiB goes into dead letters).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

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

/// JetStream's ack wait for a subscription: short, so a crashed sidecar's
/// messages come back soon; in-progress acks cover slower endpoints.
pub fn ack_wait(sub: &SubscriptionConfig) -> Duration {
    (sub.timeout / 2).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// Unacknowledged messages the consumer allows across all replicas. Each
/// sidecar bounds its own deliveries by fetching only `concurrency`; this
/// leaves room for replicas and for messages waiting out a retry backoff.
/// Ordered subscriptions allow one, which is what keeps them in order.
pub fn max_ack_pending(sub: &SubscriptionConfig) -> i64 {
    if sub.ordered {
        1
    } else {
        (sub.concurrency as i64 * 64).max(1000)
    }
}

fn deliver_policy(d: &Deliver) -> DeliverPolicy {
    match d {
        Deliver::All => DeliverPolicy::All,
        Deliver::New => DeliverPolicy::New,
        Deliver::Last => DeliverPolicy::Last,
        Deliver::LastPerSubject => DeliverPolicy::LastPerSubject,
        Deliver::StartSequence(n) => DeliverPolicy::ByStartSequence { start_sequence: *n },
        Deliver::StartTime(t) => DeliverPolicy::ByStartTime { start_time: *t },
    }
}

/// The consumer jetway wants for a subscription.
pub fn consumer_config(sub: &SubscriptionConfig, name: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("jetway subscription {}", sub.name)),
        filter_subject: sub.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ack_wait(sub),
        // jetway counts attempts itself and dead-letters; JetStream must
        // never drop a message silently after max_deliver.
        max_deliver: -1,
        max_ack_pending: max_ack_pending(sub),
        deliver_policy: deliver_policy(&sub.deliver),
        ..Default::default()
    }
}

/// What `/v1/subscriptions` reports as `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    EndpointDown,
}

/// A subscription at run time.
pub struct Subscription {
    pub config: SubscriptionConfig,
    pub consumer_name: String,
    stream: OnceLock<String>,
    consumer: OnceLock<PullConsumer>,
    paused: watch::Sender<bool>,
    endpoint_up: AtomicBool,
    in_flight: AtomicI64,
    metrics: SubscriptionMetrics,
    /// `Jetway-Subscription`, built once.
    header: hyper::header::HeaderValue,
}

impl Subscription {
    fn new(config: SubscriptionConfig, app_id: &str, metrics: &Metrics) -> Self {
        let metrics = metrics.subscription(&config.name);
        metrics.endpoint_up.set(1.0);
        // Names are `[a-z0-9-]+` (checked with the config): a valid value.
        let header = hyper::header::HeaderValue::from_str(&config.name)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("invalid-name"));
        Subscription {
            header,
            metrics,
            consumer_name: format!("{app_id}-{}", config.name),
            config,
            stream: OnceLock::new(),
            consumer: OnceLock::new(),
            paused: watch::Sender::new(false),
            endpoint_up: AtomicBool::new(true),
            in_flight: AtomicI64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stream(&self) -> Option<&str> {
        self.stream.get().map(String::as_str)
    }
}

/// Counts a delivery in flight for as long as it lives.
struct InFlight<'a>(&'a Subscription);

impl<'a> InFlight<'a> {
    fn new(sub: &'a Subscription) -> Self {
        sub.metrics.in_flight.inc();
        sub.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(sub)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Failure to put a subscription's consumer in place.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("subscription {subscription}: no stream captures subject {subject}; add it to `streams` or set `stream`")]
    NoStream {
        subscription: String,
        subject: String,
    },
    #[error("subscription {subscription}: {message}")]
    Consumer {
        subscription: String,
        message: String,
    },
}

/// The live view of a subscription for `/v1/subscriptions`.
#[derive(Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub subject: String,
    pub stream: Option<String>,
    pub consumer: String,
    pub endpoint: String,
    pub state: State,
    pub pending: Option<u64>,
    pub ack_pending: Option<u64>,
    pub in_flight: i64,
    pub dead_letters: Option<u64>,
}

/// Result of a replay.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Replayed {
    pub replayed: usize,
    pub failed: usize,
}

/// What one attempt produced, for the decision and the dead letter.
struct Attempt {
    outcome: Outcome,
    status: Option<u16>,
    error: String,
}

/// Every subscription of the sidecar.
pub struct Delivery {
    subscriptions: Vec<Arc<Subscription>>,
    js: jetstream::Context,
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
    tracer: Tracer,
    /// `dead_letter.stream`, for the dead-letter span's name.
    dlq_stream: String,
}

impl Delivery {
    pub fn new(
        config: &Config,
        js: jetstream::Context,
        metrics: Metrics,
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
            http: http_client(),
            app: config.app.clone(),
            configured_streams: config.streams.clone(),
            // With a health URL, nothing is delivered before the app is
            // first seen healthy.
            app_healthy: watch::Sender::new(config.app.health_url.is_none()),
            stop: CancellationToken::new(),
            abort: CancellationToken::new(),
            workers: Mutex::new(JoinSet::new()),
            tracer,
            dlq_stream: config.dead_letter.stream.clone(),
        })
    }

    pub fn subscriptions(&self) -> &[Arc<Subscription>] {
        &self.subscriptions
    }

    pub fn subscription(&self, name: &str) -> Option<&Arc<Subscription>> {
        self.subscriptions.iter().find(|s| s.name() == name)
    }

    /// The stream a subscription reads: configured, else the configured
    /// stream whose subjects overlap its filter, else asked of the server.
    async fn resolve_stream(&self, sub: &Subscription) -> Result<String, ProvisionError> {
        if let Some(s) = &sub.config.stream {
            return Ok(s.clone());
        }
        if let Some(s) = self.configured_streams.iter().find(|s| {
            s.subjects
                .iter()
                .any(|p| subject::overlaps(p, &sub.config.subject))
        }) {
            return Ok(s.name.clone());
        }
        self.js
            .stream_by_subject(sub.config.subject.clone())
            .await
            .map_err(|_| ProvisionError::NoStream {
                subscription: sub.name().to_string(),
                subject: sub.config.subject.clone(),
            })
    }

    /// Creates every missing consumer; reuses existing ones (replicas of
    /// the app share them). Safe to call again after a failure.
    pub async fn provision(&self) -> Result<(), ProvisionError> {
        for sub in &self.subscriptions {
            if sub.consumer.get().is_some() {
                continue;
            }
            let stream_name = self.resolve_stream(sub).await?;
            let err = |message: String| ProvisionError::Consumer {
                subscription: sub.name().to_string(),
                message,
            };
            let stream = self
                .js
                .get_stream_no_info(&stream_name)
                .await
                .map_err(|e| err(format!("stream {stream_name}: {e}")))?;
            let wanted = consumer_config(&sub.config, &sub.consumer_name);
            let consumer = match stream
                .get_consumer::<pull::Config>(&sub.consumer_name)
                .await
            {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|e| err(format!("consumer info: {e}")))?
                        .clone();
                    if info.config.filter_subject != wanted.filter_subject {
                        tracing::warn!(
                            subscription = sub.name(),
                            consumer = %sub.consumer_name,
                            server = %info.config.filter_subject,
                            config = %wanted.filter_subject,
                            "consumer exists with another filter subject; jetway uses it as it is"
                        );
                    }
                    if info.config.ack_wait != wanted.ack_wait
                        || info.config.max_ack_pending != wanted.max_ack_pending
                        || info.config.max_deliver != wanted.max_deliver
                    {
                        // Only updatable fields change; where it starts stays.
                        let update = pull::Config {
                            deliver_policy: info.config.deliver_policy,
                            filter_subject: info.config.filter_subject.clone(),
                            ..wanted.clone()
                        };
                        match stream.create_consumer(update).await {
                            Ok(updated) => updated,
                            Err(e) => {
                                tracing::warn!(subscription = sub.name(), error = %e, "cannot update the consumer's ack settings; using it as it is");
                                existing
                            }
                        }
                    } else {
                        existing
                    }
                }
                Err(_) => stream.create_consumer(wanted).await.map_err(|e| {
                    err(format!("cannot create consumer {}: {e}", sub.consumer_name))
                })?,
            };
            let _ = sub.stream.set(stream_name);
            let _ = sub.consumer.set(consumer);
            tracing::info!(subscription = sub.name(), consumer = %sub.consumer_name, "consumer ready");
        }
        Ok(())
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
        let drained = tokio::time::timeout(grace, async {
            while workers.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                ?grace,
                "deliveries still in flight after the grace period; handing them back"
            );
            self.abort.cancel();
            while workers.join_next().await.is_some() {}
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

    pub fn state(&self, sub: &Subscription) -> State {
        if *sub.paused.borrow() {
            State::Paused
        } else if !*self.app_healthy.borrow() || !sub.endpoint_up.load(Ordering::SeqCst) {
            State::EndpointDown
        } else {
            State::Running
        }
    }

    /// Whether a message may be tried now: not paused, app healthy,
    /// endpoint reachable.
    fn deliverable(&self, sub: &Subscription) -> bool {
        !*sub.paused.borrow()
            && *self.app_healthy.borrow()
            && sub.endpoint_up.load(Ordering::SeqCst)
    }

    /// Live numbers of one subscription.
    pub async fn status(&self, sub: &Subscription) -> Status {
        let info = match sub.consumer.get() {
            Some(c) => c.get_info().await.ok(),
            None => None,
        };
        Status {
            name: sub.name().to_string(),
            subject: sub.config.subject.clone(),
            stream: sub.stream().map(str::to_string),
            consumer: sub.consumer_name.clone(),
            endpoint: sub.config.endpoint.to_string(),
            state: self.state(sub),
            pending: info.as_ref().map(|i| i.num_pending),
            ack_pending: info.as_ref().map(|i| i.num_ack_pending as u64),
            in_flight: sub.in_flight.load(Ordering::SeqCst),
            dead_letters: self.dead_letters.count(sub.name()).await.ok(),
        }
    }

    fn set_endpoint_up(&self, sub: &Subscription, up: bool) {
        let was = sub.endpoint_up.swap(up, Ordering::SeqCst);
        sub.metrics.endpoint_up.set(if up { 1.0 } else { 0.0 });
        if was && !up {
            tracing::warn!(subscription = sub.name(), endpoint = %sub.config.endpoint, "endpoint not reachable; pausing delivery until it answers");
        } else if !was && up {
            tracing::info!(
                subscription = sub.name(),
                "endpoint reachable again; resuming delivery"
            );
        }
    }

    /// Waits until the subscription may fetch: not paused, app healthy,
    /// endpoint reachable. `false` when stopping.
    async fn wait_until_deliverable(&self, sub: &Subscription) -> bool {
        let mut paused = sub.paused.subscribe();
        let mut healthy = self.app_healthy.subscribe();
        let mut probe_delay = Duration::from_millis(100);
        loop {
            if self.stop.is_cancelled() {
                return false;
            }
            if *paused.borrow_and_update() {
                tokio::select! {
                    _ = paused.wait_for(|p| !*p) => {}
                    _ = self.stop.cancelled() => return false,
                }
                continue;
            }
            if !*healthy.borrow_and_update() {
                sub.metrics.endpoint_up.set(0.0);
                tokio::select! {
                    _ = healthy.wait_for(|h| *h) => {}
                    _ = self.stop.cancelled() => return false,
                }
                continue;
            }
            if !sub.endpoint_up.load(Ordering::SeqCst) {
                if probe(&sub.config.endpoint).await {
                    self.set_endpoint_up(sub, true);
                } else {
                    tokio::select! {
                        _ = tokio::time::sleep(probe_delay) => {}
                        _ = self.stop.cancelled() => return false,
                    }
                    probe_delay = (probe_delay * 2).min(MAX_PROBE_DELAY);
                }
                continue;
            }
            sub.metrics.endpoint_up.set(1.0);
            return true;
        }
    }

    /// The worker of one subscription: pull as many as may be held, hand
    /// each message to its own task.
    async fn run(self: Arc<Self>, sub: Arc<Subscription>) {
        let Some(consumer) = sub.consumer.get().cloned() else {
            return;
        };
        // Slots bound the requests at the app; holds (in the puller) bound
        // the messages this sidecar has taken from JetStream: a look-ahead,
        // so the next message is already here when a slot frees. Waiting
        // ones are kept alive with in-progress acks.
        let concurrency = sub.config.effective_concurrency();
        let slots = Arc::new(Semaphore::new(concurrency));
        let sizes = puller::Sizes::new(concurrency, sub.config.ordered, MIN_LOOK_AHEAD);
        let deliveries = TaskTracker::new();
        let mut fetch_delay = FIRST_FETCH_DELAY;
        let mut puller = loop {
            match puller::Puller::new(self.js.clone(), consumer.clone(), sizes).await {
                Ok(puller) => break puller,
                Err(e) => {
                    tracing::warn!(subscription = sub.name(), error = %e, "cannot subscribe for pulls; retrying");
                    if !self.back_off(&mut fetch_delay).await {
                        return;
                    }
                }
            }
        };
        loop {
            if !puller.is_open() {
                if !self.wait_until_deliverable(&sub).await {
                    break;
                }
                let free = tokio::select! {
                    free = puller.free_holds() => match free {
                        Some(free) => free,
                        None => break,
                    },
                    _ = self.stop.cancelled() => break,
                };
                if let Err(e) = puller.request(free).await {
                    tracing::debug!(subscription = sub.name(), error = %e, "pull request failed; retrying");
                    if !self.back_off(&mut fetch_delay).await {
                        break;
                    }
                    continue;
                }
            }
            let pulled = tokio::select! {
                pulled = puller.next() => pulled,
                _ = self.stop.cancelled() => break,
            };
            match pulled {
                puller::Pulled::Message(msg, hold) => {
                    fetch_delay = FIRST_FETCH_DELAY;
                    // Boxed: the task then moves a pointer, not the whole
                    // state machine, on its way into the runtime.
                    let delivery =
                        Box::pin(self.clone().deliver(sub.clone(), *msg, hold, slots.clone()));
                    deliveries.spawn(delivery);
                }
                puller::Pulled::Ended(None) => fetch_delay = FIRST_FETCH_DELAY,
                puller::Pulled::Ended(Some(why)) => {
                    tracing::debug!(subscription = sub.name(), reason = %why, "pull ended early; pulling again");
                    if !self.back_off(&mut fetch_delay).await {
                        break;
                    }
                }
                puller::Pulled::Closed => {
                    tracing::warn!(
                        subscription = sub.name(),
                        "pull subscription closed; delivery stops"
                    );
                    break;
                }
            }
        }
        // Messages of an open request still arriving go straight back.
        let _ = tokio::time::timeout(puller::FETCH_WAIT, async {
            while puller.is_open() {
                match puller.next().await {
                    puller::Pulled::Message(msg, _hold) => nak(&msg, None).await,
                    _ => break,
                }
            }
        })
        .await;
        deliveries.close();
        deliveries.wait().await;
    }

    /// Waits `delay` before pulling again and doubles it (up to
    /// `MAX_FETCH_DELAY`). `false` when stopping.
    async fn back_off(&self, delay: &mut Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(*delay) => {}
            _ = self.stop.cancelled() => return false,
        }
        *delay = (*delay * 2).min(MAX_FETCH_DELAY);
        true
    }

    /// One message, one attempt, one decision. `_hold` counts it as taken
    /// from JetStream; it waits for one of `slots` before the app sees it.
    async fn deliver(
        self: Arc<Self>,
        sub: Arc<Subscription>,
        mut msg: jetstream::Message,
        _hold: puller::Hold,
        slots: Arc<Semaphore>,
    ) {
        let env = match envelope(&mut msg) {
            Ok(env) => env,
            Err(e) => {
                tracing::error!(subscription = sub.name(), error = %e, "message without JetStream metadata; leaving it to redelivery");
                return;
            }
        };
        if self.stop.is_cancelled() {
            // Not tried; another replica takes it at once.
            nak(&msg, None).await;
            return;
        }
        // One timer, inside this task (no allocation), re-armed after each
        // in-progress ack.
        let every = ack_wait(&sub.config) / 3;
        let progress = tokio::time::sleep(every);
        tokio::pin!(progress);
        // Wait for a free slot, keeping the message alive meanwhile.
        let _slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => loop {
                tokio::select! {
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => break slot,
                        Err(_) => return,
                    },
                    _ = &mut progress => {
                        progress.as_mut().reset(tokio::time::Instant::now() + every);
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(subscription = sub.name(), error = %e, "in-progress ack failed");
                        }
                    }
                    _ = self.stop.cancelled() => {
                        // Not tried; another replica takes it at once.
                        nak(&msg, None).await;
                        return;
                    }
                }
            },
        };
        if !self.deliverable(&sub) {
            // Arrived in a pull that was open when the app went down, its
            // health check failed or the subscription was paused: not tried.
            let (trace_id, span_id) = tracer::log_ids(&env.headers);
            tracing::debug!(
                subscription = sub.name(),
                subject = %env.subject,
                stream = %env.stream,
                seq = env.sequence,
                attempt = env.attempt,
                idempotency_key = %env.idempotency_key(),
                trace_id = trace_id.map(tracing::field::display),
                span_id = span_id.map(tracing::field::display),
                "not deliverable now; handed back"
            );
            nak(&msg, Some(HAND_BACK_DELAY)).await;
            return;
        }
        let _in_flight = InFlight::new(&sub);
        let span = self.process_span(&sub, &env);
        let attempt = {
            // Boxed: the spawned task stays small while it waits for a slot.
            let mut call = Box::pin(self.call(&sub, &env, &span));
            loop {
                tokio::select! {
                    attempt = &mut call => break attempt,
                    _ = &mut progress => {
                        progress.as_mut().reset(tokio::time::Instant::now() + every);
                        if let Err(e) = msg.ack_with(AckKind::Progress).await {
                            tracing::debug!(subscription = sub.name(), error = %e, "in-progress ack failed");
                        }
                    }
                    _ = self.abort.cancelled() => {
                        nak(&msg, None).await;
                        return;
                    }
                }
            }
        };
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let action = retry::classify(&attempt.outcome, env.attempt, &sub.config.retry, jitter);
        let name = sub.name();
        let key = env.idempotency_key();
        // The fields of every line about this message (SPEC section 10).
        macro_rules! event {
            ($level:ident, $($rest:tt)*) => {
                tracing::$level!(
                    subscription = name,
                    subject = %env.subject,
                    stream = %env.stream,
                    seq = env.sequence,
                    attempt = env.attempt,
                    idempotency_key = %key,
                    trace_id = span.trace_id().map(tracing::field::display),
                    span_id = span.span_id().map(tracing::field::display),
                    $($rest)*
                )
            };
        }
        match action {
            Action::Ack => {
                event!(debug, status = attempt.status, "delivered");
                if let Err(e) = msg.ack().await {
                    event!(warn, error = %e, "ack failed; the message will be redelivered");
                }
                span.end("ack", attempt.status, None);
                sub.metrics.success.inc();
                let latency = (OffsetDateTime::now_utc() - env.published).as_seconds_f64();
                sub.metrics.latency.observe(latency.max(0.0));
            }
            Action::Retry(delay) => {
                event!(debug, ?delay, status = attempt.status, error = %attempt.error, "delivery failed; retrying later");
                span.end("retry", attempt.status, Some(&error_type(&attempt.outcome)));
                nak(&msg, Some(delay)).await;
                sub.metrics.retry.inc();
            }
            Action::EndpointDown => {
                event!(debug, error = %attempt.error, "endpoint not reachable; handed back");
                span.end(
                    "endpoint_down",
                    attempt.status,
                    Some(&error_type(&attempt.outcome)),
                );
                self.set_endpoint_up(&sub, false);
                nak(&msg, Some(HAND_BACK_DELAY)).await;
                sub.metrics.retry.inc();
            }
            Action::DeadLetter(reason) => {
                let failure = Failure {
                    reason,
                    status: attempt.status,
                    error: attempt.error,
                    attempts: env.attempt,
                };
                Box::pin(self.dead_letter(&sub, &msg, &env, failure, &span)).await;
                span.end(
                    "dead_letter",
                    attempt.status,
                    Some(&error_type(&attempt.outcome)),
                );
            }
        }
    }

    /// The span of one delivery attempt (SPEC section 10).
    fn process_span(&self, sub: &Subscription, env: &Envelope) -> ProcessSpan {
        self.tracer.process(
            &env.headers,
            &tracer::Delivery {
                subscription: sub.name(),
                consumer: &sub.consumer_name,
                subject: &env.subject,
                stream: &env.stream,
                sequence: env.sequence,
                attempt: env.attempt,
            },
        )
    }

    /// Stores the dead letter, and only after its PubAck terminates the
    /// original. If the store fails the original is NAKed, never acked.
    async fn dead_letter(
        &self,
        sub: &Subscription,
        msg: &jetstream::Message,
        env: &Envelope,
        failure: Failure,
        span: &ProcessSpan,
    ) {
        let msg_id = format!("{}:{}:{}", env.stream, env.sequence, sub.consumer_name);
        let dlq_span = self.tracer.dead_letter(
            span,
            &self.dlq_stream,
            &self.dead_letters.subject(sub.name()),
        );
        let key = env.idempotency_key();
        let (trace_id, span_id) = (
            span.trace_id().map(tracing::field::display),
            span.span_id().map(tracing::field::display),
        );
        let stored = self
            .dead_letters
            .store(sub.name(), env, &failure, &msg_id)
            .await;
        match &stored {
            Ok(seq) => dlq_span.end(&self.dlq_stream, Some(*seq), None),
            Err(_) => dlq_span.end(&self.dlq_stream, None, Some("store_failed")),
        }
        match stored {
            Ok(dlq_seq) => {
                if let Err(e) = msg.ack_with(AckKind::Term).await {
                    tracing::warn!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, error = %e, "terminating a dead-lettered message failed; its redelivery will be stored once (same id)");
                }
                sub.metrics.dead_letter.inc();
                match failure.reason {
                    Reason::Rejected => sub.metrics.rejected.inc(),
                    Reason::Exhausted => sub.metrics.exhausted.inc(),
                }
                tracing::warn!(
                    subscription = sub.name(),
                    subject = %env.subject,
                    stream = %env.stream,
                    seq = env.sequence,
                    attempt = env.attempt,
                    idempotency_key = %key,
                    trace_id,
                    span_id,
                    dlq_seq,
                    reason = failure.reason.as_str(),
                    attempts = failure.attempts,
                    "message dead-lettered"
                );
            }
            Err(e) => {
                tracing::error!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, error = %e, "cannot store dead letter; the message stays in its stream");
                nak(
                    msg,
                    Some(retry::backoff(env.attempt, &sub.config.retry, 0.0)),
                )
                .await;
                sub.metrics.retry.inc();
            }
        }
    }

    /// POSTs the envelope once and reads the answer.
    async fn call(&self, sub: &Subscription, env: &Envelope, span: &ProcessSpan) -> Attempt {
        let target = Target {
            endpoint: &sub.config.endpoint,
            subscription: &sub.header,
            signing_secret: sub.config.signing_secret.as_ref(),
            callback_token: self.app.callback_token.as_ref(),
        };
        let mut request =
            request::build(env, &target, OffsetDateTime::now_utc(), span.span_id_u64());
        // With export on, the endpoint's parent is this attempt's span.
        if let Some(tp) = span.traceparent() {
            if let Ok(v) = hyper::header::HeaderValue::from_str(&tp) {
                request.headers_mut().insert("traceparent", v);
            }
        }
        let started = Instant::now();
        let timeout = sub.config.timeout;
        let result = tokio::time::timeout(timeout, async {
            let response = self.http.request(request).await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
            let body = read_start(response.into_body()).await;
            Ok::<_, hyper_util::client::legacy::Error>((status, retry_after, body))
        })
        .await;
        sub.metrics
            .duration
            .observe(started.elapsed().as_secs_f64());
        match result {
            Err(_) => Attempt {
                outcome: Outcome::Timeout,
                status: None,
                error: format!("no answer within {timeout:?}"),
            },
            Ok(Err(e)) if e.is_connect() => Attempt {
                outcome: Outcome::Refused,
                status: None,
                error: format!(
                    "cannot connect to {}: {}",
                    sub.config.endpoint,
                    error_chain(&e)
                ),
            },
            Ok(Err(e)) => Attempt {
                outcome: Outcome::Failed,
                status: None,
                error: format!("request failed: {}", error_chain(&e)),
            },
            Ok(Ok((code, retry_after, body))) => Attempt {
                outcome: Outcome::Status { code, retry_after },
                status: Some(code),
                error: if body.is_empty() {
                    format!("HTTP {code}")
                } else {
                    format!("HTTP {code}: {body}")
                },
            },
        }
    }

    /// Delivers dead letters again to this subscription's endpoint only.
    /// Delivered ones leave the DLQ; failed ones stay, attempts raised.
    pub async fn replay(
        &self,
        sub: &Subscription,
        sequences: Option<Vec<u64>>,
    ) -> Result<Replayed, DlqError> {
        let mut failed = 0;
        let mut messages = Vec::new();
        match sequences {
            Some(seqs) => {
                for seq in seqs {
                    match self.dead_letters.get(sub.name(), seq).await {
                        Ok(m) => messages.push(m),
                        Err(DlqError::NotFound(_)) => failed += 1,
                        Err(e) => return Err(e),
                    }
                }
            }
            None => {
                let mut after = 0;
                loop {
                    let (page, next) = self.dead_letters.list(sub.name(), after, 1000).await?;
                    messages.extend(page);
                    match next {
                        Some(n) => after = n,
                        None => break,
                    }
                }
            }
        }
        let results: Vec<bool> = futures::stream::iter(messages)
            .map(|m| self.replay_one(sub, m))
            .buffer_unordered(sub.config.effective_concurrency())
            .collect()
            .await;
        let replayed = results.iter().filter(|ok| **ok).count();
        Ok(Replayed {
            replayed,
            failed: failed + results.len() - replayed,
        })
    }

    async fn replay_one(&self, sub: &Subscription, msg: StreamMessage) -> bool {
        let (env, old) = dead_letter::read(&msg);
        let span = self.process_span(sub, &env);
        let attempt = self.call(sub, &env, &span).await;
        let delivered =
            matches!(attempt.outcome, Outcome::Status { code, .. } if (200..300).contains(&code));
        let key = env.idempotency_key();
        let (trace_id, span_id) = (
            span.trace_id().map(tracing::field::display),
            span.span_id().map(tracing::field::display),
        );
        if delivered {
            sub.metrics.success.inc();
            tracing::info!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, "dead letter replayed");
            span.end("ack", attempt.status, None);
        } else {
            tracing::warn!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, attempt = env.attempt, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, error = %attempt.error, "replay failed; the dead letter stays");
            span.end(
                "dead_letter",
                attempt.status,
                Some(&error_type(&attempt.outcome)),
            );
            // Keep it, with one more attempt recorded: store the rewrite,
            // then drop the old entry.
            let failure = Failure {
                reason: match attempt.outcome {
                    Outcome::Status { code, .. } if !sub.config.retry.retry_on.contains(&code) => {
                        Reason::Rejected
                    }
                    _ => old.reason,
                },
                status: attempt.status,
                error: attempt.error,
                attempts: old.attempts + 1,
            };
            let msg_id = format!(
                "replay:{}:{}",
                self.dead_letters.subject(sub.name()),
                msg.sequence
            );
            if let Err(e) = self
                .dead_letters
                .store(sub.name(), &env, &failure, &msg_id)
                .await
            {
                tracing::warn!(subscription = sub.name(), subject = %env.subject, stream = %env.stream, seq = env.sequence, idempotency_key = %key, trace_id, span_id, dlq_seq = msg.sequence, error = %e, "replay failed and the attempt count could not be raised");
                return false;
            }
        }
        if let Err(e) = self.dead_letters.delete(sub.name(), msg.sequence).await {
            tracing::warn!(subscription = sub.name(), dlq_seq = msg.sequence, error = %e, "cannot remove replayed dead letter");
        }
        delivered
    }

    /// Polls `app.health_url`; deliveries wait while it fails.
    async fn watch_app_health(self: Arc<Self>, url: hyper::Uri) {
        let mut delay = Duration::from_millis(100);
        loop {
            let request = hyper::Request::get(url.clone()).body(Full::new(Bytes::new()));
            let healthy = match request {
                Ok(request) => matches!(
                    tokio::time::timeout(Duration::from_secs(2), self.http.request(request)).await,
                    Ok(Ok(response)) if response.status().is_success()
                ),
                Err(_) => false,
            };
            let changed = self
                .app_healthy
                .send_if_modified(|h| std::mem::replace(h, healthy) != healthy);
            if changed {
                tracing::info!(healthy, %url, "app health changed");
                // At once, not when each worker next looks.
                for sub in &self.subscriptions {
                    let up = healthy && sub.endpoint_up.load(Ordering::SeqCst);
                    sub.metrics.endpoint_up.set(if up { 1.0 } else { 0.0 });
                }
            }
            let wait = if healthy {
                delay = Duration::from_millis(100);
                Duration::from_secs(1)
            } else {
                delay = (delay * 2).min(MAX_PROBE_DELAY);
                delay
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Keeps the lag gauges current.
    async fn refresh_lag(self: Arc<Self>) {
        loop {
            for sub in &self.subscriptions {
                if let Some(consumer) = sub.consumer.get() {
                    if let Ok(info) = consumer.get_info().await {
                        sub.metrics
                            .pending
                            .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                        sub.metrics
                            .ack_pending
                            .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(LAG_REFRESH) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }
}

/// `error.type` of a failed attempt: a bounded kind, never the error text.
/// (the status code for an HTTP answer, as the conventions have it).
fn error_type(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Timeout => "timeout".into(),
        Outcome::Refused => "connection_refused".into(),
        Outcome::Failed => "request_failed".into(),
        Outcome::Status { code, .. } => code.to_string(),
    }
}

/// A NAK, delayed or not; failure only means JetStream redelivers after
/// the ack wait instead.
async fn nak(msg: &jetstream::Message, delay: Option<Duration>) {
    if let Err(e) = msg.ack_with(AckKind::Nak(delay)).await {
        tracing::debug!(error = %e, "nak failed; JetStream redelivers after the ack wait");
    }
}

/// The envelope of a pulled message; its headers move into it (acks need
/// only the reply subject).
fn envelope(msg: &mut jetstream::Message) -> Result<Envelope, async_nats::Error> {
    let info = msg.info()?;
    let (stream, sequence, delivered, published) = (
        info.stream.to_string(),
        info.stream_sequence,
        info.delivered,
        info.published,
    );
    Ok(Envelope {
        subject: msg.subject.to_string(),
        stream,
        sequence,
        attempt: u64::try_from(delivered).unwrap_or(1).max(1),
        published,
        headers: msg.message.headers.take().unwrap_or_default(),
        payload: msg.payload.clone(),
    })
}

/// Reads up to `MAX_RESPONSE_BODY` of a response and returns the first KiB
/// as text (for dead letters).
async fn read_start(mut body: hyper::body::Incoming) -> String {
    let mut start = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            total += data.len();
            let room = dead_letter::MAX_ERROR_LEN.saturating_sub(start.len());
            start.extend_from_slice(&data[..data.len().min(room)]);
        }
        if total > MAX_RESPONSE_BODY {
            break;
        }
    }
    String::from_utf8_lossy(&start).trim().to_string()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether anything accepts TCP connections at the endpoint's address.
async fn probe(endpoint: &hyper::Uri) -> bool {
    let Some(host) = endpoint.host() else {
        return false;
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = endpoint.port_u16().unwrap_or(80);
    matches!(
        tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect((host, port))
        )
        .await,
        Ok(Ok(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(ordered: bool, concurrency: usize, timeout: Duration) -> SubscriptionConfig {
        SubscriptionConfig {
            name: "s".into(),
            subject: "a.>".into(),
            stream: None,
            endpoint: "http://127.0.0.1:1/".parse().expect("uri"),
            concurrency,
            ordered,
            timeout,
            deliver: Deliver::All,
            retry: Default::default(),
            signing_secret: None,
        }
    }

    #[test]
    fn consumer_limits_follow_from_the_subscription() {
        assert_eq!(max_ack_pending(&sub(true, 16, Duration::from_secs(10))), 1);
        assert_eq!(
            max_ack_pending(&sub(false, 16, Duration::from_secs(10))),
            1024
        );
        assert_eq!(
            max_ack_pending(&sub(false, 1, Duration::from_secs(10))),
            1000
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(10))),
            Duration::from_secs(5)
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(1))),
            Duration::from_secs(2)
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(600))),
            Duration::from_secs(30)
        );
        let c = consumer_config(&sub(false, 4, Duration::from_secs(10)), "app-s");
        assert_eq!(c.durable_name.as_deref(), Some("app-s"));
        assert_eq!(c.max_deliver, -1);
        assert_eq!(c.filter_subject, "a.>");
    }
}
