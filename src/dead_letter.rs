//! The dead-letter stream (SPEC section 5): storing what could not be
//! delivered, listing it, and reading it back for replay.

use std::time::Duration;

use async_nats::jetstream::{self, message::StreamMessage};
use base64::Engine;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::envelope::{Envelope, Reason};

/// How long a counting consumer outlives its count.
const COUNT_CONSUMER_EXPIRY: Duration = Duration::from_secs(5);

/// Longest `Jetway-Dlq-Error` value.
pub const MAX_ERROR_LEN: usize = 1024;

/// Failure to talk to the dead-letter stream.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("dead-letter publish failed: {0}")]
    Publish(String),
    #[error("dead-letter stream request failed: {0}")]
    Stream(String),
    #[error("no dead letter {0} for this subscription")]
    NotFound(u64),
}

/// What is known about a failed delivery.
#[derive(Debug, Clone)]
pub struct Failure {
    pub reason: Reason,
    pub status: Option<u16>,
    pub error: String,
    pub attempts: u64,
}

/// One dead letter as the list route shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Item {
    pub dlq_sequence: u64,
    pub original_subject: String,
    pub original_stream: String,
    pub original_sequence: u64,
    pub reason: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub attempts: u64,
    pub at: String,
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    pub data_base64: String,
}

/// The dead-letter stream of one app.
#[derive(Clone)]
pub struct DeadLetters {
    js: jetstream::Context,
    stream: String,
    app_id: String,
}

/// Cuts `s` to at most `max` bytes on a character boundary, on one line.
pub fn truncate(s: &str, max: usize) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.len() <= max {
        return one_line;
    }
    let mut end = max;
    while !one_line.is_char_boundary(end) {
        end -= 1;
    }
    one_line[..end].to_string()
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).map(|v| v.as_str())
}

/// Headers of a stored message as a JSON-friendly map.
pub fn header_map(
    headers: &async_nats::HeaderMap,
) -> std::collections::BTreeMap<String, Vec<String>> {
    headers
        .iter()
        .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
        .collect()
}

impl DeadLetters {
    pub fn new(js: jetstream::Context, stream: String, app_id: String) -> Self {
        DeadLetters { js, stream, app_id }
    }

    /// `jetway.dlq.<app_id>.<subscription>`.
    pub fn subject(&self, subscription: &str) -> String {
        format!("jetway.dlq.{}.{subscription}", self.app_id)
    }

    /// The dead-letter message: original body and headers plus the
    /// `Jetway-Original-*` and `Jetway-Dlq-*` headers.
    pub fn message_headers(
        env: &Envelope,
        failure: &Failure,
        msg_id: &str,
    ) -> async_nats::HeaderMap {
        let mut headers = async_nats::HeaderMap::new();
        for (name, values) in env.headers.iter() {
            let lower = AsRef::<str>::as_ref(name).to_ascii_lowercase();
            // Control headers of the original publish must not act again.
            if lower.starts_with("nats-") || lower.starts_with("jetway-") {
                if lower == "nats-msg-id" {
                    for v in values {
                        headers.append("Jetway-Original-Msg-Id", v.clone());
                    }
                }
                continue;
            }
            for v in values {
                headers.append(name.clone(), v.clone());
            }
        }
        let now = OffsetDateTime::now_utc()
            .format(&Rfc3339)
            .unwrap_or_default();
        headers.insert("Nats-Msg-Id", msg_id);
        insert(&mut headers, "Jetway-Original-Subject", &env.subject);
        insert(&mut headers, "Jetway-Original-Stream", &env.stream);
        insert(
            &mut headers,
            "Jetway-Original-Sequence",
            &env.sequence.to_string(),
        );
        if let Ok(published) = env.published.format(&Rfc3339) {
            insert(&mut headers, "Jetway-Original-Published-At", &published);
        }
        insert(&mut headers, "Jetway-Dlq-Reason", failure.reason.as_str());
        if let Some(status) = failure.status {
            insert(&mut headers, "Jetway-Dlq-Status", &status.to_string());
        }
        insert(
            &mut headers,
            "Jetway-Dlq-Error",
            &truncate(&failure.error, MAX_ERROR_LEN),
        );
        insert(
            &mut headers,
            "Jetway-Dlq-Attempts",
            &failure.attempts.to_string(),
        );
        insert(&mut headers, "Jetway-Dlq-At", &now);
        headers
    }

    /// Stores a dead letter and waits for its PubAck; returns its sequence.
    /// `msg_id` makes a repeat (the original redelivered after a crash
    /// between PubAck and terminate) a duplicate, stored once.
    pub async fn store(
        &self,
        subscription: &str,
        env: &Envelope,
        failure: &Failure,
        msg_id: &str,
    ) -> Result<u64, DlqError> {
        let headers = Self::message_headers(env, failure, msg_id);
        let ack = self
            .js
            .publish_with_headers(self.subject(subscription), headers, env.payload.clone())
            .await
            .map_err(|e| DlqError::Publish(e.to_string()))?
            .await
            .map_err(|e| DlqError::Publish(e.to_string()))?;
        Ok(ack.sequence)
    }

    async fn stream(&self) -> Result<jetstream::stream::Stream<()>, DlqError> {
        self.js
            .get_stream_no_info(&self.stream)
            .await
            .map_err(|e| DlqError::Stream(e.to_string()))
    }

    /// The last sequence of the dead-letter stream (0 when empty).
    pub async fn last_sequence(&self) -> Result<u64, DlqError> {
        let stream = self
            .js
            .get_stream(&self.stream)
            .await
            .map_err(|e| DlqError::Stream(e.to_string()))?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// The dead letter at `seq` if it belongs to `subscription`.
    pub async fn get(&self, subscription: &str, seq: u64) -> Result<StreamMessage, DlqError> {
        let msg = self
            .stream()
            .await?
            .get_raw_message(seq)
            .await
            .map_err(|_| DlqError::NotFound(seq))?;
        if msg.subject.as_str() != self.subject(subscription) {
            return Err(DlqError::NotFound(seq));
        }
        Ok(msg)
    }

    /// Up to `limit` dead letters after sequence `after`, and the cursor for
    /// the next page.
    pub async fn list(
        &self,
        subscription: &str,
        after: u64,
        limit: usize,
    ) -> Result<(Vec<StreamMessage>, Option<u64>), DlqError> {
        let stream = self.stream().await?;
        let subject = self.subject(subscription);
        let mut out = Vec::new();
        let mut next = after.saturating_add(1);
        while out.len() < limit {
            let found = stream
                .raw_message_builder()
                .sequence(next)
                .next_by_subject(subject.clone())
                .send()
                .await;
            match found {
                Ok(msg) => {
                    next = msg.sequence.saturating_add(1);
                    out.push(msg);
                }
                Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                    break
                }
                Err(e) => return Err(DlqError::Stream(e.to_string())),
            }
        }
        let more = out.len() == limit && self.has_after(&stream, &subject, next).await;
        let cursor = if more {
            out.last().map(|m| m.sequence)
        } else {
            None
        };
        Ok((out, cursor))
    }

    /// The first dead letter of `subscription` after sequence `after`.
    pub async fn next(
        &self,
        subscription: &str,
        after: u64,
    ) -> Result<Option<StreamMessage>, DlqError> {
        let found = self
            .stream()
            .await?
            .raw_message_builder()
            .sequence(after.saturating_add(1))
            .next_by_subject(self.subject(subscription))
            .send()
            .await;
        match found {
            Ok(msg) => Ok(Some(msg)),
            Err(e) if e.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(DlqError::Stream(e.to_string())),
        }
    }

    async fn has_after(
        &self,
        stream: &jetstream::stream::Stream<()>,
        subject: &str,
        from: u64,
    ) -> bool {
        stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject.to_string())
            .send()
            .await
            .is_ok()
    }

    /// How many dead letters the subscription has.
    pub async fn count(&self, subscription: &str) -> Result<u64, DlqError> {
        // Not `STREAM.INFO` with `subjects_filter`: nats-server 2.9.10
        // answers 0 for a subject once the first block that held it was
        // emptied by deletes, though the rest is still stored (seen with
        // 1500 dead letters of 16 KiB, half of them deleted; 2.15.1 counts
        // right). A consumer filtered on the subscription's dead letters
        // counts them right on every server: its `num_pending` at creation.
        // It is never pulled and expires by itself (the least-privilege
        // list grants creating consumers on this app's dead letters only,
        // no deletes).
        let config = jetstream::consumer::pull::Config {
            name: Some(format!("jw-count-{:016x}", rand::random::<u64>())),
            filter_subject: self.subject(subscription),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            inactive_threshold: COUNT_CONSUMER_EXPIRY,
            memory_storage: true,
            ..Default::default()
        };
        let consumer = self
            .stream()
            .await?
            .create_consumer(config)
            .await
            .map_err(|e| DlqError::Stream(e.to_string()))?;
        Ok(consumer.cached_info().num_pending)
    }

    /// Removes one dead letter of `subscription`.
    pub async fn delete(&self, subscription: &str, seq: u64) -> Result<(), DlqError> {
        self.get(subscription, seq).await?;
        self.remove(seq).await
    }

    /// Removes the dead letter at `seq`, already read and known to be this
    /// app's (a replay holds it): no second read of its body.
    pub async fn remove(&self, seq: u64) -> Result<(), DlqError> {
        self.stream()
            .await?
            .delete_message(seq)
            .await
            .map_err(|e| DlqError::Stream(e.to_string()))?;
        Ok(())
    }
}

fn insert(headers: &mut async_nats::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = value.parse::<async_nats::HeaderValue>() {
        headers.insert(name, v);
    }
}

/// The envelope to replay and the failure recorded with a dead letter.
pub fn read(msg: &StreamMessage) -> (Envelope, Failure) {
    let h = &msg.headers;
    let attempts = header(h, "Jetway-Dlq-Attempts")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut headers = async_nats::HeaderMap::new();
    for (name, values) in h.iter() {
        let lower = AsRef::<str>::as_ref(name).to_ascii_lowercase();
        if lower.starts_with("jetway-") || lower.starts_with("nats-") {
            continue;
        }
        for v in values {
            headers.append(name.clone(), v.clone());
        }
    }
    if let Some(id) = header(h, "Jetway-Original-Msg-Id") {
        insert(&mut headers, "Nats-Msg-Id", id);
    }
    let published = header(h, "Jetway-Original-Published-At")
        .and_then(|v| OffsetDateTime::parse(v, &Rfc3339).ok())
        .unwrap_or_else(|| {
            OffsetDateTime::from_unix_timestamp(msg.time.unix_timestamp())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH)
        });
    let env = Envelope {
        subject: header(h, "Jetway-Original-Subject")
            .unwrap_or_default()
            .to_string(),
        stream: header(h, "Jetway-Original-Stream")
            .unwrap_or_default()
            .to_string(),
        sequence: header(h, "Jetway-Original-Sequence")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        attempt: attempts + 1,
        published,
        headers,
        payload: msg.payload.clone(),
    };
    let failure = Failure {
        reason: match header(h, "Jetway-Dlq-Reason") {
            Some("exhausted") => Reason::Exhausted,
            _ => Reason::Rejected,
        },
        status: header(h, "Jetway-Dlq-Status").and_then(|v| v.parse().ok()),
        error: header(h, "Jetway-Dlq-Error")
            .unwrap_or_default()
            .to_string(),
        attempts,
    };
    (env, failure)
}

/// The list route's view of a dead letter.
pub fn item(msg: &StreamMessage) -> Item {
    let (env, failure) = read(msg);
    Item {
        dlq_sequence: msg.sequence,
        original_subject: env.subject,
        original_stream: env.stream,
        original_sequence: env.sequence,
        reason: failure.reason.as_str().to_string(),
        status: failure.status,
        error: Some(failure.error).filter(|e| !e.is_empty()),
        attempts: failure.attempts,
        at: header(&msg.headers, "Jetway-Dlq-At")
            .unwrap_or_default()
            .to_string(),
        headers: header_map(&msg.headers),
        data_base64: base64::engine::general_purpose::STANDARD.encode(&msg.payload),
    }
}

/// How long a replay's dead-letter rewrite may take.
pub const REWRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_cut_to_one_kib_on_one_line() {
        assert_eq!(truncate("a\nb", 10), "a b");
        let long = "é".repeat(1000);
        let cut = truncate(&long, MAX_ERROR_LEN);
        assert!(cut.len() <= MAX_ERROR_LEN);
        assert!(cut.len() >= MAX_ERROR_LEN - 1);
    }

    #[test]
    fn dead_letter_headers_round_trip() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "text/plain");
        headers.insert("Nats-Msg-Id", "m1");
        headers.insert("Nats-Expected-Last-Sequence", "4");
        let env = Envelope {
            subject: "orders.created".into(),
            stream: "ORDERS".into(),
            sequence: 9,
            attempt: 3,
            published: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            headers,
            payload: bytes::Bytes::from_static(b"x"),
        };
        let failure = Failure {
            reason: Reason::Exhausted,
            status: Some(503),
            error: "HTTP 503".into(),
            attempts: 3,
        };
        let stored = DeadLetters::message_headers(&env, &failure, "ORDERS:9:c");
        assert!(stored.get("Nats-Expected-Last-Sequence").is_none());
        assert_eq!(
            stored.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some("ORDERS:9:c")
        );
        let msg = StreamMessage {
            subject: "jetway.dlq.app.s".into(),
            sequence: 5,
            headers: stored,
            payload: env.payload.clone(),
            time: time::OffsetDateTime::UNIX_EPOCH,
        };
        let (back, f) = read(&msg);
        assert_eq!(back.subject, "orders.created");
        assert_eq!(back.stream, "ORDERS");
        assert_eq!(back.sequence, 9);
        assert_eq!(back.attempt, 4);
        assert_eq!(back.published, env.published);
        assert_eq!(back.idempotency_key().to_string(), "m1");
        assert_eq!(
            back.headers.get("Content-Type").map(|v| v.as_str()),
            Some("text/plain")
        );
        assert_eq!(f.reason, Reason::Exhausted);
        assert_eq!(f.status, Some(503));
        assert_eq!(f.attempts, 3);
        let it = item(&msg);
        assert_eq!(it.reason, "exhausted");
        assert_eq!(it.data_base64, "eA==");
    }
}
