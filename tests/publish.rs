//! The publish API (SPEC sections 3 and 7) against a real nats-server per
//! test: every status of the table triggered for real with its `code`, the
//! stored message read back byte for byte, dedup, batches, the metrics,
//! readiness and the OpenAPI document agreeing with the router.
mod common;
use common::api::{answer, post, post_batch};
use common::metrics::outcome;
use common::nats::{stored, stored_count};
use common::*;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

/// Every stored header as sorted (name, value) pairs, names as stored.
fn header_pairs(headers: &async_nats::HeaderMap) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.to_string()))
        })
        .collect();
    pairs.sort();
    pairs
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

/// Subject, request headers, body, and the code they must be refused with.
type BadRequest = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static [u8],
    &'static str,
);

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_event_is_stored_byte_for_byte_with_its_mapped_headers() {
    let (nats, s) = start_sidecar("publish: { forward_headers: [x-tenant] }\n").await;
    let payload: &[u8] = b"\x00\xff binary \r\n\xc3\xa9 \x7f end";
    let a = post(
        &s,
        "orders.created",
        &[
            ("content-type", "application/octet-stream"),
            ("idempotency-key", "order-1"),
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/orders"),
            ("ce-type", "order.created"),
            ("ce-subject", "o-1"),
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=abc"),
            ("x-tenant", "acme"),
            ("x-other", "not stored"),
            ("authorization", "Bearer not-stored"),
            ("user-agent", "test/1"),
        ],
        payload,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 1, "duplicate": false})
    );

    let msg = stored(&nats, 1).await;
    assert_eq!(msg.subject.as_str(), "orders.created");
    assert_eq!(msg.payload.as_ref(), payload, "payload byte for byte");
    assert_eq!(
        header_pairs(&msg.headers),
        pairs(&[
            ("Content-Type", "application/octet-stream"),
            ("Nats-Msg-Id", "order-1"),
            ("ce-specversion", "1.0"),
            ("ce-id", "42"),
            ("ce-source", "/orders"),
            ("ce-type", "order.created"),
            ("ce-subject", "o-1"),
            ("traceparent", TRACEPARENT),
            ("tracestate", "vendor=abc"),
            ("x-tenant", "acme"),
        ]),
        "exactly the mapped headers are stored"
    );

    // No header at all: nothing but the payload is stored.
    let a = post(&s, "orders.bare", &[], &b"plain"[..]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let msg = stored(&nats, a.seq()).await;
    assert_eq!(msg.payload.as_ref(), b"plain");
    assert!(
        header_pairs(&msg.headers).is_empty(),
        "{:?}",
        header_pairs(&msg.headers)
    );

    assert_eq!(outcome(&s, "ORDERS", "ok").await, 2.0);
    let count = s
        .metric(
            "jetway_publish_duration_seconds_count",
            &[("stream", "ORDERS")],
        )
        .await;
    assert_eq!(count, 2.0);
    assert_eq!(s.metric("jetway_nats_connected", &[]).await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subject_header_or_cloudevent_is_400_with_its_code() {
    let (nats, s) = start_sidecar("").await;
    let ce = [("content-type", "application/cloudevents+json")];
    let cases: Vec<BadRequest> = vec![
        ("orders..x", vec![], b"x", "subject_invalid"),
        ("orders.*", vec![], b"x", "subject_invalid"),
        ("orders.>", vec![], b"x", "subject_invalid"),
        ("orders.a%20b", vec![], b"x", "subject_invalid"),
        ("orders.x.", vec![], b"x", "subject_invalid"),
        (
            "orders.x",
            vec![("jetway-expected-last-sequence", "x")],
            b"x",
            "header_invalid",
        ),
        (
            "orders.x",
            vec![("jetway-expected-stream", "A.B")],
            b"x",
            "header_invalid",
        ),
        (
            "orders.x",
            vec![("traceparent", "00-nothex-01")],
            b"x",
            "header_invalid",
        ),
        ("orders.x", ce.to_vec(), b"not json", "cloudevent_invalid"),
        (
            "orders.x",
            ce.to_vec(),
            br#"{"specversion":"1.0","id":"1","source":"/s"}"#,
            "cloudevent_invalid",
        ),
        (
            "orders.x",
            ce.to_vec(),
            br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
            "cloudevent_invalid",
        ),
        (
            "orders.x",
            vec![
                ("ce-specversion", "1.0"),
                ("ce-id", "1"),
                ("ce-source", "/s"),
            ],
            b"x",
            "cloudevent_invalid",
        ),
    ];
    let long = format!("orders.{}", "x".repeat(250));
    let n = cases.len() + 1;
    for (subject, headers, body, code) in cases {
        let a = post(&s, subject, &headers, body).await;
        assert_eq!(
            (a.status, a.code()),
            (400, code),
            "{subject} {headers:?}: {}",
            a.body
        );
        assert!(a.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let a = post(&s, &long, &[], &b"x"[..]).await;
    assert_eq!(
        (a.status, a.code()),
        (400, "subject_invalid"),
        "256-byte subject"
    );

    assert_eq!(stored_count(&nats).await, 0, "nothing invalid is stored");
    let invalid = s
        .metric("jetway_publish_total", &[("outcome", "invalid")])
        .await;
    assert_eq!(invalid, n as f64);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_wrong_token_is_401() {
    let (nats, s) = start_sidecar("api: { token: s3cret }\n").await;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("s3cret"),
        Some("Basic s3cret"),
        Some("Bearer s3cre"),
        Some("Bearer s3cretx"),
    ] {
        let headers: Vec<(&str, &str)> = auth.iter().map(|v| ("authorization", *v)).collect();
        let a = post(&s, "orders.x", &headers, &b"x"[..]).await;
        assert_eq!((a.status, a.code()), (401, "unauthorized"), "{auth:?}");
    }
    // The batch route and unknown routes are guarded too.
    let a = post_batch(
        &s,
        "application/x-ndjson",
        "{\"subject\":\"orders.x\"}\n".into(),
    )
    .await;
    assert_eq!((a.status, a.code()), (401, "unauthorized"));
    let a = answer(s.http.get(s.url("/v1/nope")).send().await.expect("get")).await;
    assert_eq!((a.status, a.code()), (401, "unauthorized"));

    let a = post(
        &s,
        "orders.x",
        &[("authorization", "Bearer s3cret")],
        &b"x"[..],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(stored_count(&nats).await, 1);
    let unauthorized = s
        .metric("jetway_publish_total", &[("outcome", "unauthorized")])
        .await;
    assert_eq!(
        unauthorized, 7.0,
        "refused publishes are counted: six single, one batch"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_outside_publish_allow_is_403() {
    let (nats, s) =
        start_sidecar("publish: { allow: [\"orders.created\", \"orders.eu.*\"] }\n").await;
    for subject in ["orders.deleted", "orders.eu.1.x", "payments.x"] {
        let a = post(&s, subject, &[], &b"x"[..]).await;
        assert_eq!((a.status, a.code()), (403, "forbidden"), "{subject}");
    }
    for subject in ["orders.created", "orders.eu.1"] {
        let a = post(&s, subject, &[], &b"x"[..]).await;
        assert_eq!(a.status, 200, "{subject}: {}", a.body);
    }
    assert_eq!(stored_count(&nats).await, 2);
    assert_eq!(outcome(&s, "ORDERS", "forbidden").await, 2.0);
    assert_eq!(outcome(&s, "unknown", "forbidden").await, 1.0);
    assert_eq!(outcome(&s, "ORDERS", "ok").await, 2.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_no_stream_captures_is_404() {
    let (_nats, s) = start_sidecar("").await;
    let started = Instant::now();
    let a = post(&s, "payments.received", &[], &b"x"[..]).await;
    a.assert_error(404, "no_stream");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered at once"
    );
    // With an id jetway may resend while a leader is elected, but the answer
    // is still 404 within request_timeout.
    let a = post(
        &s,
        "payments.received",
        &[("idempotency-key", "p1")],
        &b"x"[..],
    )
    .await;
    a.assert_error(404, "no_stream");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(outcome(&s, "unknown", "no_stream").await, 2.0);
    s.stop().await;
}

/// The expectation headers of a publish (SPEC section 3).
const EXPECT_SUBJECT_SEQ: &str = "jetway-expected-last-subject-sequence";
const EXPECT_SEQ: &str = "jetway-expected-last-sequence";
const EXPECT_STREAM: &str = "jetway-expected-stream";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_expectation_is_409_with_last_sequence() {
    let (nats, s) = start_sidecar("").await;
    for subject in ["orders.a", "orders.a", "orders.b"] {
        assert_eq!(post(&s, subject, &[], &b"x"[..]).await.status, 200);
    }
    // orders.a is at 2, the stream at 3.
    let a = post(&s, "orders.a", &[(EXPECT_SUBJECT_SEQ, "1")], &b"x"[..]).await;
    a.assert_error(409, "conflict");
    assert_eq!(a.body["error"]["last_sequence"], 2);

    let a = post(&s, "orders.new", &[(EXPECT_SUBJECT_SEQ, "5")], &b"x"[..]).await;
    a.assert_error(409, "conflict");
    assert_eq!(
        a.body["error"]["last_sequence"], 0,
        "a subject without messages"
    );

    let a = post(&s, "orders.a", &[(EXPECT_SUBJECT_SEQ, "2")], &b"x"[..]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.seq(), 4);
    let msg = stored(&nats, 4).await;
    assert_eq!(
        msg.headers
            .get("Nats-Expected-Last-Subject-Sequence")
            .map(|v| v.to_string()),
        Some("2".to_string())
    );

    let a = post(&s, "orders.c", &[(EXPECT_SEQ, "3")], &b"x"[..]).await;
    a.assert_error(409, "conflict");
    assert_eq!(a.body["error"]["last_sequence"], 4);
    let a = post(&s, "orders.c", &[(EXPECT_SEQ, "4")], &b"x"[..]).await;
    assert_eq!(a.status, 200, "{}", a.body);

    let a = post(&s, "orders.c", &[(EXPECT_STREAM, "OTHER")], &b"x"[..]).await;
    a.assert_error(409, "conflict");
    assert!(a.body["error"].get("last_sequence").is_none(), "{}", a.body);
    let a = post(&s, "orders.c", &[(EXPECT_STREAM, "ORDERS")], &b"x"[..]).await;
    assert_eq!(a.status, 200, "{}", a.body);

    assert_eq!(stored_count(&nats).await, 6);
    assert_eq!(outcome(&s, "ORDERS", "conflict").await, 4.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_max_body_is_413() {
    let (nats, s) = start_sidecar("api: { max_body: 1KiB }\n").await;
    let a = post(&s, "orders.x", &[], vec![b'a'; 1024]).await;
    assert_eq!(a.status, 200, "exactly max_body is fine: {}", a.body);
    let a = post(&s, "orders.x", &[], vec![b'a'; 1025]).await;
    a.assert_error(413, "payload_too_large");
    assert_eq!(stored_count(&nats).await, 1);
    assert_eq!(outcome(&s, "ORDERS", "too_large").await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_max_body_is_413_without_reading_it_all() {
    let (nats, s) = start_sidecar("api: { max_body: 1KiB }\n").await;
    const CHUNK: usize = 16 * 1024;
    const TOTAL: usize = 256 * 1024 * 1024;
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let chunks = futures::stream::iter(0..TOTAL / CHUNK).map(move |_| {
        counter.fetch_add(CHUNK, Ordering::SeqCst);
        Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b'a'; CHUNK]))
    });
    let request = s
        .http
        .post(s.url("/v1/publish/orders.big"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send();
    let response = tokio::time::timeout(Duration::from_secs(10), request)
        .await
        .expect("refused before the whole body was sent")
        .expect("an answer, not a broken connection");
    let a = answer(response).await;
    a.assert_error(413, "payload_too_large");
    let sent = sent.load(Ordering::SeqCst);
    assert!(
        sent < TOTAL / 4,
        "the client could send {sent} of {TOTAL} bytes"
    );
    assert_eq!(stored_count(&nats).await, 0);
    assert_eq!(outcome(&s, "ORDERS", "too_large").await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_servers_max_payload_is_413() {
    let conf = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(conf.path(), "max_payload: 2048\n").expect("write nats config");
    let nats = Nats::start_with(&["-c", conf.path().to_str().expect("utf-8 path")]);
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let a = post(&s, "orders.x", &[], vec![b'a'; 4096]).await;
    a.assert_error(413, "payload_too_large");
    let a = post(&s, "orders.x", &[], vec![b'a'; 1024]).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(stored_count(&nats).await, 1);
    assert_eq!(outcome(&s, "ORDERS", "too_large").await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_in_flight_limit_is_429_with_retry_after() {
    let (nats, s) = start_sidecar("api: { max_in_flight: 1 }\n").await;
    assert_eq!(post(&s, "orders.x", &[], &b"x"[..]).await.status, 200);
    // A frozen server never acks, so the one admitted publish stays in
    // flight for request_timeout (2s) and every other one sent meanwhile,
    // whatever the order of arrival, is shed.
    nats.freeze();
    let singles = (0..4).map(|i| {
        let s = &s;
        async move {
            post(
                s,
                "orders.y",
                &[("idempotency-key", &format!("k{i}"))],
                &b"y"[..],
            )
            .await
        }
    });
    let batch = post_batch(
        &s,
        "application/x-ndjson",
        "{\"subject\":\"orders.z\"}\n".into(),
    );
    let (singles, batch) = tokio::join!(futures::future::join_all(singles), batch);
    let mut shed = 0;
    for a in singles.iter().chain([&batch]) {
        if a.status == 429 {
            shed += 1;
            assert_eq!(a.code(), "overloaded", "{}", a.body);
            let retry_after: u64 = a.headers["retry-after"]
                .to_str()
                .expect("ascii")
                .parse()
                .expect("Retry-After in seconds");
            assert!(retry_after >= 1);
        } else if a.body.get("results").is_some() {
            assert_eq!(
                (a.status, a.body["results"][0]["error"]["code"].as_str()),
                (207, Some("timeout"))
            );
        } else {
            a.assert_error(504, "timeout");
        }
    }
    assert_eq!(shed, 4, "all but one of five are shed");
    assert_eq!(
        outcome(&s, "unknown", "overloaded").await + outcome(&s, "ORDERS", "overloaded").await,
        4.0
    );

    nats.thaw();
    let a = post(&s, "orders.y", &[], &b"y"[..]).await;
    assert_eq!(
        a.status, 200,
        "admitted again once nothing is in flight: {}",
        a.body
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_nats_is_504_and_the_same_key_is_then_a_duplicate() {
    let (nats, s) = start_sidecar("").await;
    nats.freeze();
    let started = Instant::now();
    let a = post(
        &s,
        "orders.x",
        &[("idempotency-key", "k-frozen")],
        &b"x"[..],
    )
    .await;
    let took = started.elapsed();
    a.assert_error(504, "timeout");
    // request_timeout is 2s in the test config.
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    assert!(a.headers.get("retry-after").is_none());
    assert_eq!(outcome(&s, "ORDERS", "timeout").await, 1.0);

    nats.thaw();
    // What was handed over may be stored after all: a retry with the same
    // key is safe and is stored once.
    let a = post(
        &s,
        "orders.x",
        &[("idempotency-key", "k-frozen")],
        &b"x"[..],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["duplicate"], true, "{}", a.body);
    assert_eq!(stored_count(&nats).await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_nats_is_503_and_publishing_resumes_after_restart() {
    let mut nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    assert_eq!(post(&s, "orders.x", &[], &b"1"[..]).await.status, 200);
    assert_eq!(s.metric("jetway_nats_connected", &[]).await, 1.0);
    assert_eq!(s.metric("jetway_nats_reconnects_total", &[]).await, 0.0);

    nats.stop();
    eventually("jetway notices the lost connection", || {
        let s = &s;
        async move { (s.metric("jetway_nats_connected", &[]).await == 0.0).then_some(()) }
    })
    .await;
    let readyz = s
        .http
        .get(s.metrics_url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(readyz.status(), 503);

    let started = Instant::now();
    let a = post(&s, "orders.x", &[("idempotency-key", "k2")], &b"2"[..]).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "answered within request_timeout"
    );
    a.assert_error(503, "nats_unavailable");
    assert!(a.headers.contains_key("retry-after"));
    let a = post_batch(
        &s,
        "application/x-ndjson",
        "{\"subject\":\"orders.x\"}\n".into(),
    )
    .await;
    a.assert_error(503, "nats_unavailable");
    assert_eq!(outcome(&s, "ORDERS", "unavailable").await, 2.0);

    nats.restart();
    s.wait_ready().await;
    let a = eventually("publishing works again", || {
        let s = &s;
        async move {
            let a = post(s, "orders.x", &[("idempotency-key", "k2")], &b"2"[..]).await;
            (a.status == 200).then_some(a)
        }
    })
    .await;
    assert_eq!(
        a.body["duplicate"], false,
        "the 503 stored nothing: {}",
        a.body
    );
    // (Whether the first message survived the SIGKILL is up to the
    // server's file store, so no exact sequence is asserted.)
    assert_eq!(stored(&nats, a.seq()).await.payload.as_ref(), b"2");
    assert_eq!(s.metric("jetway_nats_connected", &[]).await, 1.0);
    assert!(s.metric("jetway_nats_reconnects_total", &[]).await >= 1.0);
    s.stop().await;
}

/// An operator deletes a configured stream (`nats stream rm`) of a sidecar
/// that only publishes (no subscription notices it): the publishes that
/// find no stream are refused with 503 (nothing stored), and have jetway
/// look the stream up in the background; gone on a second look, it is
/// created again (SPEC 4) and publishing works without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_stream_is_created_again_by_the_publishes() {
    let (nats, s) = start_sidecar("").await;
    assert_eq!(post(&s, "orders.x", &[], &b"1"[..]).await.status, 200);
    let js = nats.client().await;

    js.delete_stream("ORDERS").await.expect("delete the stream");
    let a = post(&s, "orders.x", &[], &b"2"[..]).await;
    a.assert_error(503, "nats_unavailable");
    let a = eventually("publishing works again", || {
        let s = &s;
        async move {
            let a = post(s, "orders.x", &[("idempotency-key", "k3")], &b"3"[..]).await;
            (a.status == 200).then_some(a)
        }
    })
    .await;
    assert_eq!(a.seq(), 1, "the first event of a new stream: {}", a.body);
    assert_eq!(stored(&nats, 1).await.payload.as_ref(), b"3");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_idempotency_key_is_stored_once() {
    let (nats, s) = start_sidecar("").await;
    let first = post(&s, "orders.x", &[("idempotency-key", "once")], &b"a"[..]).await;
    let second = post(&s, "orders.x", &[("idempotency-key", "once")], &b"a"[..]).await;
    assert_eq!(
        first.body,
        json!({"stream": "ORDERS", "seq": 1, "duplicate": false})
    );
    assert_eq!(second.status, 200);
    assert_eq!(
        second.body,
        json!({"stream": "ORDERS", "seq": 1, "duplicate": true})
    );
    let other = post(&s, "orders.x", &[("idempotency-key", "other")], &b"a"[..]).await;
    assert_eq!(other.body["duplicate"], false);
    assert_eq!(stored_count(&nats).await, 2);
    assert_eq!(outcome(&s, "ORDERS", "ok").await, 2.0);
    assert_eq!(outcome(&s, "ORDERS", "duplicate").await, 1.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_cloudevent_is_stored_once() {
    let (nats, s) = start_sidecar("").await;
    let structured = [("content-type", "application/cloudevents+json")];
    let event: &'static [u8] = br#"{"specversion":"1.0","id":"e-1","source":"/orders","type":"order.created","data":{"n":1}}"#;
    let a = post(&s, "orders.created", &structured, event).await;
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 1, "duplicate": false})
    );
    let a = post(&s, "orders.created", &structured, event).await;
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 1, "duplicate": true})
    );
    let msg = stored(&nats, 1).await;
    assert_eq!(msg.payload.as_ref(), event);
    assert_eq!(
        msg.headers
            .get("Content-Type")
            .map(|v| v.to_string())
            .as_deref(),
        Some("application/cloudevents+json")
    );
    assert!(
        msg.headers.get("Nats-Msg-Id").is_some(),
        "an id derived from source and id"
    );

    // The same id from another source is another event.
    let other: &'static [u8] =
        br#"{"specversion":"1.0","id":"e-1","source":"/payments","type":"t"}"#;
    let a = post(&s, "orders.created", &structured, other).await;
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 2, "duplicate": false})
    );

    let binary = [
        ("ce-specversion", "1.0"),
        ("ce-id", "b-1"),
        ("ce-source", "/orders"),
        ("ce-type", "order.created"),
    ];
    let a = post(&s, "orders.created", &binary, &b"{}"[..]).await;
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 3, "duplicate": false})
    );
    let a = post(&s, "orders.created", &binary, &b"{}"[..]).await;
    assert_eq!(
        a.body,
        json!({"stream": "ORDERS", "seq": 3, "duplicate": true})
    );

    assert_eq!(stored_count(&nats).await, 3);
    assert_eq!(outcome(&s, "ORDERS", "duplicate").await, 2.0);
    s.stop().await;
}

fn batch_items(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"subject": format!("orders.batch.{}", i % 7), "data": {"i": i}}))
        .collect()
}

/// Checks one result per item, seq increasing in input order, and that
/// the message at each seq is that item's data.
async fn assert_stored_in_order(
    nats: &Nats,
    results: &[Value],
    items: &[Value],
    skip: Option<usize>,
) {
    assert_eq!(results.len(), items.len());
    let mut last = 0;
    for (i, (result, item)) in results.iter().zip(items).enumerate() {
        if Some(i) == skip {
            continue;
        }
        assert_eq!(result["stream"], "ORDERS", "item {i}: {result}");
        assert_eq!(result["duplicate"], false, "item {i}: {result}");
        let seq = result["seq"].as_u64().expect("seq");
        assert!(seq > last, "item {i}: seq {seq} after {last}");
        last = seq;
        let msg = stored(nats, seq).await;
        assert_eq!(
            msg.subject.as_str(),
            item["subject"].as_str().expect("subject")
        );
        assert_eq!(
            msg.payload.as_ref(),
            item["data"].to_string().as_bytes(),
            "item {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ndjson_batch_of_200_answers_in_input_order() {
    let (nats, s) = start_sidecar("").await;
    let items = batch_items(200);
    let body: String = items.iter().map(|i| format!("{i}\n")).collect();
    let a = post_batch(&s, "application/x-ndjson", body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let results = a.body["results"].as_array().expect("results");
    assert_stored_in_order(&nats, results, &items, None).await;
    assert_eq!(stored_count(&nats).await, 200);
    let msg = stored(&nats, 1).await;
    assert_eq!(
        msg.headers
            .get("Content-Type")
            .map(|v| v.to_string())
            .as_deref(),
        Some("application/json")
    );
    assert_eq!(outcome(&s, "ORDERS", "ok").await, 200.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_array_batch_with_one_bad_item_is_207_and_stores_the_others() {
    let (nats, s) = start_sidecar("publish: { forward_headers: [x-tenant] }\n").await;
    let mut items = batch_items(200);
    items[57] = json!({"subject": "orders..bad", "data": 1});
    let a = post_batch(
        &s,
        "application/json",
        Value::Array(items.clone()).to_string(),
    )
    .await;
    assert_eq!(a.status, 207, "{}", a.body);
    let results = a.body["results"].as_array().expect("results");
    assert_eq!(
        results[57]["error"]["code"], "subject_invalid",
        "{}",
        results[57]
    );
    assert_stored_in_order(&nats, results, &items, Some(57)).await;
    assert_eq!(stored_count(&nats).await, 199);
    assert_eq!(outcome(&s, "ORDERS", "ok").await, 199.0);
    let invalid = s
        .metric("jetway_publish_total", &[("outcome", "invalid")])
        .await;
    assert_eq!(invalid, 1.0, "the bad item is counted");

    // Every item field: binary data, headers and an idempotency key.
    let item = json!([{
        "subject": "orders.one",
        "data_base64": "AP8NCg==",
        "headers": {"x-tenant": "acme", "x-dropped": "1", "ce-specversion": "1.0", "ce-id": "1", "ce-source": "/s", "ce-type": "t"},
        "idempotency_key": "batch-key"
    }]);
    let a = post_batch(&s, "application/json", item.to_string()).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let seq = a.body["results"][0]["seq"].as_u64().expect("seq");
    let msg = stored(&nats, seq).await;
    assert_eq!(msg.payload.as_ref(), b"\x00\xff\r\n");
    assert_eq!(
        header_pairs(&msg.headers),
        pairs(&[
            ("Nats-Msg-Id", "batch-key"),
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "/s"),
            ("ce-type", "t"),
            ("x-tenant", "acme"),
        ])
    );
    let a = post_batch(&s, "application/json", item.to_string()).await;
    assert_eq!(a.body["results"][0]["duplicate"], true, "{}", a.body);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_batch_is_400_and_stores_nothing() {
    let (nats, s) = start_sidecar("").await;
    assert_eq!(post(&s, "orders.x", &[], &b"x"[..]).await.status, 200);
    let good = "{\"subject\":\"orders.x\",\"data\":1}\n".repeat(10);
    let cases = [
        ("application/x-ndjson", format!("{good}not json\n")),
        (
            "application/x-ndjson",
            format!("{good}{{\"subject\":\"orders.x\",\"extra\":1}}\n"),
        ),
        (
            "application/json",
            format!("[{}", "{\"subject\":\"orders.x\"},".repeat(10)),
        ),
        ("application/json", "{\"subject\":\"orders.x\"}".to_string()),
        ("application/json", "[]".to_string()),
        (
            "application/json",
            format!("[{}]", vec!["{\"subject\":\"orders.x\"}"; 1001].join(",")),
        ),
    ];
    for (content_type, body) in cases {
        let a = post_batch(&s, content_type, body.clone()).await;
        assert_eq!(
            (a.status, a.code()),
            (400, "batch_invalid"),
            "{}: {}",
            &body[..body.len().min(80)],
            a.body
        );
    }
    assert_eq!(
        stored_count(&nats).await,
        1,
        "nothing of a malformed batch is stored"
    );
    assert_eq!(outcome(&s, "unknown", "invalid").await, 6.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_and_wrong_method_is_405() {
    let (_nats, s) = start_sidecar("").await;
    for path in ["/v1/nope", "/v1", "/", "/v2/publish/orders.x"] {
        let a = answer(s.http.get(s.url(path)).send().await.expect("get")).await;
        assert_eq!((a.status, a.code()), (404, "not_found"), "{path}");
    }
    let a = answer(
        s.http
            .get(s.url("/v1/publish/orders.x"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    let a = answer(
        s.http
            .delete(s.url("/v1/publish"))
            .send()
            .await
            .expect("delete"),
    )
    .await;
    assert_eq!((a.status, a.code()), (405, "method_not_allowed"));
    s.stop().await;
}

/// `(path, method)` of every route `src/api.rs` registers, read from its
/// source: `.route("/v1/...", get(..).post(..))`.
fn routes_in_router_source() -> BTreeSet<(String, String)> {
    let source = include_str!("../src/api.rs");
    let mut routes = BTreeSet::new();
    for chunk in source.split(".route(").skip(1) {
        let Some(rest) = chunk.trim_start().strip_prefix('"') else {
            continue;
        };
        let (path, rest) = rest.split_once('"').expect("a quoted path");
        if !path.starts_with("/v1/") {
            continue;
        }
        // The handlers end where the next route or fallback starts.
        let handlers = rest.split("\n        .").next().unwrap_or(rest);
        for method in ["get", "post", "put", "patch", "delete"] {
            let called = handlers.match_indices(&format!("{method}(")).any(|(i, _)| {
                i == 0
                    || !(handlers.as_bytes()[i - 1].is_ascii_alphanumeric()
                        || handlers.as_bytes()[i - 1] == b'_')
            });
            if called {
                routes.insert((path.replace("{*", "{"), method.to_string()));
            }
        }
    }
    routes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_and_router_agree() {
    let (_nats, s) = start_sidecar("").await;
    let doc = answer(
        s.http
            .get(s.url("/v1/openapi.json"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(doc.status, 200);
    assert_eq!(doc.headers["content-type"], "application/json");
    assert_eq!(doc.body["openapi"], "3.1.0");
    let methods = ["get", "post", "put", "patch", "delete"];
    let mut documented = BTreeSet::new();
    for (path, item) in doc.body["paths"].as_object().expect("paths") {
        for method in methods {
            if item.get(method).is_some() {
                documented.insert((path.clone(), method.to_string()));
            }
        }
    }
    assert!(documented.contains(&("/v1/publish/{subject}".to_string(), "post".to_string())));
    assert_eq!(
        routes_in_router_source(),
        documented,
        "routes of src/api.rs vs the document"
    );

    let fallback = answer(
        s.http
            .get(s.url("/v1/surely-no-such-route"))
            .send()
            .await
            .expect("get"),
    )
    .await;
    assert_eq!(fallback.status, 404);
    let paths: BTreeSet<&String> = documented.iter().map(|(p, _)| p).collect();
    for path in paths {
        let url = s.url(
            &path
                .replace("{subject}", "orders.x")
                .replace("{subscription}", "s1")
                .replace("{name}", "s1")
                .replace("{dlq_sequence}", "1")
                .replace("{stream}", "ORDERS")
                .replace("{seq}", "1")
                .replace("{type}", "order.created")
                .replace("{version}", "1"),
        );
        assert!(
            !url.contains('{'),
            "a path parameter of {path} has no sample value"
        );
        for method in methods {
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let a = answer(
                s.http
                    .request(m, &url)
                    // A live read streams until the client goes away; a bad
                    // Last-Event-ID makes it answer 400 at once. Every other
                    // route ignores the header.
                    .header("Last-Event-ID", "not-a-number")
                    .body("{}")
                    .send()
                    .await
                    .expect("request"),
            )
            .await;
            if documented.contains(&(path.clone(), method.to_string())) {
                assert_ne!(a.status, 405, "{method} {path} is documented: {}", a.body);
                assert_ne!(
                    a.body, fallback.body,
                    "{method} {path} is documented but not routed"
                );
            } else {
                assert_eq!(
                    (a.status, a.code()),
                    (405, "method_not_allowed"),
                    "{method} {path} is not documented"
                );
            }
        }
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_nats_connects() {
    let mut nats = Nats::start();
    nats.stop();
    let j = Sidecar::start_unready(&config_yaml(&nats, "")).await;
    let http = reqwest::Client::new();
    let readyz = j.metrics_url("/readyz");
    let healthz = j.metrics_url("/healthz");
    let (status, reason) = eventually("readyz answers", || {
        let (http, readyz) = (http.clone(), readyz.clone());
        async move {
            let r = http.get(&readyz).send().await.ok()?;
            Some((r.status().as_u16(), r.text().await.ok()?))
        }
    })
    .await;
    assert_eq!(status, 503, "{reason}");
    assert!(reason.contains("NATS"), "the reason is given: {reason}");
    assert_eq!(
        http.get(&healthz).send().await.expect("healthz").status(),
        200
    );
    let text = j.metrics_text().await;
    assert_eq!(metric_value(&text, "jetway_nats_connected", &[]), Some(0.0));
    let r = j.publish("orders.x", b"x").await;
    let a = answer(r).await;
    a.assert_error(503, "nats_unavailable");

    nats.restart();
    j.wait_ready().await;
    let r = j.publish("orders.x", b"x").await;
    assert_eq!(r.status(), 200);
    let text = j.metrics_text().await;
    assert_eq!(metric_value(&text, "jetway_nats_connected", &[]), Some(1.0));
    assert_eq!(
        metric_value(&text, "jetway_nats_reconnects_total", &[]),
        Some(0.0),
        "a first connection is not a reconnect"
    );
    j.stop().await;
}
