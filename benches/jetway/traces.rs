//! `tracing` (issue 13): single publish (16 connections, 256 B) and delivery
//! (concurrency 16, 256 B) through a sidecar exporting every span
//! (`tracing.otlp_endpoint`, `sample_ratio: 1.0`) against the same through
//! a sidecar with the same config and no tracing section, in the same run,
//! alternating (tracing on first in even rounds). Both are this phase's
//! own sidecars (same config but the app_id, which names their consumers).
//!
//! The collector is a stub in this process: every `POST /v1/traces` gets
//! 200 and its body is kept; the bodies are decoded and their spans
//! counted once the timed runs are over, so the figure also says how many
//! of the spans the load should have made really left the sidecar. Decoding
//! them as they come (prost builds an owned message per span, two strings
//! per attribute) took the bench's 2 cores from the sidecars it measures;
//! a real collector runs elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header::CONTENT_TYPE, StatusCode};
use axum::response::IntoResponse;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use serde::Serialize;

use crate::load::{self, Stop};
use crate::procs::{self, usage};
use crate::report::{row, size, target, Acc, Target};
use crate::sidecar::{drain, Sidecar};
use crate::{publish_request, Bench, Ctx, Res};

const PAYLOAD: usize = 256;
const CONNS: usize = 16;
const STREAM: &str = "TRACE";
const SUBSCRIPTION: &str = "d";

/// What the collector stub received.
#[derive(Clone, Default)]
struct Collector {
    /// Bodies received and not decoded yet.
    bodies: Arc<std::sync::Mutex<Vec<Bytes>>>,
    requests: Arc<AtomicU64>,
    spans: Arc<AtomicU64>,
    publish: Arc<AtomicU64>,
    process: Arc<AtomicU64>,
    undecodable: Arc<AtomicU64>,
}

impl Collector {
    /// Serves the stub on a free port; returns its base URL.
    async fn start(&self) -> Res<String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .ctx("binding the collector stub")?;
        let addr = listener.local_addr().ctx("collector stub address")?;
        let app = axum::Router::new()
            .route("/v1/traces", axum::routing::post(traces))
            .layer(DefaultBodyLimit::max(64 << 20))
            .with_state(self.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                eprintln!("bench: the collector stub stopped: {e}");
            }
        });
        Ok(format!("http://{addr}"))
    }

    /// Spans received so far: decodes the bodies kept until now (outside
    /// the timed runs only).
    fn spans(&self) -> u64 {
        let bodies = std::mem::take(&mut *self.bodies.lock().unwrap_or_else(|e| e.into_inner()));
        for body in bodies {
            self.count(body);
        }
        self.spans.load(Ordering::SeqCst)
    }

    fn count(&self, body: Bytes) {
        let c = self;
        match ExportTraceServiceRequest::decode(body) {
            Ok(request) => {
                let spans = request
                    .resource_spans
                    .iter()
                    .flat_map(|r| r.scope_spans.iter())
                    .flat_map(|s| s.spans.iter());
                let (mut all, mut publish, mut process) = (0, 0, 0);
                for span in spans {
                    all += 1;
                    if span.name.starts_with("publish ") {
                        publish += 1;
                    } else if span.name.starts_with("process ") {
                        process += 1;
                    }
                }
                c.publish.fetch_add(publish, Ordering::SeqCst);
                c.process.fetch_add(process, Ordering::SeqCst);
                c.spans.fetch_add(all, Ordering::SeqCst);
            }
            Err(_) => {
                c.undecodable.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

async fn traces(State(c): State<Collector>, body: Bytes) -> impl IntoResponse {
    c.requests.fetch_add(1, Ordering::SeqCst);
    c.bodies
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(body);
    // An empty ExportTraceServiceResponse encodes to no bytes.
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/x-protobuf")],
        Bytes::new(),
    )
}

#[derive(Serialize)]
pub struct TracingResult {
    pub payload: usize,
    pub conns: usize,
    pub concurrency: usize,
    pub backlog: usize,
    pub rounds: usize,
    pub publish_on: f64,
    pub publish_off: f64,
    pub publish_ratio: f64,
    pub publish_on_p50_us: f64,
    pub publish_off_p50_us: f64,
    pub publish_on_cpu_s_per_10k: f64,
    pub publish_off_cpu_s_per_10k: f64,
    pub delivery_on: f64,
    pub delivery_off: f64,
    pub delivery_ratio: f64,
    pub delivery_on_cpu_s_per_10k: f64,
    pub delivery_off_cpu_s_per_10k: f64,
    /// VmHWM over the whole phase (warm-up, publish and delivery runs).
    pub peak_rss_on_kib: u64,
    pub peak_rss_off_kib: u64,
    /// Publishes answered 200 plus deliveries counted at the sink, of the
    /// sidecar with tracing on: one span each.
    pub spans_expected: u64,
    pub spans_received: u64,
    pub publish_spans_received: u64,
    pub process_spans_received: u64,
    pub export_requests: u64,
    pub undecodable_requests: u64,
    /// The sidecar's own counts (`jetway_trace_spans_*`).
    pub spans_exported_metric: f64,
    pub spans_dropped_metric: f64,
}

impl TracingResult {
    pub fn targets(&self) -> Vec<Target> {
        vec![
            target(
                format!(
                    "single publish, tracing on / off, {} x {} conns (issue 13)",
                    size(self.payload),
                    self.conns
                ),
                self.publish_ratio,
                0.9,
                "min",
                "x",
            ),
            target(
                format!(
                    "delivery, tracing on / off, {} x concurrency {} (issue 13)",
                    size(self.payload),
                    self.concurrency
                ),
                self.delivery_ratio,
                0.9,
                "min",
                "x",
            ),
            target(
                "peak RSS with tracing on, publish and delivery load (issue 13)".into(),
                self.peak_rss_on_kib as f64 / 1024.0,
                48.0,
                "max",
                "MiB",
            ),
        ]
    }

    pub fn checks(&self) -> Vec<Target> {
        vec![target(
            "spans received by the collector stub / spans the load made (issue 13)".into(),
            self.spans_received as f64 / self.spans_expected.max(1) as f64,
            1.0,
            "min",
            "x",
        )]
    }

    pub fn rows(&self, s: &mut String) {
        row(
            s,
            &format!(
                "single publish, tracing on (every span exported), {} x {} conns",
                size(self.payload),
                self.conns
            ),
            &format!("{:.0}/s", self.publish_on),
            &format!("tracing off {:.0}/s", self.publish_off),
            Some(self.publish_ratio),
            ">= 0.9",
            Some(self.publish_ratio >= 0.9),
        );
        row(
            s,
            &format!(
                "delivery, tracing on (every span exported), {} x concurrency {}",
                size(self.payload),
                self.concurrency
            ),
            &format!("{:.0}/s", self.delivery_on),
            &format!("tracing off {:.0}/s", self.delivery_off),
            Some(self.delivery_ratio),
            ">= 0.9",
            Some(self.delivery_ratio >= 0.9),
        );
        row(
            s,
            "peak RSS, tracing on, under that publish and delivery load",
            &format!("{:.1} MiB", self.peak_rss_on_kib as f64 / 1024.0),
            &format!(
                "tracing off {:.1} MiB",
                self.peak_rss_off_kib as f64 / 1024.0
            ),
            None,
            "<= 48 MiB",
            Some(self.peak_rss_on_kib as f64 / 1024.0 <= 48.0),
        );
        row(
            s,
            &format!(
                "spans at the collector stub ({} publish + {} process, {} requests; jetway counted {:.0} exported, {:.0} dropped)",
                self.publish_spans_received,
                self.process_spans_received,
                self.export_requests,
                self.spans_exported_metric,
                self.spans_dropped_metric
            ),
            &self.spans_received.to_string(),
            &format!("expected {}", self.spans_expected),
            Some(self.spans_received as f64 / self.spans_expected.max(1) as f64),
            "all",
            Some(self.spans_received >= self.spans_expected),
        );
    }
}

fn yaml(b: &Bench, app: &str, tracing: Option<&str>) -> String {
    let tracing = tracing
        .map(|url| format!("tracing: {{ otlp_endpoint: \"{url}\", sample_ratio: 1.0 }}\n"))
        .unwrap_or_default();
    format!(
        "app_id: {app}\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: {STREAM}, subjects: [\"trc.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions:\n\
         \x20 - {{ name: {SUBSCRIPTION}, subject: \"trc.{app}.dlv\", stream: {STREAM}, endpoint: \"{}\", concurrency: {CONNS}, timeout: 10s }}\n\
         {tracing}",
        b.nats.url(),
        b.sink.url("/deliver"),
    )
}

/// One of the two sidecars, and what its load should have made it export.
struct Side {
    sidecar: Sidecar,
    app: &'static str,
    published: u64,
    delivered: u64,
}

impl Side {
    fn pub_subject(&self) -> String {
        format!("trc.{}.pub", self.app)
    }

    fn dlv_subject(&self) -> String {
        format!("trc.{}.dlv", self.app)
    }
}

/// Waits until the stub has `expected` spans, or has had nothing new for
/// 3 s (the exporter lingers 0.5 s per batch), 60 s at most.
async fn settle(c: &Collector, expected: u64) {
    let until = Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (c.spans(), Instant::now());
    while c.spans() < expected && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = c.spans();
        if now != last {
            (last, since) = (now, Instant::now());
        } else if since.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
}

pub(crate) async fn run(b: &Bench, r: &mut crate::report::Results) -> Res<()> {
    eprintln!(
        "  tracing (issue 13): publish {PAYLOAD} B x {CONNS} conns and delivery x concurrency {CONNS}, tracing on and off"
    );
    let collector = Collector::default();
    let url = collector.start().await?;
    let mut on = Side {
        sidecar: Sidecar::start(&yaml(b, "trace-on", Some(&url))).await?,
        app: "trace-on",
        published: 0,
        delivered: 0,
    };
    let mut off = Side {
        sidecar: Sidecar::start(&yaml(b, "trace-off", None)).await?,
        app: "trace-off",
        published: 0,
        delivered: 0,
    };
    for side in [&on, &off] {
        side.sidecar.pause(SUBSCRIPTION).await?;
        procs::reset_peak(side.sidecar.pid()?)?;
    }
    let payload = bytes::Bytes::from(vec![b't'; PAYLOAD]);
    let warm = Stop {
        duration: Duration::from_millis(500),
        max_requests: Some(if b.plan.quick { 100 } else { 3_000 }),
    };
    let backlog = b.plan.backlog(PAYLOAD, CONNS);
    for side in [&mut on, &mut off] {
        let api = side.sidecar.api().to_string();
        let make = publish_request(&api, &side.pub_subject(), payload.clone());
        side.published += load::http_closed(&api, CONNS, warm, make).await?.ok;
        let warm_n = backlog.min(1_000);
        let d = drain(
            &b.js,
            &side.sidecar,
            &b.sink,
            SUBSCRIPTION,
            &side.dlv_subject(),
            payload.clone(),
            warm_n,
        )
        .await?;
        side.delivered += d.delivered;
    }
    b.purge(STREAM).await?;
    let rounds = b.plan.ab_rounds();
    let (mut pub_on, mut pub_off) = (Acc::default(), Acc::default());
    for round in 0..rounds {
        for on_turn in [round % 2 == 0, round % 2 != 0] {
            let (side, acc) = if on_turn {
                (&mut on, &mut pub_on)
            } else {
                (&mut off, &mut pub_off)
            };
            let api = side.sidecar.api().to_string();
            let make = publish_request(&api, &side.pub_subject(), payload.clone());
            let (run, cpu) = b
                .http_run(side.sidecar.pid()?, &api, CONNS, b.plan.stop, make)
                .await?;
            side.published += run.ok;
            acc.add(&run, cpu);
            b.purge(STREAM).await?;
        }
    }
    let (mut dlv_on, mut dlv_off) = (Acc::default(), Acc::default());
    for round in 0..rounds {
        for on_turn in [round % 2 == 0, round % 2 != 0] {
            let (side, acc) = if on_turn {
                (&mut on, &mut dlv_on)
            } else {
                (&mut off, &mut dlv_off)
            };
            let d = drain(
                &b.js,
                &side.sidecar,
                &b.sink,
                SUBSCRIPTION,
                &side.dlv_subject(),
                payload.clone(),
                backlog,
            )
            .await?;
            side.delivered += d.delivered;
            acc.add(&d.run, d.cpu_s);
            b.purge(STREAM).await?;
        }
    }
    let peak_on = usage(on.sidecar.pid()?)?.hwm_kib;
    let peak_off = usage(off.sidecar.pid()?)?.hwm_kib;
    let expected = on.published + on.delivered;
    settle(&collector, expected).await;
    let exported = on
        .sidecar
        .metric("jetway_trace_spans_exported_total", &[])
        .await?;
    let dropped = on
        .sidecar
        .metric("jetway_trace_spans_dropped_total", &[])
        .await?;
    on.sidecar.stop().await;
    off.sidecar.stop().await;
    let result = TracingResult {
        payload: PAYLOAD,
        conns: CONNS,
        concurrency: CONNS,
        backlog,
        rounds,
        publish_on: pub_on.rate(),
        publish_off: pub_off.rate(),
        publish_ratio: pub_on.rate() / pub_off.rate(),
        publish_on_p50_us: pub_on.quantile_us(0.5),
        publish_off_p50_us: pub_off.quantile_us(0.5),
        publish_on_cpu_s_per_10k: pub_on.cpu_per_10k(),
        publish_off_cpu_s_per_10k: pub_off.cpu_per_10k(),
        delivery_on: dlv_on.rate(),
        delivery_off: dlv_off.rate(),
        delivery_ratio: dlv_on.rate() / dlv_off.rate(),
        delivery_on_cpu_s_per_10k: dlv_on.cpu_per_10k(),
        delivery_off_cpu_s_per_10k: dlv_off.cpu_per_10k(),
        peak_rss_on_kib: peak_on,
        peak_rss_off_kib: peak_off,
        spans_expected: expected,
        spans_received: collector.spans(),
        publish_spans_received: collector.publish.load(Ordering::SeqCst),
        process_spans_received: collector.process.load(Ordering::SeqCst),
        export_requests: collector.requests.load(Ordering::SeqCst),
        undecodable_requests: collector.undecodable.load(Ordering::SeqCst),
        spans_exported_metric: exported,
        spans_dropped_metric: dropped,
    };
    eprintln!(
        "    publish on {:>8.0}/s off {:>8.0}/s ratio {:.2}; delivery on {:>8.0}/s off {:>8.0}/s ratio {:.2}; peak RSS on {:.1} MiB off {:.1} MiB; spans {} of {} ({} requests, {} undecodable; jetway: {} exported, {} dropped)",
        result.publish_on,
        result.publish_off,
        result.publish_ratio,
        result.delivery_on,
        result.delivery_off,
        result.delivery_ratio,
        peak_on as f64 / 1024.0,
        peak_off as f64 / 1024.0,
        result.spans_received,
        result.spans_expected,
        result.export_requests,
        result.undecodable_requests,
        exported,
        dropped
    );
    r.tracing = Some(result);
    Ok(())
}
