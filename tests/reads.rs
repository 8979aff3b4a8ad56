//! Event sourcing and CQRS reads (SPEC section 6): the history of a
//! subject, live reads over SSE and NDJSON, and `jetway tail`, against a
//! real nats-server.

mod common;

use common::*;

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

async fn get_json(s: &Sidecar, path: &str) -> (u16, Value) {
    let r = s.http.get(s.url(path)).send().await.expect("get");
    let status = r.status().as_u16();
    let body = r.json().await.expect("json body");
    (status, body)
}

async fn publish_ok(s: &Sidecar, subject: &str, body: &'static [u8]) -> u64 {
    let r = s.publish(subject, body).await;
    assert_eq!(r.status(), 200, "publish {subject}");
    let v: Value = r.json().await.expect("json");
    v["seq"].as_u64().expect("seq")
}

fn seqs(page: &Value) -> Vec<u64> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|m| m["seq"].as_u64().expect("seq"))
        .collect()
}

/// One HTTP/1.1 request written by hand, so the path goes out exactly as
/// given (reqwest would percent-encode `>`); answers status and body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .expect("write");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    let body = match body.find('{') {
        Some(i) => &body[i..body.rfind('}').map_or(body.len(), |j| j + 1)],
        None => "null",
    };
    (status, serde_json::from_str(body).expect("json body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_in_stream_order_paged_and_filtered() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let mut one = Vec::new();
    let mut all = Vec::new();
    for i in 0..5 {
        let seq = publish_ok(&s, "orders.1", b"{\"n\":1}").await;
        one.push(seq);
        all.push(seq);
        if i % 2 == 0 {
            all.push(publish_ok(&s, "orders.2", b"{\"n\":2}").await);
        }
    }
    all.push(publish_ok(&s, "orders.2.items", b"x").await);

    let (status, page) = get_json(&s, "/v1/subjects/orders.1/messages").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(seqs(&page), one);
    assert_eq!(page["next"], Value::Null);
    let first = &page["items"][0];
    assert_eq!(first["stream"], "ORDERS");
    assert_eq!(first["subject"], "orders.1");
    assert_eq!(first["data_base64"], "eyJuIjoxfQ==");
    assert!(first["time"].as_str().is_some_and(|t| t.contains('T')));

    // Pages of two: `next` is the `after` of the following page.
    let mut got = Vec::new();
    let mut after = 0;
    let mut pages = 0;
    loop {
        let (status, page) = get_json(
            &s,
            &format!("/v1/subjects/orders.1/messages?limit=2&after={after}"),
        )
        .await;
        assert_eq!(status, 200);
        pages += 1;
        got.extend(seqs(&page));
        match page["next"].as_u64() {
            Some(n) => {
                assert_eq!(Some(&n), got.last());
                after = n;
            }
            None => break,
        }
    }
    assert_eq!(got, one);
    assert_eq!(pages, 3);
    // A full last page says there is no more.
    let (_, page) = get_json(&s, "/v1/subjects/orders.1/messages?limit=5").await;
    assert_eq!(seqs(&page), one);
    assert_eq!(page["next"], Value::Null);
    let (_, page) = get_json(&s, "/v1/subjects/orders.1/messages?limit=4").await;
    assert_eq!(page["next"], one[3]);

    // Wildcards: `*` one token, `>` the rest, raw or percent-encoded.
    let (_, page) = get_json(&s, "/v1/subjects/orders.*/messages").await;
    assert_eq!(seqs(&page), all[..all.len() - 1].to_vec());
    let (_, page) = get_json(&s, "/v1/subjects/orders.%3E/messages").await;
    assert_eq!(seqs(&page), all);
    // Both go out raw too (as curl sends them): `>` is not a URI character
    // for hyper, so jetway escapes it before hyper reads the request line.
    let (status, page) = raw_get(s.api, "/v1/subjects/orders.*/messages").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(seqs(&page), all[..all.len() - 1].to_vec());
    let (status, page) = raw_get(s.api, "/v1/subjects/orders.>/messages").await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(seqs(&page), all);
    let (_, page) = get_json(&s, "/v1/subjects/*.2.items/messages").await;
    assert_eq!(seqs(&page), vec![*all.last().expect("one")]);
    // Nothing yet: an empty page.
    let (status, page) = get_json(&s, "/v1/subjects/orders.404/messages").await;
    assert_eq!(
        (status, seqs(&page), &page["next"]),
        (200, vec![], &Value::Null)
    );

    // The history read leaves no consumer behind.
    let js = nats.client().await;
    eventually("history consumers deleted", || {
        let js = js.clone();
        async move {
            let mut stream = js.get_stream("ORDERS").await.ok()?;
            (stream.info().await.ok()?.state.consumer_count == 0).then_some(())
        }
    })
    .await;
    s.stop().await;
}

/// A raw `>` on a kept-alive connection, after a publish whose body looks
/// like a request head with a raw `>`: the body is stored byte for byte and
/// the pipelined read that follows finds the subject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_wildcards_work_on_kept_alive_connections_and_bodies_stay_as_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let body = "GET /v1/subjects/orders.> HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut conn = tokio::net::TcpStream::connect(s.api)
        .await
        .expect("connect");
    let requests = format!(
        "POST /v1/publish/orders.raw HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}\
         GET /v1/subjects/orders.>/messages HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v1/subjects/orders.%3E/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // In small pieces, so heads and bodies straddle reads.
    for piece in requests.as_bytes().chunks(7) {
        conn.write_all(piece).await.expect("write");
    }
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("read");
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 3, "{text}");
    let stored = common::nats::stored(&nats, 1).await;
    assert_eq!(stored.payload.as_ref(), body.as_bytes(), "the body as sent");
    // Both reads list the message on orders.raw.
    assert_eq!(
        text.matches("\"subject\":\"orders.raw\"").count(),
        2,
        "{text}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_refuses_what_it_must_not_read() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(
        &nats,
        "  - { name: PAY, subjects: [\"pay.>\"] }\n",
    ))
    .await;
    // Another team's stream on the same server, not in this config.
    let js = nats.client().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["other.>".into()],
        ..Default::default()
    })
    .await
    .expect("other stream");
    js.publish("other.secret", "x".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    let table = [
        ("/v1/subjects/other.secret/messages", 404, "no_stream"),
        ("/v1/subjects/nothing.here/messages", 404, "no_stream"),
        ("/v1/subjects/*.1/messages", 400, "bad_request"),
        ("/v1/subjects/%3E/messages", 400, "bad_request"),
        ("/v1/subjects/orders.1/messages?after=x", 400, "bad_request"),
        (
            "/v1/subjects/orders.1/messages?after=-1",
            400,
            "bad_request",
        ),
        ("/v1/subjects/orders.1/messages?limit=0", 400, "bad_request"),
        (
            "/v1/subjects/orders.1/messages?limit=1001",
            400,
            "bad_request",
        ),
        (
            "/v1/subjects/orders.1/messages?limit=ten",
            400,
            "bad_request",
        ),
        ("/v1/subjects/orders..1/messages", 400, "subject_invalid"),
        (
            "/v1/subjects/jetway.dlq.test.s/messages",
            403,
            "subject_reserved",
        ),
        ("/v1/subjects/jetway.%3E/messages", 403, "subject_reserved"),
        (
            "/v1/subjects/$JS.API.INFO/messages",
            403,
            "subject_reserved",
        ),
        ("/v1/subjects/_INBOX.x/messages", 403, "subject_reserved"),
        ("/v1/subjects/other.secret/live", 404, "no_stream"),
        ("/v1/subjects/jetway.dlq.%3E/live", 403, "subject_reserved"),
        ("/v1/subjects/orders.1/live?after=x", 400, "bad_request"),
    ];
    for (path, status, code) in table {
        let (got, body) = get_json(&s, path).await;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{path}: {body}"
        );
    }
    s.stop().await;
}

/// Reads server-sent events from a response: `(id, data)` per `message`
/// event; comments are skipped.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buf: Vec<u8>,
    comments: usize,
    /// The body ended with an error rather than cleanly.
    failed: bool,
}

impl Events {
    fn new(r: reqwest::Response) -> Events {
        Events {
            body: r.bytes_stream().boxed(),
            buf: Vec::new(),
            comments: 0,
            failed: false,
        }
    }

    /// The next raw block (up to a blank line), or `None` at the end.
    async fn block(&mut self, sep: &[u8]) -> Option<String> {
        loop {
            if let Some(i) = self.buf.windows(sep.len()).position(|w| w == sep) {
                let block: Vec<u8> = self.buf.drain(..i + sep.len()).collect();
                return Some(String::from_utf8_lossy(&block[..i]).into_owned());
            }
            let chunk = tokio::time::timeout(DEADLINE, self.body.next())
                .await
                .expect("an event within the deadline")?;
            match chunk {
                Ok(chunk) => self.buf.extend_from_slice(&chunk),
                Err(_) => {
                    self.failed = true;
                    return None;
                }
            }
        }
    }

    async fn next(&mut self) -> Option<(u64, Value)> {
        loop {
            let block = self.block(b"\n\n").await?;
            if block.starts_with(':') {
                self.comments += 1;
                continue;
            }
            let mut id = None;
            let mut data = None;
            let mut event = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).ok();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    event = Some(v.to_string());
                }
            }
            assert_eq!(event.as_deref(), Some("message"), "{block}");
            let (id, data): (u64, Value) = (id.expect("id"), data.expect("data"));
            assert_eq!(data["seq"], id);
            return Some((id, data));
        }
    }

    /// The next NDJSON message (blank keep-alive lines skipped).
    async fn next_line(&mut self) -> Option<Value> {
        loop {
            let line = self.block(b"\n").await?;
            if line.is_empty() {
                self.comments += 1;
                continue;
            }
            return Some(serde_json::from_str(&line).expect("a JSON line"));
        }
    }
}

async fn live(s: &Sidecar, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = s.http.get(s.url(path));
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    request.send().await.expect("live request")
}

async fn consumer_count(js: &async_nats::jetstream::Context) -> Option<usize> {
    let mut stream = js.get_stream("ORDERS").await.ok()?;
    Some(stream.info().await.ok()?.state.consumer_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_sse_sends_the_backlog_then_new_messages_and_resumes() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let mut stored = Vec::new();
    for _ in 0..3 {
        stored.push(publish_ok(&s, "orders.7", b"{\"a\":1}").await);
        publish_ok(&s, "orders.8", b"{}").await;
    }
    let r = live(&s, "/v1/subjects/orders.7/live?after=0", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut events = Events::new(r);
    for want in &stored {
        let (id, data) = events.next().await.expect("backlog event");
        assert_eq!(id, *want);
        assert_eq!(data["subject"], "orders.7");
    }
    // Live: stored after the backlog was read, no gap, no repeat.
    for _ in 0..3 {
        let seq = publish_ok(&s, "orders.7", b"{\"a\":2}").await;
        publish_ok(&s, "orders.8", b"{}").await;
        let (id, _) = events.next().await.expect("live event");
        assert_eq!(id, seq);
        stored.push(seq);
    }
    assert_eq!(s.metric("jetway_live_reads", &[]).await, 1.0);

    // A reconnecting EventSource sends Last-Event-ID with its first URL.
    let r = live(
        &s,
        "/v1/subjects/orders.7/live?after=0",
        &[("Last-Event-ID", &stored[3].to_string())],
    )
    .await;
    let mut resumed = Events::new(r);
    for want in &stored[4..] {
        assert_eq!(resumed.next().await.expect("resumed").0, *want);
    }

    // No `after`: only what is stored from now on.
    let r = live(&s, "/v1/subjects/orders.*/live", &[]).await;
    let mut fresh = Events::new(r);
    let seq = publish_ok(&s, "orders.9", b"{}").await;
    assert_eq!(fresh.next().await.expect("new one").0, seq);

    // SIGTERM ends every live read cleanly (readers reconnect elsewhere).
    s.stop().await;
    for mut events in [events, resumed, fresh] {
        assert_eq!(events.next().await.map(|e| e.0), None);
        assert!(!events.failed, "the stream ended with an error");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ndjson_sends_one_message_a_line() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let a = publish_ok(&s, "orders.1", b"first").await;
    let r = live(
        &s,
        "/v1/subjects/orders.1/live?after=0",
        &[("Accept", "application/x-ndjson")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let mut lines = Events::new(r);
    let m = lines.next_line().await.expect("backlog line");
    assert_eq!(
        (m["seq"].as_u64(), m["data_base64"].as_str()),
        (Some(a), Some("Zmlyc3Q="))
    );
    let b = publish_ok(&s, "orders.1", b"second").await;
    let m = lines.next_line().await.expect("live line");
    assert_eq!(m["seq"].as_u64(), Some(b));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reads_are_bounded_and_a_reader_gone_frees_its_consumer() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "api: { max_live: 2 }\n")).await;
    let js = nats.client().await;
    let before = consumer_count(&js).await.expect("stream info");
    let first = live(&s, "/v1/subjects/orders.1/live", &[]).await;
    let second = live(&s, "/v1/subjects/orders.>/live?after=0", &[]).await;
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(consumer_count(&js).await, Some(before + 2));
    assert_eq!(s.metric("jetway_live_reads", &[]).await, 2.0);

    let third = live(&s, "/v1/subjects/orders.2/live", &[]).await;
    assert_eq!(third.status(), 429);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await.expect("json");
    assert_eq!(body["error"]["code"], "overloaded");

    // The reader goes away: its place and its consumer are freed.
    drop(first);
    eventually("the consumer of the reader gone is deleted", || {
        let js = js.clone();
        async move { (consumer_count(&js).await? == before + 1).then_some(()) }
    })
    .await;
    eventually("jetway_live_reads back to 1", || async {
        (s.metric("jetway_live_reads", &[]).await == 1.0).then_some(())
    })
    .await;
    let again = live(&s, "/v1/subjects/orders.2/live", &[]).await;
    assert_eq!(again.status(), 200);
    drop((second, again));
    eventually("every live consumer deleted", || {
        let js = js.clone();
        async move { (consumer_count(&js).await? == before).then_some(()) }
    })
    .await;
    s.stop().await;
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The stream sequence the one consumer of ORDERS has delivered up to.
async fn delivered(js: &async_nats::jetstream::Context) -> Option<u64> {
    let stream = js.get_stream("ORDERS").await.ok()?;
    let mut consumers = stream.consumers();
    let info = consumers.next().await?.ok()?;
    Some(info.delivered.stream_sequence)
}

/// What jetway may hold for a reader that reads nothing: the process,
/// with its one bounded pull batch, stays under this.
const RSS_BOUND: u64 = 48 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_never_reads_keeps_memory_bounded() {
    let nats = Nats::start();
    let mut jetway = Process::spawn(&config_yaml(&nats, ""));
    jetway.wait_ready().await;
    let js = nats.client().await;
    // 64 MiB stored: 1024 events of 64 KiB.
    const COUNT: u64 = 1024;
    let body = bytes::Bytes::from(vec![b'x'; 64 << 10]);
    let mut acks = Vec::new();
    for i in 0..COUNT {
        acks.push(
            js.publish(format!("orders.{}", i % 10), body.clone())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("ack");
    }
    let http = reqwest::Client::new();
    let response = http
        .get(jetway.url("/v1/subjects/orders.%3E/live?after=0"))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .expect("live");
    assert_eq!(response.status(), 200);
    // The body is not polled: the client stops reading, the socket fills.
    eventually("the consumer delivered something", || async {
        delivered(&js).await.filter(|d| *d > 0)
    })
    .await;
    let mut peak = 0;
    for _ in 0..30 {
        peak = peak.max(rss_bytes(jetway.child.id()).expect("rss"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let sent = delivered(&js).await.expect("consumer info");
    eprintln!("reader that never reads: peak RSS {peak} bytes, {sent} of {COUNT} delivered");
    assert!(
        peak <= RSS_BOUND,
        "jetway's RSS reached {peak} bytes (bound {RSS_BOUND}) while a reader read nothing"
    );
    assert!(
        sent < COUNT / 2,
        "the consumer ran ahead of the reader: {sent} of {COUNT} delivered"
    );

    // Reading resumes the flow: every event, in order, none twice.
    let mut lines = Events::new(response);
    for want in 1..=COUNT {
        let m = lines.next_line().await.expect("a message");
        assert_eq!(m["seq"].as_u64(), Some(want));
    }
    assert_eq!(jetway.terminate().await, Some(0));
}

/// A sidecar binary on fixed ports, so it can be restarted where `jetway
/// tail` looks for it.
/// A child process killed when dropped, so a failing test leaves none behind
/// (an orphan holding the test's output open would hang the run).
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_on(yaml: &str, api: u16, metrics: u16, dir: &std::path::Path) -> Killed {
    let path = dir.join("jetway.yaml");
    std::fs::write(
        &path,
        format!(
            "{yaml}\napi: {{ listen: \"127.0.0.1:{api}\" }}\nmetrics: {{ listen: \"127.0.0.1:{metrics}\" }}\n"
        ),
    )
    .expect("write config");
    Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_jetway"))
            .args(["run", "--config"])
            .arg(&path)
            .envs(least_privilege_env(yaml))
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn jetway"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_each_message_and_survives_a_sidecar_restart() {
    use std::io::BufRead;
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (api, metrics) = (free_port(), free_port());
    let yaml = config_yaml(&nats, "");
    let sidecar = spawn_on(&yaml, api, metrics, dir.path());
    let metrics_addr: std::net::SocketAddr = format!("127.0.0.1:{metrics}").parse().expect("addr");
    wait_ready(metrics_addr).await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{api}/v1/publish/orders.1");
    let r = http
        .post(&url)
        .header("Content-Type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", "1")
        .header("ce-source", "test")
        .header("ce-type", "order.created")
        .header("Idempotency-Key", "key-1")
        .body("{\"id\":1}")
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);
    let r = http
        .post(&url)
        .body(vec![0u8, 1, 2, 255])
        .send()
        .await
        .expect("publish");
    assert_eq!(r.status(), 200);

    let mut tail = Killed(
        std::process::Command::new(env!("CARGO_BIN_EXE_jetway"))
            .args([
                "tail",
                "--api",
                &format!("http://127.0.0.1:{api}"),
                "--from",
                "1",
                "orders.>",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn tail"),
    );
    let stdout = tail.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let next_line = || rx.recv_timeout(DEADLINE).expect("a line from jetway tail");
    let first = next_line();
    assert!(first.starts_with("#1 "), "{first}");
    for part in [
        " orders.1 ",
        "application/json",
        "type=order.created",
        "key=key-1",
        "{\"id\":1}",
    ] {
        assert!(first.contains(part), "{part} missing in {first}");
    }
    let second = next_line();
    assert!(
        second.starts_with("#2 ") && second.ends_with(" <4 bytes>"),
        "{second}"
    );

    // The sidecar dies and comes back: tail goes on after #2.
    drop(sidecar);
    let sidecar = spawn_on(&yaml, api, metrics, dir.path());
    wait_ready(metrics_addr).await;
    let r = http.post(&url).body("third").send().await.expect("publish");
    assert_eq!(r.status(), 200);
    let third = next_line();
    assert!(
        third.starts_with("#3 ") && third.ends_with(" third"),
        "{third}"
    );

    signal(tail.0.id(), "INT");
    let deadline = std::time::Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = tail.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "tail did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(rx.try_recv().is_err(), "nothing printed twice");
    drop(sidecar);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_large_messages_is_cut_by_bytes_and_goes_on() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let js = nats.client().await;
    // 40 × 900 KiB: more than one page's 16 MiB of bodies.
    let body = bytes::Bytes::from(vec![b'x'; 900 << 10]);
    for _ in 0..40 {
        js.publish("orders.big", body.clone())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    let (status, first) = get_json(&s, "/v1/subjects/orders.big/messages?limit=1000").await;
    assert_eq!(status, 200, "{first}");
    let mut got = seqs(&first);
    assert!((1..40).contains(&got.len()), "{} items", got.len());
    let mut next = first["next"].as_u64();
    while let Some(after) = next {
        let (_, page) = get_json(
            &s,
            &format!("/v1/subjects/orders.big/messages?limit=1000&after={after}"),
        )
        .await;
        got.extend(seqs(&page));
        next = page["next"].as_u64();
    }
    assert_eq!(got, (1..=40).collect::<Vec<u64>>());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_live_read_sends_keepalives() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let sse = live(&s, "/v1/subjects/orders.idle/live", &[]).await;
    let ndjson = live(
        &s,
        "/v1/subjects/orders.idle/live",
        &[("Accept", "application/x-ndjson")],
    )
    .await;
    let mut sse = Events::new(sse);
    let block = sse.block(b"\n\n").await.expect("a keep-alive");
    assert!(block.starts_with(':'), "{block:?}");
    let mut ndjson = Events::new(ndjson);
    assert_eq!(ndjson.block(b"\n").await.as_deref(), Some(""));
    // And a message still comes after them.
    let seq = publish_ok(&s, "orders.idle", b"{}").await;
    assert_eq!(sse.next().await.map(|e| e.0), Some(seq));
    assert_eq!(
        ndjson.next_line().await.and_then(|m| m["seq"].as_u64()),
        Some(seq)
    );
    s.stop().await;
}
