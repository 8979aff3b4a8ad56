//! `JETWAY_BENCH_ONLY=memory`: memory given back after a burst (issue 16).
//! For each allocator setup: a fresh nats-server and jetway, idle RSS, then
//! a burst of 100-item batches of 16 KiB payloads on 64 connections, the
//! peak RSS, and the RSS 15 s after the burst ended.
//!
//! `JETWAY_BENCH_ALLOCS="name|binary|KEY=VALUE|...;name|binary..."` lists
//! the setups (a binary built with another allocator, environment such as
//! `GLIBC_TUNABLES` or `_RJEM_MALLOC_CONF`); without it, this tree's binary
//! alone. `JETWAY_BENCH_MEMORY_ROUNDS` (default 2) repeats the list, the
//! order reversed every other round.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::load::{self, Stop};
use crate::procs::{self, usage, Jetway, Nats};
use crate::{Ctx, Res};

/// Connections of the burst; `JETWAY_BENCH_MEMORY_CONNS` for another count
/// (e.g. 1, to compare two builds' batch cost where nothing overlaps).
fn conns() -> usize {
    std::env::var("JETWAY_BENCH_MEMORY_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&c| c > 0)
        .unwrap_or(64)
}
const ITEMS: usize = 100;
const PAYLOAD: usize = 16 * 1024;
const AFTER: Duration = Duration::from_secs(15);

#[derive(Debug, Clone, Serialize)]
struct Setup {
    name: String,
    bin: String,
    env: Vec<(String, String)>,
}

#[derive(Debug, Clone, Serialize)]
struct MemoryRow {
    setup: String,
    round: usize,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    after_rss_kib: u64,
    batches_per_s: f64,
    cpu_s_per_batch: f64,
}

fn setups() -> Vec<Setup> {
    let own = env!("CARGO_BIN_EXE_jetway").to_string();
    let Ok(list) = std::env::var("JETWAY_BENCH_ALLOCS") else {
        return vec![Setup {
            name: "this tree".into(),
            bin: own,
            env: vec![],
        }];
    };
    list.split(';')
        .filter(|e| !e.trim().is_empty())
        .map(|entry| {
            let mut parts = entry.trim().split('|');
            let name = parts.next().unwrap_or("?").to_string();
            let bin = match parts.next() {
                Some(b) if !b.is_empty() && b != "." => b.to_string(),
                _ => own.clone(),
            };
            let env = parts
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Setup { name, bin, env }
        })
        .collect()
}

fn yaml(nats: &Nats) -> String {
    format!(
        "app_id: memory\n\
         shutdown_grace: 10s\n\
         log: {{ format: text, level: info }}\n\
         nats: {{ url: \"{}\" }}\n\
         streams:\n\
         \x20 - {{ name: MEM, subjects: [\"mem.>\"], storage: file, replicas: 1, max_age: 1h, duplicate_window: 2m }}\n\
         subscriptions: []\n",
        nats.url()
    )
}

async fn measure(setup: &Setup, round: usize, burst: Duration) -> Res<MemoryRow> {
    let nats = Nats::start().await?;
    let mut jetway = Jetway::start_bin(&setup.bin, &yaml(&nats), &setup.env).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = jetway.pid()?;
    let idle = usage(pid)?;
    procs::reset_peak(pid)?;
    let make = crate::batch_request(&jetway.api, "mem.burst", &vec![b'm'; PAYLOAD], ITEMS);
    let stop = Stop {
        duration: burst,
        max_requests: None,
    };
    let run = load::http_closed(&jetway.api, conns(), stop, make).await?;
    let loaded = usage(pid)?;
    tokio::time::sleep(AFTER).await;
    let after = usage(pid)?;
    let row = MemoryRow {
        setup: setup.name.clone(),
        round,
        idle_rss_kib: idle.rss_kib,
        peak_rss_kib: loaded.hwm_kib,
        after_rss_kib: after.rss_kib,
        batches_per_s: run.rate(),
        cpu_s_per_batch: (loaded.cpu_s - idle.cpu_s) / run.ok.max(1) as f64,
    };
    if let Err(e) = jetway.terminate(Duration::from_secs(30)).await {
        eprintln!("  {e}");
    }
    eprintln!(
        "    {:<28} idle {:>5.1} MiB, peak {:>5.1} MiB, 15 s after {:>5.1} MiB, {:>5.0} batches/s, {:.1} ms CPU per batch",
        row.setup,
        row.idle_rss_kib as f64 / 1024.0,
        row.peak_rss_kib as f64 / 1024.0,
        row.after_rss_kib as f64 / 1024.0,
        row.batches_per_s,
        row.cpu_s_per_batch * 1e3
    );
    Ok(row)
}

pub async fn run(quick: bool) -> Res<()> {
    let load_before = procs::loadavg();
    let setups = setups();
    let rounds = std::env::var("JETWAY_BENCH_MEMORY_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 1 } else { 2 });
    let burst = Duration::from_secs(if quick { 2 } else { 8 });
    eprintln!(
        "jetway bench, memory: {} setups x {rounds} rounds, {} s bursts of {ITEMS} x 16 KiB batches on {} connections",
        setups.len(),
        burst.as_secs(),
        conns()
    );
    let mut rows = Vec::new();
    for round in 0..rounds {
        let mut order: Vec<&Setup> = setups.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for setup in order {
            rows.push(measure(setup, round, burst).await?);
        }
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "- when: {}; jetway at {}; {rounds} rounds, {} s bursts on {} connections; load average before / after: {load_before} / {}\n",
        crate::report::now_rfc3339(),
        crate::report::git_describe(),
        burst.as_secs(),
        conns(),
        procs::loadavg()
    );
    let _ = writeln!(s, "| setup | environment | idle RSS | peak RSS | RSS 15 s after | batches/s | CPU ms per batch |");
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|");
    let mib = |k: u64| k as f64 / 1024.0;
    for setup in &setups {
        let mine: Vec<&MemoryRow> = rows.iter().filter(|r| r.setup == setup.name).collect();
        let n = mine.len().max(1) as f64;
        let range = |f: fn(&MemoryRow) -> u64| {
            let lo = mine.iter().map(|r| f(r)).min().unwrap_or(0);
            let hi = mine.iter().map(|r| f(r)).max().unwrap_or(0);
            if lo == hi {
                format!("{:.1} MiB", mib(lo))
            } else {
                format!("{:.1}-{:.1} MiB", mib(lo), mib(hi))
            }
        };
        let env: Vec<String> = setup
            .env
            .iter()
            .map(|(k, v)| format!("`{k}={v}`"))
            .collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.0} | {:.1} |",
            setup.name,
            if env.is_empty() {
                "-".into()
            } else {
                env.join(" ")
            },
            range(|r| r.idle_rss_kib),
            range(|r| r.peak_rss_kib),
            range(|r| r.after_rss_kib),
            mine.iter().map(|r| r.batches_per_s).sum::<f64>() / n,
            mine.iter().map(|r| r.cpu_s_per_batch).sum::<f64>() / n * 1e3,
        );
    }
    println!("{s}");
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("bench")
        .join("results");
    std::fs::create_dir_all(&dir).ctx("creating bench/results")?;
    let stem = match (quick, conns()) {
        (true, _) => "memory-quick".to_string(),
        (false, 64) => "memory".to_string(),
        (false, c) => format!("memory-c{c}"),
    };
    let json = serde_json::to_string_pretty(&serde_json::json!({ "setups": setups, "rows": rows }))
        .ctx("serialising the memory results")?;
    std::fs::write(dir.join(format!("{stem}.json")), json + "\n").ctx("writing memory.json")?;
    // Only the reference setup (64 connections) replaces the section.
    if !quick && conns() == 64 {
        crate::report::replace_section(BEGIN, END, &s)?;
        println!("updated BENCHMARKS.md (memory section)");
    }
    Ok(())
}

const BEGIN: &str =
    "<!-- bench:memory:begin (written by JETWAY_BENCH_ONLY=memory cargo bench --bench jetway) -->";
const END: &str = "<!-- bench:memory:end -->";
