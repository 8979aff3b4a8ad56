//! What the benchmark serves and the baselines it compares jetway with:
//! the HTTP sink (in this process), and, as child processes of this same
//! binary, the bare bridge (a minimal axum handler: publish, await the
//! PubAck, answer) and the bare delivery loop (pull, POST, ack).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::Full;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::{Ctx, Res};

/// Header the bare delivery loop puts the stored time in (unix ns).
pub const PUBLISHED_NS: &str = "x-published-ns";

/// The HTTP sink: answers 200 to everything (or the status it is told to
/// answer), counts, and when asked records stored-to-delivered latency from
/// `Jetway-Published-At` or the bare loop's header, or the distinct
/// `Idempotency-Key`s it was sent.
#[derive(Clone)]
pub struct Sink {
    pub addr: std::net::SocketAddr,
    count: Arc<AtomicU64>,
    recording: Arc<AtomicBool>,
    hist: Arc<Mutex<Histogram<u64>>>,
    bad_stamps: Arc<AtomicU64>,
    status: Arc<AtomicU16>,
    tracking: Arc<AtomicBool>,
    keys: Arc<Mutex<HashSet<String>>>,
}

impl Sink {
    pub async fn start() -> Res<Sink> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("binding the sink")?;
        let sink = Sink {
            addr: listener.local_addr().ctx("sink address")?,
            count: Arc::default(),
            recording: Arc::default(),
            hist: Arc::new(Mutex::new(crate::load::histogram())),
            bad_stamps: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            tracking: Arc::default(),
            keys: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(on_request)
            .with_state(sink.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: the sink stopped: {e}");
            }
        });
        Ok(sink)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::SeqCst)
    }

    pub fn reset(&self) {
        self.count.store(0, Ordering::SeqCst);
    }

    /// Starts recording latencies into a fresh histogram.
    pub fn record(&self, on: bool) {
        if on {
            if let Ok(mut h) = self.hist.lock() {
                h.reset();
            }
            self.bad_stamps.store(0, Ordering::SeqCst);
        }
        self.recording.store(on, Ordering::SeqCst);
    }

    /// The status every request gets from now on (200 by default).
    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    /// Starts collecting the distinct `Idempotency-Key`s afresh (`true`),
    /// or stops, keeping what was collected (`false`).
    pub fn track_keys(&self, on: bool) {
        if on {
            if let Ok(mut keys) = self.keys.lock() {
                keys.clear();
            }
        }
        self.tracking.store(on, Ordering::SeqCst);
    }

    /// Distinct `Idempotency-Key`s since `track_keys(true)`.
    pub fn distinct_keys(&self) -> usize {
        self.keys.lock().map(|k| k.len()).unwrap_or(0)
    }

    pub fn take_histogram(&self) -> Res<(Histogram<u64>, u64)> {
        let h = self
            .hist
            .lock()
            .map_err(|_| "sink histogram lock poisoned".to_string())?;
        Ok((h.clone(), self.bad_stamps.load(Ordering::SeqCst)))
    }

    /// Waits until `n` requests arrived since the last reset.
    pub async fn wait_for(&self, n: u64, deadline: Duration) -> Res<()> {
        let until = std::time::Instant::now() + deadline;
        while self.count() < n {
            if std::time::Instant::now() > until {
                return Err(format!(
                    "sink got {} of {n} deliveries within {deadline:?}",
                    self.count()
                ));
            }
            tokio::time::sleep(Duration::from_micros(500)).await;
        }
        Ok(())
    }
}

fn stored_ns(headers: &HeaderMap) -> Option<i128> {
    if let Some(v) = headers.get(PUBLISHED_NS) {
        return v.to_str().ok()?.parse().ok();
    }
    let v = headers.get("jetway-published-at")?.to_str().ok()?;
    Some(
        OffsetDateTime::parse(v, &Rfc3339)
            .ok()?
            .unix_timestamp_nanos(),
    )
}

async fn on_request(State(sink): State<Sink>, headers: HeaderMap, _body: Bytes) -> StatusCode {
    if sink.recording.load(Ordering::Relaxed) {
        let now = OffsetDateTime::now_utc().unix_timestamp_nanos();
        match stored_ns(&headers) {
            Some(stored) => {
                if let Ok(mut h) = sink.hist.lock() {
                    let _ = h.record((now - stored).max(1_000) as u64);
                }
            }
            None => {
                sink.bad_stamps.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if sink.tracking.load(Ordering::Relaxed) {
        if let Some(key) = headers.get("idempotency-key").and_then(|v| v.to_str().ok()) {
            if let Ok(mut keys) = sink.keys.lock() {
                keys.insert(key.to_string());
            }
        }
    }
    sink.count.fetch_add(1, Ordering::SeqCst);
    StatusCode::from_u16(sink.status.load(Ordering::Relaxed)).unwrap_or(StatusCode::OK)
}

/// Entry of the child roles: `__role bare-bridge NATS_URL` or
/// `__role bare-deliver NATS_URL STREAM CONSUMER ENDPOINT CONCURRENCY`.
pub fn main(args: &[String]) -> Res<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .ctx("starting the runtime")?;
    match args.first().map(String::as_str) {
        Some("bare-bridge") => rt.block_on(bare_bridge(args.get(1).ok_or("bare-bridge NATS_URL")?)),
        Some("bare-deliver") => {
            let [_, url, stream, consumer, endpoint, concurrency, rest @ ..] = args else {
                return Err(
                    "bare-deliver NATS_URL STREAM CONSUMER ENDPOINT CONCURRENCY [BATCH]".into(),
                );
            };
            let concurrency: usize = concurrency.parse().ctx("concurrency")?;
            let batch: Option<usize> = match rest.first() {
                Some(b) => Some(b.parse().ctx("batch")?),
                None => None,
            };
            rt.block_on(bare_deliver(
                url,
                stream,
                consumer,
                endpoint,
                concurrency,
                batch,
            ))
        }
        other => Err(format!("unknown role {other:?}")),
    }
}

// ---- the bare bridge: what a 30-line HTTP-to-JetStream bridge gets ----

async fn bare_bridge(url: &str) -> Res<()> {
    let client = async_nats::connect(url)
        .await
        .ctx("bare bridge: connecting to NATS")?;
    let js = jetstream::new(client);
    let app = axum::Router::new()
        .route(
            "/v1/publish/{*subject}",
            axum::routing::post(bridge_publish),
        )
        .with_state(js);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .ctx("bare bridge: bind")?;
    println!("{}", listener.local_addr().ctx("bare bridge: address")?);
    axum::serve(listener, app).await.ctx("bare bridge: serving")
}

async fn bridge_publish(
    State(js): State<jetstream::Context>,
    Path(subject): Path<String>,
    body: Bytes,
) -> Response {
    let ack = match js.publish(subject, body).await {
        Ok(ack) => ack,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    match ack.await {
        Ok(ack) => axum::Json(serde_json::json!({
            "stream": ack.stream, "seq": ack.sequence, "duplicate": ack.duplicate
        }))
        .into_response(),
        Err(e) => (StatusCode::GATEWAY_TIMEOUT, e.to_string()).into_response(),
    }
}

// ---- the bare delivery loop: pull, POST, ack, N at a time ----

/// `batch`: messages per pull request; async-nats's default (200) unless
/// given (`JETWAY_BENCH_BARE_BATCH`, for experiments on the fetch pattern).
async fn bare_deliver(
    url: &str,
    stream: &str,
    consumer: &str,
    endpoint: &str,
    concurrency: usize,
    batch: Option<usize>,
) -> Res<()> {
    let client = async_nats::connect(url)
        .await
        .ctx("bare loop: connecting to NATS")?;
    let js = jetstream::new(client);
    let consumer: PullConsumer = js
        .get_stream(stream)
        .await
        .ctx("bare loop: stream")?
        .get_consumer(consumer)
        .await
        .ctx("bare loop: consumer")?;
    let endpoint: hyper::Uri = endpoint.parse().ctx("bare loop: endpoint")?;
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let http: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(connector);
    println!("ready");
    // Start only when told, so the backlog drain is timed from "go".
    tokio::task::spawn_blocking(|| {
        for line in std::io::stdin().lines() {
            match line {
                Ok(l) if l.trim() == "go" => break,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    })
    .await
    .ctx("bare loop: waiting for go")?;
    let messages = match batch {
        Some(b) => consumer.stream().max_messages_per_batch(b).messages().await,
        None => consumer.messages().await,
    }
    .ctx("bare loop: pull")?;
    messages
        .for_each_concurrent(concurrency, |msg| {
            let (http, endpoint) = (http.clone(), endpoint.clone());
            async move {
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        eprintln!("bare loop: pull error: {e}");
                        return;
                    }
                };
                let stored = msg
                    .info()
                    .map(|i| i.published.unix_timestamp_nanos())
                    .unwrap_or(0);
                let request = hyper::Request::post(endpoint)
                    .header("content-type", "application/octet-stream")
                    .header(PUBLISHED_NS, stored.to_string())
                    .body(Full::new(msg.payload.clone()));
                let ok = match request {
                    Ok(r) => match http.request(r).await {
                        Ok(resp) => {
                            let ok = resp.status().is_success();
                            ok && http_body_util::BodyExt::collect(resp.into_body())
                                .await
                                .is_ok()
                        }
                        Err(_) => false,
                    },
                    Err(_) => false,
                };
                let acked = if ok {
                    msg.ack().await
                } else {
                    msg.ack_with(jetstream::AckKind::Nak(None)).await
                };
                if let Err(e) = acked {
                    eprintln!("bare loop: ack failed: {e}");
                }
            }
        })
        .await;
    Ok(())
}
