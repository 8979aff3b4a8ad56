//! Replay at any DLQ size (SPEC section 5, issue 18): page by page, `limit`
//! with `remaining`, a replay the client abandons, and one cut by shutdown;
//! every dead letter delivered once or still in the DLQ, none lost.
mod common;
use common::*;

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

use jetway::dead_letter::{DeadLetters, Failure};
use jetway::envelope::{Envelope, Reason};

/// Stores `n` dead letters of subscription `s` straight into the DLQ, in
/// the format jetway writes; original sequences 1..=n.
async fn fill_dlq(js: &jetstream::Context, n: u64) {
    fill_dlq_padded(js, n, 0).await;
}

/// [`fill_dlq`] with `pad` bytes more in each body.
async fn fill_dlq_padded(js: &jetstream::Context, n: u64, pad: usize) {
    let padding = "x".repeat(pad);
    let failure = Failure {
        reason: Reason::Rejected,
        status: Some(400),
        error: "HTTP 400".into(),
        attempts: 1,
    };
    let mut acks = Vec::new();
    for seq in 1..=n {
        let env = Envelope {
            subject: "orders.created".into(),
            stream: "ORDERS".into(),
            sequence: seq,
            attempt: 1,
            published: time::OffsetDateTime::now_utc(),
            headers: async_nats::HeaderMap::new(),
            payload: format!("{{\"n\":{seq},\"pad\":\"{padding}\"}}").into(),
        };
        let headers = DeadLetters::message_headers(&env, &failure, &format!("ORDERS:{seq}:test-s"));
        acks.push(
            js.publish_with_headers("jetway.dlq.test.s", headers, env.payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() == 500 {
            for ack in acks.drain(..) {
                ack.await.expect("puback");
            }
        }
    }
    for ack in acks {
        ack.await.expect("puback");
    }
}

/// Dead letters of `s` in the DLQ, asked of the server.
async fn dlq_count(js: &jetstream::Context) -> u64 {
    let mut stream = js.get_stream("JETWAY_DLQ").await.expect("dlq stream");
    stream.info().await.expect("info").state.messages
}

fn yaml(nats: &Nats, endpoint: &Endpoint, concurrency: usize) -> String {
    config_yaml(
        nats,
        &format!(
            "subscriptions:\n  - {{ name: s, subject: \"orders.>\", endpoint: \"{}\", concurrency: {concurrency} }}\n",
            endpoint.url("/")
        ),
    )
}

async fn replay(s: &Sidecar, body: Value) -> Value {
    let r = s
        .http
        .post(s.url("/v1/dead-letters/s/replay"))
        .json(&body)
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 200);
    r.json().await.expect("json")
}

/// Keys delivered, each asserted to have come exactly once.
fn delivered_once(endpoint: &Endpoint) -> HashSet<String> {
    let by_key = endpoint.by_key();
    for (key, n) in &by_key {
        assert_eq!(*n, 1, "{key} delivered {n} times");
    }
    by_key.into_keys().collect()
}

fn keys(range: std::ops::RangeInclusive<u64>) -> HashSet<String> {
    range.map(|seq| format!("ORDERS:{seq}")).collect()
}

#[tokio::test]
async fn replay_with_limit_counts_down_and_delivers_each_once() {
    const TOTAL: u64 = 3000;
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let s = Sidecar::start(&yaml(&nats, &endpoint, 16)).await;
    let js = nats.client().await;
    fill_dlq(&js, TOTAL).await;

    let mut remaining = TOTAL;
    let mut replayed = 0;
    while remaining > 0 {
        let answer = replay(&s, json!({ "limit": 1000 })).await;
        replayed += 1000;
        remaining -= 1000;
        assert_eq!(
            answer,
            json!({ "replayed": 1000, "failed": 0, "remaining": remaining })
        );
        // Oldest first: the first `replayed` dead letters, each once.
        assert_eq!(delivered_once(&endpoint), keys(1..=replayed));
    }
    assert_eq!(dlq_count(&js).await, 0);
    assert!(endpoint.max_in_flight() <= 16);
    assert_eq!(
        replay(&s, json!({})).await,
        json!({ "replayed": 0, "failed": 0, "remaining": 0 })
    );
    assert_eq!(
        s.metric(
            "jetway_deliveries_total",
            &[("subscription", "s"), ("outcome", "success")]
        )
        .await,
        TOTAL as f64
    );
    s.stop().await;
}

/// nats-server 2.9.10 counts a subject 0 in `STREAM.INFO` once the first
/// block that held it was emptied by deletes; `remaining` must not follow
/// it (a CLI loop would stop with half the dead letters left).
#[tokio::test]
async fn remaining_counts_right_after_whole_blocks_were_replayed() {
    const TOTAL: u64 = 1500;
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let s = Sidecar::start(&yaml(&nats, &endpoint, 16)).await;
    let js = nats.client().await;
    fill_dlq_padded(&js, TOTAL, 16 * 1024).await;
    assert_eq!(
        replay(&s, json!({ "limit": 750 })).await,
        json!({ "replayed": 750, "failed": 0, "remaining": 750 })
    );
    let subs: Value = s
        .http
        .get(s.url("/v1/subscriptions"))
        .send()
        .await
        .expect("subscriptions")
        .json()
        .await
        .expect("json");
    assert_eq!(subs["subscriptions"][0]["dead_letters"], 750, "{subs}");
    assert_eq!(
        replay(&s, json!({})).await,
        json!({ "replayed": 750, "failed": 0, "remaining": 0 })
    );
    assert_eq!(delivered_once(&endpoint), keys(1..=TOTAL));
    s.stop().await;
}

#[tokio::test]
async fn replay_that_fails_again_stays_and_is_not_retried_in_the_same_call() {
    let nats = Nats::start();
    let endpoint =
        Endpoint::start(|_, _| async { StatusCode::SERVICE_UNAVAILABLE.into_response() }).await;
    let s = Sidecar::start(&yaml(&nats, &endpoint, 4)).await;
    let js = nats.client().await;
    fill_dlq(&js, 250).await;
    // Every rewrite lands after the replay's start: each is tried once.
    let answer = replay(&s, json!({})).await;
    assert_eq!(
        answer,
        json!({ "replayed": 0, "failed": 250, "remaining": 250 })
    );
    assert_eq!(endpoint.count(), 250);
    assert_eq!(dlq_count(&js).await, 250);
    let r = s
        .http
        .post(s.url("/v1/dead-letters/s/replay"))
        .json(&json!({ "limit": 0 }))
        .send()
        .await
        .expect("replay");
    assert_eq!(r.status(), 400);
    s.stop().await;
}

/// Starts a replay on a raw connection and returns it, to be dropped.
async fn replay_on_raw_connection(s: &Sidecar) -> tokio::net::TcpStream {
    let mut conn = tokio::net::TcpStream::connect(s.api)
        .await
        .expect("connect");
    conn.write_all(
        b"POST /v1/dead-letters/s/replay HTTP/1.1\r\nHost: jetway\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .expect("write");
    conn
}

/// A slow endpoint, so a replay of `TOTAL` takes long enough to be cut.
async fn slow_endpoint() -> Endpoint {
    Endpoint::start(|_, _| async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        StatusCode::OK.into_response()
    })
    .await
}

#[tokio::test]
async fn abandoned_replay_stops_after_the_deliveries_in_flight() {
    const TOTAL: u64 = 2000;
    let nats = Nats::start();
    let endpoint = slow_endpoint().await;
    let s = Sidecar::start(&yaml(&nats, &endpoint, 4)).await;
    let js = nats.client().await;
    fill_dlq(&js, TOTAL).await;

    let conn = replay_on_raw_connection(&s).await;
    endpoint.wait_for(8).await;
    drop(conn);
    // A second replay waits for the first to end (one at a time), so its
    // answer comes after the abandoned one settled what it had in flight.
    let answer = replay(&s, json!({ "sequences": [] })).await;
    let remaining = answer["remaining"].as_u64().expect("remaining");
    let delivered = delivered_once(&endpoint).len() as u64;
    assert_eq!(remaining + delivered, TOTAL, "none lost: {answer}");
    assert!(
        delivered < TOTAL,
        "the replay stopped: {delivered} delivered"
    );
    assert_eq!(dlq_count(&js).await, remaining);

    // The rest, in one more call: each delivered exactly once overall.
    let answer = replay(&s, json!({})).await;
    assert_eq!(
        answer,
        json!({ "replayed": remaining, "failed": 0, "remaining": 0 })
    );
    assert_eq!(delivered_once(&endpoint), keys(1..=TOTAL));
    s.stop().await;
}

#[tokio::test]
async fn shutdown_stops_a_replay_without_losing_a_dead_letter() {
    const TOTAL: u64 = 2000;
    let nats = Nats::start();
    let endpoint = slow_endpoint().await;
    let s = Sidecar::start(&yaml(&nats, &endpoint, 4)).await;
    let js = nats.client().await;
    fill_dlq(&js, TOTAL).await;

    let _conn = replay_on_raw_connection(&s).await;
    endpoint.wait_for(8).await;
    s.stop().await;
    let delivered = delivered_once(&endpoint).len() as u64;
    let remaining = dlq_count(&js).await;
    assert_eq!(remaining + delivered, TOTAL, "none lost");
    assert!(
        delivered < TOTAL,
        "the replay stopped: {delivered} delivered"
    );
}
