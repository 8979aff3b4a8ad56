//! The operator CLI (issue 17, docs/cli.md): the real `jetway` binary
//! against a running sidecar (a real nats-server, real endpoints). Output
//! is read through `--json`; the human tables are checked for their
//! headings and rows; every failure kind has its exit code.
mod common;
use common::*;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_jetway");
const TOKEN: &str = "operator-s3cret";

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {}", self.stdout))
    }
}

/// Runs `jetway ARGS` with only the environment given (the CLI's own
/// variables are cleared first, so the caller's shell cannot leak in).
async fn jetway(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args)
        .env_remove("JETWAY_CLI_API")
        .env_remove("JETWAY_CLI_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.expect("run jetway");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A sidecar with a token and two subscriptions: `emails` (always 200)
/// and `audit`, which answers 400 until `accept` is set.
struct Setup {
    _nats: Nats,
    sidecar: Sidecar,
    audit: Endpoint,
    accept: Arc<AtomicBool>,
    env: Vec<(&'static str, String)>,
}

impl Setup {
    async fn start() -> Setup {
        let nats = Nats::start();
        let emails = Endpoint::ok().await;
        let accept = Arc::new(AtomicBool::new(false));
        let flag = accept.clone();
        let audit = Endpoint::start(move |_, _| {
            let ok = flag.load(Ordering::SeqCst);
            async move {
                if ok {
                    StatusCode::OK.into_response()
                } else {
                    (StatusCode::BAD_REQUEST, "audit log refuses it").into_response()
                }
            }
        })
        .await;
        let sidecar = Sidecar::start(&config_yaml(
            &nats,
            &format!(
                "api: {{ token: {TOKEN} }}\n\
                 publish: {{ forward_headers: [x-trace-note] }}\n\
                 subscriptions:\n\
                 \x20 - {{ name: emails, subject: orders.created, endpoint: \"{}\" }}\n\
                 \x20 - {{ name: audit, subject: orders.audited, endpoint: \"{}\" }}\n",
                emails.url("/events"),
                audit.url("/events"),
            ),
        ))
        .await;
        let env = vec![
            ("JETWAY_CLI_API", format!("http://{}", sidecar.api)),
            ("JETWAY_CLI_TOKEN", TOKEN.to_string()),
        ];
        Setup {
            _nats: nats,
            sidecar,
            audit,
            accept,
            env,
        }
    }

    async fn cli(&self, args: &[&str]) -> Out {
        let env: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        jetway(args, &env).await
    }

    async fn publish(&self, subject: &str, body: &str) {
        let r = self
            .sidecar
            .http
            .post(self.sidecar.url(&format!("/v1/publish/{subject}")))
            .bearer_auth(TOKEN)
            .header("content-type", "text/plain")
            .header("x-trace-note", "cli-test")
            .body(body.to_string())
            .send()
            .await
            .expect("publish");
        assert_eq!(r.status(), 200, "publish to {subject}");
    }

    /// Publishes `n` events to `audit`, each once the one before is a dead
    /// letter (deliveries run concurrently, so only this keeps the DLQ in
    /// publish order), and returns their DLQ sequences in that order.
    async fn dead_letters(&self, n: usize) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in 0..n {
            self.publish("orders.audited", &format!("audit event {i}"))
                .await;
            seqs = eventually(&format!("{} dead letters", i + 1), || async {
                let out = self.cli(&["dlq", "list", "audit", "--json"]).await;
                let items = out.json()["items"].as_array().cloned().unwrap_or_default();
                (items.len() == i + 1).then(|| {
                    items
                        .iter()
                        .filter_map(|i| i["dlq_sequence"].as_u64())
                        .collect()
                })
            })
            .await;
        }
        seqs
    }
}

/// The dead-letter sequences `dlq list --json` reports.
async fn listed(s: &Setup) -> Vec<u64> {
    let out = s.cli(&["dlq", "list", "audit", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.json()["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["dlq_sequence"].as_u64())
        .collect()
}

fn assert_headings(table: &str, headings: &[&str]) {
    let first = table.lines().next().unwrap_or_default();
    let found: Vec<&str> = first
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(found, headings, "heading line of:\n{table}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_shows_state_pending_in_flight_and_dead_letters() {
    let s = Setup::start().await;
    s.dead_letters(2).await;

    let out = s.cli(&["subscriptions", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let subs = out.json()["subscriptions"]
        .as_array()
        .cloned()
        .expect("list");
    let audit = subs
        .iter()
        .find(|v| v["name"] == "audit")
        .expect("audit listed");
    assert_eq!(audit["dead_letters"], 2);
    assert_eq!(audit["state"], "running");
    assert!(subs.iter().any(|v| v["name"] == "emails"));

    let out = s.cli(&["subscriptions"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_headings(
        &out.stdout,
        &["NAME", "STATE", "PENDING", "IN FLIGHT", "DEAD LETTERS"],
    );
    let row: Vec<&str> = out
        .stdout
        .lines()
        .find(|l| l.starts_with("audit "))
        .expect("a row for audit")
        .split_whitespace()
        .collect();
    assert_eq!(row[0], "audit");
    assert_eq!(row[1], "running");
    assert_eq!(row.last(), Some(&"2"), "dead letters column: {row:?}");
    s.sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_show_replay_and_delete() {
    let s = Setup::start().await;
    let seqs = s.dead_letters(3).await;
    let (first, second, third) = (seqs[0], seqs[1], seqs[2]);

    // list: the API's items, and a table with one row each.
    let out = s.cli(&["dlq", "list", "audit", "--json"]).await;
    let items = out.json()["items"].as_array().cloned().expect("items");
    assert!(items
        .iter()
        .all(|i| i["reason"] == "rejected" && i["status"] == 400 && i["attempts"] == 1));
    let out = s.cli(&["dlq", "list", "audit"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_headings(
        &out.stdout,
        &["SEQUENCE", "REASON", "STATUS", "ATTEMPTS", "AGE", "ERROR"],
    );
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    let row: Vec<&str> = out
        .stdout
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(
        &row[..4],
        &[first.to_string().as_str(), "rejected", "400", "1"]
    );

    // show: headers and body.
    let out = s.cli(&["dlq", "show", "audit", &second.to_string()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("audit event 1"), "{}", out.stdout);
    assert!(
        out.stdout.contains("x-trace-note: cli-test"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("reason:    rejected"), "{}", out.stdout);
    let out = s
        .cli(&["dlq", "show", "audit", &second.to_string(), "--json"])
        .await;
    assert_eq!(out.json()["dlq_sequence"], second);
    assert_eq!(out.json()["original_subject"], "orders.audited");

    // delete, then it is gone.
    let out = s.cli(&["dlq", "delete", "audit", &first.to_string()]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out = s.cli(&["dlq", "show", "audit", &first.to_string()]).await;
    assert_eq!(out.code, 4, "show of a deleted dead letter: {}", out.stderr);

    // replay while the endpoint still refuses: it stays, exit 3.
    let out = s
        .cli(&["dlq", "replay", "audit", &second.to_string(), "--json"])
        .await;
    assert_eq!(out.code, 3, "{}", out.stderr);
    assert_eq!(out.json()["failed"], 1);
    // It failed again: stored anew (a new sequence), its attempts raised.
    let left = listed(&s).await;
    assert_eq!(left.len(), 2, "{left:?}");
    assert_eq!(left[0], third);
    let again = left[1];
    assert!(again > third, "{left:?}");
    let out = s
        .cli(&["dlq", "show", "audit", &again.to_string(), "--json"])
        .await;
    assert_eq!(out.json()["attempts"], 2, "{}", out.stdout);
    assert_eq!(out.json()["original_sequence"], 2, "{}", out.stdout);

    // The endpoint is fixed: one by sequence, then all that remain.
    s.accept.store(true, Ordering::SeqCst);
    let before = s.audit.count();
    let out = s
        .cli(&["dlq", "replay", "audit", &again.to_string(), "--json"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["replayed"], 1);
    assert_eq!(listed(&s).await, [third]);
    let out = s.cli(&["dlq", "replay", "audit"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("replayed 1, failed 0"),
        "{}",
        out.stdout
    );
    assert_eq!(s.audit.count(), before + 2, "each replay delivered once");
    let bodies: Vec<String> = s.audit.received()[before..]
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    assert_eq!(bodies, ["audit event 1", "audit event 2"]);
    assert_eq!(listed(&s).await, Vec::<u64>::new());
    s.sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_change_the_state() {
    let s = Setup::start().await;
    let out = s.cli(&["pause", "emails", "--json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.json()["state"], "paused");
    let out = s.cli(&["subscriptions", "--json"]).await;
    let emails = out.json()["subscriptions"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["name"] == "emails").cloned())
        .expect("emails");
    assert_eq!(emails["state"], "paused");
    let out = s.cli(&["resume", "emails"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout, "emails: running\n");

    let out = s.cli(&["pause", "no-such-subscription"]).await;
    assert_eq!(out.code, 4, "{}", out.stderr);
    assert!(
        out.stderr.contains("no-such-subscription"),
        "{}",
        out.stderr
    );
    s.sidecar.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_sidecar_and_bad_tokens_have_their_own_exit_codes() {
    // Nothing listens on this port.
    let nowhere = format!("127.0.0.1:{}", free_port());
    let out = jetway(&["subscriptions", "--api", &nowhere], &[]).await;
    assert_eq!(out.code, 69, "{}", out.stderr);
    assert!(
        out.stderr.contains("cannot reach the sidecar"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&nowhere), "{}", out.stderr);

    let s = Setup::start().await;
    let api = format!("http://{}", s.sidecar.api);
    let out = jetway(&["subscriptions", "--api", &api], &[]).await;
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert!(out.stderr.contains("needs a token"), "{}", out.stderr);
    let out = jetway(
        &["dlq", "list", "audit"],
        &[("JETWAY_CLI_API", &api), ("JETWAY_CLI_TOKEN", "wrong")],
    )
    .await;
    assert_eq!(out.code, 77, "{}", out.stderr);
    assert!(out.stderr.contains("refused the token"), "{}", out.stderr);
    // The flag wins over the environment.
    let out = jetway(
        &["subscriptions", "--json", "--token", TOKEN],
        &[("JETWAY_CLI_API", &api), ("JETWAY_CLI_TOKEN", "wrong")],
    )
    .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.json()["subscriptions"].is_array());
    s.sidecar.stop().await;
}
