//! The schema registry and typed publishing (SPEC section 9) against a real
//! nats-server and real HTTP.

mod common;

use std::collections::BTreeSet;
use std::process::Command;

use common::{config_yaml, eventually, Nats, Process, Sidecar};
use serde_json::{json, Value};

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
    text: String,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
        text,
    }
}

fn order_v1() -> Value {
    json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "qty": {"type": "integer", "minimum": 1},
            "items": {"type": "array", "items": {"type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}}
        },
        "required": ["id", "qty"]
    })
}

fn order_v2() -> Value {
    let mut v = order_v1();
    v["properties"]["coupon"] = json!({"type": "string"});
    v
}

async fn register(s: &Sidecar, t: &str, schema: &Value, query: &str) -> Answer {
    answer(
        s.http
            .post(s.url(&format!("/v1/schemas/{t}/versions{query}")))
            .json(schema)
            .send()
            .await
            .expect("register"),
    )
    .await
}

async fn get(s: &Sidecar, path: &str) -> Answer {
    answer(s.http.get(s.url(path)).send().await.expect("get")).await
}

async fn publish_typed(s: &Sidecar, t: &str, body: Value, pinned: Option<&str>) -> Answer {
    let mut req = s
        .http
        .post(s.url("/v1/publish/orders.created"))
        .header("content-type", "application/json")
        .header("ce-specversion", "1.0")
        .header("ce-id", format!("{}", rand_id()))
        .header("ce-source", "test")
        .header("ce-type", t)
        .body(body.to_string());
    if let Some(v) = pinned {
        req = req.header("jetway-schema-version", v);
    }
    answer(req.send().await.expect("publish")).await
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

async fn stored_headers(nats: &Nats, seq: u64) -> async_nats::HeaderMap {
    let js = nats.client().await;
    let stream = js.get_stream("ORDERS").await.expect("ORDERS exists");
    stream
        .get_raw_message(seq)
        .await
        .expect("stored message")
        .headers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_registered_checked_and_read_back() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;

    let a = register(&s, "order.created", &order_v1(), "").await;
    assert_eq!(
        (a.status, a.body.clone()),
        (201, json!({"type": "order.created", "version": 1}))
    );
    // Identical (as canonical JSON, keys in another order): nothing new.
    let reordered: Value =
        serde_json::from_str(&serde_json::to_string_pretty(&order_v1()).expect("json"))
            .expect("json");
    let a = register(&s, "order.created", &reordered, "").await;
    assert_eq!((a.status, a.body["version"].clone()), (200, json!(1)));
    // A dry run answers what the real call would, and stores nothing.
    let a = register(&s, "order.created", &order_v2(), "?dry_run=true").await;
    assert_eq!((a.status, a.body["version"].clone()), (201, json!(2)));
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions").await.body,
        json!({"versions": [1]})
    );
    let a = register(&s, "order.created", &order_v2(), "").await;
    assert_eq!((a.status, a.body["version"].clone()), (201, json!(2)));

    // Incompatible: every reason, with path, change and advice.
    let mut breaking = order_v2();
    breaking["properties"]["qty"] = json!({"type": "string"});
    breaking["required"] = json!(["id", "qty", "coupon"]);
    let dry = register(&s, "order.created", &breaking, "?dry_run=true").await;
    let a = register(&s, "order.created", &breaking, "").await;
    assert_eq!(
        (a.status, a.code()),
        (409, "schema_incompatible"),
        "{}",
        a.text
    );
    assert_eq!((dry.status, dry.code()), (409, "schema_incompatible"));
    let changes: BTreeSet<(String, String)> = a.body["error"]["violations"]
        .as_array()
        .expect("violations")
        .iter()
        .map(|v| {
            (
                v["path"].as_str().unwrap_or("").to_string(),
                v["change"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        BTreeSet::from([
            (
                "#/properties/coupon".to_string(),
                "property_added_required".to_string()
            ),
            (
                "#/properties/qty/type".to_string(),
                "type_changed".to_string()
            ),
        ])
    );
    assert!(
        a.body["error"]["violations"][0]["message"]
            .as_str()
            .unwrap_or("")
            .len()
            > 40
    );
    assert_eq!(a.body["error"]["violations"][0]["version"], 2);

    // Reads.
    let list = get(&s, "/v1/schemas").await;
    assert_eq!(
        list.body,
        json!({"types": [{"type": "order.created", "latest": 2, "versions": [1, 2], "compatibility": "backward"}]})
    );
    let v1 = get(&s, "/v1/schemas/order.created/versions/1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(v1.headers["content-type"], "application/schema+json");
    assert_eq!(v1.headers["jetway-schema-version"], "1");
    assert_eq!(v1.body, order_v1());
    let latest = get(&s, "/v1/schemas/order.created/versions/latest").await;
    assert_eq!(
        (
            latest.headers["jetway-schema-version"].to_str().ok(),
            latest.body.clone()
        ),
        (Some("2"), order_v2())
    );
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions/9").await.code(),
        "not_found"
    );
    assert_eq!(
        get(&s, "/v1/schemas/nope/versions").await.code(),
        "not_found"
    );
    assert_eq!(
        get(&s, "/v1/schemas/bad%20type/versions").await.code(),
        "bad_request"
    );

    // Refused bodies.
    let a = register(&s, "order.created", &json!({"type": "strung"}), "").await;
    assert_eq!((a.status, a.code()), (422, "schema_invalid"));
    let a = register(
        &s,
        "order.created",
        &json!({"$ref": "https://example.com/s.json"}),
        "",
    )
    .await;
    assert_eq!((a.status, a.code()), (422, "schema_invalid"));
    let a = answer(
        s.http
            .post(s.url("/v1/schemas/order.created/versions"))
            .body("not json")
            .send()
            .await
            .expect("post"),
    )
    .await;
    assert_eq!((a.status, a.code()), (400, "bad_request"));

    // Settings.
    assert_eq!(
        get(&s, "/v1/schemas/order.created/config").await.body,
        json!({"compatibility": "backward"})
    );
    let put = answer(
        s.http
            .put(s.url("/v1/schemas/order.created/config"))
            .json(&json!({"compatibility": "none"}))
            .send()
            .await
            .expect("put"),
    )
    .await;
    assert_eq!(put.status, 200);
    let bad = answer(
        s.http
            .put(s.url("/v1/schemas/order.created/config"))
            .json(&json!({"compatibility": "sideways"}))
            .send()
            .await
            .expect("put"),
    )
    .await;
    assert_eq!((bad.status, bad.code()), (400, "bad_request"));
    // Under none, the breaking change is accepted as version 3.
    let a = register(&s, "order.created", &breaking, "").await;
    assert_eq!((a.status, a.body["version"].clone()), (201, json!(3)));

    // Validation without publishing.
    let v = answer(
        s.http
            .post(s.url("/v1/schemas/order.created/validate?version=1"))
            .json(&json!({"id": "a", "qty": 0}))
            .send()
            .await
            .expect("validate"),
    )
    .await;
    assert_eq!(v.body["valid"], false);
    assert_eq!(v.body["errors"][0]["instance_path"], "/qty");
    assert_eq!(
        v.body["errors"][0]["schema_path"],
        "/properties/qty/minimum"
    );
    let v = answer(
        s.http
            .post(s.url("/v1/schemas/order.created/validate?version=1"))
            .json(&json!({"id": "a", "qty": 1}))
            .send()
            .await
            .expect("validate"),
    )
    .await;
    assert_eq!(v.body["valid"], true);
    assert_eq!(s.metric("jetway_schema_registry_versions", &[]).await, 3.0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_publishes_are_validated_and_stamped() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    assert_eq!(
        register(&s, "order.created", &order_v1(), "").await.status,
        201
    );
    assert_eq!(
        register(&s, "order.created", &order_v2(), "").await.status,
        201
    );

    let ok = publish_typed(&s, "order.created", json!({"id": "a", "qty": 2}), None).await;
    assert_eq!(ok.status, 200, "{}", ok.text);
    let headers = stored_headers(&nats, ok.body["seq"].as_u64().expect("seq")).await;
    assert_eq!(
        headers.get("Jetway-Schema-Type").map(|v| v.as_str()),
        Some("order.created")
    );
    assert_eq!(
        headers.get("Jetway-Schema-Version").map(|v| v.as_str()),
        Some("2")
    );
    let pinned = publish_typed(&s, "order.created", json!({"id": "a", "qty": 2}), Some("1")).await;
    let headers = stored_headers(&nats, pinned.body["seq"].as_u64().expect("seq")).await;
    assert_eq!(
        headers.get("Jetway-Schema-Version").map(|v| v.as_str()),
        Some("1")
    );

    let bad = publish_typed(
        &s,
        "order.created",
        json!({"id": "a", "qty": 1, "items": [{"qty": 0}]}),
        None,
    )
    .await;
    assert_eq!(
        (bad.status, bad.code()),
        (422, "schema_violation"),
        "{}",
        bad.text
    );
    assert_eq!(
        bad.body["error"]["errors"][0]["instance_path"],
        "/items/0/qty"
    );
    assert_eq!(
        bad.body["error"]["errors"][0]["schema_path"],
        "/properties/items/items/properties/qty/minimum"
    );
    let unknown = publish_typed(&s, "order.created", json!({"id": "a", "qty": 2}), Some("7")).await;
    assert_eq!(
        (unknown.status, unknown.code()),
        (400, "schema_unknown_version")
    );
    // Jetway-Event-Type and a structured CloudEvent's type.
    let structured = answer(
        s.http
            .post(s.url("/v1/publish/orders.created"))
            .header("content-type", "application/cloudevents+json")
            .body(json!({"specversion": "1.0", "id": "x1", "source": "t", "type": "order.created", "data": {"id": "a"}}).to_string())
            .send()
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(
        (structured.status, structured.code()),
        (422, "schema_violation")
    );
    let header_typed = answer(
        s.http
            .post(s.url("/v1/publish/orders.created"))
            .header("jetway-event-type", "order.created")
            .body("{\"id\": 5, \"qty\": 1}")
            .send()
            .await
            .expect("publish"),
    )
    .await;
    assert_eq!(header_typed.code(), "schema_violation");
    // Untyped and unknown types pass (unknown_types: allow).
    assert_eq!(
        s.publish("orders.created", b"not json at all")
            .await
            .status(),
        200
    );
    assert_eq!(
        publish_typed(&s, "other.type", json!({}), None)
            .await
            .status,
        200
    );

    // A batch: each item on its own.
    let batch = answer(
        s.http
            .post(s.url("/v1/publish"))
            .json(&json!([
                {"subject": "orders.created", "data": {"id": "a", "qty": 1}, "headers": {"jetway-event-type": "order.created"}},
                {"subject": "orders.created", "data": {"id": "a", "qty": 0}, "headers": {"jetway-event-type": "order.created"}},
                {"subject": "orders.created", "data": {"id": "a", "qty": 1}},
                // The type of a structured CloudEvent given as data.
                {"subject": "orders.created", "headers": {"content-type": "application/cloudevents+json"},
                 "data": {"specversion": "1.0", "type": "order.created", "source": "/t", "id": "ce-1", "data": {"id": "a", "qty": 0}}},
                {"subject": "orders.created", "headers": {"content-type": "application/cloudevents+json"},
                 "data": {"specversion": "1.0", "type": "order.created", "source": "/t", "id": "ce-2", "data": {"id": "a", "qty": 3}}}
            ]))
            .send()
            .await
            .expect("batch"),
    )
    .await;
    assert_eq!(batch.status, 207, "{}", batch.text);
    let results = batch.body["results"].as_array().expect("results");
    assert!(results[0]["seq"].is_u64());
    assert_eq!(results[1]["error"]["code"], "schema_violation");
    assert!(results[2]["seq"].is_u64());
    assert_eq!(
        results[3]["error"]["code"], "schema_violation",
        "a structured CloudEvent item is checked by its type: {}",
        batch.text
    );
    assert!(results[4]["seq"].is_u64(), "{}", batch.text);

    let text = s.metrics_text().await;
    let m = |outcome: &str, t: &str| {
        common::metric_value(
            &text,
            "jetway_schema_validations_total",
            &[("type", t), ("outcome", outcome)],
        )
        .unwrap_or(0.0)
    };
    assert_eq!(m("valid", "order.created"), 4.0);
    assert_eq!(m("invalid", "order.created"), 5.0);
    assert_eq!(m("unknown_version", "order.created"), 1.0);
    assert_eq!(m("unknown_type", "unknown"), 1.0);
    assert!(
        !s.metrics_text().await.contains("other.type"),
        "unregistered types are no label"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_types_reject_and_warn_mode() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(
        &nats,
        "schemas: { unknown_types: reject, validate: warn }\n",
    ))
    .await;
    let a = publish_typed(&s, "nobody.registered", json!({}), None).await;
    assert_eq!((a.status, a.code()), (422, "schema_unknown_type"));
    assert_eq!(
        register(&s, "order.created", &order_v1(), "").await.status,
        201
    );
    // warn: stored, typed, without the version stamp.
    let a = publish_typed(&s, "order.created", json!({"qty": "x"}), None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    let headers = stored_headers(&nats, a.body["seq"].as_u64().expect("seq")).await;
    assert_eq!(
        headers.get("Jetway-Schema-Type").map(|v| v.as_str()),
        Some("order.created")
    );
    assert!(headers.get("Jetway-Schema-Version").is_none());
    assert_eq!(
        s.metric(
            "jetway_schema_validations_total",
            &[("type", "order.created"), ("outcome", "invalid")]
        )
        .await,
        1.0
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_share_the_registry() {
    let nats = Nats::start();
    let a = Sidecar::start(&config_yaml(&nats, "")).await;
    let b = Sidecar::start(&config_yaml(&nats, "")).await;
    assert_eq!(
        register(&a, "order.created", &order_v1(), "").await.status,
        201
    );
    // b learns it through the watch, and validates with it.
    eventually("b sees version 1", || async {
        (get(&b, "/v1/schemas/order.created/versions").await.body == json!({"versions": [1]}))
            .then_some(())
    })
    .await;
    let refused = publish_typed(&b, "order.created", json!({"id": "a", "qty": 0}), None).await;
    assert_eq!(refused.code(), "schema_violation");
    // b registers the next version: a's version 1 is what it is checked against.
    let mut breaking = order_v1();
    breaking["properties"]["id"] = json!({"type": "integer"});
    assert_eq!(
        register(&b, "order.created", &breaking, "").await.code(),
        "schema_incompatible"
    );
    assert_eq!(
        register(&b, "order.created", &order_v2(), "").await.body["version"],
        2
    );
    eventually("a sees version 2", || async {
        (get(&a, "/v1/schemas/order.created/versions").await.body == json!({"versions": [1, 2]}))
            .then_some(())
    })
    .await;
    eventually("a's gauge counts 2 versions", || async {
        (a.metric("jetway_schema_registry_versions", &[]).await == 2.0).then_some(())
    })
    .await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_registrations_get_one_or_consecutive_versions() {
    let nats = Nats::start();
    let a = Sidecar::start(&config_yaml(&nats, "")).await;
    let b = Sidecar::start(&config_yaml(&nats, "")).await;
    // 20 registrations of one schema, through two sidecars: one version.
    let same = futures::future::join_all((0..20).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        async move { register(s, "order.created", &order_v1(), "").await }
    }))
    .await;
    for r in &same {
        assert!(matches!(r.status, 200 | 201), "{}", r.text);
        assert_eq!(r.body["version"], 1);
    }
    assert_eq!(same.iter().filter(|r| r.status == 201).count(), 1);
    // 20 different (compatible) schemas at once: versions 1 to 20, each once.
    let different = futures::future::join_all((0..20).map(|i| {
        let s = if i % 2 == 0 { &a } else { &b };
        let mut schema = json!({"type": "object", "properties": {"id": {"type": "string"}}});
        schema["title"] = json!(format!("variant {i}"));
        async move { register(s, "order.shipped", &schema, "").await }
    }))
    .await;
    let mut versions: Vec<u64> = different
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", r.text);
            r.body["version"].as_u64().expect("version")
        })
        .collect();
    versions.sort_unstable();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
    let stored = get(&a, "/v1/schemas/order.shipped/versions").await;
    eventually("a knows all 20", || async {
        (get(&a, "/v1/schemas/order.shipped/versions").await.body["versions"]
            .as_array()
            .map(Vec::len)
            == Some(20))
        .then_some(())
    })
    .await;
    assert!(stored.status == 200);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_outside_owns_are_forbidden_to_change_but_open_to_read() {
    let nats = Nats::start();
    let owner = Sidecar::start(&config_yaml(&nats, "schemas: { owns: [\"billing.>\"] }\n")).await;
    let other = Sidecar::start(&config_yaml(&nats, "schemas: { owns: [\"order.*\"] }\n")).await;
    assert_eq!(
        register(&owner, "billing.paid", &order_v1(), "")
            .await
            .status,
        201
    );
    let a = register(&other, "billing.paid", &order_v2(), "").await;
    assert_eq!((a.status, a.code()), (403, "forbidden"));
    let a = register(&other, "billing.paid", &order_v2(), "?dry_run=true").await;
    assert_eq!(a.status, 403);
    let put = answer(
        other
            .http
            .put(other.url("/v1/schemas/billing.paid/config"))
            .json(&json!({"compatibility": "none"}))
            .send()
            .await
            .expect("put"),
    )
    .await;
    assert_eq!((put.status, put.code()), (403, "forbidden"));
    eventually("other reads billing.paid", || async {
        (get(&other, "/v1/schemas/billing.paid/versions/1")
            .await
            .status
            == 200)
            .then_some(())
    })
    .await;
    let v = answer(
        other
            .http
            .post(other.url("/v1/schemas/billing.paid/validate"))
            .json(&json!({"id": "a", "qty": 1}))
            .send()
            .await
            .expect("validate"),
    )
    .await;
    assert_eq!(v.body["valid"], true);
    assert_eq!(
        register(&other, "order.created", &order_v1(), "")
            .await
            .status,
        201
    );
    owner.stop().await;
    other.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validation_goes_on_while_nats_is_away_and_registration_answers_503() {
    let mut nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    assert_eq!(
        register(&s, "order.created", &order_v1(), "").await.status,
        201
    );
    nats.stop();
    let bad = publish_typed(&s, "order.created", json!({"id": "a", "qty": 0}), None).await;
    assert_eq!((bad.status, bad.code()), (422, "schema_violation"));
    let good = publish_typed(&s, "order.created", json!({"id": "a", "qty": 1}), None).await;
    assert_eq!(good.status, 503);
    let a = register(&s, "order.created", &order_v2(), "").await;
    assert_eq!(
        (a.status, a.code()),
        (503, "nats_unavailable"),
        "{}",
        a.text
    );
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions").await.body,
        json!({"versions": [1]})
    );
    nats.restart();
    eventually("registration works again", || async {
        let a = register(&s, "order.created", &order_v2(), "").await;
        (matches!(a.status, 200 | 201) && a.body["version"] == 2).then_some(())
    })
    .await;
}

fn write(dir: &tempfile::TempDir, name: &str, value: &Value) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, value.to_string()).expect("write");
    path.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_registration_at_start_and_exit_64_on_a_breaking_file() {
    let nats = Nats::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = write(&dir, "v1.json", &order_v1());
    let v2 = write(&dir, "v2.json", &order_v2());
    let yaml = config_yaml(&nats, &format!("schemas:\n  register:\n    - {{ type: order.created, file: \"{v1}\" }}\n    - {{ type: order.created, file: \"{v2}\" }}\n"));
    let s = Sidecar::start(&yaml).await;
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions").await.body,
        json!({"versions": [1, 2]})
    );
    s.stop().await;
    // Starting again registers nothing new.
    let s = Sidecar::start(&yaml).await;
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions").await.body,
        json!({"versions": [1, 2]})
    );
    s.stop().await;

    let mut breaking = order_v2();
    breaking["properties"]["qty"] = json!({"type": "string"});
    let broken = write(&dir, "broken.json", &breaking);
    let mut p = Process::spawn(&config_yaml(
        &nats,
        &format!("schemas:\n  register:\n    - {{ type: order.created, file: \"{broken}\" }}\n"),
    ));
    let code = eventually("jetway exits", || {
        let status = p.child.try_wait().ok().flatten();
        async move { status }
    })
    .await;
    assert_eq!(code.code(), Some(64));
}

#[test]
fn check_reports_missing_and_invalid_schema_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let invalid = write(&dir, "invalid.json", &json!({"type": "strung"}));
    let config = dir.path().join("jetway.yaml");
    std::fs::write(
        &config,
        format!("app_id: test\nschemas:\n  register:\n    - {{ type: order.created, file: /nonexistent/x.json }}\n    - {{ type: order.created, file: \"{invalid}\" }}\n"),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_jetway"))
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("schemas.register[0].file"), "{stderr}");
    assert!(stderr.contains("schemas.register[1].file"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_cli_refuses_a_breaking_change_for_ci() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = write(&dir, "v1.json", &order_v1());
    let v2 = write(&dir, "v2.json", &order_v2());
    let mut breaking = order_v1();
    breaking["properties"]["id"] = json!({"type": "integer"});
    let broken = write(&dir, "broken.json", &breaking);
    let api = s.url("");
    let cli = move |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_jetway"))
                .args(&args)
                .output()
                .expect("run jetway schema")
        })
    };
    let args = |action: &str, file: &str| -> Vec<String> {
        [
            "schema",
            action,
            "--type",
            "order.created",
            file,
            "--api",
            &api,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect()
    };
    let out = cli(args("register", &v1)).await.expect("join");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = cli(args("check", &broken)).await.expect("join");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("#/properties/id/type type_changed"),
        "{stdout}"
    );
    let out = cli(args("check", &v2)).await.expect("join");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("would be version 2"));
    // The check stored nothing.
    assert_eq!(
        get(&s, "/v1/schemas/order.created/versions").await.body,
        json!({"versions": [1]})
    );
    s.stop().await;
    let out = cli(args("check", &v2)).await.expect("join");
    assert_eq!(
        out.status.code(),
        Some(2),
        "a sidecar that is gone is no verdict"
    );
}
