//! Reads for event sourcing and CQRS (SPEC section 6): the history of an
//! entity (`GET /v1/subjects/{subject}/messages`) and live reads that follow
//! a subject over Server-Sent Events or NDJSON
//! (`GET /v1/subjects/{subject}/live`).
//!
//! Both only ever read the streams of this sidecar's config (never the
//! dead-letter stream, never other teams' streams), with the subject as
//! the consumer's filter, so the server skips what does not match instead
//! of jetway scanning the stream.
//!
//! Live reads are flow-controlled end to end: the response body pulls the
//! next frame from the JetStream pull consumer only when hyper can write
//! it, and the consumer asks the server for more only when its bounded
//! batch (count and bytes) is half consumed. A reader that stops reading
//! therefore stops the consumer; nothing between the socket and JetStream
//! is an unbounded buffer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, Context};
use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::subject;

/// Default and largest `limit` of a history page.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Most bytes of bodies one history page holds.
const PAGE_BYTES: usize = 16 << 20;

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

/// A consumer left behind (jetway killed before it could delete it) goes
/// away on its own after this long without a pull.
const INACTIVE_THRESHOLD: Duration = Duration::from_secs(15);

/// What the read routes share.
pub struct Reads {
    js: Context,
    /// Configured streams: name and subjects. The dead-letter stream is
    /// never among them.
    streams: Vec<(String, Vec<String>)>,
    live: Arc<Semaphore>,
    max_live: usize,
    metrics: Metrics,
    stop: CancellationToken,
}

impl Reads {
    /// `streams` are the configured ones (`config.streams`); one named
    /// `dead_letter_stream` is left out. `stop` ends every live read
    /// (graceful shutdown).
    pub fn new(
        js: Context,
        streams: &[StreamConfig],
        dead_letter_stream: &str,
        max_live: usize,
        metrics: Metrics,
        stop: CancellationToken,
    ) -> Reads {
        Reads {
            js,
            streams: streams
                .iter()
                .filter(|s| s.name != dead_letter_stream)
                .map(|s| (s.name.clone(), s.subjects.clone()))
                .collect(),
            live: Arc::new(Semaphore::new(max_live)),
            max_live,
            metrics,
            stop,
        }
    }

    fn target(&self, subject: &str) -> Result<Target, ApiError> {
        resolve(&self.streams, subject)
    }
}

/// Whether a subject or pattern names something jetway never reads or
/// writes for an app: the server's own (`$JS.`, `$KV.`, `$SYS.`, ...),
/// reply inboxes and jetway's dead letters.
pub fn is_reserved(subject: &str) -> bool {
    let first = subject.split('.').next().unwrap_or("");
    first.starts_with('$') || first == "_INBOX" || first == "jetway"
}

/// The subjects two patterns have in common, as one pattern (`None` when
/// they share none): `*.created` and `orders.>` give `orders.created`.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    let mut out: Vec<&str> = Vec::new();
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(t)) => {
                out.push(t);
                out.extend(y);
                return Some(out.join("."));
            }
            (Some(t), Some(">")) => {
                out.push(t);
                out.extend(x);
                return Some(out.join("."));
            }
            (Some("*"), Some(t)) | (Some(t), Some("*")) => out.push(t),
            (Some(s), Some(t)) if s == t => out.push(s),
            (None, None) => return Some(out.join(".")),
            _ => return None,
        }
    }
}

/// Where a read goes: a configured stream and the consumer's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub stream: String,
    pub filter: String,
}

/// The one configured stream a subject (wildcards allowed) reads from:
/// 403 for reserved subjects, 404 when no configured stream captures it,
/// 400 when it spans several. The filter is narrowed to what the stream
/// holds (`>` on a stream of `orders.>` reads `orders.>`).
pub fn resolve(streams: &[(String, Vec<String>)], subject: &str) -> Result<Target, ApiError> {
    subject::validate_pattern(subject)?;
    if is_reserved(subject) {
        return Err(ApiError::SubjectReserved(subject.to_string()));
    }
    let mut found = streams.iter().filter_map(|(name, patterns)| {
        let common: Vec<String> = patterns
            .iter()
            .filter_map(|p| intersect(subject, p))
            .collect();
        (!common.is_empty()).then_some((name, common))
    });
    let Some((name, common)) = found.next() else {
        return Err(ApiError::NoStream(subject.to_string()));
    };
    if let Some((other, _)) = found.next() {
        return Err(ApiError::BadRequest(format!(
            "subject {subject} spans several streams ({name}, {other}); read each part on its own"
        )));
    }
    let filter = match common.as_slice() {
        [one] => one.clone(),
        _ => subject.to_string(),
    };
    Ok(Target {
        stream: name.clone(),
        filter,
    })
}

/// A stored message as the read routes show it (the shape of
/// `GET /v1/streams/{stream}/messages/{seq}`).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub time: String,
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    pub data_base64: String,
}

impl StoredMessage {
    fn from_direct(stream: &str, m: &StreamMessage) -> StoredMessage {
        StoredMessage {
            stream: stream.to_string(),
            seq: m.sequence,
            subject: m.subject.to_string(),
            time: m.time.format(&Rfc3339).unwrap_or_default(),
            headers: crate::dead_letter::header_map(&m.headers),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }
    }

    fn from_consumer(
        stream: &str,
        seq: u64,
        time: time::OffsetDateTime,
        m: &jetstream::Message,
    ) -> Self {
        StoredMessage {
            stream: stream.to_string(),
            seq,
            subject: m.subject.to_string(),
            time: time.format(&Rfc3339).unwrap_or_default(),
            headers: m
                .headers
                .as_ref()
                .map(crate::dead_letter::header_map)
                .unwrap_or_default(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }
    }
}

/// One page of a history.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<StoredMessage>,
    /// The `after` of the next page; `None` when this one reached the end.
    pub next: Option<u64>,
}

/// Why a history could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("direct get on {stream}: {source}")]
    Direct {
        stream: String,
        #[source]
        source: async_nats::jetstream::stream::DirectGetError,
    },
    #[error("consumer on {stream}: {source}")]
    Consumer {
        stream: String,
        #[source]
        source: async_nats::Error,
    },
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> Self {
        ApiError::NatsUnavailable(e.to_string())
    }
}

/// A history page by JetStream's direct get (`next_by_subj`): one request
/// per message, plus one to learn whether more follow. Needs
/// `allow_direct` on the stream.
pub async fn history_direct(
    js: &Context,
    target: &Target,
    after: u64,
    limit: usize,
) -> Result<Page, ReadError> {
    let direct = |source| ReadError::Direct {
        stream: target.stream.clone(),
        source,
    };
    let stream = js
        .get_stream_no_info(&target.stream)
        .await
        .map_err(|e| ReadError::Consumer {
            stream: target.stream.clone(),
            source: e.into(),
        })?;
    let mut items = Vec::with_capacity(limit.min(MAX_LIMIT));
    let mut from = after.saturating_add(1);
    // One more than the page, to tell a full last page from a middle one.
    while items.len() <= limit {
        let m = match stream
            .direct_get_next_for_subject(target.filter.as_str(), Some(from))
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
            Err(e) => return Err(direct(e)),
        };
        from = m.sequence.saturating_add(1);
        if items.len() == limit {
            let next = items.last().map(|m: &StoredMessage| m.seq);
            return Ok(Page { items, next });
        }
        items.push(StoredMessage::from_direct(&target.stream, &m));
    }
    Ok(Page { items, next: None })
}

/// A history page by an ephemeral pull consumer filtered on the subject:
/// one request to create it (its `num_pending` says how many follow), one
/// pull for the page, and the deletion after it (not waited for).
pub async fn history_consumer(
    js: &Context,
    target: &Target,
    after: u64,
    limit: usize,
) -> Result<Page, ReadError> {
    let err = |source: async_nats::Error| ReadError::Consumer {
        stream: target.stream.clone(),
        source,
    };
    let consumer: consumer::Consumer<pull::Config> = js
        .create_consumer_on_stream(
            pull::Config {
                filter_subject: target.filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE_THRESHOLD,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            },
            &target.stream,
        )
        .await
        .map_err(|e| err(e.into()))?;
    let _delete = DeleteOnDrop::new(js.clone(), &target.stream, &consumer.cached_info().name);
    let pending = consumer.cached_info().num_pending;
    let want = usize::try_from(pending).unwrap_or(usize::MAX).min(limit);
    let mut items = Vec::with_capacity(want);
    if want == 0 {
        return Ok(Page { items, next: None });
    }
    // A page holds at most PAGE_BYTES of bodies (or one message, if the
    // server allows larger ones): `limit` large messages never pile up in
    // memory; the page is shorter and `next` says where to go on.
    let max_payload = js.client().server_info().max_payload;
    let mut batch = consumer
        .fetch()
        .max_messages(want)
        .max_bytes(PAGE_BYTES.max(max_payload))
        .expires(js_timeout())
        .messages()
        .await
        .map_err(|e| err(e.into()))?;
    let mut left = pending;
    while let Some(m) = batch.next().await {
        let m = match m {
            Ok(m) => m,
            // The byte budget ended the pull: the page is what came.
            Err(_) if !items.is_empty() => break,
            Err(e) => return Err(err(e)),
        };
        let info = m.info().map_err(err)?;
        left = info.pending;
        items.push(StoredMessage::from_consumer(
            &target.stream,
            info.stream_sequence,
            info.published,
            &m,
        ));
        if items.len() == want || left == 0 {
            break;
        }
    }
    let next = if left > 0 {
        items.last().map(|m| m.seq)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// How long a pull for a page may wait for the messages the consumer said
/// it has.
fn js_timeout() -> Duration {
    Duration::from_secs(5)
}

/// Deletes an ephemeral consumer when dropped (the request ended, or the
/// reader went away), without making anyone wait for it.
struct DeleteOnDrop {
    js: Context,
    stream: String,
    consumer: String,
}

impl DeleteOnDrop {
    fn new(js: Context, stream: &str, consumer: &str) -> DeleteOnDrop {
        DeleteOnDrop {
            js,
            stream: stream.to_string(),
            consumer: consumer.to_string(),
        }
    }
}

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let (js, stream, consumer) = (
            self.js.clone(),
            std::mem::take(&mut self.stream),
            std::mem::take(&mut self.consumer),
        );
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Err(e) = js.delete_consumer_from_stream(&consumer, &stream).await {
                    tracing::debug!(stream, consumer, error = %e, "deleting a read consumer failed; it expires on its own");
                }
            });
        }
    }
}

/// The query of a history read; numbers parsed by hand so a bad one gets
/// a clear 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `after` and `limit` of a history read, checked.
pub fn page_bounds(after: Option<&str>, limit: Option<&str>) -> Result<(u64, usize), ApiError> {
    let after = match after {
        None => 0,
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("after `{a}` is not a sequence number")))?,
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit `{l}` is not a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    Ok((after, limit))
}

/// `GET /v1/subjects/{subject}/messages?after=SEQ&limit=N`.
pub async fn history(
    State(reads): State<Arc<Reads>>,
    Path(subject): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let (after, limit) = page_bounds(query.after.as_deref(), query.limit.as_deref())?;
    let target = reads.target(&subject)?;
    let page = history_consumer(&reads.js, &target, after, limit).await?;
    Ok(Json(page).into_response())
}

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

    fn streams() -> Vec<(String, Vec<String>)> {
        vec![
            ("ORDERS".into(), vec!["orders.>".into()]),
            ("PAY".into(), vec!["pay.*".into(), "pay.x.>".into()]),
        ]
    }

    #[test]
    fn reserved_subjects() {
        for s in [
            "$JS.API.>",
            "$KV.x.y",
            "_INBOX.abc",
            "jetway.dlq.a.b",
            "jetway.>",
            "$SYS.>",
        ] {
            assert!(is_reserved(s), "{s}");
        }
        for s in ["orders.>", "jetwayx.a", "inbox.a", "*", ">"] {
            assert!(!is_reserved(s), "{s}");
        }
    }

    #[test]
    fn patterns_intersect() {
        let table = [
            ("*.created", "orders.>", Some("orders.created")),
            (">", "orders.>", Some("orders.>")),
            ("orders.*", "orders.>", Some("orders.*")),
            ("orders.42", "orders.>", Some("orders.42")),
            ("orders.*.x", "orders.a.*", Some("orders.a.x")),
            ("pay.a", "orders.>", None),
            ("orders", "orders.>", None),
            (">", ">", Some(">")),
            ("*", "pay.*", None),
        ];
        for (a, b, want) in table {
            assert_eq!(intersect(a, b).as_deref(), want, "{a} ∩ {b}");
            assert_eq!(intersect(b, a).as_deref(), want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn subjects_resolve_to_one_configured_stream() {
        let ok = |s: &str, stream: &str, filter: &str| {
            assert_eq!(
                resolve(&streams(), s).map_err(|e| e.code()),
                Ok(Target {
                    stream: stream.into(),
                    filter: filter.into()
                }),
                "{s}"
            );
        };
        ok("orders.42", "ORDERS", "orders.42");
        ok("orders.*", "ORDERS", "orders.*");
        ok("*.42.x", "ORDERS", "orders.42.x");
        ok("pay.x", "PAY", "pay.x");
        // Two subject patterns of one stream: the server filters.
        ok("pay.>", "PAY", "pay.>");
        let err = |s: &str| resolve(&streams(), s).map_err(|e| e.code()).err();
        assert_eq!(err(">"), Some("bad_request"));
        assert_eq!(err("*.x"), Some("bad_request"));
        assert_eq!(err("*.x.>"), Some("bad_request"));
        assert_eq!(err("nothing.here"), Some("no_stream"));
        assert_eq!(err("jetway.dlq.>"), Some("subject_reserved"));
        assert_eq!(err("$JS.API.INFO"), Some("subject_reserved"));
        assert_eq!(err("orders..x"), Some("subject_invalid"));
        assert_eq!(err("orders.>.x"), Some("subject_invalid"));
    }

    #[test]
    fn page_bounds_are_checked() {
        assert_eq!(page_bounds(None, None).ok(), Some((0, DEFAULT_LIMIT)));
        assert_eq!(page_bounds(Some("7"), Some("1000")).ok(), Some((7, 1000)));
        for (a, l) in [
            (Some("x"), None),
            (Some("-1"), None),
            (None, Some("0")),
            (None, Some("1001")),
            (None, Some("ten")),
        ] {
            assert_eq!(
                page_bounds(a, l).map_err(|e| e.code()).err(),
                Some("bad_request"),
                "{a:?} {l:?}"
            );
        }
    }

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
