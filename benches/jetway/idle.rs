//! `JETWAY_BENCH_ONLY=idle`: what one sidecar costs at idle as its
//! subscriptions grow (issue 16): RSS, CPU, the NATS messages it sends and
//! receives per subscription, and the time from start to `/readyz` 200.
//!
//! Each count gets a fresh nats-server (with its monitoring endpoint) and a
//! fresh jetway whose subscriptions all run with nothing to deliver. The
//! traffic is the jetway connection's `in_msgs` / `out_msgs` in the
//! server's `/connz`, counted over the window; CPU is utime + stime over
//! the same window. `JETWAY_BENCH_COMPARE_BIN=path` measures another jetway
//! binary too (e.g. a build of an earlier commit), alternating with this
//! tree's at every count, so before and after come from one run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use plotters::prelude::*;
use serde::Serialize;

use crate::procs::{self, usage, Jetway, Nats};
use crate::roles::Sink;
use crate::{Ctx, Res};

/// Time after ready before the window: the first pulls (2 s) have ended
/// and the subscriptions are in their idle state.
const SETTLE: Duration = Duration::from_secs(8);

#[derive(Debug, Clone, Serialize)]
pub struct IdleRow {
    pub system: String,
    pub subscriptions: usize,
    pub ready_ms: f64,
    pub rss_kib: u64,
    /// Percent of one core over the window.
    pub cpu_pct: f64,
    /// Messages jetway sent to the server, per second and subscription.
    pub to_nats_per_sub_s: f64,
    /// Messages the server sent to jetway, per second and subscription.
    pub from_nats_per_sub_s: f64,
    pub window_s: f64,
}

#[derive(Debug, Serialize)]
struct IdleResults {
    started_at: String,
    nats_server: String,
    jetway_commit: String,
    compare_bin: Option<String>,
    load_before: String,
    load_after: String,
    rows: Vec<IdleRow>,
}

fn counts(quick: bool) -> Vec<usize> {
    if let Ok(v) = std::env::var("JETWAY_BENCH_IDLE_COUNTS") {
        let parsed: Vec<usize> = v.split(',').filter_map(|c| c.trim().parse().ok()).collect();
        if !parsed.is_empty() {
            return parsed;
        }
    }
    if quick {
        vec![1, 10]
    } else {
        vec![1, 10, 100, 500]
    }
}

fn window(quick: bool) -> Duration {
    let default = if quick { 5 } else { 60 };
    Duration::from_secs(
        std::env::var("JETWAY_BENCH_IDLE_S")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default),
    )
}

fn yaml(nats: &Nats, sink: &Sink, n: usize) -> String {
    let mut subs = String::new();
    for k in 0..n {
        let _ = writeln!(
            subs,
            "  - {{ name: s{k}, subject: \"idle.s{k}\", stream: IDLE, endpoint: \"{}\", timeout: 10s }}",
            sink.url("/deliver")
        );
    }
    format!(
        "app_id: idle\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: IDLE, subjects: [\"idle.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions:\n{subs}",
        nats.url()
    )
}

/// (in_msgs, out_msgs) of jetway's connection as the server counts them.
async fn connection_msgs(http: &reqwest::Client, nats: &Nats) -> Res<(u64, u64)> {
    let url = format!("http://127.0.0.1:{}/connz?limit=4096", nats.monitor);
    let v: serde_json::Value = http
        .get(&url)
        .send()
        .await
        .ctx(&format!("GET {url}"))?
        .json()
        .await
        .ctx("reading /connz")?;
    let conns = v["connections"]
        .as_array()
        .ok_or("no connections in /connz")?;
    let jetway: Vec<&serde_json::Value> = conns
        .iter()
        .filter(|c| c["name"].as_str() == Some("jetway-idle"))
        .collect();
    if jetway.len() != 1 {
        return Err(format!(
            "expected one jetway connection in /connz, found {}",
            jetway.len()
        ));
    }
    let n = |k: &str| jetway[0][k].as_u64().unwrap_or(0);
    Ok((n("in_msgs"), n("out_msgs")))
}

async fn measure(
    system: &str,
    bin: &str,
    n: usize,
    window: Duration,
    sink: &Sink,
    http: &reqwest::Client,
) -> Res<IdleRow> {
    let nats = Nats::start().await?;
    let mut jetway = Jetway::start_bin(bin, &yaml(&nats, sink, n), &[]).await?;
    tokio::time::sleep(SETTLE).await;
    let pid = jetway.pid()?;
    let (in0, out0) = connection_msgs(http, &nats).await?;
    let u0 = usage(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(window).await;
    let (in1, out1) = connection_msgs(http, &nats).await?;
    let u1 = usage(pid)?;
    let secs = t0.elapsed().as_secs_f64();
    let row = IdleRow {
        system: system.to_string(),
        subscriptions: n,
        ready_ms: jetway.ready_after.as_secs_f64() * 1e3,
        rss_kib: u1.rss_kib,
        cpu_pct: (u1.cpu_s - u0.cpu_s) / secs * 100.0,
        to_nats_per_sub_s: (in1 - in0) as f64 / secs / n as f64,
        from_nats_per_sub_s: (out1 - out0) as f64 / secs / n as f64,
        window_s: secs,
    };
    if let Err(e) = jetway.terminate(Duration::from_secs(30)).await {
        eprintln!("  {e}");
    }
    eprintln!(
        "    {system:>8} {n:>4} subs: ready {:>6.0} ms, RSS {:>6.1} MiB, CPU {:>5.2} %, per sub {:.3}/s to NATS, {:.3}/s from NATS",
        row.ready_ms,
        row.rss_kib as f64 / 1024.0,
        row.cpu_pct,
        row.to_nats_per_sub_s,
        row.from_nats_per_sub_s
    );
    Ok(row)
}

/// Runs the idle series and writes `bench/results/idle.{json,svg}` and
/// (not quick) its section of BENCHMARKS.md.
pub async fn run(quick: bool) -> Res<()> {
    let load_before = procs::loadavg();
    let window = window(quick);
    let compare = std::env::var("JETWAY_BENCH_COMPARE_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let mut systems = vec![(
        "jetway".to_string(),
        env!("CARGO_BIN_EXE_jetway").to_string(),
    )];
    if let Some(bin) = &compare {
        systems.push(("before".to_string(), bin.clone()));
    }
    eprintln!(
        "jetway bench, idle: {:?} subscriptions, {} s windows",
        counts(quick),
        window.as_secs()
    );
    let sink = Sink::start().await?;
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for (i, n) in counts(quick).into_iter().enumerate() {
        // Alternate which system goes first.
        let mut order: Vec<&(String, String)> = systems.iter().collect();
        if i % 2 == 1 {
            order.reverse();
        }
        for (system, bin) in order {
            rows.push(measure(system, bin, n, window, &sink, &http).await?);
        }
    }
    let nats_version = {
        let nats = Nats::start().await?;
        nats.version.clone()
    };
    let results = IdleResults {
        started_at: crate::report::now_rfc3339(),
        nats_server: nats_version,
        jetway_commit: crate::report::git_describe(),
        compare_bin: compare,
        load_before,
        load_after: procs::loadavg(),
        rows,
    };
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join("results");
    std::fs::create_dir_all(&dir).ctx("creating bench/results")?;
    let stem = if quick { "idle-quick" } else { "idle" };
    let json = serde_json::to_string_pretty(&results).ctx("serialising the idle results")?;
    std::fs::write(dir.join(format!("{stem}.json")), json + "\n").ctx("writing idle.json")?;
    draw(&results.rows, &dir.join(format!("{stem}.svg")))?;
    let table = table(&results);
    println!("{table}");
    if !quick {
        crate::report::replace_section(BEGIN, END, &table)?;
        println!("updated BENCHMARKS.md (idle section)");
    }
    Ok(())
}

const BEGIN: &str =
    "<!-- bench:idle:begin (written by JETWAY_BENCH_ONLY=idle cargo bench --bench jetway) -->";
const END: &str = "<!-- bench:idle:end -->";

fn table(r: &IdleResults) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- when: {}; nats-server {}; jetway at {}{}; load average before / after: {} / {}\n",
        r.started_at,
        r.nats_server,
        r.jetway_commit,
        r.compare_bin
            .as_deref()
            .map(|b| format!(" (\"before\": {b})"))
            .unwrap_or_default(),
        r.load_before,
        r.load_after
    );
    let _ = writeln!(
        s,
        "| system | subscriptions | start to ready | idle RSS | idle CPU (% of a core) | NATS msgs/s per subscription, jetway → server | server → jetway |"
    );
    let _ = writeln!(s, "|---|---:|---:|---:|---:|---:|---:|");
    for row in &r.rows {
        let _ = writeln!(
            s,
            "| {} | {} | {:.0} ms | {:.1} MiB | {:.2} | {:.3} | {:.3} |",
            row.system,
            row.subscriptions,
            row.ready_ms,
            row.rss_kib as f64 / 1024.0,
            row.cpu_pct,
            row.to_nats_per_sub_s,
            row.from_nats_per_sub_s
        );
    }
    let _ = writeln!(s, "\n![idle cost by subscriptions](bench/results/idle.svg)");
    s
}

/// Four panels against the subscription count (log scale): RSS, CPU,
/// NATS messages per subscription each way, start to ready.
fn draw(rows: &[IdleRow], path: &Path) -> Res<()> {
    let e = |e: DrawingAreaErrorKind<std::io::Error>| format!("drawing {}: {e}", path.display());
    let area = SVGBackend::new(path, (1000, 700)).into_drawing_area();
    area.fill(&WHITE).map_err(e)?;
    let panels = area.split_evenly((2, 2));
    let max_n = rows.iter().map(|r| r.subscriptions).max().unwrap_or(1) as f64 * 1.5;
    let mut systems: Vec<&str> = rows.iter().map(|r| r.system.as_str()).collect();
    systems.dedup();
    systems.sort();
    systems.dedup();
    type Pick = fn(&IdleRow) -> f64;
    let figures: [(&str, Vec<(&str, Pick)>); 4] = [
        ("idle RSS (MiB)", vec![("", |r| r.rss_kib as f64 / 1024.0)]),
        ("idle CPU (% of a core)", vec![("", |r| r.cpu_pct)]),
        (
            "NATS msgs/s per subscription",
            vec![
                (" to server", |r| r.to_nats_per_sub_s),
                (" from server", |r| r.from_nats_per_sub_s),
            ],
        ),
        ("start to ready (ms)", vec![("", |r| r.ready_ms)]),
    ];
    let palette = [
        RGBColor(40, 110, 180),
        RGBColor(200, 80, 50),
        RGBColor(60, 150, 80),
        RGBColor(150, 80, 160),
    ];
    for (panel, (title, picks)) in panels.iter().zip(figures.iter()) {
        let top = rows
            .iter()
            .flat_map(|r| picks.iter().map(move |(_, p)| p(r)))
            .fold(0.0f64, f64::max)
            * 1.15;
        let top = if top > 0.0 { top } else { 1.0 };
        let mut chart = ChartBuilder::on(panel)
            .caption(*title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((1f64..max_n).log_scale(), 0f64..top)
            .map_err(e)?;
        chart
            .configure_mesh()
            .x_desc("subscriptions")
            .draw()
            .map_err(e)?;
        let mut color = 0;
        for system in &systems {
            for (suffix, pick) in picks {
                let c = palette[color % palette.len()];
                color += 1;
                let points: Vec<(f64, f64)> = rows
                    .iter()
                    .filter(|r| r.system == *system)
                    .map(|r| (r.subscriptions as f64, pick(r)))
                    .collect();
                chart
                    .draw_series(LineSeries::new(points.clone(), c.stroke_width(2)))
                    .map_err(e)?
                    .label(format!("{system}{suffix}"))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 16, y)], c.stroke_width(2))
                    });
                chart
                    .draw_series(points.into_iter().map(|p| Circle::new(p, 3, c.filled())))
                    .map_err(e)?;
            }
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    area.present().map_err(e)?;
    Ok(())
}
