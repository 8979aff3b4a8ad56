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
//!
//! `target` says which configured stream and filter a subject reads,
//! `history` serves pages of the past, `live` follows what is stored next,
//! and `message` is the shape every read shows a stored message in.

mod history;
mod live;
mod message;
mod target;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::Context;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::StreamConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
pub use history::{
    history, history_consumer, history_direct, page_bounds, HistoryQuery, Page, DEFAULT_LIMIT,
    MAX_LIMIT,
};
pub use live::{live, start_after, Format, LiveQuery, KEEPALIVE};
pub use message::StoredMessage;
pub use target::{intersect, is_reserved, resolve, Target};

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
