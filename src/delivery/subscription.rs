//! A subscription at run time and what `/v1/subscriptions` shows of it:
//! its state, its live numbers, and the lag gauges.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use serde::Serialize;
use tokio::sync::watch;

use super::Delivery;
use crate::config::SubscriptionConfig;
use crate::metrics::{Metrics, SubscriptionMetrics};
use crate::nats;

/// How often consumer lag is read for the metrics, and a consumer that is
/// gone noticed (SPEC: within 10 s). Each lookup is two NATS messages per
/// subscription, the larger part of what an idle one costs.
const LAG_REFRESH: Duration = Duration::from_secs(10);
/// How often a subscription that delivered since its last lookup is looked
/// up: its ack floor is where a lost consumer starts again, so what was
/// acknowledged since is delivered again; this bounds it to a few seconds
/// of deliveries. An idle subscription keeps to `LAG_REFRESH`.
const BUSY_REFRESH: Duration = Duration::from_secs(2);
/// Least time between two lookups a pull asked for (a consumer that is
/// gone makes every pull say so until it is back).
const LOOK_UP_PAUSE: Duration = Duration::from_secs(1);

/// What `/v1/subscriptions` reports as `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Running,
    Paused,
    EndpointDown,
    /// The consumer on the server differs from the subscription in a way
    /// the server cannot update; nothing is delivered until resolved.
    ConfigConflict,
    /// The consumer disappeared from the server; jetway is creating it
    /// again.
    ConsumerLost,
}

/// The subscription's durable consumer as jetway knows it.
#[derive(Clone)]
pub(super) enum Consumer {
    /// Not in place yet.
    Missing,
    /// Boxed: a consumer handle carries its whole info.
    Ready(Box<PullConsumer>),
    /// What differs and cannot be changed in place.
    Conflict(String),
    /// Gone from the server; being created again.
    Lost,
}

impl Consumer {
    pub(super) fn ready(&self) -> Option<&PullConsumer> {
        match self {
            Consumer::Ready(c) => Some(c),
            _ => None,
        }
    }
}

/// A subscription at run time.
pub struct Subscription {
    pub config: SubscriptionConfig,
    pub consumer_name: String,
    /// `consumer_name` and `process {name}`, shared by its spans.
    pub(super) consumer_shared: Arc<str>,
    pub(super) span_name: Arc<str>,
    pub(super) stream: OnceLock<String>,
    pub(super) consumer: watch::Sender<Consumer>,
    pub(super) paused: watch::Sender<bool>,
    pub(super) endpoint_up: AtomicBool,
    pub(super) in_flight: AtomicI64,
    /// Whether a delivery began since the last lookup of the consumer.
    pub(super) busy: AtomicBool,
    /// The consumer's ack floor (stream sequence) at the last look.
    pub(super) acked: AtomicU64,
    /// When the stream `acked` belongs to was created: a stream of the same
    /// name created anew (by an operator, another replica) starts over at
    /// sequence 1, so the old ack floor means nothing there.
    pub(super) stream_created: Mutex<Option<async_nats::datetime::DateTime>>,
    pub(super) metrics: SubscriptionMetrics,
    /// Held by the replay under way: one at a time per subscription.
    pub(super) replay_lock: tokio::sync::Mutex<()>,
    /// `Jetway-Subscription`, built once.
    pub(super) header: hyper::header::HeaderValue,
    /// `Host` of the endpoint, built once.
    pub(super) host: Option<hyper::header::HeaderValue>,
    /// The endpoint as the request target (path and query).
    pub(super) target: hyper::Uri,
    /// Keep-alive connections to the endpoint.
    pub(super) connections: super::connections::Connections,
    /// `Jetway-Stream` of `stream`, built when it is resolved.
    pub(super) stream_header: OnceLock<hyper::header::HeaderValue>,
}

impl Subscription {
    pub(super) fn new(config: SubscriptionConfig, app_id: &str, metrics: &Metrics) -> Self {
        let metrics = metrics.subscription(&config.name);
        metrics.endpoint_up.set(1.0);
        // Names are `[a-z0-9-]+` (checked with the config): a valid value.
        let header = hyper::header::HeaderValue::from_str(&config.name)
            .unwrap_or_else(|_| hyper::header::HeaderValue::from_static("invalid-name"));
        Subscription {
            header,
            host: super::request::host_header(&config.endpoint),
            target: super::connections::origin_form(&config.endpoint),
            connections: super::connections::Connections::new(
                &config.endpoint,
                config.effective_concurrency(),
            ),
            stream_header: OnceLock::new(),
            metrics,
            consumer_name: format!("{app_id}-{}", config.name),
            consumer_shared: Arc::from(format!("{app_id}-{}", config.name)),
            span_name: Arc::from(format!("process {}", config.name)),
            config,
            stream: OnceLock::new(),
            consumer: watch::Sender::new(Consumer::Missing),
            paused: watch::Sender::new(false),
            endpoint_up: AtomicBool::new(true),
            in_flight: AtomicI64::new(0),
            busy: AtomicBool::new(false),
            acked: AtomicU64::new(0),
            stream_created: Mutex::new(None),
            replay_lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn stream(&self) -> Option<&str> {
        self.stream.get().map(String::as_str)
    }

    /// Notes the subscription's stream, once resolved.
    pub(super) fn set_stream(&self, name: String) {
        if let Ok(v) = hyper::header::HeaderValue::from_str(&name) {
            let _ = self.stream_header.set(v);
        }
        let _ = self.stream.set(name);
    }

    /// Notes when the subscription's stream was created; a different time
    /// than before means a new stream, and the ack floor starts over.
    pub(super) fn remember_stream(&self, created: async_nats::datetime::DateTime) {
        let mut known = self
            .stream_created
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if known.is_some_and(|t| t != created) {
            self.acked.store(0, Ordering::SeqCst);
        }
        *known = Some(created);
    }

    /// Whether a stream created at `created` with `last_seq` as its last
    /// sequence is a new one, not the stream `acked` was read from.
    pub(super) fn is_new_stream(
        &self,
        created: async_nats::datetime::DateTime,
        last_seq: u64,
    ) -> bool {
        let known = *self
            .stream_created
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        match known {
            Some(t) => t != created,
            // Never seen: only a stream shorter than the ack floor is
            // surely new.
            None => last_seq < self.acked.load(Ordering::SeqCst),
        }
    }
}

/// Counts a delivery in flight for as long as it lives.
pub(super) struct InFlight<'a>(&'a Subscription);

impl<'a> InFlight<'a> {
    pub(super) fn new(sub: &'a Subscription) -> Self {
        sub.metrics.in_flight.inc();
        sub.in_flight.fetch_add(1, Ordering::SeqCst);
        sub.busy.store(true, Ordering::Relaxed);
        InFlight(sub)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.metrics.in_flight.dec();
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
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

impl Delivery {
    pub fn state(&self, sub: &Subscription) -> State {
        if matches!(*sub.consumer.borrow(), Consumer::Conflict(_)) {
            State::ConfigConflict
        } else if matches!(*sub.consumer.borrow(), Consumer::Lost) {
            State::ConsumerLost
        } else if *sub.paused.borrow() {
            State::Paused
        } else if !*self.app_healthy.borrow() || !sub.endpoint_up.load(Ordering::SeqCst) {
            State::EndpointDown
        } else {
            State::Running
        }
    }

    /// Whether a message may be tried now: not paused, app healthy,
    /// endpoint reachable.
    pub(super) fn deliverable(&self, sub: &Subscription) -> bool {
        !*sub.paused.borrow()
            && *self.app_healthy.borrow()
            && sub.endpoint_up.load(Ordering::SeqCst)
    }

    /// Live numbers of one subscription.
    pub async fn status(&self, sub: &Subscription) -> Status {
        // Cloned out: no borrow of the watch is held across the await.
        let consumer = sub.consumer.borrow().ready().cloned();
        let info = match consumer {
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

    /// Keeps the lag gauges current, remembers each consumer's ack floor,
    /// and notices a consumer that is gone: within `LAG_REFRESH`, or at once
    /// when a pull says it may be (`look_up_consumers`).
    pub(super) async fn refresh_lag(self: Arc<Self>) {
        // A fixed period, however long the lookups take, so each
        // subscription is looked up every `LAG_REFRESH` (`BUSY_REFRESH`
        // while it delivers).
        let mut every = tokio::time::interval(BUSY_REFRESH);
        let mut looked_at = vec![None::<tokio::time::Instant>; self.subscriptions.len()];
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut asked_at: Option<tokio::time::Instant> = None;
        loop {
            // A pull asked: every consumer is looked up.
            let asked = tokio::select! {
                _ = every.tick() => false,
                _ = self.look_up_consumers.notified() => {
                    if let Some(at) = asked_at {
                        tokio::select! {
                            _ = tokio::time::sleep_until(at + LOOK_UP_PAUSE) => {}
                            _ = self.stop.cancelled() => return,
                        }
                    }
                    asked_at = Some(tokio::time::Instant::now());
                    true
                }
                _ = self.stop.cancelled() => return,
            };
            let now = tokio::time::Instant::now();
            for (sub, looked) in self.subscriptions.iter().zip(looked_at.iter_mut()) {
                sub.connections.close_idle();
                let busy = sub.busy.swap(false, Ordering::Relaxed);
                let due = asked || busy || looked.is_none_or(|at| now >= at + LAG_REFRESH);
                let state = sub.consumer.borrow().clone();
                if !due && matches!(state, Consumer::Ready(_)) {
                    continue;
                }
                *looked = Some(now);
                match state {
                    Consumer::Ready(consumer) => match consumer.get_info().await {
                        Ok(info) => {
                            // Stored, not maxed: a consumer created anew
                            // elsewhere (on a new stream) has a lower floor.
                            sub.acked
                                .store(info.ack_floor.stream_sequence, Ordering::SeqCst);
                            sub.metrics
                                .pending
                                .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                            sub.metrics
                                .ack_pending
                                .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                ConsumerInfoErrorKind::NotFound
                                    | ConsumerInfoErrorKind::StreamNotFound
                            ) =>
                        {
                            // A server restoring its state after a restart
                            // says "not found" for a moment: gone only if a
                            // second look says so too.
                            tokio::select! {
                                _ = tokio::time::sleep(nats::CONFIRM_GONE) => {}
                                _ = self.stop.cancelled() => return,
                            }
                            let again = consumer.get_info().await;
                            if matches!(&again, Err(e) if matches!(
                                e.kind(),
                                ConsumerInfoErrorKind::NotFound
                                    | ConsumerInfoErrorKind::StreamNotFound
                            )) {
                                self.recover(sub).await
                            }
                        }
                        Err(_) => {}
                    },
                    Consumer::Lost => self.recover(sub).await,
                    Consumer::Missing | Consumer::Conflict(_) => {}
                }
            }
        }
    }
}
