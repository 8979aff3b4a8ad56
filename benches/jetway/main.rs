//! `cargo bench --bench jetway`: jetway's throughput, latency and footprint
//! as ratios against baselines measured in the same run on the same machine
//! (issue 4). Starts its own nats-server, the jetway binary of this tree
//! (release profile) and an HTTP sink; the bare bridge and the bare delivery
//! loop run as child processes of this binary, so every HTTP system under
//! test is a process of its own, driven by the same load generator.
//! The phases of issues 12, 13 and 18 (`typed`, `tracing`, `replay`)
//! compare jetway with itself: a feature on against the same path without
//! it, on sidecars of their own.
//!
//! `--quick` or `JETWAY_BENCH_QUICK=1`: a few hundred messages per figure,
//! only to show it completes and writes `bench/results/quick.json`.

#![forbid(unsafe_code)]

mod chart;
mod idle;
mod load;
mod memory;
mod procs;
mod replay;
mod report;
mod roles;
mod scaling;
mod sidecar;
mod traces;
mod typed;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull, stream};
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::Request;

use load::{MakeRequest, Run, Stop};
use procs::{usage, Jetway, Nats, Role};
use report::*;

pub type Res<T> = Result<T, String>;

/// Adds what was being done to an error, so a failure says where.
pub trait Ctx<T> {
    fn ctx(self, what: &str) -> Res<T>;
}

impl<T, E: std::fmt::Display> Ctx<T> for Result<T, E> {
    fn ctx(self, what: &str) -> Res<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// How much to measure.
pub struct Plan {
    pub quick: bool,
    pub payloads: Vec<usize>,
    pub conns: Vec<usize>,
    pub rounds: usize,
    pub stop: Stop,
    pub latency_stop: Stop,
    pub batch_items: usize,
    pub settle: Duration,
}

impl Plan {
    fn full() -> Plan {
        Plan {
            quick: false,
            payloads: vec![256, 16 * 1024],
            conns: vec![1, 16, 64],
            rounds: 3,
            stop: Stop {
                duration: Duration::from_millis(1500),
                max_requests: None,
            },
            latency_stop: Stop {
                duration: Duration::from_secs(2),
                max_requests: None,
            },
            batch_items: 100,
            settle: Duration::from_secs(2),
        }
    }

    /// `JETWAY_BENCH_QUICK_N` messages per figure (default 200), e.g. more
    /// for a profile under `JETWAY_BENCH_WRAP`.
    fn quick() -> Plan {
        let n = quick_n();
        let stop = Stop {
            duration: Duration::from_secs(if n > 200 { 600 } else { 2 }),
            max_requests: Some(n as u64),
        };
        Plan {
            quick: true,
            payloads: vec![256],
            conns: vec![1, 16],
            rounds: 1,
            stop,
            latency_stop: stop,
            batch_items: 100,
            settle: Duration::from_millis(300),
        }
    }

    /// Rounds of a phase that alternates two systems (A B, then B A): even,
    /// so each goes first as often as the other.
    pub fn ab_rounds(&self) -> usize {
        if self.quick {
            1
        } else {
            4
        }
    }

    /// Messages of one delivery backlog.
    fn backlog(&self, payload: usize, concurrency: usize) -> usize {
        if self.quick {
            return quick_n();
        }
        match (payload <= 1024, concurrency == 1) {
            (true, true) => 3_000,
            (true, false) => 10_000,
            (false, true) => 1_500,
            (false, false) => 5_000,
        }
    }
}

fn quick_n() -> usize {
    std::env::var("JETWAY_BENCH_QUICK_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__role") {
        return match roles::main(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench baseline process: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let quick = args.iter().any(|a| a == "--quick")
        || std::env::var("JETWAY_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let plan = if quick { Plan::quick() } else { Plan::full() };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(bench(plan)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nbench FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

const BENCH_STREAM: &str = "BENCH";
const DELIVERY_STREAM: &str = "DLV";

fn stream_config(name: &str, subject: &str) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![subject.into()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        max_age: Duration::from_secs(3600),
        duplicate_window: Duration::from_secs(120),
        allow_direct: true,
        ..Default::default()
    }
}

/// The order three systems take their turns in round `round` of a
/// comparison: as given in even rounds, reversed in odd ones, so none is
/// always the first to run on a fresh or a warm machine.
pub fn turns<T: Copy>(round: usize, order: [T; 3]) -> [T; 3] {
    if round.is_multiple_of(2) {
        order
    } else {
        [order[2], order[1], order[0]]
    }
}

fn sub_name(c: usize, p: usize) -> String {
    format!("c{c}-p{p}")
}

fn jetway_yaml(nats: &Nats, sink: &roles::Sink, plan: &Plan) -> String {
    let mut subs = String::new();
    for &p in &plan.payloads {
        for &c in &plan.conns {
            subs.push_str(&format!(
                "  - {{ name: {}, subject: \"dlv.j.c{c}.p{p}\", stream: {DELIVERY_STREAM}, endpoint: \"{}\", concurrency: {c}, timeout: 10s }}\n",
                sub_name(c, p),
                sink.url("/deliver"),
            ));
        }
    }
    format!(
        "app_id: bench\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: {BENCH_STREAM}, subjects: [\"pub.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         \x20 - {{ name: {DELIVERY_STREAM}, subjects: [\"dlv.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions:\n{subs}",
        nats.url()
    )
}

pub fn publish_request(host: &str, subject: &str, payload: Bytes) -> MakeRequest {
    let path = format!("/v1/publish/{subject}");
    let host = host.to_string();
    Arc::new(move |_| {
        Request::post(path.as_str())
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(payload.clone()))
            .expect("a request built from valid parts")
    })
}

pub fn batch_request(host: &str, subject: &str, payload: &[u8], items: usize) -> MakeRequest {
    let data = base64::engine::general_purpose::STANDARD.encode(payload);
    let line = format!("{{\"subject\":\"{subject}\",\"data_base64\":\"{data}\"}}\n");
    let body = Bytes::from(line.repeat(items));
    let host = host.to_string();
    Arc::new(move |_| {
        Request::post("/v1/publish")
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body.clone()))
            .expect("a request built from valid parts")
    })
}

fn sink_request(host: &str, payload: Bytes) -> MakeRequest {
    let host = host.to_string();
    Arc::new(move |_| {
        Request::post("/ceiling")
            .header(HOST, host.as_str())
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(payload.clone()))
            .expect("a request built from valid parts")
    })
}

/// Everything the systems under test share.
struct Bench {
    plan: Plan,
    nats: Nats,
    js: jetstream::Context,
    sink: roles::Sink,
    jetway: Jetway,
    bridge: Role,
    bridge_addr: String,
    http: reqwest::Client,
}

impl Bench {
    async fn purge(&self, stream: &str) -> Res<()> {
        let s = self
            .js
            .get_stream(stream)
            .await
            .ctx(&format!("looking up stream {stream}"))?;
        s.purge().await.ctx(&format!("purging stream {stream}"))?;
        Ok(())
    }

    fn jetway_pid(&self) -> Res<u32> {
        self.jetway.pid()
    }

    async fn admin(&self, path: &str) -> Res<()> {
        let url = format!("http://{}{path}", self.jetway.api);
        let r = self
            .http
            .post(&url)
            .send()
            .await
            .ctx(&format!("POST {url}"))?;
        if !r.status().is_success() {
            return Err(format!("POST {url} answered {}", r.status()));
        }
        Ok(())
    }

    /// One measured HTTP run against a process, with that process's CPU.
    async fn http_run(
        &self,
        pid: u32,
        addr: &str,
        conns: usize,
        stop: Stop,
        make: MakeRequest,
    ) -> Res<(Run, f64)> {
        let before = usage(pid)?;
        let run = load::http_closed(addr, conns, stop, make).await?;
        let after = usage(pid)?;
        Ok((run, after.cpu_s - before.cpu_s))
    }
}

async fn bench(plan: Plan) -> Res<()> {
    // The idle series starts its own servers and sidecars (minutes of
    // waiting, little CPU): only when asked for, and then alone.
    let alone = |phase: &str| {
        std::env::var("JETWAY_BENCH_ONLY").is_ok_and(|o| o.split(',').any(|p| p.trim() == phase))
    };
    if alone("idle") {
        return idle::run(plan.quick).await;
    }
    // Likewise the burst of the memory phase, one fresh sidecar per
    // allocator setup.
    if alone("memory") {
        return memory::run(plan.quick).await;
    }
    // How cost grows with message size, connections and rate: a
    // nats-server and a jetway configured for 1 MiB messages.
    if alone("scaling") {
        return scaling::run(plan.quick).await;
    }
    let started = Instant::now();
    let load_before = procs::loadavg();
    eprintln!(
        "jetway bench ({} mode): starting nats-server, the sink, jetway and the bare bridge",
        if plan.quick { "quick" } else { "full" }
    );
    let nats = Nats::start().await?;
    let client = async_nats::connect(nats.url())
        .await
        .ctx("bench: connecting to NATS")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(5))
        .max_ack_inflight(10_000)
        .backpressure_on_inflight(true)
        .build(client);
    for (name, subject) in [(BENCH_STREAM, "pub.>"), (DELIVERY_STREAM, "dlv.>")] {
        js.create_stream(stream_config(name, subject))
            .await
            .ctx(&format!("creating stream {name}"))?;
    }
    let sink = roles::Sink::start().await?;
    let jetway = Jetway::start(&jetway_yaml(&nats, &sink, &plan)).await?;
    let bridge = Role::start(&["bare-bridge".into(), nats.url()]).await?;
    let bridge_addr = bridge.ready_line.trim().to_string();
    let mut b = Bench {
        plan,
        nats,
        js,
        sink,
        jetway,
        bridge,
        bridge_addr,
        http: reqwest::Client::new(),
    };
    let mut results = Results::new(&b.plan, &b.nats);
    results.meta.load_before = load_before;
    results.footprint.ready_ms = b.jetway.ready_after.as_secs_f64() * 1e3;
    for &p in &b.plan.payloads {
        for &c in &b.plan.conns {
            b.admin(&format!("/v1/subscriptions/{}/pause", sub_name(c, p)))
                .await?;
        }
    }
    tokio::time::sleep(b.plan.settle).await;
    let jpid = b.jetway_pid()?;
    results.footprint.idle_rss_kib = usage(jpid)?.rss_kib;
    results.footprint.bridge_idle_rss_kib = usage(b.bridge.pid()?)?.rss_kib;
    eprintln!(
        "  jetway ready after {:.0} ms, idle RSS {} KiB",
        results.footprint.ready_ms, results.footprint.idle_rss_kib
    );

    warm_up(&b).await?;
    // `JETWAY_BENCH_ONLY=publish,delivery,...` runs some phases only (an
    // experiment: its results never replace the reference ones).
    let only = std::env::var("JETWAY_BENCH_ONLY").ok();
    let run = |phase: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|p| p.trim() == phase))
    };
    if run("ceiling") {
        ceiling(&b, &mut results).await?;
    }
    if run("publish") {
        publish(&b, &mut results).await?;
    }
    // Delivery before batch: the batch phase's heap (100-item bodies of
    // 16 KiB payloads) stays mapped afterwards and would count as the
    // delivery phase's peak.
    if run("delivery") {
        delivery(&b, &mut results).await?;
    }
    if run("batch") {
        batch(&b, &mut results).await?;
    }
    if run("latency") {
        latency_one(&b, &mut results).await?;
        latency_half_rate(&b, &mut results).await?;
    }
    if run("stored") {
        stored_to_delivered(&b, &mut results).await?;
    }
    // Each on a sidecar of its own (their configs differ from the main
    // one's), started and stopped within the phase.
    if run("typed") {
        typed::run(&b, &mut results).await?;
    }
    if run("tracing") {
        traces::run(&b, &mut results).await?;
    }
    if run("replay") {
        replay::run(&b, &mut results).await?;
    }

    tokio::time::sleep(b.plan.settle).await;
    results.footprint.idle_after_load_rss_kib = usage(jpid)?.rss_kib;
    results.footprint.nats_cpu_s = b
        .nats
        .pid()
        .and_then(|p| usage(p).ok())
        .map(|u| u.cpu_s)
        .unwrap_or(0.0);
    let exit = b.jetway.terminate(Duration::from_secs(30)).await;
    results.footprint.sigterm_exit = match &exit {
        Ok(code) => *code,
        Err(e) => {
            eprintln!("  {e}");
            None
        }
    };
    if results.footprint.sigterm_exit != Some(0) {
        eprintln!("  jetway log tail:\n{}", b.jetway.log_tail());
    }
    b.bridge.stop().await;
    results.meta.load_after = procs::loadavg();
    results.meta.duration_s = started.elapsed().as_secs_f64();
    results.finish();
    report::write(&results, b.plan.quick)?;
    Ok(())
}

/// A short load on every system so that first connections, allocator
/// growth and the stream's first blocks are not measured.
async fn warm_up(b: &Bench) -> Res<()> {
    let stop = Stop {
        duration: Duration::from_millis(if b.plan.quick { 100 } else { 500 }),
        max_requests: Some(if b.plan.quick { 100 } else { 5_000 }),
    };
    let payload = Bytes::from(vec![b'w'; 256]);
    load::raw_closed(&b.js, "pub.warm", payload.clone(), 16, stop).await?;
    load::http_closed(
        &b.bridge_addr,
        16,
        stop,
        publish_request(&b.bridge_addr, "pub.warm", payload.clone()),
    )
    .await?;
    load::http_closed(
        &b.jetway.api,
        16,
        stop,
        publish_request(&b.jetway.api, "pub.warm", payload.clone()),
    )
    .await?;
    let addr = b.sink.addr.to_string();
    load::http_closed(&addr, 16, stop, sink_request(&addr, payload)).await?;
    b.purge(BENCH_STREAM).await
}

/// The load generator against a handler that only answers 200.
async fn ceiling(b: &Bench, r: &mut Results) -> Res<()> {
    eprintln!("  load generator ceiling");
    let addr = b.sink.addr.to_string();
    for &p in &b.plan.payloads {
        for &c in &b.plan.conns {
            let run = load::http_closed(
                &addr,
                c,
                b.plan.stop,
                sink_request(&addr, Bytes::from(vec![b'c'; p])),
            )
            .await?;
            r.ceiling.push(Rate {
                payload: p,
                conns: c,
                rate: run.rate(),
            });
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq)]
enum System {
    Raw,
    Bridge,
    Jetway,
}

/// Raw publish, bare bridge and jetway single publish, alternating.
async fn publish(b: &Bench, r: &mut Results) -> Res<()> {
    eprintln!("  publish: raw, bare bridge, jetway");
    let jpid = b.jetway_pid()?;
    let bpid = b.bridge.pid()?;
    procs::reset_peak(jpid)?;
    procs::reset_peak(bpid)?;
    for &p in &b.plan.payloads {
        let payload = Bytes::from(vec![b'p'; p]);
        for &c in &b.plan.conns {
            let subject = format!("pub.s.c{c}.p{p}");
            let (mut raw, mut bridge, mut jw) = (Acc::default(), Acc::default(), Acc::default());
            for round in 0..b.plan.rounds {
                let order = turns(round, [System::Raw, System::Bridge, System::Jetway]);
                for sys in order {
                    match sys {
                        System::Raw => {
                            raw.add(
                                &load::raw_closed(&b.js, &subject, payload.clone(), c, b.plan.stop)
                                    .await?,
                                0.0,
                            );
                        }
                        System::Bridge => {
                            let make = publish_request(&b.bridge_addr, &subject, payload.clone());
                            let (run, cpu) = b
                                .http_run(bpid, &b.bridge_addr, c, b.plan.stop, make)
                                .await?;
                            bridge.add(&run, cpu);
                        }
                        System::Jetway => {
                            let make = publish_request(&b.jetway.api, &subject, payload.clone());
                            let (run, cpu) = b
                                .http_run(jpid, &b.jetway.api, c, b.plan.stop, make)
                                .await?;
                            jw.add(&run, cpu);
                        }
                    }
                    b.purge(BENCH_STREAM).await?;
                }
            }
            eprintln!(
                "    {p:>5} B x {c:>2}: raw {:>8.0}/s  bridge {:>8.0}/s  jetway {:>8.0}/s",
                raw.rate(),
                bridge.rate(),
                jw.rate()
            );
            r.publish.push(PublishCell {
                payload: p,
                conns: c,
                raw: raw.rate(),
                bridge: bridge.rate(),
                jetway: jw.rate(),
                ratio: jw.rate() / bridge.rate(),
                bridge_cpu_s_per_10k: bridge.cpu_per_10k(),
                jetway_cpu_s_per_10k: jw.cpu_per_10k(),
                jetway_p50_us: jw.quantile_us(0.5),
                bridge_p50_us: bridge.quantile_us(0.5),
            });
        }
    }
    r.footprint.peak_publish_rss_kib = usage(jpid)?.hwm_kib;
    r.footprint.bridge_peak_rss_kib = usage(bpid)?.hwm_kib;
    Ok(())
}

/// What the batch phase alternates: raw publish with the batch's messages
/// in flight all the time, raw publish in bursts of one batch, jetway.
#[derive(Clone, Copy)]
enum Batcher {
    Raw,
    Bursts,
    Jetway,
}

/// Batch publish of `batch_items` per request against raw publishing with
/// as many PubAcks outstanding as the batch connections offer, and against
/// raw publishing in bursts of `batch_items` (for comparison).
async fn batch(b: &Bench, r: &mut Results) -> Res<()> {
    eprintln!("  batch publish against raw publish with the same number in flight");
    let jpid = b.jetway_pid()?;
    procs::reset_peak(jpid)?;
    let items = b.plan.batch_items;
    for &p in &b.plan.payloads {
        let payload = Bytes::from(vec![b'b'; p]);
        for &c in &b.plan.conns {
            let subject = format!("pub.b.c{c}.p{p}");
            let (mut raw, mut bursts, mut jw) = (Acc::default(), Acc::default(), Acc::default());
            let mut stop = b.plan.stop;
            stop.max_requests = stop.max_requests.map(|m| m * items as u64);
            for round in 0..b.plan.rounds {
                let order = turns(round, [Batcher::Raw, Batcher::Bursts, Batcher::Jetway]);
                for sys in order {
                    match sys {
                        Batcher::Raw => raw.add(
                            &load::raw_closed(&b.js, &subject, payload.clone(), c * items, stop)
                                .await?,
                            0.0,
                        ),
                        Batcher::Bursts => bursts.add(
                            &load::raw_bursts(&b.js, &subject, payload.clone(), c, items, stop)
                                .await?,
                            0.0,
                        ),
                        Batcher::Jetway => {
                            let make = batch_request(&b.jetway.api, &subject, &payload, items);
                            let (run, cpu) = b
                                .http_run(jpid, &b.jetway.api, c, b.plan.stop, make)
                                .await?;
                            jw.add_scaled(&run, cpu, items as u64);
                        }
                    }
                    b.purge(BENCH_STREAM).await?;
                }
            }
            eprintln!(
                "    {p:>5} B x {c:>2} x {items}: raw ({} in flight) {:>8.0}/s  raw in bursts of {items} {:>8.0}/s  jetway batch {:>8.0}/s",
                c * items,
                raw.rate(),
                bursts.rate(),
                jw.rate()
            );
            r.batch.push(BatchCell {
                payload: p,
                conns: c,
                items,
                raw_in_flight: c * items,
                raw: raw.rate(),
                raw_bursts: bursts.rate(),
                jetway: jw.rate(),
                ratio: jw.rate() / raw.rate(),
                ratio_to_bursts: jw.rate() / bursts.rate(),
                jetway_cpu_s_per_10k: jw.cpu_per_10k(),
            });
        }
    }
    r.footprint.peak_batch_rss_kib = usage(jpid)?.hwm_kib;
    Ok(())
}

async fn fresh_consumer(b: &Bench, name: &str, subject: &str) -> Res<()> {
    let stream =
        b.js.get_stream(DELIVERY_STREAM)
            .await
            .ctx("delivery stream")?;
    let _ = stream.delete_consumer(name).await;
    stream
        .create_consumer(pull::Config {
            durable_name: Some(name.into()),
            filter_subject: subject.into(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .ctx(&format!("creating consumer {name}"))?;
    Ok(())
}

/// Raw consume: pull with explicit acks, nothing else (the broker's limit).
async fn raw_consume(b: &Bench, p: usize, n: usize) -> Res<(usize, Duration)> {
    use futures::StreamExt;
    let subject = format!("dlv.r.p{p}");
    let name = format!("raw-p{p}");
    fresh_consumer(b, &name, &subject).await?;
    load::backlog(&b.js, &subject, Bytes::from(vec![b'r'; p]), n).await?;
    let consumer: jetstream::consumer::PullConsumer =
        b.js.get_stream(DELIVERY_STREAM)
            .await
            .ctx("delivery stream")?
            .get_consumer(&name)
            .await
            .ctx("raw consumer")?;
    let t0 = Instant::now();
    let mut messages = consumer.messages().await.ctx("raw consume: pull")?;
    let mut got = 0;
    while got < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| format!("raw consume: only {got} of {n} messages within 30 s"))?
            .ok_or("raw consume: the pull ended")?
            .ctx("raw consume: message")?;
        msg.ack().await.ctx("raw consume: ack")?;
        got += 1;
    }
    Ok((n, t0.elapsed()))
}

/// The bare loop's arguments. `JETWAY_BENCH_BARE_BATCH=N|concurrency` sets
/// its pull batch (an experiment; by default async-nats's own, 200).
fn bare_args(b: &Bench, consumer: String, c: usize) -> Vec<String> {
    let mut args = vec![
        "bare-deliver".into(),
        b.nats.url(),
        DELIVERY_STREAM.into(),
        consumer,
        b.sink.url("/deliver"),
        c.to_string(),
    ];
    match std::env::var("JETWAY_BENCH_BARE_BATCH").ok().as_deref() {
        Some("concurrency") => args.push(c.to_string()),
        Some(n) if n.parse::<usize>().is_ok() => args.push(n.to_string()),
        _ => {}
    }
    args
}

/// Drains a backlog through the bare delivery loop (a child process).
async fn bare_delivery(b: &Bench, c: usize, p: usize, n: usize) -> Res<(Run, f64, u64)> {
    let subject = format!("dlv.b.c{c}.p{p}");
    let name = format!("bare-c{c}-p{p}");
    fresh_consumer(b, &name, &subject).await?;
    load::backlog(&b.js, &subject, Bytes::from(vec![b'd'; p]), n).await?;
    let mut role = Role::start(&bare_args(b, name, c)).await?;
    let pid = role.pid()?;
    b.sink.reset();
    let before = usage(pid)?;
    let t0 = Instant::now();
    role.say("go").await?;
    b.sink.wait_for(n as u64, Duration::from_secs(120)).await?;
    let elapsed = t0.elapsed();
    let after = usage(pid)?;
    role.stop().await;
    Ok((
        run_of(n as u64, elapsed),
        after.cpu_s - before.cpu_s,
        after.hwm_kib,
    ))
}

/// Drains a backlog through jetway: publish while paused, resume, time.
async fn jetway_delivery(b: &Bench, c: usize, p: usize, n: usize) -> Res<(Run, f64)> {
    let subject = format!("dlv.j.c{c}.p{p}");
    load::backlog(&b.js, &subject, Bytes::from(vec![b'd'; p]), n).await?;
    let pid = b.jetway_pid()?;
    b.sink.reset();
    let before = usage(pid)?;
    let t0 = Instant::now();
    b.admin(&format!("/v1/subscriptions/{}/resume", sub_name(c, p)))
        .await?;
    let waited = b.sink.wait_for(n as u64, Duration::from_secs(120)).await;
    let elapsed = t0.elapsed();
    let after = usage(pid)?;
    b.admin(&format!("/v1/subscriptions/{}/pause", sub_name(c, p)))
        .await?;
    waited.map_err(|e| {
        format!(
            "jetway delivery {}: {e}; jetway log:\n{}",
            sub_name(c, p),
            b.jetway.log_tail()
        )
    })?;
    Ok((run_of(n as u64, elapsed), after.cpu_s - before.cpu_s))
}

fn run_of(n: u64, elapsed: Duration) -> Run {
    Run {
        ok: n,
        elapsed,
        hist: load::histogram(),
    }
}

/// Raw consume, bare delivery loop and jetway delivery, alternating.
///
/// Each jetway subscription is used once per round and rounds are far
/// apart, so no pull request left open before its pause (they last up to
/// 2 s) can take messages of the next backlog early.
async fn delivery(b: &Bench, r: &mut Results) -> Res<()> {
    eprintln!("  delivery: raw consume, bare delivery loop, jetway");
    let jpid = b.jetway_pid()?;
    procs::reset_peak(jpid)?;
    let mut cells: Vec<(usize, usize, Acc, Acc, Acc, u64)> = Vec::new();
    for &p in &b.plan.payloads {
        for &c in &b.plan.conns {
            cells.push((p, c, Acc::default(), Acc::default(), Acc::default(), 0));
        }
    }
    for round in 0..b.plan.rounds {
        for &p in &b.plan.payloads {
            let n = b.plan.backlog(p, 64) * 2;
            let (got, elapsed) = raw_consume(b, p, n).await?;
            for cell in cells.iter_mut().filter(|cell| cell.0 == p) {
                cell.2.add(&run_of(got as u64, elapsed), 0.0);
            }
        }
        for cell in cells.iter_mut() {
            let (p, c) = (cell.0, cell.1);
            let n = b.plan.backlog(p, c);
            for bare_first in [round % 2 == 0, round % 2 != 0] {
                if bare_first {
                    let (run, cpu, hwm) = bare_delivery(b, c, p, n).await?;
                    cell.3.add(&run, cpu);
                    cell.5 = cell.5.max(hwm);
                } else {
                    let (run, cpu) = jetway_delivery(b, c, p, n).await?;
                    cell.4.add(&run, cpu);
                }
            }
        }
        b.purge(DELIVERY_STREAM).await?;
    }
    for (p, c, raw, bare, jw, bare_hwm) in cells {
        eprintln!(
            "    {p:>5} B x {c:>2}: raw consume {:>8.0}/s  bare loop {:>8.0}/s  jetway {:>8.0}/s",
            raw.rate(),
            bare.rate(),
            jw.rate()
        );
        r.footprint.bare_loop_peak_rss_kib = r.footprint.bare_loop_peak_rss_kib.max(bare_hwm);
        r.delivery.push(DeliveryCell {
            payload: p,
            concurrency: c,
            backlog: b.plan.backlog(p, c),
            raw_consume: raw.rate(),
            bare: bare.rate(),
            jetway: jw.rate(),
            ratio: jw.rate() / bare.rate(),
            bare_cpu_s_per_10k: bare.cpu_per_10k(),
            jetway_cpu_s_per_10k: jw.cpu_per_10k(),
        });
    }
    r.footprint.peak_delivery_rss_kib = usage(jpid)?.hwm_kib;
    Ok(())
}

/// Publish latency at one connection (closed loop): raw RTT, bridge, jetway.
async fn latency_one(b: &Bench, r: &mut Results) -> Res<()> {
    eprintln!("  publish latency at 1 connection");
    let jpid = b.jetway_pid()?;
    let bpid = b.bridge.pid()?;
    for &p in &b.plan.payloads {
        let payload = Bytes::from(vec![b'l'; p]);
        let subject = format!("pub.l1.p{p}");
        let (mut raw, mut bridge, mut jw) = (Acc::default(), Acc::default(), Acc::default());
        for round in 0..b.plan.rounds {
            let order = turns(round, [System::Raw, System::Bridge, System::Jetway]);
            for sys in order {
                match sys {
                    System::Raw => raw.add(
                        &load::raw_closed(&b.js, &subject, payload.clone(), 1, b.plan.latency_stop)
                            .await?,
                        0.0,
                    ),
                    System::Bridge => {
                        let make = publish_request(&b.bridge_addr, &subject, payload.clone());
                        let (run, cpu) = b
                            .http_run(bpid, &b.bridge_addr, 1, b.plan.latency_stop, make)
                            .await?;
                        bridge.add(&run, cpu);
                    }
                    System::Jetway => {
                        let make = publish_request(&b.jetway.api, &subject, payload.clone());
                        let (run, cpu) = b
                            .http_run(jpid, &b.jetway.api, 1, b.plan.latency_stop, make)
                            .await?;
                        jw.add(&run, cpu);
                    }
                }
                b.purge(BENCH_STREAM).await?;
            }
        }
        for (system, acc) in [("raw", &raw), ("bridge", &bridge), ("jetway", &jw)] {
            r.latency
                .push(acc.latency("publish_1_connection", system, p, 1, None));
        }
    }
    Ok(())
}

/// Publish latency in an open loop at half of jetway's best rate.
async fn latency_half_rate(b: &Bench, r: &mut Results) -> Res<()> {
    let conns = *b.plan.conns.iter().max().ok_or("no connection counts")?;
    for &p in &b.plan.payloads {
        let best = r
            .publish
            .iter()
            .filter(|c| c.payload == p)
            .map(|c| c.jetway)
            .fold(0.0, f64::max);
        let rate = (best / 2.0).max(10.0);
        eprintln!(
            "  publish latency at {rate:.0}/s (half of jetway's best), {p} B, {conns} connections"
        );
        let payload = Bytes::from(vec![b'h'; p]);
        let subject = format!("pub.lh.p{p}");
        let stop = b.plan.latency_stop;
        let (mut raw, mut bridge, mut jw) = (Acc::default(), Acc::default(), Acc::default());
        for round in 0..b.plan.rounds {
            let order = turns(round, [System::Raw, System::Bridge, System::Jetway]);
            for sys in order {
                match sys {
                    System::Raw => raw.add(
                        &load::raw_open(&b.js, &subject, payload.clone(), conns, rate, stop)
                            .await?,
                        0.0,
                    ),
                    System::Bridge => {
                        let make = publish_request(&b.bridge_addr, &subject, payload.clone());
                        bridge.add(
                            &load::http_open(&b.bridge_addr, conns, rate, stop, make).await?,
                            0.0,
                        );
                    }
                    System::Jetway => {
                        let make = publish_request(&b.jetway.api, &subject, payload.clone());
                        jw.add(
                            &load::http_open(&b.jetway.api, conns, rate, stop, make).await?,
                            0.0,
                        );
                    }
                }
                b.purge(BENCH_STREAM).await?;
            }
        }
        for (system, acc) in [("raw", &raw), ("bridge", &bridge), ("jetway", &jw)] {
            r.latency
                .push(acc.latency("publish_half_rate", system, p, conns, Some(rate)));
        }
    }
    Ok(())
}

/// Stored-to-delivered latency: raw publishes at a steady rate while the
/// bare loop or jetway delivers; the sink compares its clock with the
/// stored time (same machine, same clock).
async fn stored_to_delivered(b: &Bench, r: &mut Results) -> Res<()> {
    let p = b.plan.payloads[0];
    let c = *b.plan.conns.iter().max().ok_or("no concurrency")?;
    let cell = r
        .delivery
        .iter()
        .find(|d| d.payload == p && d.concurrency == c)
        .ok_or("no delivery cell for the latency run")?;
    let rate = (cell.jetway.min(cell.bare) / 2.0).max(10.0);
    eprintln!("  stored-to-delivered latency at {rate:.0}/s, {p} B, concurrency {c}");
    let payload = Bytes::from(vec![b's'; p]);
    let stop = b.plan.latency_stop;
    let (mut bare, mut jw) = (Acc::default(), Acc::default());
    for round in 0..b.plan.rounds {
        for bare_turn in [round % 2 == 0, round % 2 != 0] {
            if bare_turn {
                let subject = format!("dlv.b.lat.p{p}");
                let name = format!("bare-lat-p{p}");
                fresh_consumer(b, &name, &subject).await?;
                let mut role = Role::start(&bare_args(b, name, c)).await?;
                role.say("go").await?;
                b.sink.reset();
                b.sink.record(true);
                let run = load::raw_open(&b.js, &subject, payload.clone(), 16, rate, stop).await?;
                b.sink.wait_for(run.ok, Duration::from_secs(60)).await?;
                b.sink.record(false);
                role.stop().await;
                bare.add_hist(&b.sink, &run)?;
            } else {
                let subject = format!("dlv.j.c{c}.p{p}");
                b.admin(&format!("/v1/subscriptions/{}/resume", sub_name(c, p)))
                    .await?;
                b.sink.reset();
                b.sink.record(true);
                let run = load::raw_open(&b.js, &subject, payload.clone(), 16, rate, stop).await?;
                b.sink.wait_for(run.ok, Duration::from_secs(60)).await?;
                b.sink.record(false);
                b.admin(&format!("/v1/subscriptions/{}/pause", sub_name(c, p)))
                    .await?;
                jw.add_hist(&b.sink, &run)?;
            }
        }
        b.purge(DELIVERY_STREAM).await?;
    }
    r.latency
        .push(bare.latency("stored_to_delivered", "bare_loop", p, c, Some(rate)));
    r.latency
        .push(jw.latency("stored_to_delivered", "jetway", p, c, Some(rate)));
    Ok(())
}
