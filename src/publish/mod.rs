//! The ingress API (SPEC section 3): `POST /v1/publish/{subject}` and the
//! batch route. A publisher gets 200 only after JetStream's PubAck; 503
//! means nothing was handed to NATS, 504 that it was but no PubAck came.

pub mod batch;
pub mod headers;
pub mod streams;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, publish::PublishAck};
use async_nats::{Client, HeaderMap as NatsHeaders};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, PublishConfig};
use crate::error::ApiError;
use crate::health::Health;
use crate::metrics::{Metrics, UNKNOWN_STREAM};
use crate::subject;
use crate::telemetry::throttle::Throttle;
use crate::telemetry::tracer::{self, PublishSpan};
use crate::telemetry::Tracer;

/// Most headers one batch item may carry.
pub const MAX_ITEM_HEADERS: usize = 100;

/// How much larger than `api.max_body` a whole batch request may be.
pub const BATCH_BODY_FACTOR: usize = 16;
/// Wait before resending after "no responders" (a stream leader election).
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);
/// Least time a resent message is given for its PubAck.
const MIN_RESEND_WAIT: Duration = Duration::from_millis(100);

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
    pub headers: NatsHeaders,
    pub payload: Bytes,
    /// With an id, JetStream drops repeats, so jetway may resend safely.
    pub has_id: bool,
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
                    let (trace_id, span_id) = tracer::log_ids(&msg.headers);
                    let key = msg.headers.get("Nats-Msg-Id").map(|v| v.as_str());
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

    /// 503 unless connected: a publish handed to a disconnected client would
    /// be queued and might be stored later, so "not stored" could not be
    /// promised.
    fn ensure_connected(&self) -> Result<(), ApiError> {
        if self.health.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(ApiError::NatsUnavailable(
                "not connected to NATS; nothing was stored".into(),
            )),
        }
    }

    /// Hands the message to the client; `Ok` means it may be stored.
    async fn send(&self, msg: &Outgoing) -> Result<jetstream::context::PublishAckFuture, ApiError> {
        self.js
            .send_publish(
                msg.subject.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(msg.payload.clone())
                    .headers(msg.headers.clone()),
            )
            .await
            .map_err(|e| match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => ApiError::PayloadTooLarge(
                    "message is larger than the NATS server's max_payload".into(),
                ),
                _ => ApiError::NatsUnavailable(format!("could not send to NATS: {e}")),
            })
    }

    /// Awaits the PubAck. A message with an id is resent (same id) while
    /// the deadline allows, so a cluster electing a new stream leader costs
    /// the client nothing.
    async fn confirm(
        &self,
        msg: &Outgoing,
        mut ack: jetstream::context::PublishAckFuture,
        deadline: Instant,
    ) -> Result<Stored, ApiError> {
        let per_try = if msg.has_id {
            (self.request_timeout / 4).max(Duration::from_millis(250))
        } else {
            self.request_timeout
        };
        // Whether a try went unanswered: it may have been stored.
        let mut maybe_stored = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let wait = per_try.min(remaining);
            let result = if msg.has_id {
                match tokio::time::timeout(wait, std::future::IntoFuture::into_future(ack)).await {
                    Ok(r) => r,
                    Err(_) => Err(PublishErrorKind::TimedOut.into()),
                }
            } else {
                // One try: the ack future's own timeout is request_timeout.
                ack.await
            };
            let err = match result {
                Ok(ack) => return Ok(ack.into()),
                Err(e) => e,
            };
            // "Duplicate message id is in process": an earlier copy is still
            // being replicated and may yet be stored.
            let in_process = id_in_process(&err);
            if in_process
                || matches!(
                    err.kind(),
                    PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                )
            {
                maybe_stored = true;
            }
            // No responders: give an election a moment before resending;
            // an id in process: give its first copy a moment to commit.
            let pause = if err.kind() == PublishErrorKind::StreamNotFound || in_process {
                NO_RESPONDERS_PAUSE
            } else {
                Duration::ZERO
            };
            // A resend needs time left for its answer; one cut short by the
            // deadline would turn a definite answer (404) into an unknown (504).
            let retryable = msg.has_id
                && (in_process
                    || matches!(
                        err.kind(),
                        PublishErrorKind::TimedOut
                            | PublishErrorKind::BrokenPipe
                            | PublishErrorKind::StreamNotFound
                    ))
                && Instant::now() + pause + MIN_RESEND_WAIT < deadline;
            if !retryable {
                if in_process {
                    // Never 503: the first copy may be stored after all.
                    return Err(ApiError::Timeout(self.request_timeout));
                }
                return Err(self.classify(msg, err, maybe_stored).await);
            }
            tracing::debug!(subject = %msg.subject, error = %err, "no PubAck yet; resending with the same id");
            tokio::time::sleep(pause).await;
            ack = match self.send(msg).await {
                Ok(a) => a,
                // It was handed over before: the outcome is unknown.
                Err(_) => return Err(ApiError::Timeout(self.request_timeout)),
            };
        }
    }

    async fn classify(
        &self,
        msg: &Outgoing,
        err: jetstream::context::PublishError,
        maybe_stored: bool,
    ) -> ApiError {
        match err.kind() {
            // No responders for a subject a configured stream captures: the
            // stream is there but not answering (leader election, JetStream
            // starting), so this try stored nothing.
            PublishErrorKind::StreamNotFound
                if self.stream_label(&msg.subject) != UNKNOWN_STREAM =>
            {
                if maybe_stored {
                    ApiError::Timeout(self.request_timeout)
                } else {
                    ApiError::NatsUnavailable(format!(
                        "stream {} is not answering (no leader?); nothing was stored",
                        self.stream_label(&msg.subject)
                    ))
                }
            }
            // A stream found on the server earlier stopped answering
            // (deleted, or its subjects changed): ask again next time.
            PublishErrorKind::StreamNotFound => {
                self.streams.forget(&msg.subject);
                if maybe_stored {
                    ApiError::Timeout(self.request_timeout)
                } else {
                    ApiError::NatsUnavailable(format!(
                        "no stream answered for {}; nothing was stored",
                        msg.subject
                    ))
                }
            }
            PublishErrorKind::WrongLastSequence | PublishErrorKind::WrongLastMessageId => {
                ApiError::Conflict {
                    message: "an expected-sequence header did not hold".into(),
                    last_sequence: self.last_sequence(msg).await,
                }
            }
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => {
                ApiError::Timeout(self.request_timeout)
            }
            PublishErrorKind::MaxPayloadExceeded => ApiError::PayloadTooLarge(
                "message is larger than the NATS server's max_payload".into(),
            ),
            _ => {
                let Some(code) = std::error::Error::source(&err)
                    .and_then(|s| s.downcast_ref::<jetstream::Error>())
                    .map(|e| e.error_code())
                else {
                    // Not a PubAck nor a JetStream error: something else
                    // answered on the subject. Whether a stream stored the
                    // message too is unknown, so never 503.
                    return ApiError::BadGateway(format!(
                        "the answer to the publish on {} was not a JetStream PubAck: the outcome is unknown",
                        msg.subject
                    ));
                };
                match code {
                    jetstream::ErrorCode::STREAM_NOT_MATCH => ApiError::Conflict {
                        message: "Jetway-Expected-Stream does not match the stream that captures the subject".into(),
                        last_sequence: None,
                    },
                    jetstream::ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM => {
                        ApiError::PayloadTooLarge("message is larger than the stream allows".into())
                    }
                    _ => ApiError::NatsUnavailable(format!("JetStream refused the message: {err}")),
                }
            }
        }
    }

    /// The sequence the expectation was checked against, looked up after a
    /// conflict: the subject's last message or the stream's last sequence.
    async fn last_sequence(&self, msg: &Outgoing) -> Option<u64> {
        let stream_name = self.js.stream_by_subject(msg.subject.clone()).await.ok()?;
        let stream = self.js.get_stream(&stream_name).await.ok()?;
        if msg
            .headers
            .get("Nats-Expected-Last-Subject-Sequence")
            .is_some()
        {
            match stream.get_last_raw_message_by_subject(&msg.subject).await {
                Ok(m) => Some(m.sequence),
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    Some(0)
                }
                Err(_) => None,
            }
        } else {
            Some(stream.cached_info().state.last_sequence)
        }
    }

    /// Publishes one message and answers only after its PubAck.
    pub async fn publish(&self, mut msg: Outgoing) -> Result<Stored, ApiError> {
        let started = Instant::now();
        let span = self.tracer.publish(&mut msg.headers, &msg.subject);
        let result = async {
            self.ensure_connected()?;
            self.streams.capture(&msg.subject).await?;
            let ack = self.send(&msg).await?;
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

    /// Builds the message of a single publish request.
    fn prepare(
        &self,
        subject: String,
        headers: &HeaderMap,
        payload: Bytes,
    ) -> Result<Outgoing, ApiError> {
        self.check_subject(&subject)?;
        self.check_size(&payload)?;
        let mut mapped = headers::map_headers(headers, &payload, &self.config, Self::generated_id)?;
        if let Some(schemas) = &self.schemas {
            if let Some(checked) = schemas.check_request(headers, &payload)? {
                checked.stamp(&mut mapped.headers);
            }
        }
        Ok(Outgoing {
            subject,
            has_id: mapped.msg_id.is_some(),
            headers: mapped.headers,
            payload,
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
                    let span = self.tracer.publish(&mut msg.headers, &msg.subject);
                    let sent = match self.streams.capture(&msg.subject).await {
                        Ok(()) => self.send(&msg).await,
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

/// JetStream's "duplicate message id is in process" (10158, 2.10+): a resend
/// met its earlier copy still being replicated. That copy may be stored, so
/// the outcome is unknown, never "not stored" (found by tests/partitions).
const ID_IN_PROCESS: u64 = 10158;

fn id_in_process(err: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(err)
        .and_then(|s| s.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == jetstream::ErrorCode(ID_IN_PROCESS))
}

/// How much of a refused body is still read and thrown away, and for how
/// long, so the client sees the 413 before the connection closes.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Bytes of request bodies in memory at once. Beyond it a request waits,
/// unread (TCP pushes back on its client), up to `nats.request_timeout`,
/// then gets a 429; a batch larger than the whole budget (up to 16 x
/// `max_body`) waits until it can have all of it. Without it 64 connections
/// of 16 MiB batches would need 1 GiB. 8 x `max_body` measured best: at 16 x
/// the allocator's peak under 64 connections of 2 MB batches was 52 MB, at 8 x
/// 37 MB with the same throughput, at 4 x 24 MB but a third slower.
pub fn body_budget(max_body: usize) -> usize {
    max_body.saturating_mul(BODY_BUDGET_FACTOR)
}

/// See [`body_budget`].
pub const BODY_BUDGET_FACTOR: usize = 8;

fn body_budget_kib(max_body: usize) -> u32 {
    u32::try_from(kib(body_budget(max_body))).unwrap_or(u32::MAX >> 3)
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

/// What is reserved for a body of unknown length before its first bytes.
const FIRST_RESERVE: usize = 64 * 1024;

impl Publisher {
    /// Reserves `kib` more KiB of request bodies, waiting until `until` at
    /// most. Never more than the whole budget, which could never be had.
    async fn reserve(
        &self,
        kib: usize,
        until: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(kib).unwrap_or(u32::MAX).min(self.bodies_kib);
        if let Ok(permit) = self.bodies.clone().try_acquire_many_owned(n) {
            return Ok(permit);
        }
        match tokio::time::timeout_at(until, self.bodies.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::BodiesOverloaded(body_budget(self.max_body))),
        }
    }

    /// Reads a request body up to `limit` bytes; a larger one (declared or
    /// streamed, e.g. chunked) is refused as soon as it crosses the limit.
    /// The permit holds the body's room in the budget: keep it until the
    /// request is answered.
    pub async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<(Bytes, OwnedSemaphorePermit), ApiError> {
        let too_large = || ApiError::PayloadTooLarge(format!("body is larger than {limit} bytes"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            if !expects_continue(headers) {
                linger(body);
            }
            return Err(too_large());
        }
        let until = tokio::time::Instant::now() + self.request_timeout;
        let budget = self.bodies_kib as usize;
        let first = declared.map_or(FIRST_RESERVE.min(limit), |len| len as usize);
        let mut reserved = kib(first).min(budget);
        let mut permit = match self.reserve(reserved, until).await {
            Ok(permit) => permit,
            Err(e) => {
                if !expects_continue(headers) {
                    linger(body);
                }
                return Err(e);
            }
        };
        let mut body = body;
        let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |len| len as usize));
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
            if let Ok(data) = frame.into_data() {
                let len = buf.len() + data.len();
                if len > limit {
                    linger(body);
                    return Err(too_large());
                }
                let needed = kib(len);
                // Streamed without a length: room grows in doublings, up to
                // the whole budget (then this body is alone in it).
                if needed > reserved && reserved < budget {
                    let more = (needed - reserved).max(reserved).min(budget - reserved);
                    match self.reserve(more, until).await {
                        Ok(extra) => {
                            reserved += more;
                            permit.merge(extra);
                        }
                        Err(e) => {
                            linger(body);
                            return Err(e);
                        }
                    }
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok((buf.freeze(), permit))
    }
}

/// A client waiting for `100 Continue` sends no body once refused.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and discards what follows a refused body, up to `LINGER_BYTES` or
/// `LINGER_TIME`, while the 413 is sent. Closing a connection with unread
/// data makes the kernel reset it, and a client still sending would then
/// see a broken pipe instead of the 413 (and likely retry); web servers'
/// "lingering close" for the same reason. Never buffered.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let mut left = LINGER_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len());
                if n >= left {
                    break;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

/// `POST /v1/publish/{subject}`.
pub async fn publish_one(
    State(publisher): State<Arc<Publisher>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let admitted = async {
        let permit = publisher.admit(1)?;
        publisher.check_subject(&subject)?;
        let (payload, room) = publisher
            .read_body(&headers, body, publisher.max_body)
            .await?;
        let msg = publisher.prepare(subject.clone(), &headers, payload)?;
        Ok::<_, ApiError>((permit, room, msg))
    }
    .await;
    let (_permit, _room, msg) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            publisher.record(&subject, &Err(e.clone()), None);
            return e.into_response();
        }
    };
    match publisher.publish(msg).await {
        Ok(stored) => (StatusCode::OK, Json(stored)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<serde_json::Value>,
}

/// `POST /v1/publish`: a batch.
pub async fn publish_batch(
    State(publisher): State<Arc<Publisher>>,
    request: axum::extract::Request,
) -> Response {
    // The request whole, not the `HeaderMap` extractor: that one clones.
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let result = async {
        let ndjson = batch::is_ndjson(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if publisher.health.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        let limit = publisher.max_body.saturating_mul(BATCH_BODY_FACTOR);
        let (body, _room) = publisher.read_body(&headers, body, limit).await?;
        let items = batch::parse(&body, ndjson)?;
        // The items hold their own payloads (the room reserved for the body
        // stands for them): free the request body now rather than for as
        // long as the PubAcks take.
        drop(body);
        let _permit = publisher.admit(items.len())?;
        publisher.publish_batch(items).await
    }
    .await;
    match result {
        Ok(results) => {
            let all_ok = results.iter().all(|r| r.is_ok());
            let results = results
                .into_iter()
                .map(|r| match r {
                    Ok(stored) => serde_json::to_value(stored).unwrap_or_default(),
                    Err(e) => e.body(),
                })
                .collect();
            let status = if all_ok {
                StatusCode::OK
            } else {
                StatusCode::MULTI_STATUS
            };
            (status, Json(BatchAnswer { results })).into_response()
        }
        Err(e) => {
            if !matches!(e, ApiError::NatsUnavailable(_)) {
                // A refused batch has no subject yet; the connection error
                // was counted per item by publish_batch.
                publisher.record_refused(&e);
            }
            e.into_response()
        }
    }
}
