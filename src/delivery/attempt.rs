//! One attempt: the POST (`call`), the decision on its outcome
//! (`retry::classify`), and settling the message accordingly: ack, delayed
//! NAK, or dead letter then terminate.

use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, message::AckKind};
use http_body_util::BodyExt;
use time::OffsetDateTime;

use super::connections::SendError;
use super::request::{self, Target};
use super::retry::{self, Action, Outcome};
use super::{Delivery, Subscription, HAND_BACK_DELAY};
use crate::dead_letter::{self, Failure};
use crate::envelope::{Envelope, Reason};
use crate::telemetry::tracer::{self as spans, ProcessSpan};

/// Most bytes of a response body read (the first KiB goes into dead letters).
const MAX_RESPONSE_BODY: usize = 64 * 1024;

/// What one attempt produced, for the decision and the dead letter.
pub(super) struct Attempt {
    pub(super) outcome: Outcome,
    pub(super) status: Option<u16>,
    pub(super) error: String,
}

impl Delivery {
    /// Acts on the outcome of an attempt: ack after a 2xx, a delayed NAK
    /// for a retry, the dead letter (then terminate) when given up; `span`
    /// (the attempt's process span) ends with the decision.
    pub(super) async fn settle(
        &self,
        sub: &Subscription,
        msg: &jetstream::Message,
        env: &Envelope,
        attempt: Attempt,
        span: ProcessSpan,
    ) {
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
                nak(msg, Some(delay)).await;
                sub.metrics.retry.inc();
            }
            Action::EndpointDown => {
                event!(debug, error = %attempt.error, "endpoint not reachable; handed back");
                span.end(
                    "endpoint_down",
                    attempt.status,
                    Some(&error_type(&attempt.outcome)),
                );
                self.set_endpoint_up(sub, false);
                nak(msg, Some(HAND_BACK_DELAY)).await;
                sub.metrics.retry.inc();
            }
            Action::DeadLetter(reason) => {
                let failure = Failure {
                    reason,
                    status: attempt.status,
                    error: attempt.error,
                    attempts: env.attempt,
                };
                let status = attempt.status;
                Box::pin(self.dead_letter(sub, msg, env, failure, &span)).await;
                span.end("dead_letter", status, Some(&error_type(&attempt.outcome)));
            }
        }
    }

    /// Stores the dead letter, and only after its PubAck terminates the
    /// original. If the store fails the original is NAKed, never acked.
    pub(super) async fn dead_letter(
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
        // The dead letter carries the dead-letter span's context, so its
        // replay continues the trace under that span (SPEC section 10).
        let traced;
        let stored_env = match dlq_span.traceparent() {
            Some(tp) => {
                let mut env = env.clone();
                env.headers.insert("traceparent", tp.as_str());
                traced = env;
                &traced
            }
            None => env,
        };
        let stored = self
            .dead_letters
            .store(sub.name(), stored_env, &failure, &msg_id)
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

    /// The POST of one attempt (SPEC section 4).
    pub(super) fn request(
        &self,
        sub: &Subscription,
        env: &Envelope,
        span: &ProcessSpan,
    ) -> hyper::Request<http_body_util::Full<bytes::Bytes>> {
        let target = Target {
            endpoint: &sub.target,
            host: sub.host.as_ref(),
            subscription: &sub.header,
            stream: sub.stream_header.get(),
            signing_secret: sub.config.signing_secret.as_ref(),
            callback_token: self.app.callback_token.as_ref(),
        };
        // The attempt's context, from the String itself: no copy.
        let traceparent = span
            .traceparent()
            .and_then(|tp| hyper::header::HeaderValue::try_from(tp).ok());
        request::build(env, &target, OffsetDateTime::now_utc, traceparent)
    }

    /// Sends `request` on one of the subscription's connections and reads
    /// the answer: status, `Retry-After` and the start of the body.
    pub(super) async fn send(
        &self,
        sub: &Subscription,
        request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
    ) -> Result<Answer, SendError> {
        let (response, connection) = sub.connections.send(request).await?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(hyper::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| retry::parse_retry_after(v, SystemTime::now()));
        let (body, whole) = read_start(response.into_body()).await;
        // A body not read to its end leaves the connection unusable.
        if whole {
            sub.connections.put_back(connection);
        }
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// POSTs the envelope once, within the subscription's timeout, and
    /// reads the answer.
    pub(super) async fn call(
        &self,
        sub: &Subscription,
        env: &Envelope,
        span: &ProcessSpan,
    ) -> Attempt {
        let started = Instant::now();
        let request = self.request(sub, env, span);
        let answer = tokio::time::timeout(sub.config.timeout, self.send(sub, request))
            .await
            .ok();
        attempt(sub, started, answer)
    }

    /// The span of one delivery attempt (SPEC section 10).
    pub(super) fn process_span(&self, sub: &Subscription, env: &Envelope) -> ProcessSpan {
        self.tracer.process(
            &env.headers,
            &spans::Delivery {
                span_name: &sub.span_name,
                consumer: &sub.consumer_shared,
                subject: &env.subject,
                stream: &env.stream,
                sequence: env.sequence,
                attempt: env.attempt,
            },
        )
    }
}

/// What an endpoint answered.
pub(super) struct Answer {
    status: u16,
    retry_after: Option<Duration>,
    /// The first KiB of the body, as text.
    body: String,
}

/// The attempt that began at `started`: `None` when the timeout ran out
/// first. Observes the endpoint's response time.
pub(super) fn attempt(
    sub: &Subscription,
    started: Instant,
    answer: Option<Result<Answer, SendError>>,
) -> Attempt {
    sub.metrics
        .duration
        .observe(started.elapsed().as_secs_f64());
    match answer {
        None => Attempt {
            outcome: Outcome::Timeout,
            status: None,
            error: format!("no answer within {:?}", sub.config.timeout),
        },
        Some(Err(e)) if e.is_connect() => Attempt {
            outcome: Outcome::Refused,
            status: None,
            error: format!(
                "cannot connect to {}: {}",
                sub.config.endpoint,
                error_chain(&e)
            ),
        },
        Some(Err(e)) => Attempt {
            outcome: Outcome::Failed,
            status: None,
            error: format!("request failed: {}", error_chain(&e)),
        },
        Some(Ok(Answer {
            status: code,
            retry_after,
            body,
        })) => Attempt {
            outcome: Outcome::Status { code, retry_after },
            status: Some(code),
            // What a failure is logged and dead-lettered with; a success
            // needs no text.
            error: if (200..300).contains(&code) {
                String::new()
            } else if body.is_empty() {
                format!("HTTP {code}")
            } else {
                format!("HTTP {code}: {body}")
            },
        },
    }
}

/// `error.type` of a failed attempt: a bounded kind, never the error text
/// (the status code for an HTTP answer, as the conventions have it).
pub(super) fn error_type(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Timeout => "timeout".into(),
        Outcome::Refused => "connection_refused".into(),
        Outcome::Failed => "request_failed".into(),
        Outcome::Status { code, .. } => code.to_string(),
    }
}

/// A NAK, delayed or not; failure only means JetStream redelivers after
/// the ack wait instead.
pub(super) async fn nak(msg: &jetstream::Message, delay: Option<Duration>) {
    if let Err(e) = msg.ack_with(AckKind::Nak(delay)).await {
        tracing::debug!(error = %e, "nak failed; JetStream redelivers after the ack wait");
    }
}

/// The envelope of a pulled message; its headers move into it (acks need
/// only the reply subject).
pub(super) fn envelope(msg: &mut jetstream::Message) -> Result<Envelope, async_nats::Error> {
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
/// as text (for dead letters), and whether the body was read to its end.
pub(super) async fn read_start(mut body: hyper::body::Incoming) -> (String, bool) {
    let mut start = Vec::new();
    let mut total = 0usize;
    let whole = loop {
        let Some(frame) = body.frame().await else {
            break true;
        };
        let Ok(frame) = frame else { break false };
        if let Some(data) = frame.data_ref() {
            total += data.len();
            let room = dead_letter::MAX_ERROR_LEN.saturating_sub(start.len());
            start.extend_from_slice(&data[..data.len().min(room)]);
        }
        if total > MAX_RESPONSE_BODY {
            break false;
        }
    };
    (String::from_utf8_lossy(&start).trim().to_string(), whole)
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
