//! The `jetway` binary: `check`, `run` refusing bad configs, SIGTERM, `dev`.
mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_jetway");

fn write(dir: &tempfile::TempDir, yaml: &str) -> std::path::PathBuf {
    let path = dir.path().join("jetway.yaml");
    std::fs::write(&path, yaml).expect("write config");
    path
}

const BROKEN: &str = r#"
app_id: Not_Valid
shutdown_grace: soon
nats: { url: "nats://127.0.0.1:1" }
api: { listen: "0.0.0.0:4480", max_body: 1MB }
typo_key: 1
subscriptions:
  - { name: a, subject: "orders..x", endpoint: "http://127.0.0.1:1/" }
"#;

#[test]
fn check_lists_every_problem_and_exits_64() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, BROKEN);
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for path in [
        "app_id",
        "shutdown_grace",
        "api.listen",
        "api.max_body",
        "typo_key",
        "subscriptions[0].subject",
    ] {
        assert!(
            stderr.contains(&format!("{path}:")),
            "{path} missing from:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_the_shipped_example() {
    let out = Command::new(BIN)
        .args([
            "check",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/examples/jetway.yaml"),
        ])
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_refuses_forward_headers_that_must_not_be_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(
        &dir,
        "app_id: a\npublish:\n  forward_headers: [\"nats-rollup\", \"Nats-Msg-Id\", \"Authorization\"]\n",
    );
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for (i, name) in ["nats-rollup", "Nats-Msg-Id", "Authorization"]
        .iter()
        .enumerate()
    {
        assert!(
            stderr.contains(&format!(
                "publish.forward_headers[{i}]: `{name}` is refused"
            )),
            "{name} missing from:\n{stderr}"
        );
    }
    assert!(stderr.contains("API token"), "{stderr}");
}

#[test]
fn run_refuses_an_invalid_config_before_touching_the_network() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, BROKEN);
    for args in [vec!["run", "--config"], vec!["--config"]] {
        let out = Command::new(BIN)
            .args(&args)
            .arg(&path)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(64), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("typo_key"));
    }
}

#[test]
fn env_overrides_and_variables_apply_to_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(&dir, "app_id: a\napi: { token: \"${JW_TEST_TOKEN}\" }\n");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64), "unset variable is an error");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env("JW_TEST_TOKEN", "t")
        .env("JETWAY_API__MAX_IN_FLIGHT", "zero")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("api.max_in_flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_exits_0() {
    let nats = Nats::start();
    let mut jetway = Process::spawn(&config_yaml(&nats, ""));
    jetway.wait_ready().await;
    let http = reqwest::Client::new();
    let resp = http
        .post(jetway.url("/v1/publish/orders.created"))
        .body("x")
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 200);
    assert_eq!(jetway.terminate().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_starts_nats_and_delivers_to_its_echo_endpoint() {
    let api = free_port();
    let metrics = free_port();
    let mut child = Command::new(BIN)
        .arg("dev")
        .env("JETWAY_API__LISTEN", format!("127.0.0.1:{api}"))
        .env("JETWAY_METRICS__LISTEN", format!("127.0.0.1:{metrics}"))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn jetway dev");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let http = reqwest::Client::new();
    let ready = format!("http://127.0.0.1:{metrics}/readyz");
    eventually("jetway dev ready", || {
        let (http, ready) = (http.clone(), ready.clone());
        async move {
            http.get(&ready)
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        }
    })
    .await;
    let resp = http
        .post(format!("http://127.0.0.1:{api}/v1/publish/orders.created"))
        .header("content-type", "application/json")
        .body(r#"{"id":1}"#)
        .send()
        .await
        .expect("publish");
    assert_eq!(resp.status(), 200);
    let mut lines = Vec::new();
    let delivered = tokio::time::timeout(DEADLINE, async {
        while let Some(line) = rx.recv().await {
            lines.push(line.clone());
            if line.starts_with("delivered") && line.contains(r#"{"id":1}"#) {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        delivered,
        Ok(true),
        "no delivery printed; output: {lines:?}"
    );
    signal(child.id(), "INT");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}
