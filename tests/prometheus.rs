//! The monitoring artefacts against a real Prometheus (issue 17): a
//! `prometheus` process on loopback scrapes a real sidecar while it
//! delivers, retries, dead-letters, lags behind an endpoint that is down,
//! loses NATS and sheds publishes; then every query of the Grafana
//! dashboard (`deploy/grafana/jetway.json`, its variables included) and
//! every alert of `deploy/prometheus/alerts.yaml` is evaluated through
//! Prometheus' HTTP API: none may fail, and each must have returned data.
//! The KEDA trigger's query (`deploy/keda`) must see the lag. The scrape
//! carries the labels of the `deploy/kubernetes` example (namespace
//! `default`, job `orders-jetway-metrics`), as the KEDA query expects.
//!
//! Needs the `prometheus` binary (Debian's `prometheus` package;
//! `PROMETHEUS_BIN` overrides); `scripts/test-ecosystem.sh` installs it.
//! Without it the test says so loudly and passes.
mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// Scrape and rule evaluation interval: short, so the test is short.
const SCRAPE: &str = "1s";
/// What Grafana's `$__rate_interval` becomes at a 1 s scrape interval
/// (at least four scrapes).
const RATE_INTERVAL: &str = "10s";
/// What `$__range` (the dashboard's time range) becomes.
const RANGE: &str = "1h";

fn prometheus_bin() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("PROMETHEUS_BIN") {
        return Some(PathBuf::from(bin));
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("prometheus"))
            .find(|p| p.is_file())
    })
}

/// The rule groups of the PrometheusRule in `alerts.yaml`: its `spec`,
/// two spaces further in (as `scripts/test-ecosystem.sh` gives promtool).
fn alert_rule_groups() -> String {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/prometheus/alerts.yaml"))
        .expect("read deploy/prometheus/alerts.yaml");
    let mut lines = text.lines().skip_while(|l| *l != "spec:");
    assert!(lines.next().is_some(), "alerts.yaml has no spec:");
    lines
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A Prometheus server: a child process, killed on drop.
struct Prometheus {
    child: Child,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    async fn start(bin: &Path, target: std::net::SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let rules = dir.path().join("alerts.rules.yaml");
        std::fs::write(&rules, alert_rule_groups()).expect("write rules");
        // The labels a Prometheus Operator scrape adds, so the dashboard's
        // variables and the alerts' `by (namespace, job, pod)` see them.
        let config = format!(
            "global: {{ scrape_interval: {SCRAPE}, evaluation_interval: {SCRAPE} }}\n\
             rule_files: [\"{}\"]\n\
             scrape_configs:\n\
             \x20 - job_name: orders-jetway-metrics\n\
             \x20   static_configs:\n\
             \x20     - targets: [\"{target}\"]\n\
             \x20       labels: {{ namespace: default, pod: orders-1 }}\n",
            rules.display()
        );
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, config).expect("write config");
        let port = free_port();
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let p = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            _dir: dir,
        };
        eventually("prometheus ready", || async {
            let r = p.http.get(format!("{}/-/ready", p.base)).send().await;
            matches!(r, Ok(r) if r.status() == 200).then_some(())
        })
        .await;
        p
    }

    /// GET an API path; the `data` of a success, or the error text.
    async fn api(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .query(query)
            .send()
            .await
            .map_err(|e| format!("request: {e}"))?;
        let body: Value = r.json().await.map_err(|e| format!("body: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("{}: {}", body["errorType"], body["error"]));
        }
        if let Some(w) = body.get("warnings") {
            return Err(format!("warnings: {w}"));
        }
        Ok(body["data"].clone())
    }

    /// The instant value of a query that returns one number (or none).
    async fn value(&self, query: &str) -> Option<f64> {
        let data = self
            .api("/api/v1/query", &[("query", query.to_string())])
            .await
            .ok()?;
        data["result"][0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits until `query` returns a value that satisfies `ok`.
    async fn wait_for(&self, query: &str, ok: impl Fn(f64) -> bool) {
        eventually(&format!("prometheus: {query}"), || async {
            self.value(query).await.filter(|v| ok(*v)).map(|_| ())
        })
        .await;
    }

    /// Evaluates `query` over `[start, now]` at every scrape: an error,
    /// or how many finite values it returned.
    async fn finite_values(&self, query: &str, start: f64) -> Result<usize, String> {
        let data = self
            .api(
                "/api/v1/query_range",
                &[
                    ("query", query.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{:.3}", now())),
                    ("step", "1".to_string()),
                ],
            )
            .await?;
        let series = data["result"].as_array().cloned().unwrap_or_default();
        Ok(series
            .iter()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v[1].as_str().and_then(|s| s.parse::<f64>().ok()))
            .filter(|v| v.is_finite())
            .count())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// The query of the KEDA Prometheus trigger (one `query: '...'` line).
fn keda_query() -> String {
    let text =
        std::fs::read_to_string(Path::new(ROOT).join("deploy/keda/scaledobject-prometheus.yaml"))
            .expect("read deploy/keda/scaledobject-prometheus.yaml");
    text.lines()
        .find_map(|l| l.trim().strip_prefix("query: "))
        .map(|q| q.trim_matches('\'').to_string())
        .expect("a query: line")
}

/// A dashboard query with Grafana's variables as Grafana fills them with
/// "All" selected (`allValue: .*`).
fn grafana_expand(expr: &str) -> String {
    expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", RANGE)
        .replace("$namespace", ".*")
        .replace("$job", ".*")
        .replace("$stream", ".*")
        .replace("$subscription", ".*")
}

/// A dashboard variable `label_values(selector, label)`.
struct Variable {
    name: String,
    selector: String,
    label: String,
}

/// Every query of the dashboard: the panels' targets (title, expr) and
/// the variables.
fn dashboard() -> (Vec<(String, String)>, Vec<Variable>) {
    let text = std::fs::read_to_string(Path::new(ROOT).join("deploy/grafana/jetway.json"))
        .expect("read deploy/grafana/jetway.json");
    let d: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut panels = Vec::new();
    let mut stack: Vec<&Value> = d["panels"].as_array().expect("panels").iter().collect();
    while let Some(p) = stack.pop() {
        // Rows keep their collapsed panels inside.
        if let Some(inner) = p["panels"].as_array() {
            stack.extend(inner);
        }
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                let title = p["title"].as_str().unwrap_or("?");
                panels.push((format!("{title} [{}]", t["refId"]), expr.to_string()));
            }
        }
    }
    let mut variables = Vec::new();
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) else {
            continue;
        };
        let Some(args) = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
        else {
            continue;
        };
        let (selector, label) = args
            .rsplit_once(',')
            .expect("label_values(selector, label)");
        variables.push(Variable {
            name: v["name"].as_str().unwrap_or("?").to_string(),
            selector: grafana_expand(selector.trim()),
            label: label.trim().to_string(),
        });
    }
    (panels, variables)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_and_alert_queries_return_data_from_a_real_prometheus() {
    let Some(bin) = prometheus_bin() else {
        eprintln!(
            "\n\n!!! SKIPPED tests/prometheus.rs: no `prometheus` binary on PATH (or PROMETHEUS_BIN).\n\
             !!! Install Debian's prometheus package (scripts/test-ecosystem.sh does).\n\n"
        );
        return;
    };
    let (panels, variables) = dashboard();
    assert!(
        panels.len() >= 10,
        "only {} dashboard queries found",
        panels.len()
    );

    let mut nats = Nats::start();
    // ORDERS made beforehand in memory: jetway uses it as it is, and warns
    // (memory_storage) on every server version.
    nats.client()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            duplicate_window: std::time::Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("create ORDERS");
    let ok = Endpoint::ok().await;
    // The first attempt of every message fails: each one is retried once.
    let flaky = Endpoint::start(|r, _| {
        let first = r.header("jetway-attempt").as_deref() == Some("1");
        async move {
            if first {
                StatusCode::SERVICE_UNAVAILABLE.into_response()
            } else {
                StatusCode::OK.into_response()
            }
        }
    })
    .await;
    let rejects = Endpoint::start(|_, _| async { StatusCode::BAD_REQUEST.into_response() }).await;
    // Nothing listens here: the subscription pauses and its lag grows.
    let down = format!("http://127.0.0.1:{}/events", free_port());
    let retry = "retry: { initial_backoff: 100ms, max_backoff: 1s, jitter: 0 }";
    let sidecar = Sidecar::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n\
             \x20 - {{ name: emails, subject: orders.ok, endpoint: \"{}\", {retry} }}\n\
             \x20 - {{ name: billing, subject: orders.flaky, endpoint: \"{}\", {retry} }}\n\
             \x20 - {{ name: audit, subject: orders.rejected, endpoint: \"{}\", {retry} }}\n\
             \x20 - {{ name: order-emails, subject: orders.down, endpoint: \"{down}\", {retry} }}\n",
            ok.url("/events"),
            flaky.url("/events"),
            rejects.url("/events"),
        ),
    ))
    .await;

    let prometheus = Prometheus::start(&bin, sidecar.metrics).await;
    let start = now();
    prometheus
        .wait_for(r#"up{job="orders-jetway-metrics"}"#, |v| v == 1.0)
        .await;

    // Traffic: deliveries, retries, dead letters, lag.
    let publish_all = |subject: &'static str, n: usize| {
        let sidecar = &sidecar;
        async move {
            for _ in 0..n {
                let r = sidecar.publish(subject, b"{\"order\":1}").await;
                assert_eq!(r.status(), 200, "publish to {subject}");
            }
        }
    };
    publish_all("orders.ok", 20).await;
    publish_all("orders.flaky", 10).await;
    publish_all("orders.rejected", 5).await;
    // The first messages to `order-emails` find its endpoint down: it pauses
    // (what it fetched stays in flight, not pending). Then the lag grows.
    publish_all("orders.down", 5).await;
    prometheus
        .wait_for(r#"jetway_endpoint_up{subscription="order-emails"}"#, |v| {
            v == 0.0
        })
        .await;
    publish_all("orders.down", 150).await;
    prometheus
        .wait_for(
            r#"jetway_consumer_pending{subscription="order-emails"}"#,
            |v| v > 100.0,
        )
        .await;
    prometheus
        .wait_for(r#"sum(jetway_deliveries_total{outcome="success"})"#, |v| {
            v >= 30.0
        })
        .await;
    prometheus
        .wait_for(
            r#"jetway_deliveries_total{subscription="billing",outcome="retry"}"#,
            |v| v >= 10.0,
        )
        .await;
    prometheus
        .wait_for(
            r#"jetway_dead_letters_total{subscription="audit",reason="rejected"}"#,
            |v| v >= 5.0,
        )
        .await;

    // An operator deletes a consumer: jetway creates it again.
    nats.client()
        .await
        .delete_consumer_from_stream("test-emails", "ORDERS")
        .await
        .expect("delete consumer");
    prometheus
        .wait_for(r#"sum(jetway_consumer_recreated_total)"#, |v| v >= 1.0)
        .await;
    prometheus
        .wait_for(r#"jetway_stream_warnings{stream="ORDERS"}"#, |v| v >= 1.0)
        .await;

    // NATS goes away: publishes are refused (503, counted `unavailable`).
    nats.stop();
    prometheus
        .wait_for("jetway_nats_connected", |v| v == 0.0)
        .await;
    let refused = |n: usize| {
        let sidecar = &sidecar;
        async move {
            for _ in 0..n {
                let r = sidecar.publish("orders.ok", b"{}").await;
                assert_eq!(r.status(), 503, "publish without NATS");
            }
        }
    };
    refused(1).await;
    let unavailable = r#"sum(jetway_publish_total{outcome="unavailable"})"#;
    prometheus.wait_for(unavailable, |v| v >= 1.0).await;
    refused(40).await;
    prometheus.wait_for(unavailable, |v| v >= 41.0).await;
    // Two more scrapes, so the range queries below end after that sample.
    let seen = now();
    prometheus
        .wait_for(r#"timestamp(up{job="orders-jetway-metrics"})"#, |t| {
            t > seen + 2.0
        })
        .await;

    // Every alert was loaded, evaluates without error, and has fired its
    // expression at some point of this run.
    let rules = prometheus
        .api("/api/v1/rules", &[])
        .await
        .expect("rules API");
    let alerts: Vec<(String, String)> = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            let name = r["name"].as_str().unwrap_or("?").to_string();
            assert_eq!(r["health"], "ok", "rule {name}: {}", r["lastError"]);
            (name, r["query"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    let names: Vec<&str> = alerts.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), 7, "alerts loaded from alerts.yaml: {names:?}");

    // The KEDA trigger sees the lag of the consumer, once.
    let keda = keda_query();
    let lag = prometheus.value(&keda).await;
    assert!(lag.is_some_and(|v| v > 100.0), "KEDA query {keda}: {lag:?}");

    let mut failures = Vec::new();
    for (what, query) in alerts
        .iter()
        .map(|(n, q)| (format!("alert {n}"), q.clone()))
        .chain(
            panels
                .iter()
                .map(|(t, e)| (format!("panel {t}"), grafana_expand(e))),
        )
    {
        match prometheus.finite_values(&query, start).await {
            Ok(0) => failures.push(format!("{what}: no data\n    {query}")),
            Ok(_) => {}
            Err(e) => failures.push(format!("{what}: {e}\n    {query}")),
        }
    }
    for Variable {
        name,
        selector,
        label,
    } in &variables
    {
        match prometheus
            .api(
                &format!("/api/v1/label/{label}/values"),
                &[
                    ("match[]", selector.clone()),
                    ("start", format!("{start:.3}")),
                ],
            )
            .await
        {
            Ok(v) if v.as_array().is_some_and(|a| !a.is_empty()) => {}
            Ok(v) => failures.push(format!("variable {name}: no values ({v})\n    {selector}")),
            Err(e) => failures.push(format!("variable {name}: {e}\n    {selector}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} queries failed:\n{}",
        failures.len(),
        alerts.len() + panels.len() + variables.len(),
        failures.join("\n")
    );
    eprintln!(
        "prometheus: {} alerts, {} panel queries and {} variables evaluated with data",
        alerts.len(),
        panels.len(),
        variables.len()
    );
    drop(prometheus);
    tokio::time::timeout(Duration::from_secs(30), sidecar.stop())
        .await
        .ok();
}
