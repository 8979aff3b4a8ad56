//! `cargo bench --bench reads`: the read routes of issue 14, measured
//! against baselines taken in the same run.
//!
//! 1. A page of one entity's 50 events in a stream of 1 000 000 messages of
//!    10 000 entities, read by direct get (`next_by_subj`, one request per
//!    message) and by an ephemeral pull consumer filtered on the subject.
//! 2. A history read of 1000 events through jetway's HTTP route against a
//!    raw async-nats read of the same messages.
//! 3. A live read (NDJSON) of 100 000 events of 256 B by a fast reader:
//!    messages per second, and the RSS of this process (jetway in-process
//!    plus the reader) at the end.
//!
//! The server is `NATS_SERVER_BIN` (else `nats-server` on the PATH).
//! `JETWAY_BENCH_QUICK=1`: 100 000 messages instead of 1 000 000.

#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use jetway::reads::{history_consumer, history_direct, Target};

type Res<T> = Result<T, String>;

/// A port to start a server on: the tests' own `free_port`.
#[path = "../tests/common/ports.rs"]
mod ports;
use ports::free_port;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn publish_many(
    js: &jetstream::Context,
    n: usize,
    subject: impl Fn(usize) -> String,
    payload: bytes::Bytes,
) -> Res<()> {
    let mut acks = Vec::with_capacity(4096);
    for i in 0..n {
        acks.push(
            js.publish(subject(i), payload.clone())
                .await
                .map_err(|e| e.to_string())?,
        );
        if acks.len() == 4096 {
            for ack in acks.drain(..) {
                ack.await.map_err(|e| e.to_string())?;
            }
        }
    }
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn run() -> Res<()> {
    let quick = std::env::var_os("JETWAY_BENCH_QUICK").is_some();
    let total: usize = if quick { 100_000 } else { 1_000_000 };
    let entities = 10_000;
    let bin = jetway::dev::find_nats_server().ok_or("nats-server not found")?;
    let version = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let store = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = free_port();
    let mut server = std::process::Command::new(&bin)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(store.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let result = bench(port, total, entities, &version).await;
    let _ = server.kill();
    let _ = server.wait();
    result
}

async fn bench(port: u16, total: usize, entities: usize, version: &str) -> Res<()> {
    let url = format!("nats://127.0.0.1:{port}");
    let (api, metrics) = (free_port(), free_port());
    let yaml = format!(
        "app_id: bench\nnats: {{ url: \"{url}\" }}\n\
         api: {{ listen: \"127.0.0.1:{api}\", max_live: 4 }}\n\
         metrics: {{ listen: \"127.0.0.1:{metrics}\" }}\n\
         streams:\n  - {{ name: ES, subjects: [\"es.>\"] }}\n"
    );
    let config = jetway::Config::from_yaml(&yaml, Vec::new()).map_err(|e| format!("{e:?}"))?;
    let listeners = jetway::Listeners::bind(&config)
        .await
        .map_err(|e| e.to_string())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sidecar = tokio::spawn(jetway::run(config, listeners, async move {
        let _ = stop_rx.await;
    }));
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{metrics}/readyz"))
            .send()
            .await
            .map(|r| r.status() == 200)
            .unwrap_or(false);
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err("jetway did not get ready".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = async_nats::connect(&url).await.map_err(|e| e.to_string())?;
    let js = jetstream::new(client);

    println!("server: {version}");
    let started = Instant::now();
    publish_many(
        &js,
        total,
        |i| format!("es.e{}", i % entities),
        bytes::Bytes::from_static(&[b'x'; 64]),
    )
    .await?;
    println!(
        "stored {total} messages of {entities} entities in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // 1. One entity's page of 50, both ways, on 25 entities.
    let (mut direct, mut consumer) = (Vec::new(), Vec::new());
    for e in (0..entities).step_by(entities / 25) {
        let target = Target {
            stream: "ES".into(),
            filter: format!("es.e{e}"),
        };
        let t = Instant::now();
        let a = history_direct(&js, &target, 0, 50)
            .await
            .map_err(|e| e.to_string())?;
        direct.push(t.elapsed());
        let t = Instant::now();
        let b = history_consumer(&js, &target, 0, 50)
            .await
            .map_err(|e| e.to_string())?;
        consumer.push(t.elapsed());
        let seqs = |p: &jetway::reads::Page| p.items.iter().map(|m| m.seq).collect::<Vec<_>>();
        if seqs(&a) != seqs(&b) || a.next != b.next || a.items.len() != 50.min(total / entities) {
            return Err(format!("the two reads of {} differ", target.filter));
        }
    }
    println!(
        "page of 50 events of one entity: direct get {:.2} ms, filtered consumer {:.2} ms (medians of 25)",
        ms(median(direct)),
        ms(median(consumer))
    );

    // 2. 1000 events through jetway vs a raw async-nats read.
    publish_many(
        &js,
        1000,
        |_| "es.big".into(),
        bytes::Bytes::from_static(&[b'y'; 256]),
    )
    .await?;
    let (mut raw, mut via) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let t = Instant::now();
        let stream = js
            .get_stream_no_info("ES")
            .await
            .map_err(|e| e.to_string())?;
        let c = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: "es.big".into(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut messages = c.messages().await.map_err(|e| e.to_string())?.take(1000);
        let mut n = 0;
        while let Some(m) = messages.next().await {
            m.map_err(|e| e.to_string())?;
            n += 1;
        }
        raw.push(t.elapsed());
        if n != 1000 {
            return Err(format!("raw read got {n}"));
        }
        let t = Instant::now();
        let page: serde_json::Value = http
            .get(format!(
                "http://127.0.0.1:{api}/v1/subjects/es.big/messages?limit=1000"
            ))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        via.push(t.elapsed());
        if page["items"].as_array().map(Vec::len) != Some(1000) {
            return Err("history page is not 1000 long".into());
        }
    }
    let (raw, via) = (median(raw), median(via));
    println!(
        "history of 1000 events: raw async-nats {:.2} ms, jetway HTTP {:.2} ms: ratio {:.2} (target >= 0.5)",
        ms(raw),
        ms(via),
        raw.as_secs_f64() / via.as_secs_f64()
    );

    // 3. A live read of 100 000 events of 256 B.
    let live_count = 100_000;
    publish_many(
        &js,
        live_count,
        |_| "es.live".into(),
        bytes::Bytes::from_static(&[b'z'; 256]),
    )
    .await?;
    let t = Instant::now();
    let response = http
        .get(format!(
            "http://127.0.0.1:{api}/v1/subjects/es.live/live?after=0"
        ))
        .header("Accept", "application/x-ndjson")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let mut body = response.bytes_stream();
    let mut lines = 0usize;
    let mut peak = 0f64;
    while lines < live_count {
        let chunk = body
            .next()
            .await
            .ok_or("live read ended early")?
            .map_err(|e| e.to_string())?;
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        if lines % 10_000 < 50 {
            peak = peak.max(rss_mib());
        }
    }
    let rate = live_count as f64 / t.elapsed().as_secs_f64();
    println!(
        "live read of {live_count} events of 256 B: {rate:.0} msg/s (target >= 20000); RSS of the bench process (jetway + reader) peak {peak:.1} MiB (target <= 48)"
    );
    drop(body);
    let _ = stop_tx.send(());
    let _ = sidecar.await;
    Ok(())
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench reads: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
