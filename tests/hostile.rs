//! Hostile HTTP input against a whole sidecar in-process: every stranger's
//! request ends in a clear answer (or a closed connection where HTTP itself
//! is broken), nothing buffers without bound, no connection holds a slot
//! forever, and a normal publish is served during and after each attack.

mod common;

use std::time::{Duration, Instant};

use common::api::request;
use common::raw::{closed_within, raw, read_answer};
use common::{config_yaml, start_sidecar_with_limits, Nats, Sidecar};
use jetway::server::Limits;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Tighter than the built-in 10 s so the timeouts can be watched quickly.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
const BODY_TIMEOUT: Duration = Duration::from_secs(2);
/// The limits of these tests' sidecars.
const LIMITS: Limits = Limits {
    header_read_timeout: HEADER_TIMEOUT,
    body_read_timeout: BODY_TIMEOUT,
    ..Limits::BUILT_IN
};
/// `api.max_body` of these tests.
const MAX_BODY: usize = 64 * 1024;

/// Tests that measure this process's memory run alone; the others share.
static MEMORY: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

async fn start() -> (Nats, Sidecar) {
    let (nats, mut sidecar) = start_sidecar_with_limits("api: { max_body: 64KiB }\n", LIMITS).await;
    // These sidecars close a kept-alive connection after HEADER_TIMEOUT of
    // silence. A client that reuses a pooled connection idle for that long
    // races the close and may see a reset (CI saw one after the slowloris
    // wait); a well-behaved client lets its pooled connections go sooner
    // than the server does, and so does this one.
    sidecar.http = reqwest::Client::builder()
        .pool_idle_timeout(HEADER_TIMEOUT / 4)
        .build()
        .expect("http client");
    (nats, sidecar)
}

/// A normal publish still works.
async fn publish_ok(sidecar: &Sidecar) {
    let r = sidecar.publish("orders.created", b"{\"ok\":true}").await;
    assert_eq!(r.status(), 200, "a normal publish must succeed");
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["stream"], "ORDERS");
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slowloris_head_is_cut_off_after_the_header_read_timeout() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    let mut stream = TcpStream::connect(sidecar.api).await.expect("connect");
    stream
        .write_all(b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let (mut reader, mut writer) = stream.into_split();
    // A header line every 200 ms, never the blank line that ends the head.
    let trickle = tokio::spawn(async move {
        for i in 0..100 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if writer
                .write_all(format!("x-slow-{i}: a\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    });
    // Served meanwhile.
    publish_ok(&sidecar).await;
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(
        HEADER_TIMEOUT + Duration::from_secs(5),
        reader.read(&mut buf),
    )
    .await
    .expect("the server must close a trickled head");
    // hyper closes without an answer: there is no request to answer yet.
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(started.elapsed() <= HEADER_TIMEOUT + Duration::from_secs(2));
    trickle.abort();
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_are_closed_fresh_or_kept_alive() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    // A connection that never sends a byte.
    let mut fresh = TcpStream::connect(sidecar.api).await.expect("connect");
    // A kept-alive connection after one good request.
    let mut kept = TcpStream::connect(sidecar.api).await.expect("connect");
    kept.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let answer = read_answer(&mut kept).await.expect("answer");
    assert_eq!(answer.status, 200);
    assert!(!answer
        .head
        .to_ascii_lowercase()
        .contains("connection: close"));

    let limit = HEADER_TIMEOUT + Duration::from_secs(3);
    let (a, b) = tokio::join!(
        closed_within(&mut fresh, limit),
        closed_within(&mut kept, limit)
    );
    assert!(
        a >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed too early: {a:?}"
    );
    assert!(
        b >= HEADER_TIMEOUT - Duration::from_millis(500),
        "closed too early: {b:?}"
    );
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slow_body_is_cut_off_after_the_body_read_timeout() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    let mut stream = TcpStream::connect(sidecar.api).await.expect("connect");
    stream
        .write_all(b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .expect("write");
    // Then nothing: the body stalls.
    let answer = tokio::time::timeout(
        BODY_TIMEOUT + Duration::from_secs(5),
        read_answer(&mut stream),
    )
    .await
    .expect("an answer once the body stalled")
    .expect("answer");
    answer.assert_error(400, "bad_request");
    closed_within(&mut stream, Duration::from_secs(5)).await;
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_heads_get_431() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    let big = format!(
        "POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nx-big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(Limits::BUILT_IN.max_header_bytes + 1)
    );
    // hyper answers before there is a request, so without a JSON body.
    assert_eq!(raw(&sidecar, big.as_bytes()).await.status, 431);

    let mut many = String::from("POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\n");
    for i in 0..200 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("Content-Length: 2\r\n\r\n{}");
    assert_eq!(raw(&sidecar, many.as_bytes()).await.status, 431);

    // Just under the limit is fine.
    let fits = format!(
        "POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nx-big: {}\r\nContent-Length: 2\r\n\r\n{{}}",
        "a".repeat(Limits::BUILT_IN.max_header_bytes - 200)
    );
    assert_eq!(raw(&sidecar, fits.as_bytes()).await.status, 200);
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn oversized_content_length_gets_413_before_the_body_is_sent() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    for path in ["/v1/publish/orders.created", "/v1/publish"] {
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n"
        );
        // No body byte is sent: the answer must come from the head alone.
        raw(&sidecar, request.as_bytes())
            .await
            .assert_error(413, "payload_too_large");
    }
    // One byte over api.max_body, really sent.
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish/orders.created"))
        .body(vec![b'x'; MAX_BODY + 1])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(
        sidecar
            .metric("jetway_publish_total", &[("outcome", "too_large")])
            .await
            >= 3.0
    );
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endless_chunked_body_gets_413_while_the_client_is_still_sending() {
    let _alone = MEMORY.write().await;
    let (_nats, sidecar) = start().await;
    let rss_before = rss_kib();
    let stream = TcpStream::connect(sidecar.api).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    // Up to 256 MiB in 16 KiB chunks, as fast as the server takes them.
    let sender = tokio::spawn(async move {
        writer
            .write_all(b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await?;
        let chunk = format!("4000\r\n{}\r\n", "x".repeat(0x4000));
        for _ in 0..(256 * 64) {
            writer.write_all(chunk.as_bytes()).await?;
            counter.fetch_add(0x4000, std::sync::atomic::Ordering::SeqCst);
        }
        writer.write_all(b"0\r\n\r\n").await?;
        Ok::<_, std::io::Error>(())
    });
    let answer = tokio::time::timeout(Duration::from_secs(20), read_answer(&mut reader))
        .await
        .expect("an answer in time")
        .expect("an answer");
    let sent_at_answer = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        !sender.is_finished(),
        "the client was still sending when refused"
    );
    answer.assert_error(413, "payload_too_large");
    // Refused near the limit: the server did not read on (only what the
    // sockets' buffers hold could be in flight).
    assert!(
        sent_at_answer < 16 * 1024 * 1024,
        "{sent_at_answer} bytes sent before the answer"
    );
    let result = tokio::time::timeout(Duration::from_secs(10), sender)
        .await
        .expect("the server closes the connection, ending the sender")
        .expect("join");
    assert!(
        result.is_err(),
        "the connection was closed under the sender"
    );
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(grown < 64 * 1024, "RSS grew by {grown} KiB");
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousands_of_idle_connections_cannot_pin_the_sidecar() {
    let _alone = MEMORY.write().await;
    const IDLE: usize = 2000;
    let nofile = std::fs::read_to_string("/proc/self/limits")
        .expect("/proc/self/limits")
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3)?.parse::<usize>().ok())
        .unwrap_or(usize::MAX);
    assert!(
        nofile >= IDLE + Limits::BUILT_IN.max_connections + 512,
        "this test needs `ulimit -n` of at least {} (it is {nofile})",
        IDLE + Limits::BUILT_IN.max_connections + 512
    );
    let (_nats, sidecar) = start().await;
    publish_ok(&sidecar).await;
    let rss_before = rss_kib();
    let fds_before = open_fds();
    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(sidecar.api))
            .await
            .expect("connect in time (the kernel's backlog holds the rest)")
            .expect("connect");
        idle.push(s);
    }
    // Give the accept loop a moment to take every slot it has.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Our own IDLE sockets, plus what the server accepted: never more than
    // the connection limit.
    let accepted = open_fds().saturating_sub(fds_before + IDLE);
    assert!(
        accepted <= Limits::BUILT_IN.max_connections + 16,
        "{accepted} connections accepted at once"
    );
    let grown = rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "RSS grew by {grown} KiB for {IDLE} idle connections"
    );
    eprintln!("{IDLE} idle connections: {accepted} accepted at once, RSS +{grown} KiB");

    // Every slot is held by an idle connection; they are closed after the
    // header read timeout, so a publish gets through without anyone
    // closing them by hand (the backlog first, then this one).
    let started = Instant::now();
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish/orders.created"))
        .body("{}")
        .timeout(HEADER_TIMEOUT * 3 + Duration::from_secs(10))
        .send()
        .await
        .expect("a publish gets a slot once idle ones time out");
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < HEADER_TIMEOUT * 3 + Duration::from_secs(5));

    // All idle ones end up closed by the server.
    let limit = HEADER_TIMEOUT * 3 + Duration::from_secs(5);
    for s in idle.iter_mut() {
        closed_within(s, limit).await;
    }
    drop(idle);
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bytes_in_subjects_are_subject_invalid() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    for subject in [
        "orders.%ff",
        "orders.%c3%28",
        "orders.caf%C3%A9",
        "orders.%00x",
        "orders.%01",
        "orders.%7f",
        "orders.%20x",
        "orders.%09x",
        "orders.%0d%0ax",
        "orders..x",
        "orders.%2A",
        "orders.%3E",
    ] {
        let r = sidecar
            .http
            .post(sidecar.url(&format!("/v1/publish/{subject}")))
            .body("{}")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400, "{subject}");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "subject_invalid", "{subject}");
    }
    // Raw bytes that are not even a URI: hyper refuses the request line.
    let answer = raw(
        &sidecar,
        b"POST /v1/publish/orders.\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(answer.status, 400);
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_bytes_in_headers_are_header_invalid() {
    let _shared = MEMORY.read().await;
    let nats = Nats::start();
    let sidecar = Sidecar::start_with_limits(
        &config_yaml(&nats, "publish: { forward_headers: [x-tenant] }\n"),
        LIMITS,
    )
    .await;
    // Bytes hyper lets through (obs-text) in headers jetway stores.
    for header in [
        &b"x-tenant: caf\xe9"[..],
        b"idempotency-key: \xff\xfe",
        b"content-type: application/json; charset=\x80",
        b"ce-specversion: 1.0\r\nce-id: \xc3\xa9\r\nce-source: /s\r\nce-type: t",
        b"tracestate: a=\xff",
        b"jetway-expected-stream: OR\xffDERS",
        b"jetway-expected-last-sequence: 1\xff",
    ] {
        let mut request =
            b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                .to_vec();
        request.extend_from_slice(header);
        request.extend_from_slice(b"\r\n\r\n{}");
        raw(&sidecar, &request)
            .await
            .assert_error(400, "header_invalid");
    }
    // A header jetway does not store may hold anything hyper accepts.
    let answer = raw(
        &sidecar,
        b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nx-ignored: \xff\r\nContent-Length: 2\r\n\r\n{}",
    )
    .await;
    assert_eq!(answer.status, 200);
    // Control characters are not HTTP: hyper refuses the head itself.
    for ctl in [&b"\x01"[..], b"\x00", b"\x7f", b"\x1b[31m"] {
        let mut request =
            b"POST /v1/publish/orders.created HTTP/1.1\r\nHost: x\r\nx-tenant: a".to_vec();
        request.extend_from_slice(ctl);
        request.extend_from_slice(b"b\r\nContent-Length: 2\r\n\r\n{}");
        assert_eq!(raw(&sidecar, &request).await.status, 400, "{ctl:?}");
    }
    // The same characters inside a batch reach jetway: refused per item.
    let body = serde_json::json!([
        {"subject": "orders.a", "data": 1, "headers": {"x-tenant": "a\u{1}b"}},
        {"subject": "orders.\u{0}", "data": 1},
        {"subject": "orders.b", "data": 1, "headers": {"x-tenant": "a\r\nnats-msg-id: forged"}},
        {"subject": "orders.c", "data": 1, "headers": {"bad name": "v"}},
        {"subject": "orders.d", "data": 1, "idempotency_key": "k\u{7f}"},
        {"subject": "orders.e", "data": 1},
    ]);
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish"))
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 207);
    let answer: Value = r.json().await.expect("json");
    let codes: Vec<&str> = answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["error"]["code"].as_str().unwrap_or("ok"))
        .collect();
    assert_eq!(
        codes,
        [
            "header_invalid",
            "subject_invalid",
            "header_invalid",
            "header_invalid",
            "header_invalid",
            "ok"
        ]
    );
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_methods_get_405_json() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    for (method, path) in [
        ("GET", "/v1/publish/orders.created"),
        ("PUT", "/v1/publish/orders.created"),
        ("GET", "/v1/publish"),
        ("DELETE", "/v1/publish"),
        ("POST", "/v1/openapi.json"),
        ("DELETE", "/v1/subscriptions"),
        ("GET", "/v1/subscriptions/x/pause"),
        ("PATCH", "/v1/dead-letters/x"),
        ("GET", "/v1/dead-letters/x/replay"),
        ("POST", "/v1/streams/ORDERS/messages/1"),
    ] {
        request(&sidecar.http, method, &sidecar.url(path))
            .await
            .assert_error_at(405, "method_not_allowed", &format!("{method} {path}"));
    }
    request(&sidecar.http, "POST", &sidecar.metrics_url("/metrics"))
        .await
        .assert_error(405, "method_not_allowed");
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_routes_get_404_json() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    for path in [
        "/",
        "/v1",
        "/v1/",
        "/v1/nope",
        "/v2/publish/orders.created",
        "/metrics",
        "/v1/publish/",
        "/v1/subscriptions/x/y/z",
        "/%ff",
        "/../../etc/passwd",
    ] {
        request(&sidecar.http, "GET", &sidecar.url(path))
            .await
            .assert_error_at(404, "not_found", path);
    }
    request(&sidecar.http, "GET", &sidecar.metrics_url("/nope"))
        .await
        .assert_error(404, "not_found");
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn extractor_rejections_are_json_too() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    for (method, path) in [
        ("GET", "/v1/streams/ORDERS/messages/not-a-number"),
        ("GET", "/v1/dead-letters/x?limit=lots"),
        ("GET", "/v1/subjects/orders.%ff/last"),
    ] {
        let r = sidecar
            .http
            .request(method.parse().expect("method"), sidecar.url(path))
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        let body: Value = r
            .json()
            .await
            .unwrap_or_else(|e| panic!("{path}: not JSON: {e}"));
        assert!(body["error"]["code"].is_string(), "{path}: {body}");
    }
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_bombs_in_batches_are_refused() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    let post = |body: Vec<u8>, content_type: &'static str| {
        let http = sidecar.http.clone();
        let url = sidecar.url("/v1/publish");
        async move {
            let r = http
                .post(url)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .expect("send");
            let status = r.status().as_u16();
            let body: Value = r.json().await.expect("json");
            (
                status,
                body["error"]["code"].as_str().unwrap_or("").to_string(),
            )
        }
    };
    // Nesting in the batch's own structure, past serde_json's recursion
    // limit or where an item belongs.
    for bomb in [
        format!("{}{}", "[".repeat(50_000), "]".repeat(50_000)),
        format!("[{}", "[".repeat(50_000)),
        format!(
            "[{{\"subject\":\"orders.a\",\"headers\":{{\"x\":{}1{}}}}}]",
            "[".repeat(50_000),
            "]".repeat(50_000)
        ),
        format!(
            "[{{\"subject\":\"orders.a\",\"data\":{}1",
            "[".repeat(50_000)
        ),
    ] {
        assert_eq!(
            post(bomb.into_bytes(), "application/json").await,
            (400, "batch_invalid".into())
        );
    }
    let ndjson = format!(
        "{{\"subject\":\"orders.a\"}}\n{}\n",
        "{\"a\":".repeat(50_000)
    );
    assert_eq!(
        post(ndjson.into_bytes(), "application/x-ndjson").await,
        (400, "batch_invalid".into())
    );
    // Deep but well-formed `data` is the event itself: jetway never
    // interprets it (skipping it is iterative, no recursion), so it is
    // stored byte for byte when it fits, refused per item when it does not.
    let deep = |n: usize| {
        format!(
            "{{\"subject\":\"orders.a\",\"data\":{}1{}}}",
            "[".repeat(n),
            "]".repeat(n)
        )
    };
    let (status, _) = post(
        format!("[{}]", deep(10_000)).into_bytes(),
        "application/json",
    )
    .await;
    assert_eq!(status, 200);
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish"))
        .body(format!("[{},{}]", deep(1), deep(MAX_BODY)))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 207);
    let answer: Value = r.json().await.expect("json");
    assert!(answer["results"][0]["seq"].is_u64(), "{answer}");
    assert_eq!(answer["results"][1]["error"]["code"], "payload_too_large");
    // Huge arrays: of junk, of too many items, larger than the batch limit.
    let junk = format!("[{}1]", "1,".repeat(300_000));
    assert_eq!(
        post(junk.into_bytes(), "application/json").await,
        (400, "batch_invalid".into())
    );
    let items = format!("[{}]", vec!["{\"subject\":\"orders.a\"}"; 1001].join(","));
    assert_eq!(
        post(items.into_bytes(), "application/json").await,
        (400, "batch_invalid".into())
    );
    let limit = MAX_BODY * jetway::publish::BATCH_BODY_FACTOR;
    let huge = format!(
        "[{{\"subject\":\"orders.a\",\"data\":[{}1]}}]",
        "1,".repeat(limit / 2)
    );
    assert_eq!(
        post(huge.into_bytes(), "application/json").await,
        (413, "payload_too_large".into())
    );
    // A structured CloudEvent bomb on the single route.
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish/orders.created"))
        .header("content-type", "application/cloudevents+json")
        .body(format!(
            "{{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"/s\",\"type\":\"t\",\"data\":{}{}}}",
            "[".repeat(20_000),
            "]".repeat(20_000)
        ))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "cloudevent_invalid");
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_item_with_too_many_headers_is_refused_not_a_panic() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    // http's HeaderMap holds at most 32768 entries; past that `insert`
    // panics, so the item must be refused before (found by this test).
    let headers: serde_json::Map<String, Value> = (0..40_000)
        .map(|i| (format!("h{i}"), Value::from("")))
        .collect();
    let body = serde_json::json!([
        {"subject": "orders.a", "data": 1, "headers": headers},
        {"subject": "orders.b", "data": 1},
    ]);
    let bytes = serde_json::to_vec(&body).expect("json");
    assert!(bytes.len() < MAX_BODY * jetway::publish::BATCH_BODY_FACTOR);
    let r = sidecar
        .http
        .post(sidecar.url("/v1/publish"))
        .header("content-type", "application/json")
        .body(bytes)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    let answer: Value = r.json().await.expect("json");
    assert!(matches!(status, 207 | 400), "status {status}: {answer}");
    if status == 207 {
        assert_eq!(answer["results"][0]["error"]["code"], "header_invalid");
    } else {
        assert_eq!(answer["error"]["code"], "batch_invalid");
    }
    publish_ok(&sidecar).await;
}

/// An NDJSON batch of `items` payloads of `size` bytes (base64 in the body).
fn big_batch(items: usize, size: usize) -> bytes::Bytes {
    use base64::Engine;
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'm'; size]);
    let line = format!("{{\"subject\":\"orders.big\",\"data_base64\":\"{data}\"}}\n");
    bytes::Bytes::from(line.repeat(items))
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .expect("/proc/self/status")
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bodies_beyond_the_memory_budget_wait_then_get_429() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    // The budget is 8 x max_body = 512 KiB: a batch of 16 x max_body (the
    // largest) takes all of it while its body arrives.
    let mut body = big_batch(15, 48 * 1024).to_vec();
    // Padded (JSON allows trailing blanks) to the whole budget.
    body.pop();
    body.resize(16 * MAX_BODY - 1, b' ');
    body.push(b'\n');
    let mut holder = TcpStream::connect(sidecar.api).await.expect("connect");
    let head = format!(
        "POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    holder.write_all(head.as_bytes()).await.expect("write");
    let half = body.len() / 2;
    holder.write_all(&body[..half]).await.expect("write");

    // Meanwhile a small publish waits for room, unread, and after
    // nats.request_timeout (2 s here) gets a 429 that says why. The holder
    // trickles its body so that its own read timeout does not end it.
    let small = sidecar.publish("orders.created", b"{\"small\":true}");
    tokio::pin!(small);
    let mut sent = half;
    let answer = loop {
        tokio::select! {
            r = &mut small => break r,
            _ = tokio::time::sleep(BODY_TIMEOUT / 4) => {
                holder.write_all(&body[sent..sent + 1]).await.expect("trickle");
                sent += 1;
            }
        }
    };
    assert_eq!(answer.status(), 429);
    assert_eq!(
        answer.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    let error: Value = answer.json().await.expect("json");
    assert_eq!(error["error"]["code"], "overloaded", "{error}");
    let message = error["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("request bodies"), "{message}");

    // The holder's batch is served in full once its body is complete.
    holder.write_all(&body[sent..]).await.expect("write");
    let answer = tokio::time::timeout(Duration::from_secs(10), read_answer(&mut holder))
        .await
        .expect("an answer in time")
        .expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["results"].as_array().map(Vec::len), Some(15));
    // And the room is free again.
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_batches_share_a_bounded_memory_budget() {
    let _alone = MEMORY.write().await;
    let (_nats, sidecar) = start().await;
    publish_ok(&sidecar).await;
    const CLIENTS: usize = 32;
    // One body, shared by every client: the client side costs 1 MiB.
    let body = big_batch(15, 48 * 1024);
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM");
    let before = peak_rss_kib();
    let clients = (0..CLIENTS).map(|_| {
        let (http, url, body) = (
            sidecar.http.clone(),
            sidecar.url("/v1/publish"),
            body.clone(),
        );
        async move {
            // A 429 (the budget stayed full for request_timeout) is
            // retried, as any client should; each batch must be stored.
            loop {
                let r = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("send");
                match r.status().as_u16() {
                    429 => tokio::time::sleep(Duration::from_millis(100)).await,
                    status => return (status, r.json::<Value>().await.expect("json")),
                }
            }
        }
    });
    let answers =
        tokio::time::timeout(Duration::from_secs(120), futures::future::join_all(clients))
            .await
            .expect("every batch answered in time");
    let grown = peak_rss_kib().saturating_sub(before);
    for (status, answer) in &answers {
        assert_eq!(*status, 200, "{answer}");
        assert_eq!(answer["results"].as_array().map(Vec::len), Some(15));
    }
    eprintln!("{CLIENTS} concurrent 1 MiB batches: peak RSS +{grown} KiB");
    // Unbounded, the server would hold 32 bodies and their decoded items
    // at once (over 32 MiB); the budget allows one body's worth, plus what
    // the clients and the NATS connection buffer here.
    assert!(
        grown < 16 * 1024,
        "peak RSS grew by {grown} KiB for {CLIENTS} concurrent 1 MiB batches"
    );
    publish_ok(&sidecar).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_streamed_batch_larger_than_the_budget_is_served_alone() {
    let _shared = MEMORY.read().await;
    let (_nats, sidecar) = start().await;
    // No length up front: room is taken as the chunks arrive, past the
    // 512 KiB budget up to the batch limit.
    let body = big_batch(15, 48 * 1024);
    assert!(body.len() > 8 * MAX_BODY && body.len() <= 16 * MAX_BODY);
    let mut request = b"POST /v1/publish HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for chunk in body.chunks(10_000) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(&sidecar, &request).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(answer.json()["results"].as_array().map(Vec::len), Some(15));
    publish_ok(&sidecar).await;
}
