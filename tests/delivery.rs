//! Delivery end to end (SPEC sections 4 to 8, issue 3): a real
//! nats-server per test, a whole sidecar, and real HTTP endpoints that
//! record what they receive.
mod common;
use common::api::Api;
use common::config::{s1_yaml, sub, FAST_RETRY};
use common::nats::{dlq_stream, nats_header};
use common::*;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A negative can only be seen over time: checks that `holds` stays true
/// for `window`, polling.
async fn consistently<F, Fut>(what: &str, window: Duration, mut holds: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let end = Instant::now() + window;
    while Instant::now() < end {
        assert!(holds().await, "no longer true: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn status(code: StatusCode) -> Response {
    code.into_response()
}

/// Answers `when_set` while `switch` is set, else `when_clear`.
async fn switch_endpoint(
    switch: &Arc<AtomicBool>,
    when_set: StatusCode,
    when_clear: StatusCode,
) -> Endpoint {
    let switch = switch.clone();
    Endpoint::start(move |_, _| {
        let code = if switch.load(Ordering::SeqCst) {
            when_set
        } else {
            when_clear
        };
        async move { status(code) }
    })
    .await
}

fn attempts(received: &[Received]) -> Vec<u64> {
    received
        .iter()
        .map(|r| {
            r.header("jetway-attempt")
                .expect("attempt")
                .parse()
                .expect("number")
        })
        .collect()
}

fn sequence(r: &Received) -> u64 {
    r.header("jetway-sequence")
        .expect("sequence")
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_body_and_every_spec_header() {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let (sidecar, api) = Api::start(
        &nats,
        "publish: { forward_headers: [\"x-tenant\"] }\napp: { callback_token: cb-secret-1 }\n",
        &[sub("s1", "orders.>", &endpoint.url("/hook"), "")],
    )
    .await;

    let body: Vec<u8> = (0..=255u8).rev().chain(*b"\r\n\0{}").collect();
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let before = OffsetDateTime::now_utc() - Duration::from_secs(2);
    let seq1 = api
        .publish(
            "orders.created",
            &[
                ("content-type", "application/vnd.acme+octets"),
                ("idempotency-key", "order-42"),
                ("ce-specversion", "1.0"),
                ("ce-id", "42"),
                ("ce-source", "/orders"),
                ("ce-type", "order.created"),
                ("x-tenant", "acme"),
                ("x-private", "not forwarded"),
                ("traceparent", parent),
                ("tracestate", "vendor=x"),
            ],
            body.clone(),
        )
        .await;
    let seq2 = api
        .publish(
            "orders.updated",
            &[("content-type", "text/plain")],
            "second",
        )
        .await;
    endpoint.wait_for(2).await;
    let after = OffsetDateTime::now_utc() + Duration::from_secs(2);

    let received = endpoint.received();
    assert_eq!(received.len(), 2);
    let first = received
        .iter()
        .find(|r| sequence(r) == seq1)
        .expect("first delivered");
    let second = received
        .iter()
        .find(|r| sequence(r) == seq2)
        .expect("second delivered");

    assert_eq!(first.body.as_ref(), body.as_slice(), "body byte for byte");
    let h = |name: &str| first.header(name);
    assert_eq!(
        h("content-type").as_deref(),
        Some("application/vnd.acme+octets")
    );
    assert_eq!(h("ce-specversion").as_deref(), Some("1.0"));
    assert_eq!(h("ce-id").as_deref(), Some("42"));
    assert_eq!(h("ce-source").as_deref(), Some("/orders"));
    assert_eq!(h("ce-type").as_deref(), Some("order.created"));
    assert_eq!(h("x-tenant").as_deref(), Some("acme"));
    assert_eq!(h("x-private"), None, "only forward_headers are stored");
    assert_eq!(h("tracestate").as_deref(), Some("vendor=x"));
    assert_eq!(h("jetway-subscription").as_deref(), Some("s1"));
    assert_eq!(h("jetway-subject").as_deref(), Some("orders.created"));
    assert_eq!(h("jetway-stream").as_deref(), Some("ORDERS"));
    assert_eq!(h("jetway-sequence"), Some(seq1.to_string()));
    assert_eq!(h("jetway-attempt").as_deref(), Some("1"));
    let published =
        OffsetDateTime::parse(&h("jetway-published-at").expect("published-at"), &Rfc3339)
            .expect("RFC 3339");
    assert!(
        before <= published && published <= after,
        "published at {published}"
    );
    assert_eq!(
        h("idempotency-key").as_deref(),
        Some("order-42"),
        "the message id"
    );
    assert_eq!(h("authorization").as_deref(), Some("Bearer cb-secret-1"));
    assert_eq!(h("nats-msg-id"), None);
    assert_eq!(
        h("webhook-signature"),
        None,
        "no signing_secret, no signature"
    );

    // Same trace, new span.
    let tp = h("traceparent").expect("traceparent");
    let parts: Vec<&str> = tp.split('-').collect();
    let original: Vec<&str> = parent.split('-').collect();
    assert_eq!(parts.len(), 4, "{tp}");
    assert_eq!(parts[0], original[0]);
    assert_eq!(parts[1], original[1], "same trace id");
    assert_eq!(parts[3], original[3], "same flags");
    assert_ne!(parts[2], original[2], "a new span id");
    assert_eq!(parts[2].len(), 16);
    assert!(parts[2]
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    assert_ne!(parts[2], "0000000000000000");

    assert_eq!(second.body.as_ref(), b"second");
    assert_eq!(second.header("content-type").as_deref(), Some("text/plain"));
    assert_eq!(
        second.header("jetway-subject").as_deref(),
        Some("orders.updated")
    );
    assert_eq!(
        second.header("idempotency-key"),
        Some(format!("ORDERS:{seq2}"))
    );
    assert_eq!(second.header("traceparent"), None);
    assert_eq!(
        second.header("authorization").as_deref(),
        Some("Bearer cb-secret-1")
    );

    let s1 = [("subscription", "s1")];
    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        2.0,
    )
    .await;
    assert_metric(&sidecar, "jetway_delivery_duration_seconds_count", &s1, 2.0).await;
    assert_metric(&sidecar, "jetway_delivery_latency_seconds_count", &s1, 2.0).await;
    assert_metric(&sidecar, "jetway_deliveries_in_flight", &s1, 0.0).await;
    assert_metric(&sidecar, "jetway_endpoint_up", &s1, 1.0).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured_and_the_key_is_stable() {
    let nats = Nats::start();
    let times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let t = times.clone();
    let endpoint = Endpoint::start(move |_, n| {
        t.lock().expect("lock").push(Instant::now());
        async move {
            if n < 2 {
                (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "1")]).into_response()
            } else {
                status(StatusCode::OK)
            }
        }
    })
    .await;
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, FAST_RETRY).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let seq = api
        .publish("orders.created", &[("traceparent", parent)], "retry me")
        .await;

    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        1.0,
    )
    .await;
    let received = endpoint.received();
    assert_eq!(attempts(&received), vec![1, 2, 3]);
    for r in &received {
        assert_eq!(r.header("idempotency-key"), Some(format!("ORDERS:{seq}")));
        assert_eq!(r.body.as_ref(), b"retry me");
    }
    let spans: HashSet<String> = received
        .iter()
        .map(|r| {
            let tp = r.header("traceparent").expect("traceparent");
            assert!(
                tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{tp}"
            );
            tp
        })
        .collect();
    assert_eq!(spans.len(), 3, "a new span id per attempt");
    // Retry-After (1s), not initial_backoff (100ms), set the pace.
    let times = times.lock().expect("lock").clone();
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= Duration::from_millis(900), "retried after {gap:?}");
    }
    assert_counts(
        &sidecar,
        "jetway_deliveries_total",
        "s1",
        &[("retry", 2.0), ("dead_letter", 0.0)],
    )
    .await;
    assert_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1")],
        0.0,
    )
    .await;
    assert_metric(
        &sidecar,
        "jetway_delivery_duration_seconds_count",
        &[("subscription", "s1")],
        3.0,
    )
    .await;
    api.wait_drained("s1").await;
    assert!(api.dead_letters("s1").await.is_empty());
    assert!(dlq_stream(&nats).await.is_empty());
    assert_eq!(endpoint.count(), 3);
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_400() {
    let nats = Nats::start();
    // A long answer: the dead letter keeps at most 1 KiB of it.
    let endpoint = Endpoint::start(|_, _| async {
        (StatusCode::BAD_REQUEST, "no such order ".repeat(200)).into_response()
    })
    .await;
    let (sidecar, api) = Api::start(
        &nats,
        "publish: { forward_headers: [\"x-tenant\"] }\n",
        &[sub("s1", "orders.>", &endpoint.url("/e"), FAST_RETRY)],
    )
    .await;
    let body = br#"{"order":7}"#;
    let seq = api
        .publish(
            "orders.created",
            &[
                ("content-type", "application/json"),
                ("x-tenant", "acme"),
                ("idempotency-key", "bad-1"),
            ],
            body.to_vec(),
        )
        .await;

    wait_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1"), ("reason", "rejected")],
        1.0,
    )
    .await;
    api.wait_drained("s1").await;
    assert_eq!(endpoint.count(), 1, "a rejected message is tried once");
    assert_eq!(attempts(&endpoint.received()), vec![1]);

    // Through the route.
    let items = api.dead_letters("s1").await;
    assert_eq!(items.len(), 1, "{items:?}");
    let item = &items[0];
    assert_eq!(item["reason"], "rejected");
    assert_eq!(item["status"], 400);
    assert_eq!(item["attempts"], 1);
    assert_eq!(item["original_subject"], "orders.created");
    assert_eq!(item["original_sequence"], seq);
    assert_eq!(item["data_base64"], B64.encode(body));
    let error = item["error"].as_str().expect("error");
    assert!(error.starts_with("HTTP 400"), "{error}");
    assert!(error.len() <= 1024, "error is {} bytes", error.len());
    OffsetDateTime::parse(item["at"].as_str().expect("at"), &Rfc3339).expect("at is RFC 3339");
    assert_eq!(item["headers"]["Jetway-Dlq-Reason"], json!(["rejected"]));
    assert_eq!(item["headers"]["x-tenant"], json!(["acme"]));
    let dlq_seq = item["dlq_sequence"].as_u64().expect("dlq_sequence");
    let (_, page) = api.get("/v1/dead-letters/s1").await;
    assert_eq!(page["next"], Value::Null);

    // In the stream itself, read with a plain client.
    let stored = dlq_stream(&nats).await;
    assert_eq!(stored.len(), 1);
    let m = &stored[0];
    assert_eq!(m.sequence, dlq_seq);
    assert_eq!(m.subject.as_str(), "jetway.dlq.test.s1");
    assert_eq!(m.payload.as_ref(), body);
    assert_eq!(
        nats_header(m, "Jetway-Original-Subject"),
        Some("orders.created")
    );
    assert_eq!(nats_header(m, "Jetway-Original-Stream"), Some("ORDERS"));
    assert_eq!(
        nats_header(m, "Jetway-Original-Sequence"),
        Some(seq.to_string().as_str())
    );
    assert_eq!(nats_header(m, "Jetway-Dlq-Reason"), Some("rejected"));
    assert_eq!(nats_header(m, "Jetway-Dlq-Status"), Some("400"));
    assert_eq!(nats_header(m, "Jetway-Dlq-Attempts"), Some("1"));
    let error = nats_header(m, "Jetway-Dlq-Error").expect("error header");
    assert!(
        error.starts_with("HTTP 400") && error.len() <= 1024,
        "{error}"
    );
    OffsetDateTime::parse(nats_header(m, "Jetway-Dlq-At").expect("at"), &Rfc3339)
        .expect("RFC 3339");
    assert_eq!(
        nats_header(m, "Content-Type"),
        Some("application/json"),
        "original headers kept"
    );
    assert_eq!(nats_header(m, "x-tenant"), Some("acme"));

    let s1 = api.subscription("s1").await;
    assert_eq!(s1["dead_letters"], 1);
    assert_counts(
        &sidecar,
        "jetway_deliveries_total",
        "s1",
        &[("dead_letter", 1.0), ("retry", 0.0), ("success", 0.0)],
    )
    .await;
    assert_counts(
        &sidecar,
        "jetway_dead_letters_total",
        "s1",
        &[("exhausted", 0.0)],
    )
    .await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dead_letter_store_never_acks_the_original() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, _| async { status(StatusCode::GONE) }).await;
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, FAST_RETRY).await;
    // The dead-letter stream disappears behind jetway's back.
    let js = nats.client().await;
    js.delete_stream("JETWAY_DLQ")
        .await
        .expect("delete JETWAY_DLQ");
    let seq = api.publish("orders.created", &[], "keep me").await;
    endpoint.wait_for(3).await;
    let s = api.subscription("s1").await;
    assert_eq!(
        s["ack_pending"], 1,
        "the original stays unacknowledged: {s}"
    );
    assert_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1")],
        0.0,
    )
    .await;

    // Back again: the next attempt stores the dead letter.
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "JETWAY_DLQ".into(),
        subjects: vec!["jetway.dlq.>".into()],
        ..Default::default()
    })
    .await
    .expect("create JETWAY_DLQ");
    wait_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1"), ("reason", "rejected")],
        1.0,
    )
    .await;
    api.wait_drained("s1").await;
    let items = api.dead_letters("s1").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["original_sequence"], seq);
    assert_eq!(items[0]["status"], 410);
    assert_eq!(items[0]["data_base64"], B64.encode("keep me"));
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_is_retried() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, n| async move {
        if n == 0 {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        status(StatusCode::OK)
    })
    .await;
    let (sidecar, api) =
        Api::start_s1(&nats, &endpoint, &format!("timeout: 1s, {FAST_RETRY}")).await;
    api.publish("orders.created", &[], "late").await;
    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        1.0,
    )
    .await;
    api.wait_drained("s1").await;
    assert_eq!(attempts(&endpoint.received()), vec![1, 2]);
    assert_counts(&sidecar, "jetway_deliveries_total", "s1", &[("retry", 1.0)]).await;
    assert!(api.dead_letters("s1").await.is_empty());
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_after_max_attempts() {
    let nats = Nats::start();
    let endpoint =
        Endpoint::start(|_, _| async { status(StatusCode::INTERNAL_SERVER_ERROR) }).await;
    let (sidecar, api) = Api::start_s1(
        &nats,
        &endpoint,
        "retry: { max_attempts: 3, initial_backoff: 100ms, jitter: 0 }",
    )
    .await;
    let seq = api.publish("orders.created", &[], "doomed").await;

    wait_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1"), ("reason", "exhausted")],
        1.0,
    )
    .await;
    api.wait_drained("s1").await;
    assert_eq!(attempts(&endpoint.received()), vec![1, 2, 3]);
    let items = api.dead_letters("s1").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["reason"], "exhausted");
    assert_eq!(items[0]["status"], 500);
    assert_eq!(items[0]["attempts"], 3);
    assert_eq!(items[0]["original_sequence"], seq);
    let stored = dlq_stream(&nats).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        nats_header(&stored[0], "Jetway-Dlq-Reason"),
        Some("exhausted")
    );
    assert_eq!(nats_header(&stored[0], "Jetway-Dlq-Attempts"), Some("3"));
    assert_eq!(nats_header(&stored[0], "Jetway-Dlq-Status"), Some("500"));

    assert_counts(
        &sidecar,
        "jetway_deliveries_total",
        "s1",
        &[("retry", 2.0), ("dead_letter", 1.0), ("success", 0.0)],
    )
    .await;
    assert_counts(
        &sidecar,
        "jetway_dead_letters_total",
        "s1",
        &[("rejected", 0.0)],
    )
    .await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_delivers_to_that_subscription_only() {
    let nats = Nats::start();
    let broken = Arc::new(AtomicBool::new(true));
    let s1_endpoint =
        switch_endpoint(&broken, StatusCode::UNPROCESSABLE_ENTITY, StatusCode::OK).await;
    let s2_endpoint = Endpoint::ok().await;
    let (sidecar, api) = Api::start(
        &nats,
        "",
        &[
            sub("s1", "orders.created", &s1_endpoint.url("/e"), FAST_RETRY),
            // Ordered, so that once the marker below arrives, anything
            // stored before it has arrived too.
            sub(
                "s2",
                "orders.created",
                &s2_endpoint.url("/e"),
                "ordered: true",
            ),
        ],
    )
    .await;
    let seq1 = api
        .publish("orders.created", &[("content-type", "text/plain")], "r1")
        .await;
    let seq2 = api
        .publish("orders.created", &[("idempotency-key", "r2-key")], "r2")
        .await;
    wait_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1"), ("reason", "rejected")],
        2.0,
    )
    .await;
    s2_endpoint.wait_for(2).await;
    assert_eq!(api.dead_letters("s1").await.len(), 2);
    assert_eq!(api.subscription("s1").await["dead_letters"], 2);
    // Paging.
    let (code, page) = api.get("/v1/dead-letters/s1?limit=1").await;
    assert_eq!(code, 200, "{page}");
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let first = page["items"][0]["original_sequence"].as_u64();
    let next = page["next"].as_u64().expect("a next page");
    assert_eq!(page["items"][0]["dlq_sequence"], next);
    let (_, page) = api
        .get(&format!("/v1/dead-letters/s1?limit=1&after={next}"))
        .await;
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    let second = page["items"][0]["original_sequence"].as_u64();
    assert_eq!(page["next"], Value::Null);
    // Both, each once (s1 tries them concurrently, so in either order).
    let mut pages = [first, second];
    pages.sort();
    assert_eq!(pages, [Some(seq1), Some(seq2)]);

    // Fixed: replay everything.
    broken.store(false, Ordering::SeqCst);
    let (code, answer) = api.post("/v1/dead-letters/s1/replay", None).await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer,
        json!({ "replayed": 2, "failed": 0, "remaining": 0 })
    );
    let replayed = &s1_endpoint.received()[2..];
    assert_eq!(replayed.len(), 2, "each delivered once more");
    let keys: HashSet<String> = replayed
        .iter()
        .filter_map(|r| r.header("idempotency-key"))
        .collect();
    assert_eq!(
        keys,
        HashSet::from([format!("ORDERS:{seq1}"), "r2-key".to_string()])
    );
    for r in replayed {
        let want: &[u8] = if sequence(r) == seq1 { b"r1" } else { b"r2" };
        assert_eq!(r.body.as_ref(), want);
        assert_eq!(r.header("jetway-subscription").as_deref(), Some("s1"));
        assert_eq!(r.header("jetway-attempt").as_deref(), Some("2"));
    }
    assert!(sequence(&replayed[0]) == seq2 || sequence(&replayed[1]) == seq2);
    let r1 = replayed
        .iter()
        .find(|r| sequence(r) == seq1)
        .expect("r1 replayed");
    assert_eq!(r1.header("content-type").as_deref(), Some("text/plain"));

    // The DLQ is empty afterwards.
    assert!(api.dead_letters("s1").await.is_empty());
    assert!(dlq_stream(&nats).await.is_empty());
    assert_eq!(api.subscription("s1").await["dead_letters"], 0);

    // The other subscriber of the subject got nothing extra.
    let marker = api.publish("orders.created", &[], "marker").await;
    // Both subscriptions must have it before s1 breaks again, else the
    // marker itself could become s1's next dead letter.
    for endpoint in [&s2_endpoint, &s1_endpoint] {
        eventually("marker delivered", || async {
            endpoint
                .received()
                .iter()
                .any(|r| sequence(r) == marker)
                .then_some(())
        })
        .await;
    }
    let bodies: Vec<Vec<u8>> = s2_endpoint
        .received()
        .iter()
        .map(|r| r.body.to_vec())
        .collect();
    assert_eq!(
        bodies,
        vec![b"r1".to_vec(), b"r2".to_vec(), b"marker".to_vec()]
    );

    // A replay that fails again keeps the dead letter, attempts raised.
    broken.store(true, Ordering::SeqCst);
    let seq3 = api.publish("orders.created", &[], "r3").await;
    wait_metric(
        &sidecar,
        "jetway_dead_letters_total",
        &[("subscription", "s1"), ("reason", "rejected")],
        3.0,
    )
    .await;
    let items = api.dead_letters("s1").await;
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["attempts"], 1);
    let old = items[0]["dlq_sequence"].as_u64().expect("seq");
    let (code, answer) = api
        .post(
            "/v1/dead-letters/s1/replay",
            Some(json!({ "sequences": [old] })),
        )
        .await;
    assert_eq!(code, 200, "{answer}");
    assert_eq!(
        answer,
        json!({ "replayed": 0, "failed": 1, "remaining": 1 })
    );
    let items = api.dead_letters("s1").await;
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["attempts"], 2);
    assert_eq!(items[0]["status"], 422);
    assert_eq!(items[0]["original_sequence"], seq3);
    assert_eq!(items[0]["data_base64"], B64.encode("r3"));
    let kept = items[0]["dlq_sequence"].as_u64().expect("seq");
    assert_eq!(dlq_stream(&nats).await.len(), 1);

    // Delete one.
    let (code, _) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/dead-letters/s1/{kept}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    assert!(api.dead_letters("s1").await.is_empty());
    assert!(dlq_stream(&nats).await.is_empty());
    let (code, answer) = api
        .send(
            reqwest::Method::DELETE,
            &format!("/v1/dead-letters/s1/{kept}"),
            None,
        )
        .await;
    assert_eq!(code, 404, "{answer}");
    let (code, answer) = api.post("/v1/dead-letters/nope/replay", None).await;
    assert_eq!(code, 404, "{answer}");
    sidecar.stop().await;
}

/// Standard Webhooks verification, written from the specification:
/// HMAC-SHA256 over `id.timestamp.body` with the base64 key after `whsec_`,
/// compared against every `v1,` entry of the space-separated header.
fn verify_webhook(
    secret: &str,
    headers: &axum::http::HeaderMap,
    body: &[u8],
    now: i64,
) -> Result<(), String> {
    let key = B64
        .decode(
            secret
                .strip_prefix("whsec_")
                .ok_or("secret without whsec_")?,
        )
        .map_err(|e| e.to_string())?;
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {name}"))
    };
    let id = get("webhook-id")?;
    let timestamp = get("webhook-timestamp")?;
    let ts: i64 = timestamp.parse().map_err(|_| "timestamp is not a number")?;
    if (now - ts).abs() > 300 {
        return Err(format!("timestamp {ts} too far from {now}"));
    }
    let expected = {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(format!("{id}.{timestamp}.").as_bytes());
        mac.update(body);
        mac
    };
    for entry in get("webhook-signature")?.split(' ') {
        if let Some(sig) = entry.strip_prefix("v1,") {
            let Ok(sig) = B64.decode(sig) else { continue };
            if expected.clone().verify_slice(&sig).is_ok() {
                return Ok(());
            }
        }
    }
    Err("no matching v1 signature".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_verify_with_the_standard_webhooks_scheme() {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let secret = format!("whsec_{}", B64.encode(b"a 32 byte key for jetway tests!!"));
    let other = format!("whsec_{}", B64.encode(b"another 32 byte key, not the one"));
    let (sidecar, api) =
        Api::start_s1(&nats, &endpoint, &format!("signing_secret: \"{secret}\"")).await;
    api.publish(
        "orders.created",
        &[
            ("idempotency-key", "evt-1"),
            ("content-type", "application/json"),
        ],
        br#"{"id":1,"note":"caf\u00e9"}"#.to_vec(),
    )
    .await;
    let seq = api
        .publish("orders.created", &[], vec![0u8, 1, 2, 255])
        .await;
    endpoint.wait_for(2).await;

    let now = OffsetDateTime::now_utc().unix_timestamp();
    for r in endpoint.received() {
        verify_webhook(&secret, &r.headers, &r.body, now)
            .unwrap_or_else(|e| panic!("{e}: {:?}", r.headers));
        assert_eq!(r.header("webhook-id"), r.header("idempotency-key"));
        assert!(
            verify_webhook(&other, &r.headers, &r.body, now).is_err(),
            "another key must not verify"
        );
        let mut tampered = r.body.to_vec();
        tampered.push(b' ');
        assert!(
            verify_webhook(&secret, &r.headers, &tampered, now).is_err(),
            "a changed body must not verify"
        );
    }
    let ids: HashSet<String> = endpoint
        .received()
        .iter()
        .filter_map(|r| r.header("webhook-id"))
        .collect();
    assert_eq!(
        ids,
        HashSet::from(["evt-1".to_string(), format!("ORDERS:{seq}")])
    );
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_then_up_delivers_everything_without_dead_letters() {
    let nats = Nats::start();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}/e");
    let (sidecar, api) = Api::start(
        &nats,
        "",
        &[sub(
            "s1",
            "orders.>",
            &url,
            "retry: { max_attempts: 2, initial_backoff: 100ms, jitter: 0 }",
        )],
    )
    .await;
    let up = [("subscription", "s1")];
    assert_metric(&sidecar, "jetway_endpoint_up", &up, 1.0).await;

    api.publish_many("orders.created", 5).await;
    eventually("state endpoint_down", || async {
        (api.subscription("s1").await["state"] == "endpoint_down").then_some(())
    })
    .await;
    wait_metric(&sidecar, "jetway_endpoint_up", &up, 0.0).await;
    // More events while the app is down.
    api.publish_many("orders.created", 5).await;
    consistently("endpoint stays down", Duration::from_secs(2), || async {
        api.subscription("s1").await["state"] == "endpoint_down"
            && sidecar.metric("jetway_endpoint_up", &up).await == 0.0
    })
    .await;

    // The app comes up on the port it was configured with.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("bind");
    let endpoint = Endpoint::serve(listener, |_, _| async { status(StatusCode::OK) });
    endpoint.wait_for(10).await;
    api.wait_drained("s1").await;
    let by_key = endpoint.by_key();
    assert_eq!(by_key.len(), 10);
    assert!(by_key.values().all(|n| *n == 1), "{by_key:?}");
    for a in attempts(&endpoint.received()) {
        assert!(a <= 2, "the outage cost more than one attempt: attempt {a}");
    }
    wait_metric(&sidecar, "jetway_endpoint_up", &up, 1.0).await;
    assert_eq!(api.subscription("s1").await["state"], "running");
    assert_metric(&sidecar, "jetway_dead_letters_total", &up, 0.0).await;
    assert_counts(
        &sidecar,
        "jetway_deliveries_total",
        "s1",
        &[("success", 10.0)],
    )
    .await;
    assert!(api.dead_letters("s1").await.is_empty());
    assert!(dlq_stream(&nats).await.is_empty());
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_url_gates_delivery() {
    let nats = Nats::start();
    let healthy = Arc::new(AtomicBool::new(false));
    let health = switch_endpoint(&healthy, StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE).await;
    let endpoint = Endpoint::ok().await;
    let (sidecar, api) = Api::start(
        &nats,
        &format!("app: {{ health_url: \"{}\" }}\n", health.url("/healthz")),
        &[sub("s1", "orders.>", &endpoint.url("/e"), "")],
    )
    .await;
    let s1 = [("subscription", "s1")];
    api.publish_many("orders.created", 3).await;

    eventually("3 pending while the app is unhealthy", || async {
        let s = api.subscription("s1").await;
        (s["pending"] == 3 && s["ack_pending"] == 0 && s["state"] == "endpoint_down").then_some(())
    })
    .await;
    wait_metric(&sidecar, "jetway_endpoint_up", &s1, 0.0).await;
    // Refreshed every 5s.
    wait_metric(&sidecar, "jetway_consumer_pending", &s1, 3.0).await;
    assert_metric(&sidecar, "jetway_consumer_ack_pending", &s1, 0.0).await;
    // The app was asked again and still said no: nothing was delivered.
    let probes = health.count();
    health.wait_for(probes + 1).await;
    assert_eq!(endpoint.count(), 0, "delivered to an unhealthy app");

    healthy.store(true, Ordering::SeqCst);
    endpoint.wait_for(3).await;
    api.wait_drained("s1").await;
    assert_eq!(endpoint.by_key().len(), 3);
    assert_eq!(attempts(&endpoint.received()), vec![1, 1, 1]);
    assert_eq!(api.subscription("s1").await["state"], "running");
    wait_metric(&sidecar, "jetway_endpoint_up", &s1, 1.0).await;
    wait_metric(&sidecar, "jetway_consumer_pending", &s1, 0.0).await;
    assert_metric(&sidecar, "jetway_dead_letters_total", &s1, 0.0).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_url_failing_later_holds_back_new_events() {
    let nats = Nats::start();
    let healthy = Arc::new(AtomicBool::new(true));
    let health = switch_endpoint(&healthy, StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE).await;
    let endpoint = Endpoint::ok().await;
    let (sidecar, api) = Api::start(
        &nats,
        &format!("app: {{ health_url: \"{}\" }}\n", health.url("/healthz")),
        &[sub("s1", "orders.>", &endpoint.url("/e"), "")],
    )
    .await;
    let s1 = [("subscription", "s1")];
    api.publish_many("orders.created", 3).await;
    endpoint.wait_for(3).await;
    api.wait_drained("s1").await;

    // Unhealthy while the subscription waits for new events (a pull is
    // open): what arrives now is held back too.
    healthy.store(false, Ordering::SeqCst);
    eventually("endpoint_down", || async {
        (api.subscription("s1").await["state"] == "endpoint_down").then_some(())
    })
    .await;
    api.publish_many("orders.created", 2).await;
    wait_metric(&sidecar, "jetway_endpoint_up", &s1, 0.0).await;
    let probes = health.count();
    health.wait_for(probes + 2).await;
    assert_eq!(endpoint.count(), 3, "delivered to an unhealthy app");

    healthy.store(true, Ordering::SeqCst);
    endpoint.wait_for(5).await;
    api.wait_drained("s1").await;
    assert_eq!(endpoint.by_key().len(), 5);
    wait_metric(&sidecar, "jetway_endpoint_up", &s1, 1.0).await;
    assert_metric(&sidecar, "jetway_dead_letters_total", &s1, 0.0).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_delivery_is_strict_even_with_a_failing_message() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|r, _| {
        let fail = sequence(r) == 20 && r.header("jetway-attempt").as_deref() != Some("3");
        async move {
            status(if fail {
                StatusCode::SERVICE_UNAVAILABLE
            } else {
                StatusCode::OK
            })
        }
    })
    .await;
    let (sidecar, api) = Api::start_s1(
        &nats,
        &endpoint,
        &format!("ordered: true, concurrency: 8, {FAST_RETRY}"),
    )
    .await;
    let mut seqs = api.publish_many("orders.created", 50).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<u64>>());

    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        50.0,
    )
    .await;
    let arrived: Vec<u64> = endpoint.received().iter().map(sequence).collect();
    let mut want: Vec<u64> = (1..=19).collect();
    want.extend([20, 20]);
    want.extend(20..=50);
    assert_eq!(arrived, want);
    assert_eq!(attempts(&endpoint.received()[19..22]), vec![1, 2, 3]);
    assert_eq!(endpoint.max_in_flight(), 1);
    assert_counts(&sidecar, "jetway_deliveries_total", "s1", &[("retry", 2.0)]).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_requests_in_flight() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, _| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        status(StatusCode::OK)
    })
    .await;
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, "concurrency: 4").await;
    api.publish_many("orders.created", 16).await;
    let s1 = [("subscription", "s1")];
    eventually("4 in flight", || async {
        let s = api.subscription("s1").await;
        (s["in_flight"] == 4 && s["ack_pending"].as_u64() >= Some(4)).then_some(())
    })
    .await;
    wait_metric(&sidecar, "jetway_deliveries_in_flight", &s1, 4.0).await;
    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        16.0,
    )
    .await;
    assert_eq!(
        endpoint.max_in_flight(),
        4,
        "at most `concurrency`, and that many in parallel"
    );
    assert_eq!(endpoint.count(), 16);
    wait_metric(&sidecar, "jetway_deliveries_in_flight", &s1, 0.0).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_endpoint_beyond_ack_wait_is_not_redelivered() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, _| async {
        tokio::time::sleep(Duration::from_secs(4)).await;
        status(StatusCode::OK)
    })
    .await;
    // timeout 6s: ack wait 3s, shorter than the endpoint takes.
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, "timeout: 6s").await;
    api.publish("orders.created", &[], "slow").await;
    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        1.0,
    )
    .await;
    api.wait_drained("s1").await;
    assert_eq!(endpoint.count(), 1, "redelivered while in flight");
    assert_eq!(endpoint.max_in_flight(), 1);
    assert_counts(&sidecar, "jetway_deliveries_total", "s1", &[("retry", 0.0)]).await;
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_held_for_a_slot_beyond_ack_wait_are_not_redelivered() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, _| async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        status(StatusCode::OK)
    })
    .await;
    // Concurrency 1 and timeout 4s: ack wait 2s. The look-ahead takes all
    // four at once; the last waits 4.5 s for the one slot, kept alive by
    // in-progress acks, so JetStream never hands it out a second time.
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, "concurrency: 1, timeout: 4s").await;
    api.publish_many("orders.created", 4).await;
    wait_metric(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        4.0,
    )
    .await;
    api.wait_drained("s1").await;
    let by_key = endpoint.by_key();
    assert_eq!(by_key.len(), 4);
    assert!(by_key.values().all(|n| *n == 1), "redelivered: {by_key:?}");
    assert_eq!(endpoint.max_in_flight(), 1);
    for a in attempts(&endpoint.received()) {
        assert_eq!(a, 1, "a held message was delivered again");
    }
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_the_work_exactly_once() {
    let nats = Nats::start();
    let endpoint = Endpoint::start(|_, _| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        status(StatusCode::OK)
    })
    .await;
    let yaml = s1_yaml(&nats, &endpoint, "concurrency: 8");
    let a = Sidecar::start(&yaml).await;
    let b = Sidecar::start(&yaml).await;
    Api::of(&a).publish_many("orders.created", 200).await;
    let success = [("subscription", "s1"), ("outcome", "success")];
    eventually("200 delivered between the two", || async {
        let total = a.metric("jetway_deliveries_total", &success).await
            + b.metric("jetway_deliveries_total", &success).await;
        (total >= 200.0).then_some(())
    })
    .await;
    Api::of(&a).wait_drained("s1").await;
    let by_key = endpoint.by_key();
    assert_eq!(by_key.len(), 200);
    let repeats: HashMap<&String, &usize> = by_key.iter().filter(|(_, n)| **n != 1).collect();
    assert!(repeats.is_empty(), "delivered more than once: {repeats:?}");
    let (from_a, from_b) = (
        a.metric("jetway_deliveries_total", &success).await,
        b.metric("jetway_deliveries_total", &success).await,
    );
    assert_eq!(from_a + from_b, 200.0);
    assert!(
        from_a > 0.0 && from_b > 0.0,
        "one consumer, shared: {from_a} + {from_b}"
    );
    a.stop().await;
    b.stop().await;
}

/// An endpoint that records which idempotency keys it answered 200, slow
/// until `fast` is set.
fn completing_endpoint(
    slow: Duration,
    fast: Arc<AtomicBool>,
    done: Arc<Mutex<HashSet<String>>>,
) -> impl Fn(&Received, usize) -> std::pin::Pin<Box<dyn Future<Output = Response> + Send>>
       + Send
       + Sync
       + 'static {
    move |r, _| {
        let key = r.header("idempotency-key").unwrap_or_default();
        let (fast, done) = (fast.clone(), done.clone());
        Box::pin(async move {
            if !fast.load(Ordering::SeqCst) {
                tokio::time::sleep(slow).await;
            }
            done.lock().expect("lock").insert(key);
            status(StatusCode::OK)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_deliveries_in_flight_finish() {
    let nats = Nats::start();
    let fast = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let endpoint = Endpoint::start(completing_endpoint(
        Duration::from_millis(700),
        fast.clone(),
        done.clone(),
    ))
    .await;
    let yaml = s1_yaml(&nats, &endpoint, "concurrency: 4");
    let first = Sidecar::start(&yaml).await;
    let keys: HashSet<String> = Api::of(&first).publish_keys("orders.created", 12).await;
    endpoint.wait_for(4).await;
    // Graceful stop while deliveries are in flight (shutdown_grace 5s).
    first.stop().await;
    let in_flight: HashSet<String> = endpoint.keys();
    assert!(!in_flight.is_empty());
    {
        let done = done.lock().expect("lock");
        assert!(
            in_flight.is_subset(&done),
            "deliveries in flight finished within the grace"
        );
    }

    fast.store(true, Ordering::SeqCst);
    let second = Sidecar::start(&yaml).await;
    let api = Api::of(&second);
    eventually("every event delivered", || async {
        (*done.lock().expect("lock") == keys).then_some(())
    })
    .await;
    api.wait_drained("s1").await;
    let by_key = endpoint.by_key();
    let again: Vec<(Option<String>, Option<String>)> = endpoint
        .received()
        .iter()
        .filter(|r| by_key[&r.header("idempotency-key").unwrap_or_default()] > 1)
        .map(|r| (r.header("idempotency-key"), r.header("jetway-attempt")))
        .collect();
    assert!(
        again.is_empty(),
        "acknowledged ones came again (key, attempt): {again:?}, in flight at stop: {in_flight:?}"
    );
    assert!(dlq_stream(&nats).await.is_empty());
    assert_metric(
        &second,
        "jetway_dead_letters_total",
        &[("subscription", "s1")],
        0.0,
    )
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_hands_back_deliveries_that_outlive_the_grace() {
    let nats = Nats::start();
    let fast = Arc::new(AtomicBool::new(false));
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let endpoint = Endpoint::start(completing_endpoint(
        Duration::from_secs(20),
        fast.clone(),
        done.clone(),
    ))
    .await;
    // timeout 60s: ack wait 30s, longer than `eventually` waits, so only a
    // NAK on shutdown can bring the messages back in time.
    let yaml = s1_yaml(&nats, &endpoint, "concurrency: 4, timeout: 60s")
        .replace("shutdown_grace: 5s", "shutdown_grace: 1s");
    let mut first = Process::start(&yaml).await;
    let keys: HashSet<String> = Api::of_process(&first)
        .publish_keys("orders.created", 8)
        .await;
    endpoint.wait_for(4).await;
    assert_eq!(first.terminate().await, Some(0), "exit 0 after SIGTERM");
    let in_flight: HashSet<String> = endpoint.keys();
    let seen = endpoint.count();
    assert_eq!(in_flight.len(), 4);

    fast.store(true, Ordering::SeqCst);
    let second = Sidecar::start(&yaml).await;
    let api = Api::of(&second);
    eventually("every event delivered", || async {
        keys.is_subset(&done.lock().expect("lock")).then_some(())
    })
    .await;
    api.wait_drained("s1").await;
    let again: Vec<Received> = endpoint.received()[seen..].to_vec();
    for key in &in_flight {
        let r = again
            .iter()
            .find(|r| r.header("idempotency-key").as_ref() == Some(key))
            .unwrap_or_else(|| {
                panic!("{key} was in flight and not delivered by the next instance")
            });
        assert_eq!(r.header("jetway-attempt").as_deref(), Some("2"));
    }
    assert!(dlq_stream(&nats).await.is_empty());
    assert_metric(
        &second,
        "jetway_dead_letters_total",
        &[("subscription", "s1")],
        0.0,
    )
    .await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_deliveries_loses_nothing() {
    let nats = Nats::start();
    let done: Arc<Mutex<HashSet<String>>> = Arc::default();
    let endpoint = Endpoint::start(completing_endpoint(
        Duration::from_millis(300),
        Arc::default(),
        done.clone(),
    ))
    .await;
    // timeout 4s: ack wait 2s, so a dead sidecar's messages come back soon.
    let yaml = s1_yaml(&nats, &endpoint, "concurrency: 4, timeout: 4s");
    let mut first = Process::start(&yaml).await;
    let keys: HashSet<String> = Api::of_process(&first)
        .publish_keys("orders.created", 20)
        .await;
    endpoint.wait_for(6).await;
    first.kill9();

    let mut second = Process::start(&yaml).await;
    let api = Api::of_process(&second);
    eventually("every event delivered", || async {
        keys.is_subset(&done.lock().expect("lock")).then_some(())
    })
    .await;
    api.wait_drained("s1").await;
    assert!(dlq_stream(&nats).await.is_empty());
    assert_eq!(second.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume() {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let (sidecar, api) = Api::start_s1(&nats, &endpoint, "").await;

    let s = api.subscription("s1").await;
    assert_eq!(s["subject"], "orders.>");
    assert_eq!(s["stream"], "ORDERS");
    assert_eq!(s["consumer"], "test-s1");
    assert_eq!(s["endpoint"], endpoint.url("/e"));
    assert_eq!(s["state"], "running");
    assert_eq!(s["pending"], 0);
    assert_eq!(s["ack_pending"], 0);
    assert_eq!(s["in_flight"], 0);
    assert_eq!(s["dead_letters"], 0);

    let (code, paused) = api.post("/v1/subscriptions/s1/pause", None).await;
    assert_eq!(code, 200, "{paused}");
    assert_eq!(paused["state"], "paused");
    assert_eq!(api.subscription("s1").await["state"], "paused");
    api.publish_many("orders.created", 5).await;
    eventually("5 held back", || async {
        let s = api.subscription("s1").await;
        let held = s["pending"].as_u64().unwrap_or(0) + s["ack_pending"].as_u64().unwrap_or(0);
        (held == 5).then_some(())
    })
    .await;
    // Longer than a pull request waits (2s).
    consistently(
        "nothing delivered while paused",
        Duration::from_millis(2500),
        || async { endpoint.count() == 0 && api.subscription("s1").await["state"] == "paused" },
    )
    .await;

    let (code, resumed) = api.post("/v1/subscriptions/s1/resume", None).await;
    assert_eq!(code, 200, "{resumed}");
    assert_eq!(resumed["state"], "running");
    endpoint.wait_for(5).await;
    api.wait_drained("s1").await;
    assert_eq!(endpoint.by_key().len(), 5);
    assert_eq!(endpoint.count(), 5);

    let (code, answer) = api.post("/v1/subscriptions/nope/pause", None).await;
    assert_eq!(code, 404, "{answer}");
    assert_eq!(answer["error"]["code"], "not_found");
    sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_stored_messages_by_sequence_and_last_by_subject() {
    let nats = Nats::start();
    // Streams made outside jetway: one without direct get that the config
    // names (jetway uses it as it is), one of another team that it does not.
    let js = nats.client().await;
    for (name, subject) in [("LEGACY", "legacy.>"), ("OTHER", "other.>")] {
        js.create_stream(async_nats::jetstream::stream::Config {
            name: name.into(),
            subjects: vec![subject.into()],
            allow_direct: false,
            ..Default::default()
        })
        .await
        .expect("create stream");
    }
    for (subject, body) in [
        ("legacy.a", "old"),
        ("legacy.a", "new"),
        ("other.a", "secret"),
    ] {
        js.publish(subject, body.into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let yaml = format!(
        "app_id: test\n\
         nats: {{ url: \"{}\", request_timeout: 2s }}\n\
         streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"] }}\n  - {{ name: LEGACY, subjects: [\"legacy.>\"] }}\n\
         publish: {{ forward_headers: [\"x-tenant\"] }}\n",
        nats.url()
    );
    let sidecar = Sidecar::start(&yaml).await;
    let api = Api::of(&sidecar);
    let s1 = api
        .publish(
            "orders.item.7",
            &[("content-type", "application/json"), ("x-tenant", "acme")],
            r#"{"v":1}"#,
        )
        .await;
    api.publish("orders.item.8", &[], "other").await;
    let s3 = api.publish("orders.item.7", &[], r#"{"v":2}"#).await;

    let (code, m) = api.get(&format!("/v1/streams/ORDERS/messages/{s1}")).await;
    assert_eq!(code, 200, "{m}");
    assert_eq!(m["stream"], "ORDERS");
    assert_eq!(m["seq"], s1);
    assert_eq!(m["subject"], "orders.item.7");
    assert_eq!(m["data_base64"], B64.encode(r#"{"v":1}"#));
    let time =
        OffsetDateTime::parse(m["time"].as_str().expect("time"), &Rfc3339).expect("RFC 3339");
    assert!((OffsetDateTime::now_utc() - time).whole_seconds().abs() < 60);
    let headers: HashMap<String, Value> =
        serde_json::from_value(m["headers"].clone()).expect("headers map");
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("content-type"), Some(json!(["application/json"])));
    assert_eq!(header("x-tenant"), Some(json!(["acme"])));

    let (code, last) = api.get("/v1/subjects/orders.item.7/last").await;
    assert_eq!(code, 200, "{last}");
    assert_eq!(last["seq"], s3);
    assert_eq!(last["stream"], "ORDERS");
    assert_eq!(last["subject"], "orders.item.7");
    assert_eq!(last["data_base64"], B64.encode(r#"{"v":2}"#));

    // The stream made outside jetway, without direct get.
    let (code, last) = api.get("/v1/subjects/legacy.a/last").await;
    assert_eq!(code, 200, "{last}");
    assert_eq!(last["stream"], "LEGACY");
    assert_eq!(last["seq"], 2);
    assert_eq!(last["data_base64"], B64.encode("new"));
    let (code, first) = api.get("/v1/streams/LEGACY/messages/1").await;
    assert_eq!(code, 200, "{first}");
    assert_eq!(first["data_base64"], B64.encode("old"));

    for (path, want) in [
        ("/v1/streams/ORDERS/messages/99", "not_found"),
        ("/v1/streams/NOPE/messages/1", "not_found"),
        ("/v1/streams/ORDERS/messages/x", "bad_request"),
        ("/v1/subjects/orders.item.9/last", "not_found"),
        ("/v1/subjects/billing.x/last", "no_stream"),
        // Another team's stream, and the dead letters of every app: not
        // this sidecar's to show.
        ("/v1/streams/OTHER/messages/1", "not_found"),
        ("/v1/subjects/other.a/last", "no_stream"),
        ("/v1/streams/JETWAY_DLQ/messages/1", "not_found"),
        ("/v1/subjects/jetway.dlq.test.s1/last", "subject_reserved"),
        ("/v1/subjects/$JS.API.INFO/last", "subject_reserved"),
    ] {
        let (code, answer) = api.get(path).await;
        assert_eq!(answer["error"]["code"], want, "{path}: {code} {answer}");
    }
    sidecar.stop().await;
}
