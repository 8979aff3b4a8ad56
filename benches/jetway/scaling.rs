//! `JETWAY_BENCH_ONLY=scaling`: how cost grows (issue 16), everything in
//! one run on one fresh nats-server (started with `max_payload: 8MB`) and
//! one fresh jetway (`api.max_body: 2MiB`), with the HTTP sink and the bare
//! bridge:
//!
//! - per 1000 msg/s published + delivered: jetway's vCPU and memory at
//!   1000 and 2000 msg/s of 1 KiB (open loop, one subscription on the
//!   subject it publishes to), next to Dapr's published figures; measured
//!   first, so the RSS is that of a sidecar that has not seen 1 MiB bodies;
//! - connections 1 -> 1024: single publish of 256 B, closed loop, jetway
//!   against the bare bridge and raw async-nats with as many PubAcks in
//!   flight: msgs/s and p99;
//! - message size 256 B -> 1 MiB: publish (raw async-nats, 16 in flight,
//!   against jetway on 16 connections) and delivery (raw pull consume
//!   against a jetway subscription of concurrency 16 draining a backlog):
//!   msgs/s, MB/s and CPU seconds per MB.
//!
//! Subscriptions 1 -> 500 are the `idle` phase's. Writes
//! `bench/results/scaling.json` (or `scaling-quick.json`), three SVG charts
//! and (not quick) its section of BENCHMARKS.md.
//! `JETWAY_BENCH_SCALING_SIZES=256,1048576` and
//! `JETWAY_BENCH_SCALING_CONNS=1,1024` pick other cells (an experiment).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use futures::StreamExt;
use plotters::coord::Shift;
use plotters::prelude::*;
use serde::Serialize;

use crate::load::{self, Run, Stop};
use crate::procs::{self, usage, Jetway, Nats, Role};
use crate::report::{self, Acc};
use crate::roles::Sink;
use crate::{publish_request, Ctx, Res};

const STREAM: &str = "SCALE";
/// Publish connections / in-flight PubAcks and delivery concurrency of the
/// message-size cells.
const PARALLEL: usize = 16;
const CONN_PAYLOAD: usize = 256;
const RATE_SUB: &str = "rate";
const RATE_SUBJECT: &str = "sc.rate";
const RATE_PAYLOAD: usize = 1024;
const RATE_CONNS: usize = 16;
const NATS_EXTRA: &str = "max_payload: 8MB";
const MAX_BODY: &str = "2MiB";
/// As in `sidecar::drain`: a message caught by a pull request left open
/// when the subscription was paused comes back after a 3 s delayed NAK, and
/// such a request lives 2 s at most; a decoy and this wait keep both out of
/// the timed drain.
const HAND_BACK_WAIT: Duration = Duration::from_millis(4500);

/// Dapr v1.0 service invocation benchmark (1 KB payload, sidecar limited to
/// 0.5 vCPU, mTLS on, tracing at 0.1 sampling), their figures.
const DAPR_VCPU: f64 = 0.48;
const DAPR_MB: f64 = 23.0;
const DAPR_SOURCE: &str =
    "https://docs.dapr.io/operations/performance-and-scalability/perf-service-invocation/";

struct Shape {
    sizes: Vec<usize>,
    conns: Vec<usize>,
    rates: Vec<f64>,
    rate_window: Duration,
    stop: Stop,
    publish_rounds: usize,
    delivery_rounds: usize,
}

fn list(var: &str) -> Option<Vec<usize>> {
    let v = std::env::var(var).ok()?;
    let parsed: Vec<usize> = v.split(',').filter_map(|c| c.trim().parse().ok()).collect();
    (!parsed.is_empty()).then_some(parsed)
}

impl Shape {
    fn new(quick: bool) -> Shape {
        let (sizes, conns) = if quick {
            (vec![256, 64 * 1024], vec![1, 16])
        } else {
            (
                vec![256, 4 * 1024, 64 * 1024, 256 * 1024, 1024 * 1024],
                vec![1, 4, 16, 64, 256, 1024],
            )
        };
        Shape {
            sizes: list("JETWAY_BENCH_SCALING_SIZES").unwrap_or(sizes),
            conns: list("JETWAY_BENCH_SCALING_CONNS").unwrap_or(conns),
            rates: vec![1000.0, 2000.0],
            rate_window: Duration::from_secs(if quick { 3 } else { 30 }),
            stop: Stop {
                duration: Duration::from_millis(if quick { 400 } else { 1500 }),
                max_requests: None,
            },
            publish_rounds: if quick { 1 } else { 4 },
            delivery_rounds: if quick { 1 } else { 2 },
        }
    }

    /// Messages of one delivery backlog: a drain of a second or more, the
    /// stream at most ~300 MB.
    fn backlog(&self, quick: bool, payload: usize) -> usize {
        let full = match payload {
            p if p <= 1024 => 10_000,
            p if p <= 16 * 1024 => 6_000,
            p if p <= 64 * 1024 => 3_000,
            p if p <= 256 * 1024 => 1_000,
            _ => 300,
        };
        if quick {
            (full / 10).max(30)
        } else {
            full
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeRow {
    pub payload: usize,
    /// Publish: raw async-nats, 16 tasks each awaiting its PubAck.
    pub raw_pub_msgs_s: f64,
    pub raw_pub_mb_s: f64,
    /// CPU of the bench process (the raw client) per MB published.
    pub raw_pub_cpu_s_per_mb: f64,
    /// Publish: jetway single publish on 16 connections.
    pub jetway_pub_msgs_s: f64,
    pub jetway_pub_mb_s: f64,
    /// CPU of jetway's process per MB published.
    pub jetway_pub_cpu_s_per_mb: f64,
    pub pub_ratio: f64,
    pub backlog: usize,
    /// Delivery: a pull consumer in the bench process, ack each.
    pub raw_dlv_msgs_s: f64,
    pub raw_dlv_mb_s: f64,
    pub raw_dlv_cpu_s_per_mb: f64,
    /// Delivery: jetway, concurrency 16, POST to the sink, ack on 200.
    pub jetway_dlv_msgs_s: f64,
    pub jetway_dlv_mb_s: f64,
    pub jetway_dlv_cpu_s_per_mb: f64,
    pub dlv_ratio: f64,
    /// Deliveries the sink counted beyond the backlogs (redeliveries).
    pub jetway_dlv_extra: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ConnRow {
    pub conns: usize,
    pub raw_msgs_s: f64,
    pub bridge_msgs_s: f64,
    pub jetway_msgs_s: f64,
    pub jetway_over_bridge: f64,
    pub jetway_over_raw: f64,
    pub raw_p99_us: f64,
    pub bridge_p99_us: f64,
    pub jetway_p99_us: f64,
    pub bridge_cpu_s_per_10k: f64,
    pub jetway_cpu_s_per_10k: f64,
    pub jetway_peak_rss_kib: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RateRow {
    pub target_msgs_s: f64,
    pub published: u64,
    pub delivered: u64,
    pub publish_rate: f64,
    /// Resume of publishing to the last delivery at the sink.
    pub window_s: f64,
    pub cpu_s: f64,
    pub vcpu: f64,
    pub vcpu_per_1000: f64,
    pub rss_kib: u64,
    pub peak_rss_kib: u64,
    pub publish_p99_us: f64,
}

#[derive(Debug, Serialize)]
struct ScalingResults {
    started_at: String,
    mode: String,
    machine: serde_json::Value,
    nats_server: String,
    nats_config: String,
    jetway_config: String,
    jetway_commit: String,
    nofile_soft: Option<u64>,
    load_before: String,
    load_after: String,
    duration_s: f64,
    rates: Vec<RateRow>,
    conns: Vec<ConnRow>,
    sizes: Vec<SizeRow>,
    dapr: serde_json::Value,
}

struct Scale {
    shape: Shape,
    quick: bool,
    js: jetstream::Context,
    sink: Sink,
    jetway: Jetway,
    bridge_addr: String,
    http: reqwest::Client,
}

fn yaml(nats: &Nats, sink: &Sink, sizes: &[usize]) -> String {
    let endpoint = sink.url("/deliver");
    let mut subs = format!(
        "  - {{ name: {RATE_SUB}, subject: \"{RATE_SUBJECT}\", stream: {STREAM}, endpoint: \"{endpoint}\", concurrency: {PARALLEL}, timeout: 10s }}\n"
    );
    for p in sizes {
        let _ = writeln!(
            subs,
            "  - {{ name: d{p}, subject: \"sc.d.p{p}\", stream: {STREAM}, endpoint: \"{endpoint}\", concurrency: {PARALLEL}, timeout: 10s }}"
        );
    }
    format!(
        "app_id: scaling\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: {STREAM}, subjects: [\"sc.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions:\n{subs}",
        nats.url()
    )
}

/// The soft RLIMIT_NOFILE of this process (its children inherit it).
fn nofile_soft() -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .ok()?
        .lines()
        .find(|l| l.starts_with("Max open files"))?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()
}

fn mb(msgs: f64, payload: usize) -> f64 {
    msgs * payload as f64 / 1e6
}

/// CPU seconds per MB from an accumulation's CPU per 10k messages.
fn cpu_per_mb(acc: &Acc, payload: usize) -> f64 {
    acc.cpu_per_10k() / 1e4 * 1e6 / payload as f64
}

impl Scale {
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

    async fn purge(&self) -> Res<()> {
        self.js
            .get_stream(STREAM)
            .await
            .ctx("looking up the scaling stream")?
            .purge()
            .await
            .ctx("purging the scaling stream")?;
        Ok(())
    }

    /// One closed-loop HTTP run with the CPU of process `pid`.
    async fn http_run(
        &self,
        pid: u32,
        addr: &str,
        conns: usize,
        subject: &str,
        payload: &Bytes,
    ) -> Res<(Run, f64)> {
        let make = publish_request(addr, subject, payload.clone());
        let before = usage(pid)?;
        let run = load::http_closed(addr, conns, self.shape.stop, make).await?;
        Ok((run, usage(pid)?.cpu_s - before.cpu_s))
    }

    /// Raw publishing with the bench process's own CPU.
    async fn raw_run(&self, subject: &str, payload: &Bytes, in_flight: usize) -> Res<(Run, f64)> {
        let me = std::process::id();
        let before = usage(me)?;
        let run = load::raw_closed(
            &self.js,
            subject,
            payload.clone(),
            in_flight,
            self.shape.stop,
        )
        .await?;
        Ok((run, usage(me)?.cpu_s - before.cpu_s))
    }
}

/// Runs the phase and writes its results.
pub async fn run(quick: bool) -> Res<()> {
    let started = Instant::now();
    let load_before = procs::loadavg();
    let shape = Shape::new(quick);
    let nofile = nofile_soft();
    let max_conns = shape.conns.iter().copied().max().unwrap_or(1);
    // The bench process holds one socket per connection, jetway and the
    // bridge one each too, plus what each already has open.
    let need = max_conns as u64 + 512;
    match nofile {
        Some(n) if n < need => {
            return Err(format!(
                "the soft RLIMIT_NOFILE is {n}, too low for {max_conns} connections (needs {need} or more): raise it (ulimit -n) and run again"
            ))
        }
        None if max_conns > 256 => {
            return Err("cannot read the soft RLIMIT_NOFILE from /proc/self/limits".into())
        }
        _ => {}
    }
    eprintln!(
        "jetway bench, scaling ({} mode): sizes {:?}, connections {:?}, {:?} msg/s for {} s; RLIMIT_NOFILE {nofile:?}",
        if quick { "quick" } else { "full" },
        shape.sizes,
        shape.conns,
        shape.rates,
        shape.rate_window.as_secs()
    );
    let nats = Nats::start_with(NATS_EXTRA).await?;
    let client = async_nats::connect(nats.url())
        .await
        .ctx("bench: connecting to NATS")?;
    let js = jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .max_ack_inflight(10_000)
        .backpressure_on_inflight(true)
        .build(client);
    let sink = Sink::start().await?;
    let jetway = Jetway::start_bin(
        env!("CARGO_BIN_EXE_jetway"),
        &yaml(&nats, &sink, &shape.sizes),
        &[("JETWAY_API__MAX_BODY".into(), MAX_BODY.into())],
    )
    .await?;
    let bridge = Role::start(&["bare-bridge".into(), nats.url()]).await?;
    let s = Scale {
        bridge_addr: bridge.ready_line.trim().to_string(),
        shape,
        quick,
        js,
        sink,
        jetway,
        http: reqwest::Client::new(),
    };
    for p in &s.shape.sizes {
        s.admin(&format!("/v1/subscriptions/d{p}/pause")).await?;
    }
    check_limits(&s).await?;
    warm_up(&s).await?;

    let rates = rates(&s).await?;
    let conns = connections(&s, &bridge).await?;
    let sizes = sizes(&s).await?;

    let mut jetway = s.jetway;
    if let Err(e) = jetway.terminate(Duration::from_secs(30)).await {
        eprintln!("  {e}");
    }
    bridge.stop().await;
    let results = ScalingResults {
        started_at: report::now_rfc3339(),
        mode: if quick { "quick" } else { "full" }.into(),
        machine: procs::machine(),
        nats_server: nats.version.clone(),
        nats_config: NATS_EXTRA.into(),
        jetway_config: format!("api.max_body: {MAX_BODY}"),
        jetway_commit: report::git_describe(),
        nofile_soft: nofile,
        load_before,
        load_after: procs::loadavg(),
        duration_s: started.elapsed().as_secs_f64(),
        rates,
        conns,
        sizes,
        dapr: serde_json::json!({
            "vcpu_per_1000_rps": DAPR_VCPU,
            "mb_per_1000_rps": DAPR_MB,
            "test": "Dapr v1.0 service invocation, 1 KB payload, sidecar limited to 0.5 vCPU, mTLS on, tracing at 0.1 sampling",
            "source": DAPR_SOURCE,
        }),
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join("results");
    std::fs::create_dir_all(&dir).ctx("creating bench/results")?;
    let stem = if quick { "scaling-quick" } else { "scaling" };
    let json = serde_json::to_string_pretty(&results).ctx("serialising the scaling results")?;
    std::fs::write(dir.join(format!("{stem}.json")), json + "\n")
        .ctx("writing the scaling json")?;
    draw_sizes(&results.sizes, &dir.join(format!("{stem}-size.svg")))?;
    draw_conns(&results.conns, &dir.join(format!("{stem}-conns.svg")))?;
    draw_dapr(&results.rates, &dir.join(format!("{stem}-dapr.svg")))?;
    let table = table(&results);
    println!("{table}");
    if !quick {
        report::replace_section(BEGIN, END, &table)?;
        println!("updated BENCHMARKS.md (scaling section)");
    }
    Ok(())
}

/// One publish above NATS's default max_payload (1 MiB with headers) and
/// above jetway's default api.max_body, so a config that did not take
/// effect fails here and not in the middle of a series.
async fn check_limits(s: &Scale) -> Res<()> {
    let big = s.shape.sizes.iter().copied().max().unwrap_or(0);
    if big < 1024 * 1024 {
        return Ok(());
    }
    let url = format!("http://{}/v1/publish/sc.check", s.jetway.api);
    let r = s
        .http
        .post(&url)
        .header("content-type", "application/octet-stream")
        .body(vec![b'x'; 1536 * 1024])
        .send()
        .await
        .ctx(&format!("POST {url}"))?;
    let status = r.status();
    if !status.is_success() {
        let text = r.text().await.unwrap_or_default();
        return Err(format!(
            "a 1.5 MiB publish answered {status} ({text}): {NATS_EXTRA} or api.max_body {MAX_BODY} did not take effect"
        ));
    }
    s.purge().await
}

/// A short load on every system (first connections, allocator growth, the
/// stream's first blocks), and the rate subscription's first deliveries.
async fn warm_up(s: &Scale) -> Res<()> {
    let stop = Stop {
        duration: Duration::from_millis(if s.quick { 100 } else { 500 }),
        max_requests: Some(if s.quick { 100 } else { 5_000 }),
    };
    let payload = Bytes::from(vec![b'w'; CONN_PAYLOAD]);
    load::raw_closed(&s.js, "sc.warm", payload.clone(), 16, stop).await?;
    for addr in [&s.bridge_addr, &s.jetway.api] {
        load::http_closed(
            addr,
            16,
            stop,
            publish_request(addr, "sc.warm", payload.clone()),
        )
        .await?;
    }
    s.sink.reset();
    let make = publish_request(
        &s.jetway.api,
        RATE_SUBJECT,
        Bytes::from(vec![b'w'; RATE_PAYLOAD]),
    );
    let warm = Stop {
        duration: Duration::from_secs(1),
        max_requests: None,
    };
    let run = load::http_open(&s.jetway.api, RATE_CONNS, 500.0, warm, make).await?;
    s.sink.wait_for(run.ok, Duration::from_secs(30)).await?;
    s.purge().await
}

/// Published + delivered at a fixed rate: jetway's CPU over the window and
/// its memory at the end.
async fn rates(s: &Scale) -> Res<Vec<RateRow>> {
    eprintln!("  published + delivered, {RATE_PAYLOAD} B, open loop on {RATE_CONNS} connections, one subscription (concurrency {PARALLEL})");
    let pid = s.jetway.pid()?;
    let payload = Bytes::from(vec![b'r'; RATE_PAYLOAD]);
    let mut rows = Vec::new();
    for &rate in &s.shape.rates {
        tokio::time::sleep(Duration::from_secs(2)).await;
        s.sink.reset();
        procs::reset_peak(pid)?;
        let make = publish_request(&s.jetway.api, RATE_SUBJECT, payload.clone());
        let stop = Stop {
            duration: s.shape.rate_window,
            max_requests: None,
        };
        let before = usage(pid)?;
        let t0 = Instant::now();
        let run = load::http_open(&s.jetway.api, RATE_CONNS, rate, stop, make).await?;
        let waited = s.sink.wait_for(run.ok, Duration::from_secs(60)).await;
        let window = t0.elapsed().as_secs_f64();
        let after = usage(pid)?;
        waited.map_err(|e| {
            format!(
                "at {rate} msg/s not everything published arrived: {e}; jetway log:\n{}",
                s.jetway.log_tail()
            )
        })?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let cpu = after.cpu_s - before.cpu_s;
        let vcpu = cpu / window;
        let publish_rate = run.rate();
        let row = RateRow {
            target_msgs_s: rate,
            published: run.ok,
            delivered: s.sink.count(),
            publish_rate,
            window_s: window,
            cpu_s: cpu,
            vcpu,
            vcpu_per_1000: vcpu / (publish_rate / 1000.0),
            rss_kib: after.rss_kib,
            peak_rss_kib: after.hwm_kib,
            publish_p99_us: run.hist.value_at_quantile(0.99) as f64 / 1e3,
        };
        eprintln!(
            "    {rate:>5.0}/s: published {} at {:.0}/s, delivered {}, {:.3} vCPU ({:.3} per 1000/s), RSS {:.1} MiB, peak {:.1} MiB",
            row.published,
            row.publish_rate,
            row.delivered,
            row.vcpu,
            row.vcpu_per_1000,
            row.rss_kib as f64 / 1024.0,
            row.peak_rss_kib as f64 / 1024.0
        );
        rows.push(row);
        s.purge().await?;
    }
    Ok(rows)
}

#[derive(Clone, Copy)]
enum Who {
    Raw,
    Bridge,
    Jetway,
}

/// Single publish of 256 B as the connections grow.
async fn connections(s: &Scale, bridge: &Role) -> Res<Vec<ConnRow>> {
    eprintln!("  connections: single publish of {CONN_PAYLOAD} B, closed loop; raw with as many PubAcks in flight");
    let jpid = s.jetway.pid()?;
    let bpid = bridge.pid()?;
    let payload = Bytes::from(vec![b'c'; CONN_PAYLOAD]);
    let mut rows = Vec::new();
    for &c in &s.shape.conns {
        let subject = format!("sc.c.n{c}");
        procs::reset_peak(jpid)?;
        let (mut raw, mut bridge, mut jw) = (Acc::default(), Acc::default(), Acc::default());
        for round in 0..s.shape.publish_rounds {
            let order = crate::turns(round, [Who::Raw, Who::Bridge, Who::Jetway]);
            for who in order {
                match who {
                    Who::Raw => {
                        let (run, _) = s.raw_run(&subject, &payload, c).await?;
                        raw.add(&run, 0.0);
                    }
                    Who::Bridge => {
                        let (run, cpu) = s
                            .http_run(bpid, &s.bridge_addr, c, &subject, &payload)
                            .await?;
                        bridge.add(&run, cpu);
                    }
                    Who::Jetway => {
                        let (run, cpu) = s
                            .http_run(jpid, &s.jetway.api, c, &subject, &payload)
                            .await?;
                        jw.add(&run, cpu);
                    }
                }
                s.purge().await?;
            }
        }
        let row = ConnRow {
            conns: c,
            raw_msgs_s: raw.rate(),
            bridge_msgs_s: bridge.rate(),
            jetway_msgs_s: jw.rate(),
            jetway_over_bridge: jw.rate() / bridge.rate(),
            jetway_over_raw: jw.rate() / raw.rate(),
            raw_p99_us: raw.quantile_us(0.99),
            bridge_p99_us: bridge.quantile_us(0.99),
            jetway_p99_us: jw.quantile_us(0.99),
            bridge_cpu_s_per_10k: bridge.cpu_per_10k(),
            jetway_cpu_s_per_10k: jw.cpu_per_10k(),
            jetway_peak_rss_kib: usage(jpid)?.hwm_kib,
        };
        eprintln!(
            "    {c:>4} conns: raw {:>7.0}/s p99 {:>7.0} µs  bridge {:>7.0}/s p99 {:>7.0} µs  jetway {:>7.0}/s p99 {:>7.0} µs, peak RSS {:.1} MiB",
            row.raw_msgs_s,
            row.raw_p99_us,
            row.bridge_msgs_s,
            row.bridge_p99_us,
            row.jetway_msgs_s,
            row.jetway_p99_us,
            row.jetway_peak_rss_kib as f64 / 1024.0
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Publish and delivery as the message grows.
async fn sizes(s: &Scale) -> Res<Vec<SizeRow>> {
    eprintln!("  message size: publish (raw {PARALLEL} in flight / jetway {PARALLEL} connections), delivery (raw consume / jetway concurrency {PARALLEL})");
    let jpid = s.jetway.pid()?;
    let mut rows = Vec::new();
    for &p in &s.shape.sizes {
        let payload = Bytes::from(vec![b's'; p]);
        let subject = format!("sc.p.p{p}");
        let (mut raw, mut jw) = (Acc::default(), Acc::default());
        for round in 0..s.shape.publish_rounds {
            for raw_turn in [round % 2 == 0, round % 2 != 0] {
                if raw_turn {
                    let (run, cpu) = s.raw_run(&subject, &payload, PARALLEL).await?;
                    raw.add(&run, cpu);
                } else {
                    let (run, cpu) = s
                        .http_run(jpid, &s.jetway.api, PARALLEL, &subject, &payload)
                        .await?;
                    jw.add(&run, cpu);
                }
                s.purge().await?;
            }
        }
        let n = s.shape.backlog(s.quick, p);
        let (mut raw_d, mut jw_d) = (Acc::default(), Acc::default());
        let mut extra = 0;
        for round in 0..s.shape.delivery_rounds {
            for raw_turn in [round % 2 == 0, round % 2 != 0] {
                if raw_turn {
                    let (run, cpu) = raw_consume(s, p, n).await?;
                    raw_d.add(&run, cpu);
                } else {
                    let (run, cpu, delivered) = drain(s, p, n).await?;
                    extra += delivered.saturating_sub(run.ok);
                    jw_d.add(&run, cpu);
                }
                s.purge().await?;
            }
        }
        let row = SizeRow {
            payload: p,
            raw_pub_msgs_s: raw.rate(),
            raw_pub_mb_s: mb(raw.rate(), p),
            raw_pub_cpu_s_per_mb: cpu_per_mb(&raw, p),
            jetway_pub_msgs_s: jw.rate(),
            jetway_pub_mb_s: mb(jw.rate(), p),
            jetway_pub_cpu_s_per_mb: cpu_per_mb(&jw, p),
            pub_ratio: jw.rate() / raw.rate(),
            backlog: n,
            raw_dlv_msgs_s: raw_d.rate(),
            raw_dlv_mb_s: mb(raw_d.rate(), p),
            raw_dlv_cpu_s_per_mb: cpu_per_mb(&raw_d, p),
            jetway_dlv_msgs_s: jw_d.rate(),
            jetway_dlv_mb_s: mb(jw_d.rate(), p),
            jetway_dlv_cpu_s_per_mb: cpu_per_mb(&jw_d, p),
            dlv_ratio: jw_d.rate() / raw_d.rate(),
            jetway_dlv_extra: extra,
        };
        eprintln!(
            "    {:>8}: publish raw {:>7.1} MB/s jetway {:>7.1} MB/s ({:.2}); delivery raw {:>7.1} MB/s jetway {:>7.1} MB/s ({:.2}); jetway CPU s/MB pub {:.4} dlv {:.4}",
            report::size(p),
            row.raw_pub_mb_s,
            row.jetway_pub_mb_s,
            row.pub_ratio,
            row.raw_dlv_mb_s,
            row.jetway_dlv_mb_s,
            row.dlv_ratio,
            row.jetway_pub_cpu_s_per_mb,
            row.jetway_dlv_cpu_s_per_mb
        );
        rows.push(row);
    }
    Ok(rows)
}

/// Raw consume in the bench process: a fresh pull consumer, `messages()`
/// (at most 16 MiB a pull), ack each, until `n`; the bench process's CPU
/// over the drain.
async fn raw_consume(s: &Scale, p: usize, n: usize) -> Res<(Run, f64)> {
    let subject = format!("sc.r.p{p}");
    let name = format!("raw-p{p}");
    let stream = s.js.get_stream(STREAM).await.ctx("the scaling stream")?;
    let _ = stream.delete_consumer(&name).await;
    let consumer: jetstream::consumer::PullConsumer = stream
        .create_consumer(pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subject.clone(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .ctx(&format!("creating consumer {name}"))?;
    load::backlog(&s.js, &subject, Bytes::from(vec![b'r'; p]), n).await?;
    let me = std::process::id();
    let before = usage(me)?;
    let t0 = Instant::now();
    // At most 16 MiB asked for at once. async-nats asks for 200 messages
    // with no byte limit: 200 MiB of 1 MiB messages, beyond the server's
    // 64 MiB of pending data per client; one run drained 300 of them at
    // 10/s (a 30 s stall). Below 80 KiB a message the limit is never
    // reached, so the smaller sizes are measured as before.
    let mut messages = consumer
        .stream()
        .max_bytes_per_batch(16 << 20)
        .messages()
        .await
        .ctx("raw consume: pull")?;
    let mut got = 0u64;
    while got < n as u64 {
        let msg = tokio::time::timeout(Duration::from_secs(60), messages.next())
            .await
            .map_err(|_| format!("raw consume: only {got} of {n} messages of {p} B within 60 s"))?
            .ok_or("raw consume: the pull ended")?
            .ctx("raw consume: message")?;
        msg.ack().await.ctx("raw consume: ack")?;
        got += 1;
    }
    let elapsed = t0.elapsed();
    let cpu = usage(me)?.cpu_s - before.cpu_s;
    drop(messages);
    let _ = stream.delete_consumer(&name).await;
    Ok((
        Run {
            ok: got,
            elapsed,
            hist: load::histogram(),
        },
        cpu,
    ))
}

/// `sidecar::drain`'s pattern on this phase's jetway (started with its own
/// environment, so not a `Sidecar`): a decoy and the hand-back wait, the
/// backlog while paused, then resume to the `n + 1`-th delivery.
async fn drain(s: &Scale, p: usize, n: usize) -> Res<(Run, f64, u64)> {
    let subject = format!("sc.d.p{p}");
    let sub = format!("d{p}");
    let payload = Bytes::from(vec![b'd'; p]);
    load::publish_acked(&s.js, &subject, payload.clone()).await?;
    tokio::time::sleep(HAND_BACK_WAIT).await;
    load::backlog(&s.js, &subject, payload, n).await?;
    let pid = s.jetway.pid()?;
    s.sink.reset();
    let before = usage(pid)?;
    let t0 = Instant::now();
    s.admin(&format!("/v1/subscriptions/{sub}/resume")).await?;
    let expected = n as u64 + 1;
    let waited = s.sink.wait_for(expected, Duration::from_secs(300)).await;
    let elapsed = t0.elapsed();
    let after = usage(pid)?;
    s.admin(&format!("/v1/subscriptions/{sub}/pause")).await?;
    waited.map_err(|e| format!("draining {sub}: {e}; jetway log:\n{}", s.jetway.log_tail()))?;
    Ok((
        Run {
            ok: expected,
            elapsed,
            hist: load::histogram(),
        },
        after.cpu_s - before.cpu_s,
        s.sink.count(),
    ))
}

const BEGIN: &str =
    "<!-- bench:scaling:begin (written by JETWAY_BENCH_ONLY=scaling cargo bench --bench jetway) -->";
const END: &str = "<!-- bench:scaling:end -->";

fn table(r: &ScalingResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- when: {} ({} mode, {:.0} s); {} x {}; nats-server {} started with `{}`; jetway at {} with `{}`; soft RLIMIT_NOFILE {}; load average before / after: {} / {}\n",
        r.started_at,
        r.mode,
        r.duration_s,
        r.machine["nproc"],
        r.machine["cpu_model"].as_str().unwrap_or("?"),
        r.nats_server,
        r.nats_config,
        r.jetway_commit,
        r.jetway_config,
        r.nofile_soft.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        r.load_before,
        r.load_after
    );
    let _ = writeln!(s, "**Message size, publish** (raw: 16 async-nats tasks each awaiting its PubAck; jetway: `POST /v1/publish/{{subject}}` on 16 connections, closed loop; MB = 10^6 bytes of payload). CPU per MB: raw = the bench process (the async-nats client) during the raw run; jetway = jetway's process only (the load generator not counted).\n");
    let _ = writeln!(s, "| size | raw msgs/s | raw MB/s | jetway msgs/s | jetway MB/s | jetway / raw | CPU s per MB, raw client | CPU s per MB, jetway |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.sizes {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {:.4} | {:.4} |",
            report::size(row.payload),
            row.raw_pub_msgs_s,
            row.raw_pub_mb_s,
            row.jetway_pub_msgs_s,
            row.jetway_pub_mb_s,
            row.pub_ratio,
            row.raw_pub_cpu_s_per_mb,
            row.jetway_pub_cpu_s_per_mb
        );
    }
    let _ = writeln!(s, "\n**Message size, delivery** (a backlog drained: raw = a pull consumer in the bench process, `messages()` with at most 16 MiB a pull, ack each, nothing else; jetway = one subscription, concurrency 16, each message POSTed to the sink and acked on its 200). CPU per MB: raw = the bench process during the drain; jetway = jetway's process only (the sink not counted).\n");
    let _ = writeln!(s, "| size | backlog | raw msgs/s | raw MB/s | jetway msgs/s | jetway MB/s | jetway / raw | CPU s per MB, raw consumer | CPU s per MB, jetway | redelivered |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.sizes {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} | {:.1} | {:.0} | {:.1} | {:.2} | {:.4} | {:.4} | {} |",
            report::size(row.payload),
            row.backlog,
            row.raw_dlv_msgs_s,
            row.raw_dlv_mb_s,
            row.jetway_dlv_msgs_s,
            row.jetway_dlv_mb_s,
            row.dlv_ratio,
            row.raw_dlv_cpu_s_per_mb,
            row.jetway_dlv_cpu_s_per_mb,
            row.jetway_dlv_extra
        );
    }
    let _ = writeln!(s, "\n**Connections** (single publish of {CONN_PAYLOAD} B, closed loop; raw = async-nats with as many PubAcks in flight as there are connections; p99 from each run's HDR histogram; CPU = the process's own; peak = jetway's VmHWM over the cell).\n");
    let _ = writeln!(s, "| connections | raw msgs/s | bridge msgs/s | jetway msgs/s | jetway / bridge | jetway / raw | p99 raw | p99 bridge | p99 jetway | CPU s per 10k, bridge | CPU s per 10k, jetway | jetway peak RSS |");
    let _ = writeln!(
        s,
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in &r.conns {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.2} | {:.2} | {:.0} µs | {:.0} µs | {:.0} µs | {:.3} | {:.3} | {:.1} MiB |",
            row.conns,
            row.raw_msgs_s,
            row.bridge_msgs_s,
            row.jetway_msgs_s,
            row.jetway_over_bridge,
            row.jetway_over_raw,
            row.raw_p99_us,
            row.bridge_p99_us,
            row.jetway_p99_us,
            row.bridge_cpu_s_per_10k,
            row.jetway_cpu_s_per_10k,
            row.jetway_peak_rss_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(s, "\n**Per 1000 msg/s published + delivered, side by side with Dapr** (jetway: {RATE_PAYLOAD} B payloads, open loop on {RATE_CONNS} connections, one subscription of concurrency {PARALLEL} on the same subject delivering every message to the sink; vCPU = jetway's CPU seconds / the window from the first publish to the last delivery; memory = VmRSS at the end and VmHWM over the window, MB = 10^6 bytes, not divided by the rate. Dapr: their own published figure for v1.0 service invocation, 1 KB payload, sidecar limited to 0.5 vCPU, mTLS on, tracing at 0.1 sampling, on their 4-core nodes: [source]({DAPR_SOURCE}). A side-by-side, not the same test.)\n");
    let _ = writeln!(s, "| system | msg/s (target / published) | delivered | window | vCPU | vCPU per 1000 msg/s | RSS at the end | peak RSS | publish p99 |");
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in &r.rates {
        let _ = writeln!(
            s,
            "| jetway, publish + delivery | {:.0} / {:.0} | {} of {} | {:.1} s | {:.3} | {:.3} | {:.1} MB | {:.1} MB | {:.0} µs |",
            row.target_msgs_s,
            row.publish_rate,
            row.delivered,
            row.published,
            row.window_s,
            row.vcpu,
            row.vcpu_per_1000,
            row.rss_kib as f64 * 1024.0 / 1e6,
            row.peak_rss_kib as f64 * 1024.0 / 1e6,
            row.publish_p99_us
        );
    }
    let _ = writeln!(
        s,
        "| Dapr v1.0 sidecar, service invocation (published) | 1000 | - | - | - | {DAPR_VCPU:.2} | {DAPR_MB:.0} MB | - | - |"
    );
    let _ = writeln!(
        s,
        "\n![throughput and CPU per MB by message size](bench/results/scaling-size.svg)\n\n![publish rate and p99 by connections](bench/results/scaling-conns.svg)\n\n![vCPU and memory per 1000 msg/s, jetway and Dapr](bench/results/scaling-dapr.svg)"
    );
    s
}

// ---- charts ----

type Series = (String, RGBColor, Vec<(f64, f64)>);

const BLUE_: RGBColor = RGBColor(40, 110, 180);
const RED_: RGBColor = RGBColor(200, 80, 50);
const GREEN_: RGBColor = RGBColor(60, 150, 80);
const PURPLE_: RGBColor = RGBColor(150, 80, 160);

/// One log-log panel of lines.
fn panel(
    area: &DrawingArea<SVGBackend<'_>, Shift>,
    path: &Path,
    title: &str,
    x_desc: &str,
    series: &[Series],
) -> Res<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let points = series
        .iter()
        .flat_map(|s| s.2.iter())
        .filter(|p| p.0 > 0.0 && p.1 > 0.0);
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (1.0, 10.0, 1.0, 10.0);
    }
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(60)
        .build_cartesian_2d(
            (x0 / 1.5..x1 * 1.5).log_scale(),
            (y0 / 2.0..y1 * 2.0).log_scale(),
        )
        .map_err(e)?;
    chart.configure_mesh().x_desc(x_desc).draw().map_err(e)?;
    for (label, color, pts) in series {
        let c = *color;
        let pts: Vec<(f64, f64)> = pts
            .iter()
            .copied()
            .filter(|p| p.0 > 0.0 && p.1 > 0.0)
            .collect();
        chart
            .draw_series(LineSeries::new(pts.clone(), c.stroke_width(2)))
            .map_err(e)?
            .label(label.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2)));
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, c.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(e)?;
    Ok(())
}

fn draw_sizes(rows: &[SizeRow], path: &Path) -> Res<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let area = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    area.fill(&WHITE).map_err(e)?;
    let panels = area.split_evenly((1, 2));
    type Pick = fn(&SizeRow) -> f64;
    let line = |label: &str, c: RGBColor, f: Pick| -> Series {
        (
            label.to_string(),
            c,
            rows.iter().map(|r| (r.payload as f64, f(r))).collect(),
        )
    };
    let mbs = [
        line("publish, raw", BLUE_, |r| r.raw_pub_mb_s),
        line("publish, jetway", RED_, |r| r.jetway_pub_mb_s),
        line("delivery, raw consume", GREEN_, |r| r.raw_dlv_mb_s),
        line("delivery, jetway", PURPLE_, |r| r.jetway_dlv_mb_s),
    ];
    panel(
        &panels[0],
        path,
        "throughput (MB/s, log)",
        "message size (bytes, log)",
        &mbs,
    )?;
    let cpu = [
        line("publish, raw client", BLUE_, |r| r.raw_pub_cpu_s_per_mb),
        line("publish, jetway", RED_, |r| r.jetway_pub_cpu_s_per_mb),
        line("delivery, raw consumer", GREEN_, |r| r.raw_dlv_cpu_s_per_mb),
        line("delivery, jetway", PURPLE_, |r| r.jetway_dlv_cpu_s_per_mb),
    ];
    panel(
        &panels[1],
        path,
        "CPU seconds per MB (log)",
        "message size (bytes, log)",
        &cpu,
    )?;
    area.present().map_err(e)?;
    Ok(())
}

fn draw_conns(rows: &[ConnRow], path: &Path) -> Res<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let area = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    area.fill(&WHITE).map_err(e)?;
    let panels = area.split_evenly((1, 2));
    type Pick = fn(&ConnRow) -> f64;
    let line = |label: &str, c: RGBColor, f: Pick| -> Series {
        (
            label.to_string(),
            c,
            rows.iter().map(|r| (r.conns as f64, f(r))).collect(),
        )
    };
    let rate = [
        line("raw async-nats", BLUE_, |r| r.raw_msgs_s),
        line("bare bridge", GREEN_, |r| r.bridge_msgs_s),
        line("jetway", RED_, |r| r.jetway_msgs_s),
    ];
    panel(
        &panels[0],
        path,
        "single publish, 256 B (msgs/s, log)",
        "connections (log)",
        &rate,
    )?;
    let p99 = [
        line("raw async-nats", BLUE_, |r| r.raw_p99_us),
        line("bare bridge", GREEN_, |r| r.bridge_p99_us),
        line("jetway", RED_, |r| r.jetway_p99_us),
    ];
    panel(
        &panels[1],
        path,
        "p99 latency (µs, log)",
        "connections (log)",
        &p99,
    )?;
    area.present().map_err(e)?;
    Ok(())
}

/// Two bar panels: vCPU per 1000 msg/s, and memory (MB).
fn draw_dapr(rows: &[RateRow], path: &Path) -> Res<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let area = SVGBackend::new(path, (1100, 450)).into_drawing_area();
    area.fill(&WHITE).map_err(e)?;
    let panels = area.split_evenly((1, 2));
    let mb = |k: u64| k as f64 * 1024.0 / 1e6;
    let mut cpu: Vec<(String, f64, RGBColor)> = rows
        .iter()
        .map(|r| {
            (
                format!("jetway {:.0}/s", r.target_msgs_s),
                r.vcpu_per_1000,
                RED_,
            )
        })
        .collect();
    cpu.push(("Dapr (published)".into(), DAPR_VCPU, BLUE_));
    let mut mem: Vec<(String, f64, RGBColor)> = Vec::new();
    for r in rows {
        mem.push((
            format!("jetway {:.0}/s RSS", r.target_msgs_s),
            mb(r.rss_kib),
            RED_,
        ));
        mem.push((
            format!("jetway {:.0}/s peak", r.target_msgs_s),
            mb(r.peak_rss_kib),
            PURPLE_,
        ));
    }
    mem.push(("Dapr (published)".into(), DAPR_MB, BLUE_));
    for (panel, title, bars) in [
        (
            &panels[0],
            "vCPU per 1000 msg/s (jetway: publish + delivery; Dapr: service invocation)",
            cpu,
        ),
        (
            &panels[1],
            "memory, MB (jetway: VmRSS / VmHWM; Dapr: their figure)",
            mem,
        ),
    ] {
        let top = bars.iter().map(|b| b.1).fold(0.0f64, f64::max) * 1.25;
        let top = if top > 0.0 { top } else { 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(title, ("sans-serif", 13))
            .margin(10)
            .x_label_area_size(10)
            .y_label_area_size(50)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .disable_x_axis()
            .draw()
            .map_err(e)?;
        for (i, (label, value, color)) in bars.iter().enumerate() {
            let x = i as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, *value)],
                    color.filled(),
                )))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    format!("{value:.3}"),
                    (x + 0.2, *value + top * 0.06),
                    ("sans-serif", 12).into_font(),
                )))
                .map_err(e)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (x + 0.1, *value + top * 0.12),
                    ("sans-serif", 11).into_font(),
                )))
                .map_err(e)?;
        }
    }
    area.present().map_err(e)?;
    Ok(())
}
