//! Handing a message to JetStream and learning whether it was stored:
//! `send`, then `confirm` (the PubAck; a message with an id is resent with
//! the same id while the deadline allows), and `classify`, what a failure
//! answers (503 only when nothing can have been stored).

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind};

use super::{Outgoing, Publisher, Stored};
use crate::error::ApiError;
use crate::metrics::UNKNOWN_STREAM;

/// Wait before resending after "no responders" (a stream leader election).
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(100);
/// Least time a resent message is given for its PubAck.
const MIN_RESEND_WAIT: Duration = Duration::from_millis(100);

impl Publisher {
    /// 503 unless connected: a publish handed to a disconnected client would
    /// be queued and might be stored later, so "not stored" could not be
    /// promised.
    pub(super) fn ensure_connected(&self) -> Result<(), ApiError> {
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

    /// Hands the message to the client; `Ok` means it may be stored. A
    /// message that is never resent (no id) gives its headers away
    /// instead of a copy (the copy and its drop were 3 % of a publish).
    pub(super) async fn send(
        &self,
        msg: &mut Outgoing,
    ) -> Result<jetstream::context::PublishAckFuture, ApiError> {
        let headers = if msg.has_id {
            msg.headers.clone()
        } else {
            std::mem::take(&mut msg.headers)
        };
        self.hand_over(msg, headers).await
    }

    /// Hands `msg` to the client with `headers`.
    async fn hand_over(
        &self,
        msg: &Outgoing,
        headers: async_nats::HeaderMap,
    ) -> Result<jetstream::context::PublishAckFuture, ApiError> {
        self.js
            .send_publish(
                msg.subject.clone(),
                jetstream::message::PublishMessage::build()
                    .payload(msg.payload.clone())
                    .headers(headers),
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
    pub(super) async fn confirm(
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
            // No responders for a configured stream: if it was deleted, it
            // is created again in the background (a resend may find it).
            if err.kind() == PublishErrorKind::StreamNotFound {
                let stream = self.stream_label(&msg.subject);
                if stream != UNKNOWN_STREAM {
                    self.streams.restore(stream);
                }
            }
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
                // Boxed: its JetStream lookups would make every confirm's
                // state as large as theirs, and a batch holds one confirm
                // per item (100 items x 64 connections were 22 MB).
                return Err(Box::pin(self.classify(msg, err, maybe_stored)).await);
            }
            tracing::debug!(subject = %msg.subject, error = %err, "no PubAck yet; resending with the same id");
            // Only a message with an id is resent, and it kept its headers.
            // Boxed, as `classify`: a rare path kept out of every confirm.
            let resend = async {
                tokio::time::sleep(pause).await;
                self.hand_over(msg, msg.headers.clone()).await
            };
            ack = match Box::pin(resend).await {
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
                let stream = self.stream_label(&msg.subject);
                if maybe_stored {
                    ApiError::Timeout(self.request_timeout)
                } else {
                    ApiError::NatsUnavailable(format!(
                        "stream {stream} is not answering (no leader, or deleted: then jetway creates it again); nothing was stored"
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
        if msg.expects_subject_sequence {
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
