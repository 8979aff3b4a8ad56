//! Span export: a bounded queue and one task that batches what is in it
//! and POSTs it as OTLP/HTTP protobuf to `{endpoint}/v1/traces`.
//!
//! The publish and delivery paths only ever `try_send` into the queue: a
//! full queue drops the span (counted, `queue_full`), it never waits. The
//! task sends one batch at a time, so what the exporter holds is bounded
//! by the queue plus one batch, whatever the collector does; a batch the
//! collector refuses, fails or does not answer within `EXPORT_TIMEOUT` is
//! dropped (counted, `export_failed`), never retried (a retry would hold
//! memory for a collector that may stay down). Shutdown gives what is
//! queued `SHUTDOWN_WAIT` at most.
//!
//! Why not `opentelemetry_sdk` + `opentelemetry-otlp`: their batch
//! processor runs its own thread and needs either a blocking HTTP client
//! (which panics when built inside tokio) or an async runtime feature, and
//! pulls reqwest and its TLS stack into a binary that already has hyper.
//! jetway needs a handful of fixed span shapes, so it writes the OTLP
//! protobuf itself (`otlp.rs`, with `prost`'s wire functions) and sends it
//! with the hyper client it already has (docs/tracing.md has the measured
//! footprint).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use prometheus::IntCounter;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::ExportSettings;
use super::otlp::Preamble;
use super::span::Span;
use crate::metrics::Metrics;

/// Most spans in one export request.
pub const MAX_BATCH: usize = 512;
/// How long a batch waits to fill once its first span is there.
const LINGER: Duration = Duration::from_millis(500);
/// How often a filling batch looks at the queue.
const FILL_TICK: Duration = Duration::from_millis(20);
/// Longest wait for the collector's answer to one request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// What shutdown gives the queue at most (SPEC section 10).
pub const SHUTDOWN_WAIT: Duration = Duration::from_secs(2);
/// Most bytes of a collector's answer read (then the connection is kept).
const MAX_ANSWER: usize = 64 * 1024;

/// The sending end: cheap to clone, never blocks.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::Sender<Span>,
    queue_full: IntCounter,
}

impl Queue {
    /// Queues a finished span, or drops it (counted) when the queue is full
    /// or the exporter has stopped.
    pub fn push(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.queue_full.inc();
        }
    }
}

/// The export task, for shutdown.
pub struct Exporter {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Exporter {
    /// Exports what is queued, for `SHUTDOWN_WAIT` at most, then stops.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let mut task = self.task;
        if tokio::time::timeout(SHUTDOWN_WAIT, &mut task)
            .await
            .is_err()
        {
            task.abort();
            tracing::warn!(
                "span export did not finish within {SHUTDOWN_WAIT:?}; the rest is dropped"
            );
        }
    }
}

/// The HTTP client of the exporter: its own small pool, no TLS.
type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Starts the export task (inside a tokio runtime).
pub fn start(settings: ExportSettings, metrics: &Metrics) -> (Queue, Exporter) {
    let (tx, rx) = mpsc::channel(settings.queue);
    let queue = Queue {
        tx,
        queue_full: metrics
            .trace_spans_dropped_total
            .with_label_values(&["queue_full"]),
    };
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(1)
        .build(connector);
    let sender = Sender {
        client,
        preamble: Preamble::new(&settings.service_name),
        settings,
        exported: metrics.trace_spans_exported_total.clone(),
        failed: metrics
            .trace_spans_dropped_total
            .with_label_values(&["export_failed"]),
        warned: false,
    };
    let stop = CancellationToken::new();
    let task = tokio::spawn(run(rx, sender, stop.clone()));
    (queue, Exporter { stop, task })
}

async fn run(mut rx: mpsc::Receiver<Span>, mut sender: Sender, stop: CancellationToken) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => n,
            _ = stop.cancelled() => break,
        };
        if n == 0 {
            break;
        }
        // Fill the batch by looking at the queue now and then rather than
        // waking for every span: a wake-up per span (a futex call when the
        // publishing thread is another) cost more than building the span.
        let deadline = tokio::time::Instant::now() + LINGER;
        while batch.len() + rx.len() < MAX_BATCH && tokio::time::Instant::now() < deadline {
            tokio::select! {
                _ = tokio::time::sleep(FILL_TICK) => {}
                _ = stop.cancelled() => break,
            }
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(span) => batch.push(span),
                Err(_) => break,
            }
        }
        sender
            .send(std::mem::replace(&mut batch, Vec::with_capacity(MAX_BATCH)))
            .await;
    }
    // Shutdown: what is queued now, no more (the caller bounds the time).
    rx.close();
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        sender.send(std::mem::take(&mut batch)).await;
    }
}

struct Sender {
    client: HttpClient,
    settings: ExportSettings,
    /// The resource and scope every request starts with.
    preamble: Preamble,
    exported: IntCounter,
    failed: IntCounter,
    /// Whether the last export failed (one warning per outage, not per batch).
    warned: bool,
}

impl Sender {
    async fn send(&mut self, spans: Vec<Span>) {
        if spans.is_empty() {
            return;
        }
        let n = spans.len() as u64;
        let body = self.preamble.encode(&spans);
        drop(spans);
        let mut request = hyper::Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = hyper::Method::POST;
        *request.uri_mut() = self.settings.url.clone();
        let headers = request.headers_mut();
        for (name, value) in &self.settings.headers {
            headers.insert(name.clone(), value.clone());
        }
        headers.insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static("application/x-protobuf"),
        );
        let result = tokio::time::timeout(EXPORT_TIMEOUT, async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            // Read (a bounded part of) the answer so the connection is reused.
            let _ = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("collector answered {status}"))
            }
        })
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {EXPORT_TIMEOUT:?}")));
        match result {
            Ok(()) => {
                self.exported.inc_by(n);
                if self.warned {
                    tracing::info!(url = %self.settings.url, "span export works again");
                    self.warned = false;
                }
            }
            Err(e) => {
                self.failed.inc_by(n);
                if !self.warned {
                    tracing::warn!(url = %self.settings.url, error = %e, spans = n, "span export failed; spans are dropped until the collector answers");
                    self.warned = true;
                } else {
                    tracing::debug!(error = %e, spans = n, "span export failed");
                }
            }
        }
    }
}
