//! The ingress API (SPEC section 3): `POST /v1/publish/{subject}` and the
//! batch route. A publisher gets 200 only after JetStream's PubAck; 503
//! means nothing was handed to NATS, 504 that it was but no PubAck came.
//!
//! [`Publisher`] prepares a message (subject rules, header mapping, the
//! schema check) and publishes it; `confirm` hands it to JetStream and
//! waits for its PubAck (resends, and what a failure answers), `body`
//! reads request bodies within their memory budget, `routes` are the two
//! HTTP handlers. `headers` and `batch` are the pure parsers, `streams`
//! knows which stream captures a subject.

pub mod batch;
mod body;
mod confirm;
pub mod headers;
mod routes;
pub mod streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, publish::PublishAck};
use async_nats::{Client, HeaderMap as NatsHeaders};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, PublishConfig};
use crate::error::ApiError;
use crate::health::Health;
use crate::metrics::{Metrics, StoredMetrics, UNKNOWN_STREAM};
use crate::subject;
use crate::telemetry::throttle::Throttle;
use crate::telemetry::tracer::{self, PublishSpan};
use crate::telemetry::Tracer;
use body::body_budget_kib;
pub use body::{body_budget, BODY_BUDGET_FACTOR};
pub use routes::{publish_batch, publish_one};

/// Most headers one batch item may carry.
pub const MAX_ITEM_HEADERS: usize = 100;

/// How much larger than `api.max_body` a whole batch request may be.
pub const BATCH_BODY_FACTOR: usize = 16;

/// The answer for one stored message.
#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub struct Stored {
    pub stream: String,
    pub seq: u64,
    pub duplicate: bool,
}

impl From<PublishAck> for Stored {
    fn from(ack: PublishAck) -> Self {
        Stored {
            stream: ack.stream,
            seq: ack.sequence,
            duplicate: ack.duplicate,
        }
    }
}

/// A message ready to be handed to JetStream.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub subject: String,
    /// Handed to the client on the first send unless the message may be
    /// resent (an id): then a copy goes each time.
    pub headers: NatsHeaders,
    pub payload: Bytes,
    /// With an id, JetStream drops repeats, so jetway may resend safely.
    pub has_id: bool,
    /// It carries `Nats-Expected-Last-Subject-Sequence` (a conflict then
    /// answers the subject's last sequence, not the stream's).
    pub expects_subject_sequence: bool,
    /// The trace context of its log lines, read before the headers go.
    pub log_ids: (Option<tracer::HexId<16>>, Option<tracer::HexId<8>>),
}

impl Outgoing {
    /// Starts the message's publish span (which may set its
    /// `traceparent`) and notes the context its log lines carry.
    fn start_span(&mut self, tracer: &Tracer) -> PublishSpan {
        let span = tracer.publish(&mut self.headers, &self.subject);
        self.log_ids = tracer::log_ids(&self.headers);
        span
    }
}

/// Publishes to JetStream on behalf of the API; shared by the routes.
pub struct Publisher {
    js: jetstream::Context,
    client: Client,
    config: PublishConfig,
    streams: streams::Streams,
    request_timeout: Duration,
    max_body: usize,
    max_in_flight: usize,
    in_flight: Arc<Semaphore>,
    /// Request bodies (and what is parsed from them) held in memory, in
    /// KiB, until their requests are answered.
    bodies: Arc<Semaphore>,
    bodies_kib: u32,
    metrics: Metrics,
    /// The series of each configured stream, looked up once.
    stored_metrics: Vec<(String, StoredMetrics)>,
    health: Arc<Health>,
    tracer: Tracer,
    /// Validates typed events (SPEC section 9) before they are sent.
    schemas: Option<Arc<crate::schemas::Schemas>>,
    /// Keeps "publish failed" at one WARN line a second in an outage.
    failure_log: Throttle,
}

impl Publisher {
    pub fn new(
        js: jetstream::Context,
        client: Client,
        config: &Config,
        metrics: Metrics,
        health: Arc<Health>,
        tracer: Tracer,
    ) -> Publisher {
        Publisher {
            streams: streams::Streams::new(config.streams.clone(), js.clone()),
            js,
            client,
            config: config.publish.clone(),
            request_timeout: config.nats.request_timeout,
            max_body: config.api.max_body,
            max_in_flight: config.api.max_in_flight,
            in_flight: Arc::new(Semaphore::new(config.api.max_in_flight)),
            bodies: Arc::new(Semaphore::new(body_budget_kib(config.api.max_body) as usize)),
            bodies_kib: body_budget_kib(config.api.max_body),
            stored_metrics: config
                .streams
                .iter()
                .map(|s| (s.name.clone(), metrics.stored(&s.name)))
                .collect(),
            metrics,
            health,
            tracer,
            schemas: None,
            failure_log: Throttle::new(Duration::from_secs(1)),
        }
    }

    /// Validates typed events against the schema registry.
    pub fn with_schemas(mut self, schemas: Arc<crate::schemas::Schemas>) -> Publisher {
        self.schemas = Some(schemas);
        self
    }

    /// The configured stream that captures `subject`: the only streams the
    /// read routes show (never another team's, never the dead letters).
    pub fn configured_stream(&self, subject: &str) -> Option<&str> {
        self.streams.configured(subject)
    }

    /// Whether `name` is one of the configured streams.
    pub fn is_configured_stream(&self, name: &str) -> bool {
        self.streams.names().any(|n| n == name)
    }

    /// The JetStream context the reads go through.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.js
    }

    /// The stream label for a subject: the configured stream capturing it.
    fn stream_label(&self, subject: &str) -> &str {
        self.streams.configured(subject).unwrap_or(UNKNOWN_STREAM)
    }

    fn record(&self, subject: &str, result: &Result<Stored, ApiError>, started: Option<Instant>) {
        if let Ok(stored) = result {
            if let Some((_, m)) = self
                .stored_metrics
                .iter()
                .find(|(n, _)| *n == stored.stream)
            {
                if stored.duplicate {
                    m.duplicate.inc();
                } else {
                    m.ok.inc();
                }
                if let Some(started) = started {
                    m.duration.observe(started.elapsed().as_secs_f64());
                }
                return;
            }
        }
        let (stream, outcome) = match result {
            Ok(s) if s.duplicate => (s.stream.as_str(), "duplicate"),
            Ok(s) => (s.stream.as_str(), "ok"),
            Err(e) => (self.stream_label(subject), e.publish_outcome()),
        };
        self.metrics
            .publish_total
            .with_label_values(&[stream, outcome])
            .inc();
        if let Some(started) = started {
            self.metrics
                .publish_duration_seconds
                .with_label_values(&[stream])
                .observe(started.elapsed().as_secs_f64());
        }
    }

    /// Ends the message's publish span; a 5xx is logged with the message's
    /// context (SPEC section 10).
    fn finish(&self, span: PublishSpan, msg: &Outgoing, result: &Result<Stored, ApiError>) {
        match result {
            Ok(stored) => span.end(&stored.stream, Some(stored.seq), None),
            Err(e) => {
                let stream = self.stream_label(&msg.subject);
                span.end(stream, None, Some(e.publish_outcome()));
                if e.status().is_server_error() {
                    let (trace_id, span_id) = msg.log_ids;
                    let key = crate::envelope::stored_header(&msg.headers, "Nats-Msg-Id");
                    let outcome = e.publish_outcome();
                    // An outage fails every publish: one WARN line a
                    // second, the rest at DEBUG.
                    match self.failure_log.admit() {
                        Some(held_back) => tracing::warn!(
                            subject = %msg.subject,
                            stream,
                            idempotency_key = key,
                            trace_id = trace_id.map(tracing::field::display),
                            span_id = span_id.map(tracing::field::display),
                            outcome,
                            error = %e,
                            held_back,
                            "publish failed"
                        ),
                        None => tracing::debug!(
                            subject = %msg.subject,
                            stream,
                            idempotency_key = key,
                            trace_id = trace_id.map(tracing::field::display),
                            span_id = span_id.map(tracing::field::display),
                            outcome,
                            error = %e,
                            "publish failed"
                        ),
                    }
                }
            }
        }
    }

    /// Counts a request refused before any subject was known.
    pub fn record_refused(&self, err: &ApiError) {
        self.metrics
            .publish_total
            .with_label_values(&[UNKNOWN_STREAM, err.publish_outcome()])
            .inc();
    }

    /// Admits `n` publishes under the in-flight limit, or sheds them.
    fn admit(&self, n: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        if self.health.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        let n = u32::try_from(n.clamp(1, self.max_in_flight)).unwrap_or(u32::MAX);
        self.in_flight
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ApiError::Overloaded)
    }

    /// Waits until every admitted publish has its answer.
    pub async fn drain(&self) {
        let all = u32::try_from(self.max_in_flight).unwrap_or(u32::MAX);
        // The semaphore is never closed, so this only waits.
        let _ = self.in_flight.acquire_many(all).await;
    }

    /// Subject rules, reserved subjects and `publish.allow`.
    pub fn check_subject(&self, subject: &str) -> Result<(), ApiError> {
        subject::validate(subject)?;
        if subject::is_reserved(subject) {
            return Err(ApiError::SubjectReserved(subject.to_string()));
        }
        if let Some(allow) = &self.config.allow {
            if !allow.iter().any(|p| subject::matches(p, subject)) {
                return Err(ApiError::Forbidden(subject.to_string()));
            }
        }
        Ok(())
    }

    /// `api.max_body`; the server's `max_payload` (headers included) is
    /// checked by the client when the message is sent (see `send`).
    fn check_size(&self, payload: &Bytes) -> Result<(), ApiError> {
        if payload.len() > self.max_body {
            Err(ApiError::PayloadTooLarge(format!(
                "body is larger than api.max_body ({} bytes)",
                self.max_body
            )))
        } else {
            Ok(())
        }
    }

    /// Publishes one message and answers only after its PubAck.
    pub async fn publish(&self, mut msg: Outgoing) -> Result<Stored, ApiError> {
        let started = Instant::now();
        let span = msg.start_span(&self.tracer);
        let result = async {
            self.ensure_connected()?;
            self.streams.capture(&msg.subject).await?;
            let ack = self.send(&mut msg).await?;
            self.confirm(&msg, ack, started + self.request_timeout)
                .await
        }
        .await;
        self.record(&msg.subject, &result, Some(started));
        self.finish(span, &msg, &result);
        result
    }

    fn generated_id() -> String {
        format!("jw-{:032x}", rand::random::<u128>())
    }

    /// Builds the message of a publish whose subject was checked
    /// ([`Publisher::check_subject`]).
    fn prepare(
        &self,
        subject: String,
        headers: &HeaderMap,
        payload: Bytes,
    ) -> Result<Outgoing, ApiError> {
        self.check_size(&payload)?;
        let mut mapped = headers::map_headers(headers, &payload, &self.config, Self::generated_id)?;
        if let Some(schemas) = self.schemas.as_ref().filter(|_| mapped.may_be_typed) {
            if let Some(checked) = schemas.check_request(headers, &payload)? {
                checked.stamp(&mut mapped.headers);
            }
        }
        Ok(Outgoing {
            subject,
            has_id: mapped.msg_id.is_some(),
            expects_subject_sequence: crate::envelope::stored_header(
                &mapped.headers,
                "Nats-Expected-Last-Subject-Sequence",
            )
            .is_some(),
            headers: mapped.headers,
            payload,
            log_ids: (None, None),
        })
    }

    /// Builds the message of one batch item, mapping its headers as a
    /// single publish's request headers are mapped.
    fn prepare_item(&self, item: batch::Item) -> Result<Outgoing, ApiError> {
        // A request carries at most what fits in 16 KiB of head; an item gets
        // a like bound (http's HeaderMap would panic past 32768 entries).
        if item.headers.len() > MAX_ITEM_HEADERS {
            return Err(ApiError::HeaderInvalid(format!(
                "an item may carry at most {MAX_ITEM_HEADERS} headers"
            )));
        }
        let mut headers = HeaderMap::new();
        for (name, value) in &item.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| ApiError::HeaderInvalid(format!("`{name}` is not a header name")))?;
            let value = HeaderValue::from_str(value).map_err(|_| {
                ApiError::HeaderInvalid(format!("header {name} has an invalid value"))
            })?;
            headers.insert(name, value);
        }
        if let Some(key) = &item.idempotency_key {
            let value = HeaderValue::from_str(key).map_err(|_| {
                ApiError::HeaderInvalid("idempotency_key has an invalid value".into())
            })?;
            headers.insert("idempotency-key", value);
        }
        if item.is_json && !headers.contains_key(header::CONTENT_TYPE) {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        self.check_subject(&item.subject)?;
        self.prepare(item.subject, &headers, item.payload)
    }

    /// Publishes a batch: every item is sent before any PubAck is awaited
    /// (pipelined, in input order), then the answers are collected.
    pub async fn publish_batch(
        &self,
        items: Vec<batch::Item>,
    ) -> Result<Vec<Result<Stored, ApiError>>, ApiError> {
        let started = Instant::now();
        let prepared: Vec<(String, Result<Outgoing, ApiError>)> = items
            .into_iter()
            .map(|item| (item.subject.clone(), self.prepare_item(item)))
            .collect();
        if let Err(e) = self.ensure_connected() {
            for (subject, _) in &prepared {
                self.record(subject, &Err(e.clone()), None);
            }
            return Err(e);
        }
        let deadline = started + self.request_timeout;
        let mut pending = Vec::with_capacity(prepared.len());
        for (subject, item) in prepared {
            let sent = match item {
                Ok(mut msg) => {
                    let span = msg.start_span(&self.tracer);
                    let sent = match self.streams.capture(&msg.subject).await {
                        Ok(()) => self.send(&mut msg).await,
                        Err(e) => Err(e),
                    };
                    match sent {
                        Ok(ack) => Ok((msg, ack, span)),
                        Err(e) => {
                            self.finish(span, &msg, &Err(e.clone()));
                            Err(e)
                        }
                    }
                }
                Err(e) => Err(e),
            };
            pending.push((subject, sent));
        }
        let results =
            futures::future::join_all(pending.into_iter().map(|(subject, sent)| async move {
                let result = match sent {
                    Ok((msg, ack, span)) => {
                        let result = self.confirm(&msg, ack, deadline).await;
                        self.finish(span, &msg, &result);
                        result
                    }
                    Err(e) => Err(e),
                };
                self.record(&subject, &result, Some(started));
                result
            }))
            .await;
        Ok(results)
    }
}
