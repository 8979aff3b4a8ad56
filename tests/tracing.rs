//! Span export and event context in logs (SPEC section 10), against a real
//! nats-server, a real endpoint and a test OTLP receiver that decodes what
//! it gets with the `opentelemetry-proto` types.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{config_yaml, eventually, free_port, Endpoint, Nats, Sidecar};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT: &str = "00f067aa0ba902b7";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How the test collector answers.
#[derive(Clone, Copy)]
enum Mode {
    Accept,
    Unavailable,
    Hang,
}

/// One span as received, with the resource's service name and the
/// request's headers.
#[derive(Debug, Clone)]
struct Got {
    span: Span,
    service: String,
    headers: HeaderMap,
}

impl Got {
    fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
            .map(|v| match v {
                Value::StringValue(s) => s.clone(),
                Value::IntValue(n) => n.to_string(),
                other => format!("{other:?}"),
            })
    }
    fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }
    fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }
    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// A test OTLP/HTTP receiver on `POST /v1/traces`.
#[derive(Clone)]
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Got>>>,
    requests: Arc<Mutex<usize>>,
}

impl Collector {
    async fn start(mode: Mode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let spans: Arc<Mutex<Vec<Got>>> = Arc::default();
        let requests: Arc<Mutex<usize>> = Arc::default();
        let (s, r) = (spans.clone(), requests.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let (s, r) = (s.clone(), r.clone());
                async move {
                    *r.lock().expect("lock") += 1;
                    match mode {
                        Mode::Accept => {}
                        Mode::Unavailable => {
                            return StatusCode::SERVICE_UNAVAILABLE.into_response()
                        }
                        Mode::Hang => std::future::pending::<()>().await,
                    }
                    let Ok(request) = ExportTraceServiceRequest::decode(body.as_ref()) else {
                        return StatusCode::BAD_REQUEST.into_response();
                    };
                    let mut all = s.lock().expect("lock");
                    for rs in request.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|kv| kv.key == "service.name")
                            .and_then(|kv| kv.value.as_ref())
                            .and_then(|v| match &v.value {
                                Some(Value::StringValue(s)) => Some(s.clone()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                all.push(Got {
                                    span,
                                    service: service.clone(),
                                    headers: headers.clone(),
                                });
                            }
                        }
                    }
                    StatusCode::OK.into_response()
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Collector {
            addr,
            spans,
            requests,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spans(&self) -> Vec<Got> {
        self.spans.lock().expect("lock").clone()
    }

    fn requests(&self) -> usize {
        *self.requests.lock().expect("lock")
    }

    /// Waits until `pick` finds at least `n` spans.
    async fn wait_for(&self, what: &str, n: usize, pick: impl Fn(&Got) -> bool) -> Vec<Got> {
        let me = self.clone();
        eventually(what, || {
            let found: Vec<Got> = me.spans().into_iter().filter(|g| pick(g)).collect();
            async move { (found.len() >= n).then_some(found) }
        })
        .await
    }
}

fn subscription(endpoint: &Endpoint, retry: &str) -> String {
    format!(
        "subscriptions:\n  - {{ name: emails, subject: orders.created, endpoint: \"{}\", \
         retry: {{ {retry} }} }}\n",
        endpoint.url("/hook")
    )
}

async fn publish_with(
    sidecar: &Sidecar,
    subject: &str,
    body: &'static [u8],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = sidecar
        .http
        .post(sidecar.url(&format!("/v1/publish/{subject}")))
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("publish request")
}

#[tokio::test]
async fn spans_follow_a_message_from_publisher_to_endpoint() {
    let nats = Nats::start();
    let collector = Collector::start(Mode::Accept).await;
    let endpoint = Endpoint::ok().await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "tracing: {{ otlp_endpoint: \"{}\" }}\n{}",
            collector.url(),
            subscription(&endpoint, "max_attempts: 3")
        ),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = publish_with(
        &sidecar,
        "orders.created",
        b"{}",
        &[
            ("traceparent", &tp),
            ("tracestate", "vendor=abc"),
            ("idempotency-key", "k-1"),
        ],
    )
    .await;
    assert_eq!(r.status(), 200);
    endpoint.wait_for(1).await;
    let spans = collector
        .wait_for("publish and process spans", 2, |g| g.trace_id() == TRACE)
        .await;
    let publish = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Producer as i32)
        .expect("a publish span");
    let process = spans
        .iter()
        .find(|g| g.span.kind == SpanKind::Consumer as i32)
        .expect("a process span");

    assert_eq!(publish.span.name, "publish ORDERS");
    assert_eq!(publish.parent(), PARENT);
    assert_eq!(publish.span.trace_state, "vendor=abc");
    assert_eq!(publish.service, "test");
    for (key, want) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", "orders.created"),
        ("messaging.message.id", "k-1"),
        ("messaging.nats.stream", "ORDERS"),
        ("messaging.nats.sequence", "1"),
    ] {
        assert_eq!(publish.attr(key).as_deref(), Some(want), "publish {key}");
    }
    assert_eq!(publish.attr("error.type"), None);

    assert_eq!(process.span.name, "process emails");
    assert_eq!(
        process.parent(),
        publish.span_id(),
        "process is the publish span's child"
    );
    for (key, want) in [
        ("messaging.system", "nats"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", "orders.created"),
        ("messaging.consumer.group.name", "test-emails"),
        ("messaging.nats.stream", "ORDERS"),
        ("messaging.nats.sequence", "1"),
        ("messaging.nats.delivery_attempt", "1"),
        ("http.response.status_code", "200"),
        ("jetway.outcome", "ack"),
    ] {
        assert_eq!(process.attr(key).as_deref(), Some(want), "process {key}");
    }

    // The endpoint's parent is the process span; tracestate untouched.
    let got = &endpoint.received()[0];
    assert_eq!(
        got.header("traceparent"),
        Some(format!("00-{TRACE}-{}-01", process.span_id()))
    );
    assert_eq!(got.header("tracestate").as_deref(), Some("vendor=abc"));

    // A publish without context starts a trace of its own.
    let r = publish_with(&sidecar, "orders.created", b"{}", &[]).await;
    assert_eq!(r.status(), 200);
    endpoint.wait_for(2).await;
    let root = collector
        .wait_for("a root publish span", 1, |g| {
            g.span.kind == SpanKind::Producer as i32 && g.trace_id() != TRACE
        })
        .await;
    assert!(
        root[0].span.parent_span_id.is_empty(),
        "a root has no parent"
    );
    let sent = endpoint.received()[1]
        .header("traceparent")
        .expect("a traceparent for the endpoint");
    assert!(sent.contains(&root[0].trace_id()), "{sent}");

    eventually("the exported counter", || {
        let s = &sidecar;
        async move {
            (s.metric("jetway_trace_spans_exported_total", &[]).await >= 4.0).then_some(())
        }
    })
    .await;
    assert_eq!(
        sidecar
            .metric("jetway_trace_spans_dropped_total", &[])
            .await,
        0.0
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn retries_are_separate_process_spans_and_the_dead_letter_has_its_own() {
    let nats = Nats::start();
    let collector = Collector::start(Mode::Accept).await;
    let endpoint =
        Endpoint::start(|_, _| async { StatusCode::SERVICE_UNAVAILABLE.into_response() }).await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "tracing: {{ otlp_endpoint: \"{}\" }}\n{}",
            collector.url(),
            subscription(
                &endpoint,
                "max_attempts: 2, initial_backoff: 100ms, max_backoff: 200ms, jitter: 0.0"
            )
        ),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    let r = publish_with(&sidecar, "orders.created", b"{}", &[("traceparent", &tp)]).await;
    assert_eq!(r.status(), 200);

    let spans = collector
        .wait_for("two process spans and a dead-letter span", 4, |g| {
            g.trace_id() == TRACE
        })
        .await;
    let by_attempt: HashMap<String, &Got> = spans
        .iter()
        .filter(|g| g.span.kind == SpanKind::Consumer as i32)
        .map(|g| {
            (
                g.attr("messaging.nats.delivery_attempt")
                    .unwrap_or_default(),
                g,
            )
        })
        .collect();
    let first = by_attempt.get("1").expect("attempt 1");
    let second = by_attempt.get("2").expect("attempt 2");
    assert_eq!(first.attr("jetway.outcome").as_deref(), Some("retry"));
    assert_eq!(
        second.attr("jetway.outcome").as_deref(),
        Some("dead_letter")
    );
    for attempt in [first, second] {
        assert_eq!(
            attempt.attr("http.response.status_code").as_deref(),
            Some("503")
        );
        assert_eq!(attempt.attr("error.type").as_deref(), Some("503"));
        assert_eq!(attempt.span.name, "process emails");
    }
    let publish = spans
        .iter()
        .find(|g| g.span.name == "publish ORDERS")
        .expect("publish span");
    assert_eq!(first.parent(), publish.span_id());
    assert_eq!(
        second.parent(),
        publish.span_id(),
        "each attempt is a child of the publish"
    );
    let dead = spans
        .iter()
        .find(|g| g.span.name == "publish JETWAY_DLQ")
        .expect("dead-letter span");
    assert_eq!(dead.span.kind, SpanKind::Producer as i32);
    assert_eq!(
        dead.parent(),
        second.span_id(),
        "under the attempt that gave up"
    );
    assert_eq!(
        dead.attr("messaging.nats.stream").as_deref(),
        Some("JETWAY_DLQ")
    );
    assert!(dead.attr("messaging.nats.sequence").is_some());

    let stored = common::nats::dlq_stream(&nats).await;
    let tp = stored
        .first()
        .expect("a dead letter")
        .headers
        .get("traceparent")
        .map(|v| v.as_str().to_string())
        .unwrap_or_default();
    assert_eq!(
        tp,
        format!("00-{TRACE}-{}-01", dead.span_id()),
        "the dead letter stores its span's context"
    );

    // A replayed dead letter gets a process span too.
    let r = sidecar
        .http
        .post(sidecar.url("/v1/dead-letters/emails/replay"))
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 200);
    let replayed = collector
        .wait_for("a third process span (the replay)", 3, |g| {
            g.trace_id() == TRACE && g.span.kind == SpanKind::Consumer as i32
        })
        .await;
    assert_eq!(replayed.len(), 3);
    // The replay continues the trace under the dead-letter span, and the
    // dead letter's stored traceparent is that span's context.
    let replay = replayed
        .iter()
        .find(|g| g.span_id() != first.span_id() && g.span_id() != second.span_id())
        .expect("the replay's process span");
    assert_eq!(
        replay.parent(),
        dead.span_id(),
        "replay under the dead letter"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn an_unsampled_parent_exports_nothing_and_travels_unchanged() {
    let nats = Nats::start();
    let collector = Collector::start(Mode::Accept).await;
    let endpoint = Endpoint::ok().await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "tracing: {{ otlp_endpoint: \"{}\", sample_ratio: 0.0 }}\n{}",
            collector.url(),
            subscription(&endpoint, "max_attempts: 3")
        ),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let unsampled = format!("00-{TRACE}-{PARENT}-00");
    let r = publish_with(
        &sidecar,
        "orders.created",
        b"{}",
        &[("traceparent", &unsampled), ("tracestate", "v=1")],
    )
    .await;
    assert_eq!(r.status(), 200);
    endpoint.wait_for(1).await;
    let got = endpoint.received()[0].clone();
    let sent = got.header("traceparent").expect("traceparent");
    assert!(sent.starts_with(&format!("00-{TRACE}-")), "{sent}");
    assert!(sent.ends_with("-00"), "flags kept: {sent}");
    assert_ne!(sent, unsampled, "a new span id per delivery");
    assert_eq!(got.header("tracestate").as_deref(), Some("v=1"));
    // Stored as it came.
    let js = nats.client().await;
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let stored = stream.get_raw_message(1).await.expect("message");
    assert_eq!(
        stored.headers.get("traceparent").map(|v| v.as_str()),
        Some(unsampled.as_str())
    );

    // A root with sample_ratio 0 is not sampled either, and says so downstream.
    let r = publish_with(&sidecar, "orders.created", b"{}", &[]).await;
    assert_eq!(r.status(), 200);
    endpoint.wait_for(2).await;
    let root = endpoint.received()[1]
        .header("traceparent")
        .expect("traceparent");
    assert!(root.ends_with("-00"), "{root}");

    // A sampled message after them: once its spans are in, the earlier
    // ones would have been too (one queue, in order).
    let sampled = format!("00-{}-{PARENT}-01", "1".repeat(32));
    let r = publish_with(
        &sidecar,
        "orders.created",
        b"{}",
        &[("traceparent", &sampled)],
    )
    .await;
    assert_eq!(r.status(), 200);
    collector
        .wait_for("the sampled message's spans", 2, |g| {
            g.trace_id() == "1".repeat(32)
        })
        .await;
    let others: Vec<Got> = collector
        .spans()
        .into_iter()
        .filter(|g| g.trace_id() != "1".repeat(32))
        .collect();
    assert!(
        others.is_empty(),
        "unsampled spans were exported: {others:?}"
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn without_an_endpoint_nothing_changes() {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let yaml = config_yaml(&nats, &subscription(&endpoint, "max_attempts: 3"));
    let sidecar = Sidecar::start(&yaml).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        publish_with(&sidecar, "orders.created", b"{}", &[("traceparent", &tp)])
            .await
            .status(),
        200
    );
    assert_eq!(
        publish_with(&sidecar, "orders.created", b"{}", &[])
            .await
            .status(),
        200
    );
    endpoint.wait_for(2).await;
    let js = nats.client().await;
    let stream = js.get_stream("ORDERS").await.expect("stream");
    let first = stream.get_raw_message(1).await.expect("message");
    assert_eq!(
        first.headers.get("traceparent").map(|v| v.as_str()),
        Some(tp.as_str())
    );
    let second = stream.get_raw_message(2).await.expect("message");
    assert!(
        second.headers.get("traceparent").is_none(),
        "no context invented"
    );
    let received = endpoint.received();
    let sent = received[0].header("traceparent").expect("traceparent");
    assert!(
        sent.starts_with(&format!("00-{TRACE}-")) && sent != tp,
        "{sent}"
    );
    assert_eq!(received[1].header("traceparent"), None);
    sidecar.stop().await;
}

/// Publishes `n` messages in batches of 100; every one must be stored.
async fn publish_many(sidecar: &Sidecar, n: usize) {
    let items: Vec<serde_json::Value> = (0..100)
        .map(|i| serde_json::json!({"subject": "orders.created", "data": {"i": i}}))
        .collect();
    for _ in 0..n / 100 {
        let r = sidecar
            .http
            .post(sidecar.url("/v1/publish"))
            .json(&items)
            .send()
            .await
            .expect("batch");
        assert_eq!(
            r.status(),
            200,
            "a failing collector must not fail publishes"
        );
    }
}

async fn failing_collector_case(url: String, expect_requests: Option<&Collector>) {
    let nats = Nats::start();
    let queue = 16;
    let yaml = config_yaml(
        &nats,
        &format!("tracing: {{ otlp_endpoint: \"{url}\", queue: {queue} }}\n"),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let n = 2000;
    publish_many(&sidecar, n).await;
    assert_eq!(
        sidecar
            .metric("jetway_publish_total", &[("outcome", "ok")])
            .await,
        n as f64
    );
    // What the exporter holds is the queue plus one batch at most: the
    // rest is dropped and counted, now or once the collector fails.
    let held = (queue + jetway::telemetry::export::MAX_BATCH) as f64;
    let dropped = eventually("drops counted", || {
        let s = &sidecar;
        async move {
            let d = s.metric("jetway_trace_spans_dropped_total", &[]).await;
            (d >= n as f64 - held).then_some(d)
        }
    })
    .await;
    assert!(dropped <= n as f64);
    assert_eq!(
        sidecar
            .metric("jetway_trace_spans_exported_total", &[])
            .await,
        0.0
    );
    {
        eventually("the collector asked and failing", || {
            let n = expect_requests.map_or(1, Collector::requests);
            let s = &sidecar;
            async move {
                let failed = s
                    .metric(
                        "jetway_trace_spans_dropped_total",
                        &[("reason", "export_failed")],
                    )
                    .await;
                (n >= 1 && failed >= 1.0).then_some(())
            }
        })
        .await;
    }
    // Shutdown is not held up by the collector (it waits 2 s at most).
    sidecar.stop().await;
}

#[tokio::test]
async fn a_refused_collector_never_holds_up_publishes() {
    failing_collector_case(format!("http://127.0.0.1:{}", free_port()), None).await;
}

#[tokio::test]
async fn a_collector_answering_503_never_holds_up_publishes() {
    let collector = Collector::start(Mode::Unavailable).await;
    failing_collector_case(collector.url(), Some(&collector)).await;
}

#[tokio::test]
async fn a_hanging_collector_never_holds_up_publishes() {
    let collector = Collector::start(Mode::Hang).await;
    let nats = Nats::start();
    let yaml = config_yaml(
        &nats,
        &format!(
            "tracing: {{ otlp_endpoint: \"{}\", queue: 16 }}\n",
            collector.url()
        ),
    );
    let sidecar = Sidecar::start(&yaml).await;
    let n = 2000;
    publish_many(&sidecar, n).await;
    let held = (16 + jetway::telemetry::export::MAX_BATCH) as f64;
    // The first batch is stuck at the collector: the rest overflows.
    let full = eventually("queue_full drops", || {
        let s = &sidecar;
        async move {
            let d = s
                .metric(
                    "jetway_trace_spans_dropped_total",
                    &[("reason", "queue_full")],
                )
                .await;
            (d >= n as f64 - held).then_some(d)
        }
    })
    .await;
    assert!(full <= n as f64);
    eventually("the collector asked", || {
        let n = collector.requests();
        async move { (n >= 1).then_some(()) }
    })
    .await;
    assert_eq!(
        sidecar
            .metric("jetway_trace_spans_exported_total", &[])
            .await,
        0.0
    );
    sidecar.stop().await;
}

#[tokio::test]
async fn an_outage_logs_one_warn_line_a_second_and_the_rest_at_debug() {
    let mut nats = Nats::start();
    let bin = Binary::spawn(
        &config_yaml(&nats, "log: { format: json, level: debug }\n"),
        &[],
    );
    common::wait_ready(bin.metrics).await;
    nats.stop();
    let started = std::time::Instant::now();
    let mut sent = 0u64;
    // Publish until a WARN line reports the lines it held back.
    let lines = eventually("a WARN line with held_back > 0", || {
        sent += 1;
        let key = format!("outage-{sent}");
        let publish = bin.publish_owned(key);
        let bin = &bin;
        async move {
            let status = publish.await;
            assert!(status >= 500, "a publish without NATS: {status}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let lines = bin.lines();
            lines
                .iter()
                .any(|l| {
                    l["message"] == "publish failed"
                        && l["level"] == "WARN"
                        && l["held_back"].as_u64() > Some(0)
                })
                .then_some(lines)
        }
    })
    .await;
    let elapsed = started.elapsed().as_secs();
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["message"] == "publish failed")
        .collect();
    assert_eq!(failed.len() as u64, sent, "one line per failed publish");
    let warns = failed.iter().filter(|l| l["level"] == "WARN").count() as u64;
    assert!(warns >= 2, "the first failure and a later one at WARN");
    assert!(
        warns <= elapsed + 1,
        "{warns} WARN lines in {elapsed} s: at most one a second"
    );
    let held_back: u64 = failed.iter().filter_map(|l| l["held_back"].as_u64()).sum();
    let last_warn = failed
        .iter()
        .rposition(|l| l["level"] == "WARN")
        .unwrap_or_default();
    let trailing = (failed.len() - 1 - last_warn) as u64;
    assert_eq!(
        held_back + warns + trailing,
        sent,
        "every DEBUG line before the last WARN line is counted by a WARN line"
    );
    for line in &failed {
        assert_eq!(line["subject"], "orders.created", "{line}");
        assert!(line["idempotency_key"].is_string(), "{line}");
    }
}

/// The jetway binary with its stderr in a file, in `env`.
struct Binary {
    child: std::process::Child,
    log: std::path::PathBuf,
    api: SocketAddr,
    metrics: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Binary {
    fn spawn(yaml: &str, env: &[(&str, &str)]) -> Binary {
        let dir = tempfile::tempdir().expect("tempdir");
        let api: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let metrics: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
        let path = dir.path().join("jetway.yaml");
        std::fs::write(
            &path,
            format!("{yaml}\napi: {{ listen: \"{api}\", token: tok-not-logged }}\nmetrics: {{ listen: \"{metrics}\" }}\n"),
        )
        .expect("write config");
        let log = dir.path().join("stderr.log");
        let file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_jetway"));
        command
            .args(["run", "--config"])
            .arg(&path)
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("spawn jetway");
        Binary {
            child,
            log,
            api,
            metrics,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        let Ok(file) = std::fs::File::open(&self.log) else {
            return Vec::new();
        };
        BufReader::new(file)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str(&l).ok())
            .collect()
    }

    /// A publish of `{}` with `Idempotency-Key: key`.
    fn publish_owned(&self, key: String) -> impl std::future::Future<Output = u16> {
        let request = reqwest::Client::new()
            .post(format!("http://{}/v1/publish/orders.created", self.api))
            .bearer_auth("tok-not-logged")
            .header("idempotency-key", key)
            .body("{}");
        async move { request.send().await.expect("publish").status().as_u16() }
    }

    async fn publish(&self, headers: &[(&str, &str)], body: &'static str) -> u16 {
        let mut r = reqwest::Client::new()
            .post(format!("http://{}/v1/publish/orders.created", self.api))
            .bearer_auth("tok-not-logged")
            .body(body);
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.send().await.expect("publish").status().as_u16()
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn otel_variables_configure_export() {
    let nats = Nats::start();
    let collector = Collector::start(Mode::Accept).await;
    // No tracing: section at all; the variables alone turn export on.
    let yaml = config_yaml(&nats, "");
    let bin = Binary::spawn(
        &yaml,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.url()),
            ("OTEL_SERVICE_NAME", "orders-sidecar"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=k%3D1"),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ],
    );
    common::wait_ready(bin.metrics).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(bin.publish(&[("traceparent", &tp)], "{}").await, 200);
    let got = collector
        .wait_for("the publish span", 1, |g| g.trace_id() == TRACE)
        .await;
    assert_eq!(got[0].service, "orders-sidecar");
    assert_eq!(
        got[0]
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok()),
        Some("k=1")
    );
    assert_eq!(
        got[0]
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/x-protobuf")
    );
    drop(bin);

    // OTEL_SDK_DISABLED wins over an endpoint.
    let before = collector.requests();
    let yaml = config_yaml(
        &nats,
        &format!("tracing: {{ otlp_endpoint: \"{}\" }}\n", collector.url()),
    );
    let bin = Binary::spawn(&yaml, &[("OTEL_SDK_DISABLED", "true")]);
    common::wait_ready(bin.metrics).await;
    assert_eq!(bin.publish(&[("traceparent", &tp)], "{}").await, 200);
    let stopped = {
        let mut child = bin;
        common::signal(child.child.id(), "TERM");
        eventually("jetway exits", || {
            let done = child.child.try_wait().ok().flatten().is_some();
            async move { done.then_some(()) }
        })
        .await;
        child
    };
    drop(stopped);
    assert_eq!(
        collector.requests(),
        before,
        "nothing exported when disabled"
    );
}

#[tokio::test]
async fn json_log_lines_carry_the_event_context() {
    let nats = Nats::start();
    let collector = Collector::start(Mode::Accept).await;
    // First attempt 503 (retried), second 200; subject orders.created.
    let endpoint = Endpoint::start(|r, _| {
        let first = r.header("jetway-attempt").as_deref() == Some("1");
        async move {
            if first {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
    })
    .await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "log: {{ format: json, level: debug }}\ntracing: {{ otlp_endpoint: \"{}\" }}\n{}",
            collector.url(),
            subscription(
                &endpoint,
                "max_attempts: 3, initial_backoff: 100ms, jitter: 0.0"
            )
        ),
    );
    let bin = Binary::spawn(&yaml, &[]);
    common::wait_ready(bin.metrics).await;
    let tp = format!("00-{TRACE}-{PARENT}-01");
    assert_eq!(
        bin.publish(
            &[("traceparent", &tp), ("idempotency-key", "order-77")],
            "BODY-MUST-NOT-BE-LOGGED"
        )
        .await,
        200
    );
    let lines = eventually("the delivered line", || {
        let lines = bin.lines();
        async move {
            lines
                .iter()
                .any(|l| l["message"] == "delivered")
                .then_some(lines)
        }
    })
    .await;
    let retried = lines
        .iter()
        .find(|l| l["message"] == "delivery failed; retrying later")
        .expect("a retry line");
    let delivered = lines
        .iter()
        .find(|l| l["message"] == "delivered")
        .expect("a delivered line");
    for (line, attempt) in [(retried, 1), (delivered, 2)] {
        assert_eq!(line["subscription"], "emails", "{line}");
        assert_eq!(line["subject"], "orders.created", "{line}");
        assert_eq!(line["stream"], "ORDERS", "{line}");
        assert_eq!(line["seq"], 1, "{line}");
        assert_eq!(line["attempt"], attempt, "{line}");
        assert_eq!(line["idempotency_key"], "order-77", "{line}");
        assert_eq!(line["trace_id"], TRACE, "{line}");
        let span_id = line["span_id"].as_str().expect("span_id");
        assert_eq!(span_id.len(), 16, "{line}");
        assert_ne!(span_id, PARENT, "the attempt's own span: {line}");
    }
    assert_eq!(delivered["level"], "DEBUG", "success stays at DEBUG");
    // The logged span id is the exported process span of that attempt.
    let processes = collector
        .wait_for("two process spans", 2, |g| {
            g.span.kind == SpanKind::Consumer as i32 && g.trace_id() == TRACE
        })
        .await;
    for line in [retried, delivered] {
        let id = line["span_id"].as_str().unwrap_or_default();
        assert!(processes.iter().any(|p| p.span_id() == id), "{line}");
    }
    let text = std::fs::read_to_string(&bin.log).expect("log");
    assert!(
        !text.contains("BODY-MUST-NOT-BE-LOGGED"),
        "a body was logged"
    );
    assert!(!text.contains("tok-not-logged"), "the token was logged");
    // Spans are exported through the same run: counted on /metrics.
    let metrics = reqwest::get(format!("http://{}/metrics", bin.metrics))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(metrics.contains("jetway_trace_spans_exported_total"));
}
