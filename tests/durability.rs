//! Durability checks (SPEC 11, issue 15): `GET /v1/streams` asks the server
//! each time and says what falls short of at-least-once.
mod common;
use common::*;

use serde_json::Value;

fn server_is_outdated() -> bool {
    let out = std::process::Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .expect("nats-server --version");
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last().unwrap_or_default();
    jetway::durability::parse_version(version).expect("a version") < jetway::durability::SAFE_SERVER
}

fn codes(stream: &Value) -> Vec<String> {
    stream["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w["code"].as_str().expect("code").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_list_what_falls_short_of_at_least_once() {
    let nats = Nats::start();
    let yaml = format!(
        "app_id: test\n\
         nats: {{ url: \"{}\", request_timeout: 2s }}\n\
         streams:\n\
         \x20 - {{ name: ORDERS, subjects: [\"orders.>\"], duplicate_window: 2m }}\n\
         \x20 - {{ name: CACHE, subjects: [\"cache.>\"], storage: memory, duplicate_window: 1s }}\n",
        nats.url()
    );
    let s = Sidecar::start(&yaml).await;
    assert_eq!(s.publish("orders.created", b"{}").await.status(), 200);
    // The registry's bucket is created beside the start: poll until it is.
    let body: Value = eventually("GET /v1/streams with the schema bucket", || {
        let s = &s;
        async move {
            let r = s.http.get(s.url("/v1/streams")).send().await.ok()?;
            if r.status() != 200 {
                return None;
            }
            r.json().await.ok()
        }
    })
    .await;
    let streams = body["streams"].as_array().expect("streams");
    let names: Vec<&str> = streams.iter().filter_map(|s| s["name"].as_str()).collect();
    assert_eq!(
        names,
        ["ORDERS", "CACHE", "JETWAY_DLQ", "KV_JETWAY_SCHEMAS"]
    );
    let bucket = &streams[3];
    assert_eq!(bucket["subjects"][0], "$KV.JETWAY_SCHEMAS.>");
    assert_eq!(bucket["storage"], "file");
    let outdated = server_is_outdated();
    let with_version = |mut c: Vec<&'static str>| -> Vec<&'static str> {
        if outdated {
            c.push("server_outdated");
        }
        c
    };
    let orders = &streams[0];
    assert_eq!(orders["storage"], "file");
    assert_eq!(orders["replicas"], 1);
    assert_eq!(orders["messages"], 1);
    assert!(orders["bytes"].as_u64().expect("bytes") > 0);
    assert_eq!(orders["subjects"][0], "orders.>");
    // One server: no cluster, so one replica is no shortfall.
    assert!(orders["cluster"].is_null());
    assert_eq!(codes(orders), with_version(Vec::new()));
    let cache = &streams[1];
    assert_eq!(
        codes(cache),
        with_version(vec!["memory_storage", "duplicate_window_short"])
    );
    for w in cache["warnings"].as_array().expect("warnings") {
        assert!(!w["message"].as_str().expect("message").is_empty());
    }
    // The gauge counts them, per stream.
    assert_eq!(
        s.metric("jetway_stream_warnings", &[("stream", "CACHE")])
            .await,
        codes(cache).len() as f64
    );
    assert_eq!(
        s.metric("jetway_stream_warnings", &[("stream", "ORDERS")])
            .await,
        codes(orders).len() as f64
    );
    // Warnings never fail readiness.
    let ready = s
        .http
        .get(format!("http://{}/readyz", s.metrics))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_answer_503_while_nats_is_away() {
    let mut nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    nats.stop();
    let r = eventually("503 from /v1/streams", || {
        let s = &s;
        async move {
            let r = s.http.get(s.url("/v1/streams")).send().await.ok()?;
            (r.status() == 503).then_some(r)
        }
    })
    .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "nats_unavailable");
}
