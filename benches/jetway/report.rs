//! Results: accumulation over rounds, the targets of issue 4, and the
//! outputs (a table on stdout, JSON and an SVG chart under bench/results/,
//! the summary in BENCHMARKS.md).

use std::fmt::Write as _;
use std::path::PathBuf;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::load::{histogram, Run};
use crate::procs::Nats;
use crate::{Ctx, Plan, Res};

/// One system's runs of one cell, summed over rounds.
pub struct Acc {
    ok: u64,
    secs: f64,
    cpu_s: f64,
    hist: Histogram<u64>,
    bad_stamps: u64,
}

impl Default for Acc {
    fn default() -> Self {
        Acc {
            ok: 0,
            secs: 0.0,
            cpu_s: 0.0,
            hist: histogram(),
            bad_stamps: 0,
        }
    }
}

impl Acc {
    pub fn add(&mut self, run: &Run, cpu_s: f64) {
        self.add_scaled(run, cpu_s, 1);
    }

    /// `per_request` messages per request (batches).
    pub fn add_scaled(&mut self, run: &Run, cpu_s: f64, per_request: u64) {
        self.ok += run.ok * per_request;
        self.secs += run.elapsed.as_secs_f64();
        self.cpu_s += cpu_s;
        let _ = self.hist.add(&run.hist);
    }

    /// Takes the sink's stored-to-delivered histogram for this run.
    pub fn add_hist(&mut self, sink: &crate::roles::Sink, run: &Run) -> Res<()> {
        let (h, bad) = sink.take_histogram()?;
        self.hist.add(&h).ctx("merging histograms")?;
        self.ok += run.ok;
        self.secs += run.elapsed.as_secs_f64();
        self.bad_stamps += bad;
        Ok(())
    }

    pub fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.ok as f64 / self.secs
        } else {
            0.0
        }
    }

    pub fn cpu_per_10k(&self) -> f64 {
        if self.ok > 0 {
            self.cpu_s / self.ok as f64 * 10_000.0
        } else {
            0.0
        }
    }

    pub fn quantile_us(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e3
    }

    pub fn latency(
        &self,
        kind: &str,
        system: &str,
        payload: usize,
        conns: usize,
        rate: Option<f64>,
    ) -> Latency {
        Latency {
            kind: kind.into(),
            system: system.into(),
            payload,
            conns,
            rate,
            samples: self.hist.len(),
            p50_us: self.quantile_us(0.5),
            p90_us: self.quantile_us(0.9),
            p99_us: self.quantile_us(0.99),
            p999_us: self.quantile_us(0.999),
            max_us: self.hist.max() as f64 / 1e3,
            unstamped: self.bad_stamps,
        }
    }
}

#[derive(Serialize, Default)]
pub struct Meta {
    pub mode: String,
    pub started_at: String,
    pub duration_s: f64,
    pub machine: serde_json::Value,
    pub nats_server: String,
    pub nats_server_bin: String,
    pub load_before: String,
    pub load_after: String,
    pub command: String,
    pub jetway_version: String,
    /// `git describe --always --dirty` of the tree jetway was built from.
    pub jetway_commit: String,
    /// Messages per pull request of the bare delivery loop.
    pub bare_loop_batch: String,
}

#[derive(Serialize)]
pub struct Rate {
    pub payload: usize,
    pub conns: usize,
    pub rate: f64,
}

#[derive(Serialize)]
pub struct PublishCell {
    pub payload: usize,
    pub conns: usize,
    pub raw: f64,
    pub bridge: f64,
    pub jetway: f64,
    /// jetway / bridge
    pub ratio: f64,
    pub bridge_cpu_s_per_10k: f64,
    pub jetway_cpu_s_per_10k: f64,
    pub bridge_p50_us: f64,
    pub jetway_p50_us: f64,
}

#[derive(Serialize)]
pub struct BatchCell {
    pub payload: usize,
    pub conns: usize,
    pub items: usize,
    pub raw_in_flight: usize,
    pub raw: f64,
    /// Raw publishing in bursts of `items`, each burst's PubAcks awaited
    /// before the next (what a batch request does, without HTTP).
    pub raw_bursts: f64,
    pub jetway: f64,
    /// jetway batch / raw
    pub ratio: f64,
    /// jetway batch / raw in bursts
    pub ratio_to_bursts: f64,
    pub jetway_cpu_s_per_10k: f64,
}

#[derive(Serialize)]
pub struct DeliveryCell {
    pub payload: usize,
    pub concurrency: usize,
    pub backlog: usize,
    pub raw_consume: f64,
    pub bare: f64,
    pub jetway: f64,
    /// jetway / bare loop
    pub ratio: f64,
    pub bare_cpu_s_per_10k: f64,
    pub jetway_cpu_s_per_10k: f64,
}

#[derive(Serialize)]
pub struct Latency {
    pub kind: String,
    pub system: String,
    pub payload: usize,
    pub conns: usize,
    pub rate: Option<f64>,
    pub samples: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub unstamped: u64,
}

#[derive(Serialize, Default)]
pub struct Footprint {
    pub ready_ms: f64,
    pub idle_rss_kib: u64,
    pub idle_after_load_rss_kib: u64,
    pub peak_publish_rss_kib: u64,
    pub peak_batch_rss_kib: u64,
    pub peak_delivery_rss_kib: u64,
    pub bridge_idle_rss_kib: u64,
    pub bridge_peak_rss_kib: u64,
    pub bare_loop_peak_rss_kib: u64,
    pub publish_cpu_s_per_10k: f64,
    pub delivery_cpu_s_per_10k: f64,
    pub nats_cpu_s: f64,
    pub sigterm_exit: Option<i32>,
}

/// One target of the issue, judged.
#[derive(Serialize)]
pub struct Target {
    pub name: String,
    pub value: f64,
    pub limit: f64,
    /// "min": value must be >= limit; "max": value must be <= limit.
    pub kind: &'static str,
    pub unit: &'static str,
    pub pass: bool,
}

#[derive(Serialize, Default)]
pub struct Results {
    pub meta: Meta,
    pub ceiling: Vec<Rate>,
    pub publish: Vec<PublishCell>,
    pub batch: Vec<BatchCell>,
    pub delivery: Vec<DeliveryCell>,
    pub latency: Vec<Latency>,
    pub footprint: Footprint,
    pub typed: Option<crate::typed::TypedResult>,
    pub tracing: Option<crate::traces::TracingResult>,
    pub replay: Option<crate::replay::ReplayResult>,
    pub targets: Vec<Target>,
    /// Checks that the measurement itself is sound (load generator
    /// headroom, spans really exported, every dead letter replayed).
    pub validity: Vec<Target>,
}

pub fn git_describe() -> String {
    std::process::Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "describe",
            "--always",
            "--dirty",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

pub fn target(
    name: String,
    value: f64,
    limit: f64,
    kind: &'static str,
    unit: &'static str,
) -> Target {
    let pass = if kind == "min" {
        value >= limit
    } else {
        value <= limit
    };
    Target {
        name,
        value,
        limit,
        kind,
        unit,
        pass,
    }
}

pub fn size(p: usize) -> String {
    if p >= 1024 && p.is_multiple_of(1024) {
        format!("{} KiB", p / 1024)
    } else {
        format!("{p} B")
    }
}

impl Results {
    pub fn new(plan: &Plan, nats: &Nats) -> Results {
        Results {
            meta: Meta {
                mode: if plan.quick { "quick" } else { "full" }.into(),
                started_at: now_rfc3339(),
                machine: crate::procs::machine(),
                nats_server: nats.version.clone(),
                nats_server_bin: crate::procs::path_display(&nats.bin),
                command: "CARGO_TARGET_DIR=/work/target-bench cargo bench --bench jetway".into(),
                jetway_version: env!("CARGO_PKG_VERSION").into(),
                jetway_commit: git_describe(),
                bare_loop_batch: std::env::var("JETWAY_BENCH_BARE_BATCH")
                    .unwrap_or_else(|_| "200 (async-nats default)".into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn lat(&self, kind: &str, system: &str, payload: usize) -> Option<&Latency> {
        self.latency
            .iter()
            .find(|l| l.kind == kind && l.system == system && l.payload == payload)
    }

    /// Judges every target of issue 4.
    pub fn finish(&mut self) {
        let mut t = Vec::new();
        for c in &self.publish {
            if c.conns >= 16 {
                t.push(target(
                    format!(
                        "single publish / bare bridge, {} x {} conns",
                        size(c.payload),
                        c.conns
                    ),
                    c.ratio,
                    0.9,
                    "min",
                    "x",
                ));
            }
        }
        for c in &self.batch {
            t.push(target(
                format!(
                    "batch({}) / raw publish ({} in flight), {} x {} conns",
                    c.items,
                    c.raw_in_flight,
                    size(c.payload),
                    c.conns
                ),
                c.ratio,
                0.7,
                "min",
                "x",
            ));
        }
        for c in &self.delivery {
            t.push(target(
                format!(
                    "delivery / bare loop, {} x concurrency {}",
                    size(c.payload),
                    c.concurrency
                ),
                c.ratio,
                0.9,
                "min",
                "x",
            ));
        }
        let payloads: Vec<usize> = self
            .publish
            .iter()
            .map(|c| c.payload)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for &p in &payloads {
            if let (Some(raw), Some(jw)) = (
                self.lat("publish_1_connection", "raw", p),
                self.lat("publish_1_connection", "jetway", p),
            ) {
                t.push(target(
                    format!(
                        "publish p50 at 1 conn, {} (limit = raw RTT {:.0} us + 150 us)",
                        size(p),
                        raw.p50_us
                    ),
                    jw.p50_us,
                    raw.p50_us + 150.0,
                    "max",
                    "us",
                ));
            }
        }
        let f = &mut self.footprint;
        t.push(target(
            "idle RSS".into(),
            f.idle_rss_kib as f64 / 1024.0,
            12.0,
            "max",
            "MiB",
        ));
        let peak = f.peak_publish_rss_kib.max(f.peak_delivery_rss_kib);
        t.push(target(
            "peak RSS under full load (single publish, delivery)".into(),
            peak as f64 / 1024.0,
            48.0,
            "max",
            "MiB",
        ));
        let batch_max = self
            .batch
            .iter()
            .max_by_key(|c| c.payload * c.conns * c.items)
            .map(|c| {
                format!(
                    " ({} x {} conns x {} items)",
                    size(c.payload),
                    c.conns,
                    c.items
                )
            })
            .unwrap_or_default();
        t.push(target(
            format!("peak RSS under batch load{batch_max}"),
            f.peak_batch_rss_kib as f64 / 1024.0,
            48.0,
            "max",
            "MiB",
        ));
        let small = payloads.first().copied().unwrap_or(256);
        let max_c = self.publish.iter().map(|c| c.conns).max().unwrap_or(1);
        f.publish_cpu_s_per_10k = self
            .publish
            .iter()
            .find(|c| c.payload == small && c.conns == max_c)
            .map(|c| c.jetway_cpu_s_per_10k)
            .unwrap_or(0.0);
        f.delivery_cpu_s_per_10k = self
            .delivery
            .iter()
            .find(|c| c.payload == small && c.concurrency == max_c)
            .map(|c| c.jetway_cpu_s_per_10k)
            .unwrap_or(0.0);
        // 0.05 vCPU per 1000 msg/s = 0.5 CPU seconds per 10 000 messages.
        t.push(target(
            format!(
                "CPU s per 10k msgs published + delivered ({}, {max_c} conns)",
                size(small)
            ),
            f.publish_cpu_s_per_10k + f.delivery_cpu_s_per_10k,
            0.5,
            "max",
            "s",
        ));
        if let Some(x) = &self.typed {
            t.extend(x.targets());
        }
        if let Some(x) = &self.tracing {
            t.extend(x.targets());
        }
        if let Some(x) = &self.replay {
            t.extend(x.targets());
        }
        self.targets = t;
        let mut v = Vec::new();
        if let Some(x) = &self.typed {
            v.extend(x.checks());
        }
        if let Some(x) = &self.tracing {
            v.extend(x.checks());
        }
        if let Some(x) = &self.replay {
            v.extend(x.checks());
        }
        for c in &self.ceiling {
            let fastest = self
                .publish
                .iter()
                .filter(|p| p.payload == c.payload && p.conns == c.conns)
                .map(|p| p.jetway.max(p.bridge))
                .fold(0.0, f64::max);
            if fastest > 0.0 {
                v.push(target(
                    format!(
                        "load generator ceiling / fastest HTTP publisher, {} x {}",
                        size(c.payload),
                        c.conns
                    ),
                    c.rate / fastest,
                    1.5,
                    "min",
                    "x",
                ));
            }
        }
        self.validity = v;
    }
}

/// One row of the figures table: figure, jetway, baseline, ratio, target,
/// verdict (`None`: information only).
pub fn row(
    s: &mut String,
    figure: &str,
    jetway: &str,
    baseline: &str,
    ratio: Option<f64>,
    target: &str,
    verdict: Option<bool>,
) {
    let _ = writeln!(
        s,
        "| {figure} | {jetway} | {baseline} | {} | {target} | {} |",
        ratio.map(|r| format!("{r:.2}")).unwrap_or_default(),
        match verdict {
            Some(true) => "pass",
            Some(false) => "**miss**",
            None => "",
        }
    );
}

fn fmt_rate(r: f64) -> String {
    format!("{r:.0}/s")
}

/// The table: each figure, its baseline, the ratio, the target.
pub fn table(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "\n| figure | jetway | baseline | ratio | target | |");
    let _ = writeln!(s, "|---|---:|---:|---:|---|---|");
    let pass = |ok: bool| if ok { "pass" } else { "**miss**" };
    for c in &r.ceiling {
        let _ = writeln!(
            s,
            "| load generator ceiling (200-only handler), {} x {} conns | {} | | | | |",
            size(c.payload),
            c.conns,
            fmt_rate(c.rate)
        );
    }
    for c in &r.publish {
        let judged = c.conns >= 16;
        let _ = writeln!(
            s,
            "| single publish, {} x {} conns (raw publish {}) | {} | bare bridge {} | {:.2} | {} | {} |",
            size(c.payload),
            c.conns,
            fmt_rate(c.raw),
            fmt_rate(c.jetway),
            fmt_rate(c.bridge),
            c.ratio,
            if judged { ">= 0.9" } else { "(info)" },
            if judged { pass(c.ratio >= 0.9) } else { "" }
        );
    }
    for c in &r.batch {
        let _ = writeln!(
            s,
            "| batch publish ({} items), {} x {} conns (raw in bursts of {} {}: {:.2} of it) | {} | raw publish, {} in flight {} | {:.2} | >= 0.7 | {} |",
            c.items,
            size(c.payload),
            c.conns,
            c.items,
            fmt_rate(c.raw_bursts),
            c.ratio_to_bursts,
            fmt_rate(c.jetway),
            c.raw_in_flight,
            fmt_rate(c.raw),
            c.ratio,
            pass(c.ratio >= 0.7)
        );
    }
    for c in &r.delivery {
        let _ = writeln!(
            s,
            "| delivery, {} x concurrency {} (raw consume {}) | {} | bare loop {} | {:.2} | >= 0.9 | {} |",
            size(c.payload),
            c.concurrency,
            fmt_rate(c.raw_consume),
            fmt_rate(c.jetway),
            fmt_rate(c.bare),
            c.ratio,
            pass(c.ratio >= 0.9)
        );
    }
    if let Some(x) = &r.typed {
        x.rows(&mut s);
    }
    if let Some(x) = &r.tracing {
        x.rows(&mut s);
    }
    if let Some(x) = &r.replay {
        x.rows(&mut s);
    }
    let _ = writeln!(
        s,
        "\n| latency (us) | system | rate | p50 | p90 | p99 | p99.9 | max | samples |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for l in &r.latency {
        let _ = writeln!(
            s,
            "| {} {} x {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {} |",
            l.kind,
            size(l.payload),
            l.conns,
            l.system,
            l.rate.map(fmt_rate).unwrap_or_else(|| "closed loop".into()),
            l.p50_us,
            l.p90_us,
            l.p99_us,
            l.p999_us,
            l.max_us,
            l.samples
        );
    }
    let f = &r.footprint;
    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    let _ = writeln!(s, "\n| footprint | jetway | baseline |");
    let _ = writeln!(s, "|---|---:|---:|");
    let _ = writeln!(s, "| start to /readyz 200 | {:.0} ms | |", f.ready_ms);
    let _ = writeln!(
        s,
        "| idle RSS | {} | bare bridge {} |",
        mib(f.idle_rss_kib),
        mib(f.bridge_idle_rss_kib)
    );
    let _ = writeln!(
        s,
        "| peak RSS, single publish phase | {} | bare bridge {} |",
        mib(f.peak_publish_rss_kib),
        mib(f.bridge_peak_rss_kib)
    );
    let _ = writeln!(
        s,
        "| peak RSS, delivery phase | {} | bare loop {} |",
        mib(f.peak_delivery_rss_kib),
        mib(f.bare_loop_peak_rss_kib)
    );
    let _ = writeln!(
        s,
        "| peak RSS, batch phase | {} | |",
        mib(f.peak_batch_rss_kib)
    );
    let _ = writeln!(
        s,
        "| RSS idle after the load | {} | |",
        mib(f.idle_after_load_rss_kib)
    );
    for c in &r.publish {
        let _ = writeln!(
            s,
            "| CPU s per 10k published, {} x {} | {:.3} | bare bridge {:.3} |",
            size(c.payload),
            c.conns,
            c.jetway_cpu_s_per_10k,
            c.bridge_cpu_s_per_10k
        );
    }
    for c in &r.delivery {
        let _ = writeln!(
            s,
            "| CPU s per 10k delivered, {} x {} | {:.3} | bare loop {:.3} |",
            size(c.payload),
            c.concurrency,
            c.jetway_cpu_s_per_10k,
            c.bare_cpu_s_per_10k
        );
    }
    let _ = writeln!(s, "| exit code after SIGTERM | {:?} | |", f.sigterm_exit);
    let _ = writeln!(
        s,
        "\n| target (issues 4, 12, 13, 18) | measured | limit | |"
    );
    let _ = writeln!(s, "|---|---:|---:|---|");
    for t in r.targets.iter().chain(r.validity.iter()) {
        let _ = writeln!(
            s,
            "| {} | {:.2} {} | {} {:.2} {} | {} |",
            t.name,
            t.value,
            t.unit,
            if t.kind == "min" { ">=" } else { "<=" },
            t.limit,
            t.unit,
            pass(t.pass)
        );
    }
    s
}

fn results_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join("results")
}

/// Prints the table and writes JSON, SVG and (full runs) BENCHMARKS.md.
pub fn write(r: &Results, quick: bool) -> Res<()> {
    let table = table(r);
    println!("{table}");
    let dir = results_dir();
    std::fs::create_dir_all(&dir).ctx("creating bench/results")?;
    // An experiment on the bare loop's pull batch must not replace the
    // reference results.
    let bare_batch = std::env::var("JETWAY_BENCH_BARE_BATCH").is_ok();
    let partial = std::env::var("JETWAY_BENCH_ONLY").is_ok();
    let experiment = bare_batch || partial;
    let stem = match (quick, bare_batch, partial) {
        (true, _, _) => "quick",
        (false, true, _) => "experiment-bare-batch",
        (false, false, true) => "partial",
        (false, false, false) => "latest",
    };
    let json = serde_json::to_string_pretty(r).ctx("serialising the results")?;
    let json_path = dir.join(format!("{stem}.json"));
    std::fs::write(&json_path, json + "\n").ctx("writing the JSON results")?;
    let svg_path = dir.join(format!("{stem}.svg"));
    crate::chart::draw(r, &svg_path)?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    if !quick && !experiment {
        benchmarks_md(r, &table)?;
        println!("updated BENCHMARKS.md");
    }
    let missed = r.targets.iter().filter(|t| !t.pass).count();
    println!(
        "{} of {} targets met{}; run took {:.0} s; load average before {} / after {}",
        r.targets.len() - missed,
        r.targets.len(),
        if missed > 0 {
            " (see BENCHMARKS.md for what limits the rest)"
        } else {
            ""
        },
        r.meta.duration_s,
        r.meta.load_before,
        r.meta.load_after
    );
    Ok(())
}

const BEGIN: &str =
    "<!-- bench:begin (written by cargo bench --bench jetway; edit outside these markers) -->";
const END: &str = "<!-- bench:end -->";

/// Replaces the text between `begin` and `end` in BENCHMARKS.md (appends
/// the section when the markers are missing), keeping the rest.
pub fn replace_section(begin: &str, end: &str, body: &str) -> Res<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let generated = format!(
        "{begin}
{}
{end}",
        body.trim_end()
    );
    let new = match (old.find(begin), old.find(end)) {
        (Some(b), Some(e)) if e > b => {
            format!("{}{generated}{}", &old[..b], &old[e + end.len()..])
        }
        _ => format!(
            "{}

{generated}
",
            old.trim_end()
        ),
    };
    std::fs::write(&path, new).ctx("writing BENCHMARKS.md")
}

/// Replaces the generated part of BENCHMARKS.md, keeping the rest.
fn benchmarks_md(r: &Results, table: &str) -> Res<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("BENCHMARKS.md");
    let m = &r.meta;
    let mut generated = String::new();
    let _ = writeln!(generated, "{BEGIN}");
    let _ = writeln!(generated, "## Latest run\n");
    let _ = writeln!(
        generated,
        "- when: {} ({} mode, {:.0} s)\n- machine: {} x {}, {} MiB RAM, kernel {}\n- nats-server: {} ({})\n- jetway: {} at {} (release profile, built from the tree)\n- load average before / after: {} / {}\n- bare delivery loop pull batch: {}\n- reproduce: `{}`\n- raw results: `bench/results/latest.json`, chart: `bench/results/latest.svg`",
        m.started_at,
        m.mode,
        m.duration_s,
        m.machine["nproc"],
        m.machine["cpu_model"].as_str().unwrap_or("?"),
        m.machine["mem_mib"],
        m.machine["kernel"].as_str().unwrap_or("?"),
        m.nats_server,
        m.nats_server_bin,
        m.jetway_version,
        m.jetway_commit,
        m.load_before,
        m.load_after,
        m.bare_loop_batch,
        m.command
    );
    let _ = writeln!(generated, "{table}");
    let _ = writeln!(
        generated,
        "![ratios to baselines](bench/results/latest.svg)\n"
    );
    let _ = writeln!(generated, "{END}");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let new = match (old.find(BEGIN), old.find(END)) {
        (Some(b), Some(e)) if e > b => format!(
            "{}{}{}",
            &old[..b],
            generated.trim_end(),
            &old[e + END.len()..]
        ),
        _ if old.is_empty() => format!("# jetway benchmarks\n\n{generated}"),
        _ => format!("{}\n\n{generated}", old.trim_end()),
    };
    std::fs::write(&path, new).ctx("writing BENCHMARKS.md")
}
