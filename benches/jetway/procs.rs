//! The processes the benchmark starts (nats-server, jetway, the bare
//! baselines as children of this same binary) and what /proc says about them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, Command};

use crate::{Ctx, Res};

/// A port to start a server on, below the range the kernel hands out for
/// outgoing connections: the tests' own `free_port`.
#[path = "../../tests/common/ports.rs"]
mod ports;
pub use ports::free_port;

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_port(port: u16, what: &str, deadline: Duration) -> Res<()> {
    let until = Instant::now() + deadline;
    loop {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "{what} did not accept connections on port {port} within {deadline:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The nats-server binary and its version.
fn nats_bin() -> Res<(PathBuf, String)> {
    let bin = jetway::dev::find_nats_server().ok_or_else(|| {
        "nats-server not found: put it on PATH (apt-get install nats-server) or set NATS_SERVER_BIN".to_string()
    })?;
    let out = std::process::Command::new(&bin)
        .arg("--version")
        .output()
        .ctx("running nats-server --version")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let version = version
        .strip_prefix("nats-server: ")
        .unwrap_or(&version)
        .to_string();
    Ok((bin, version))
}

/// A nats-server with JetStream in its own folder.
pub struct Nats {
    pub child: Child,
    pub port: u16,
    /// Its monitoring endpoint (`-m`): `/varz`, `/connz`.
    pub monitor: u16,
    pub bin: PathBuf,
    pub version: String,
    _store: tempfile::TempDir,
}

impl Nats {
    pub async fn start() -> Res<Nats> {
        let (bin, version) = nats_bin()?;
        let store = tempfile::Builder::new()
            .prefix("jetway-bench-nats-")
            .tempdir()
            .ctx("creating the nats store folder")?;
        let port = free_port();
        let monitor = free_port();
        let child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ctx("spawning nats-server")?;
        wait_port(port, "nats-server", Duration::from_secs(20)).await?;
        wait_port(monitor, "nats-server monitoring", Duration::from_secs(20)).await?;
        Ok(Nats {
            child,
            port,
            monitor,
            bin,
            version,
            _store: store,
        })
    }

    /// A nats-server started from a config file: the same listener,
    /// monitoring port and JetStream store as [`Nats::start`], plus `extra`
    /// lines (e.g. `max_payload: 8MB`).
    pub async fn start_with(extra: &str) -> Res<Nats> {
        let (bin, version) = nats_bin()?;
        let store = tempfile::Builder::new()
            .prefix("jetway-bench-nats-")
            .tempdir()
            .ctx("creating the nats store folder")?;
        let port = free_port();
        let monitor = free_port();
        let conf = store.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{port}\"\nhttp: \"127.0.0.1:{monitor}\"\n{extra}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
                store.path().join("js").display()
            ),
        )
        .ctx("writing the nats-server config")?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .ctx("spawning nats-server with a config")?;
        wait_port(port, "nats-server", Duration::from_secs(20)).await?;
        wait_port(monitor, "nats-server monitoring", Duration::from_secs(20)).await?;
        Ok(Nats {
            child,
            port,
            monitor,
            bin,
            version,
            _store: store,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }
}

/// The jetway binary of this tree (built by cargo with the bench profile,
/// which is the release profile).
pub struct Jetway {
    pub child: Child,
    pub api: String,
    pub metrics: String,
    pub ready_after: Duration,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Jetway {
    /// Writes the config, starts `jetway run --config` and waits for
    /// `/readyz` 200, timing it from the spawn.
    pub async fn start(yaml: &str) -> Res<Jetway> {
        Jetway::start_bin(env!("CARGO_BIN_EXE_jetway"), yaml, &[]).await
    }

    /// The same with another jetway binary (e.g. a build of an earlier
    /// commit, or with another allocator, to compare in one run) and more
    /// environment (e.g. allocator settings).
    pub async fn start_bin(bin: &str, yaml: &str, env: &[(String, String)]) -> Res<Jetway> {
        let dir = tempfile::Builder::new()
            .prefix("jetway-bench-")
            .tempdir()
            .ctx("creating the jetway folder")?;
        let api = format!("127.0.0.1:{}", free_port());
        let metrics = format!("127.0.0.1:{}", free_port());
        let path = dir.path().join("jetway.yaml");
        std::fs::write(
            &path,
            format!("{yaml}\napi: {{ listen: \"{api}\" }}\nmetrics: {{ listen: \"{metrics}\" }}\n"),
        )
        .ctx("writing the jetway config")?;
        let log = dir.path().join("jetway.log");
        let log_file = std::fs::File::create(&log).ctx("creating the jetway log")?;
        // JETWAY_BENCH_WRAP="valgrind --tool=callgrind ..." runs jetway under
        // a profiler (figures then say nothing; the profile does).
        let wrap: Vec<String> = std::env::var("JETWAY_BENCH_WRAP")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let ready_within = if wrap.is_empty() {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(300)
        };
        let started = Instant::now();
        let mut command = match wrap.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(bin);
                c
            }
            None => Command::new(bin),
        };
        // JETWAY_* would override the config (JETWAY_BENCH_QUICK would be
        // read as a key), RUST_LOG its log level, OTEL_* its span export:
        // only the file counts.
        for (key, _) in std::env::vars_os() {
            let name = key.to_string_lossy();
            if name.starts_with("JETWAY_") || name.starts_with("OTEL_") || key == "RUST_LOG" {
                command.env_remove(key);
            }
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let child = command
            .args(["run", "--config"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log_file)
            .kill_on_drop(true)
            .spawn()
            .ctx("spawning target/release/jetway")?;
        let mut j = Jetway {
            child,
            api,
            metrics,
            ready_after: Duration::ZERO,
            log,
            _dir: dir,
        };
        let http = reqwest::Client::new();
        let url = format!("http://{}/readyz", j.metrics);
        let until = Instant::now() + ready_within;
        loop {
            if let Ok(r) = http.get(&url).send().await {
                if r.status() == 200 {
                    break;
                }
            }
            if let Ok(Some(status)) = j.child.try_wait() {
                return Err(format!(
                    "jetway exited before it was ready ({status}); log:\n{}",
                    j.log_tail()
                ));
            }
            if Instant::now() > until {
                return Err(format!(
                    "jetway not ready within {ready_within:?}; log:\n{}",
                    j.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        j.ready_after = started.elapsed();
        Ok(j)
    }

    pub fn pid(&self) -> Res<u32> {
        self.child
            .id()
            .ok_or_else(|| "jetway is no longer running".to_string())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// SIGTERM, then the exit status within `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> Res<Option<i32>> {
        let pid = self.pid()?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .ctx("sending SIGTERM to jetway")?;
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(status) => Ok(status.ctx("waiting for jetway")?.code()),
            Err(_) => Err(format!("jetway did not exit within {grace:?} of SIGTERM")),
        }
    }
}

/// This bench binary started again in a baseline role (`__role ...`): a
/// separate process like jetway, so that /proc figures compare.
pub struct Role {
    pub child: Child,
    stdin: Option<ChildStdin>,
    pub ready_line: String,
}

impl Role {
    pub async fn start(args: &[String]) -> Res<Role> {
        let exe = std::env::current_exe().ctx("locating the bench binary")?;
        let mut child = Command::new(exe)
            .arg("__role")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .ctx("spawning a baseline process")?;
        let stdout = child
            .stdout
            .take()
            .ok_or("no stdout of the baseline process")?;
        let mut lines = BufReader::new(stdout).lines();
        let ready_line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .map_err(|_| format!("baseline {args:?} did not report ready within 30 s"))?
            .ctx("reading the baseline's stdout")?
            .ok_or_else(|| format!("baseline {args:?} exited before it was ready"))?;
        // Keep draining stdout so the child never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Role {
            stdin: child.stdin.take(),
            child,
            ready_line,
        })
    }

    pub fn pid(&self) -> Res<u32> {
        self.child
            .id()
            .ok_or_else(|| "a baseline process is no longer running".to_string())
    }

    /// Sends one line to the child (e.g. "go").
    pub async fn say(&mut self, line: &str) -> Res<()> {
        let stdin = self.stdin.as_mut().ok_or("baseline stdin closed")?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .await
            .ctx("writing to the baseline")?;
        stdin.flush().await.ctx("flushing the baseline's stdin")
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// What /proc tells about a process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    /// utime + stime in seconds.
    pub cpu_s: f64,
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

pub fn usage(pid: u32) -> Res<Usage> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ctx(&format!("reading /proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ctx(&format!("reading /proc/{pid}/stat"))?;
    // Fields after the command name, which may hold spaces: state is field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Ok(Usage {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu_s: (ticks(11) + ticks(12)) as f64 / clock_ticks(),
    })
}

/// Resets VmHWM to the current RSS, so each phase gets its own peak.
pub fn reset_peak(pid: u32) -> Res<()> {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .ctx(&format!("resetting the peak RSS of {pid}"))
}

/// Machine facts for the report.
pub fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_string())
        .unwrap_or_else(|| "unknown".into());
    let nproc = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "nproc": nproc,
        "cpu_model": model,
        "mem_mib": mem_kib / 1024,
        "kernel": kernel.trim(),
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn path_display(p: &Path) -> String {
    p.display().to_string()
}
