//! Live reads: `GET /v1/subjects/{subject}/live`, what is stored next,
//! over Server-Sent Events or NDJSON, pulled from JetStream only as fast as
//! the socket takes it.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::Context;
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::{DeleteOnDrop, Reads, StoredMessage, Target, INACTIVE_THRESHOLD};
use crate::error::ApiError;

/// How often a live read writes a keep-alive (an SSE comment, a blank
/// NDJSON line) when no message came. SPEC asks for at least every 15 s;
/// 5 s also makes a write to a reader that went away fail well within the
/// 15 s in which its consumer must be freed.
pub const KEEPALIVE: Duration = Duration::from_secs(5);

/// Messages of one pull request of a live read.
const LIVE_BATCH: usize = 256;

/// Bytes of one pull request of a live read, unless the server's largest
/// message is larger (a batch must hold at least one message).
const LIVE_BATCH_BYTES: usize = 1 << 20;

/// How a live read is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Sse,
    Ndjson,
}

impl Format {
    /// NDJSON when the client asks for it, else Server-Sent Events.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/x-ndjson") => Format::Ndjson,
            _ => Format::Sse,
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Sse => "text/event-stream",
            Format::Ndjson => "application/x-ndjson",
        }
    }

    /// One message. Its JSON never holds a raw newline, so it is one
    /// `data:` line.
    pub fn frame(self, seq: u64, json: &str) -> Bytes {
        match self {
            Format::Sse => format!("id: {seq}\nevent: message\ndata: {json}\n\n").into(),
            Format::Ndjson => format!("{json}\n").into(),
        }
    }

    /// A keep-alive: an SSE comment, or a blank line NDJSON readers skip.
    pub fn keepalive(self) -> Bytes {
        match self {
            Format::Sse => Bytes::from_static(b": keepalive\n\n"),
            Format::Ndjson => Bytes::from_static(b"\n"),
        }
    }
}

/// The query of a live read.
#[derive(Debug, Deserialize)]
pub struct LiveQuery {
    after: Option<String>,
}

/// Where a live read starts: after `Last-Event-ID` (a reconnecting SSE
/// client sends it with the URL it first used, so it wins), else after
/// `after`, else `None` (the next message stored).
pub fn start_after(
    after: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<Option<u64>, ApiError> {
    let parse = |what: &str, v: &str| {
        v.trim()
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("{what} `{v}` is not a sequence number")))
    };
    match (last_event_id, after) {
        (Some(id), _) if !id.trim().is_empty() => parse("Last-Event-ID", id),
        (_, Some(a)) => parse("after", a),
        _ => Ok(None),
    }
}

/// `GET /v1/subjects/{subject}/live?after=SEQ`.
pub async fn live(
    State(reads): State<Arc<Reads>>,
    Path(subject): Path<String>,
    query: Result<Query<LiveQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let after = start_after(query.after.as_deref(), header("last-event-id"))?;
    let format = Format::negotiate(header("accept"));
    let target = reads.target(&subject)?;
    let permit = reads
        .live
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyLiveReads(reads.max_live))?;
    if reads.stop.is_cancelled() {
        return Err(ApiError::ShuttingDown);
    }
    let mut read = Live::new(&reads, target, format, permit);
    // The start is fixed now, so messages stored while the consumer is
    // being created are not missed.
    read.last = match after {
        Some(seq) => seq,
        None => read.stream_last_sequence().await?,
    };
    read.open().await?;
    let body = futures::stream::unfold(read, |mut read| async move {
        read.next_frame()
            .await
            .map(|frame| (Ok::<_, std::convert::Infallible>(frame), read))
    });
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type()),
            (header::CACHE_CONTROL, "no-cache"),
            // nginx and the like would otherwise buffer the stream.
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Counts a live read in `jetway_live_reads` while it is open.
struct LiveSlot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl LiveSlot {
    fn new(permit: OwnedSemaphorePermit, gauge: prometheus::IntGauge) -> LiveSlot {
        gauge.inc();
        LiveSlot {
            _permit: permit,
            gauge,
        }
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One open live read: a pull consumer from `last + 1` on, recreated from
/// the last message sent if it is lost (NATS restarted, missed heartbeats,
/// a gap in its sequence).
struct Live {
    js: Context,
    target: Target,
    format: Format,
    stop: CancellationToken,
    /// Stream sequence of the last message sent (or of the start).
    last: u64,
    /// Consumer sequence of the last message of the current consumer.
    consumer_seq: u64,
    messages: Option<(pull::Stream, DeleteOnDrop)>,
    keepalive: tokio::time::Interval,
    retry: Duration,
    _slot: LiveSlot,
}

impl Live {
    fn new(reads: &Reads, target: Target, format: Format, permit: OwnedSemaphorePermit) -> Live {
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        keepalive.reset();
        Live {
            js: reads.js.clone(),
            target,
            format,
            stop: reads.stop.clone(),
            last: 0,
            consumer_seq: 0,
            messages: None,
            keepalive,
            retry: Duration::from_millis(100),
            _slot: LiveSlot::new(permit, reads.metrics.live_reads.clone()),
        }
    }

    async fn stream_last_sequence(&self) -> Result<u64, ApiError> {
        let stream = self.js.get_stream(&self.target.stream).await.map_err(|e| {
            ApiError::NatsUnavailable(format!("stream {}: {e}", self.target.stream))
        })?;
        Ok(stream.cached_info().state.last_sequence)
    }

    /// Creates the consumer from `last + 1`.
    async fn open(&mut self) -> Result<(), ApiError> {
        self.messages = None;
        let unavailable =
            |e: &dyn std::fmt::Display| ApiError::NatsUnavailable(format!("live read: {e}"));
        let consumer: consumer::Consumer<pull::Config> = self
            .js
            .create_consumer_on_stream(
                pull::Config {
                    filter_subject: self.target.filter.clone(),
                    deliver_policy: DeliverPolicy::ByStartSequence {
                        start_sequence: self.last.saturating_add(1),
                    },
                    ack_policy: AckPolicy::None,
                    inactive_threshold: INACTIVE_THRESHOLD,
                    memory_storage: true,
                    num_replicas: 1,
                    ..Default::default()
                },
                &self.target.stream,
            )
            .await
            .map_err(|e| unavailable(&e))?;
        let delete = DeleteOnDrop::new(
            self.js.clone(),
            &self.target.stream,
            &consumer.cached_info().name,
        );
        let max_payload = self.js.client().server_info().max_payload;
        let messages = consumer
            .stream()
            .max_messages_per_batch(LIVE_BATCH)
            .max_bytes_per_batch(LIVE_BATCH_BYTES.max(max_payload))
            .heartbeat(Duration::from_secs(5))
            .expires(Duration::from_secs(30))
            .messages()
            .await
            .map_err(|e| unavailable(&e))?;
        self.consumer_seq = 0;
        self.messages = Some((messages, delete));
        Ok(())
    }

    /// The next frame to write; `None` ends the response (shutdown).
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if self.messages.is_none() {
                let stop = self.stop.clone();
                let opened = tokio::select! {
                    biased;
                    _ = stop.cancelled() => return None,
                    opened = self.open() => opened,
                };
                if let Err(e) = opened {
                    tracing::debug!(stream = %self.target.stream, error = %e, "live read: reopening the consumer failed");
                    tokio::select! {
                        _ = stop.cancelled() => return None,
                        _ = tokio::time::sleep(self.retry) => {}
                    }
                    self.retry = (self.retry * 2).min(KEEPALIVE);
                    // Keeps proxies (and the check for a reader gone) going
                    // while NATS is away.
                    return Some(self.format.keepalive());
                }
            }
            let Some((messages, _)) = self.messages.as_mut() else {
                continue;
            };
            let next = tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                next = messages.next() => next,
                _ = self.keepalive.tick() => return Some(self.format.keepalive()),
            };
            match next {
                Some(Ok(m)) => {
                    let Ok(info) = m.info() else {
                        continue;
                    };
                    let (seq, cseq, published) =
                        (info.stream_sequence, info.consumer_sequence, info.published);
                    if cseq != self.consumer_seq + 1 {
                        // A gap: start again after the last message sent.
                        tracing::debug!(stream = %self.target.stream, seq, "live read: gap; recreating its consumer");
                        self.messages = None;
                        continue;
                    }
                    self.consumer_seq = cseq;
                    if seq <= self.last {
                        continue;
                    }
                    self.last = seq;
                    self.retry = Duration::from_millis(100);
                    let message =
                        StoredMessage::from_consumer(&self.target.stream, seq, published, &m);
                    let Ok(json) = serde_json::to_string(&message) else {
                        continue;
                    };
                    self.keepalive.reset();
                    return Some(self.format.frame(seq, &json));
                }
                Some(Err(e)) => {
                    tracing::debug!(stream = %self.target.stream, error = %e, "live read: consumer lost; recreating it");
                    self.messages = None;
                }
                None => self.messages = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_id_wins_over_after() {
        assert_eq!(start_after(None, None).ok(), Some(None));
        assert_eq!(start_after(Some("4"), None).ok(), Some(Some(4)));
        assert_eq!(start_after(Some("4"), Some("9")).ok(), Some(Some(9)));
        assert_eq!(start_after(Some("4"), Some("")).ok(), Some(Some(4)));
        assert!(start_after(Some("x"), None).is_err());
        assert!(start_after(None, Some("x")).is_err());
    }

    #[test]
    fn frames() {
        assert_eq!(
            Format::negotiate(Some("application/x-ndjson")),
            Format::Ndjson
        );
        assert_eq!(Format::negotiate(Some("text/event-stream")), Format::Sse);
        assert_eq!(Format::negotiate(None), Format::Sse);
        assert_eq!(
            &Format::Sse.frame(3, "{\"a\":1}")[..],
            b"id: 3\nevent: message\ndata: {\"a\":1}\n\n"
        );
        assert_eq!(&Format::Ndjson.frame(3, "{}")[..], b"{}\n");
        assert!(Format::Sse.keepalive().starts_with(b":"));
    }
}
