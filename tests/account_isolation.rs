//! Many teams share one NATS account (issue 10, SPEC 3): a sidecar's
//! publish routes reach its app's events and nothing else. No JetStream
//! API call, no forged dead letter, no message to a core NATS service; a
//! publish goes out only when a stream is known to capture it.
mod common;
use common::*;

use std::time::Duration;

use futures::StreamExt;
use serde_json::{json, Value};

/// Subjects an app must never reach through its sidecar, raw and
/// percent-encoded as a client library might send them.
const RESERVED: &[&str] = &[
    "$JS.API.STREAM.DELETE.ORDERS",
    "%24JS.API.STREAM.DELETE.ORDERS",
    "$JS.API.CONSUMER.DELETE.ORDERS.test-mail",
    "$JS.API.STREAM.PURGE.JETWAY_DLQ",
    "$KV.JETWAY_SCHEMAS.order.created",
    "$O.files.x",
    "$SYS.REQ.SERVER.PING",
    "_INBOX.forged.reply",
    "jetway.dlq.victim.hook",
    "jetway.dlq.test.mail",
];

fn with_subscription(nats: &Nats, endpoint: &Endpoint) -> String {
    config_yaml(
        nats,
        &format!(
            "subscriptions:\n  - {{ name: mail, subject: \"orders.>\", endpoint: \"{}\" }}\n",
            endpoint.url("/")
        ),
    )
}

async fn error_code(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("json");
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_subjects_are_403_on_both_routes_and_touch_nothing() {
    let nats = Nats::start();
    let endpoint = Endpoint::ok().await;
    let s = Sidecar::start(&with_subscription(&nats, &endpoint)).await;
    let js = nats.client().await;
    // A core subscriber on every reserved subject the test can listen to:
    // nothing may reach it.
    let core = nats.core_client().await;
    let mut spy = core.subscribe("_INBOX.forged.>").await.expect("subscribe");
    let mut spy_dlq = core.subscribe("jetway.dlq.>").await.expect("subscribe");
    core.flush().await.expect("flush");

    for subject in RESERVED {
        let r = s.publish(subject, b"{\"evil\":true}").await;
        assert_eq!(
            error_code(r).await,
            (403, "subject_reserved".to_string()),
            "{subject}"
        );
    }
    // The batch route: each reserved item fails on its own, the good one is
    // stored.
    let mut items: Vec<Value> = RESERVED
        .iter()
        .filter(|s| !s.contains('%'))
        .map(|s| json!({"subject": s, "data": {"evil": true}}))
        .collect();
    items.push(json!({"subject": "orders.ok", "data": {"fine": true}}));
    let r = s
        .http
        .post(s.url("/v1/publish"))
        .json(&items)
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 207);
    let body: Value = r.json().await.expect("json");
    let results = body["results"].as_array().expect("results");
    for (i, result) in results.iter().enumerate().take(results.len() - 1) {
        assert_eq!(
            result["error"]["code"], "subject_reserved",
            "item {i}: {result}"
        );
    }
    assert_eq!(results.last().expect("last")["stream"], "ORDERS");

    // Everything is still there, as it was.
    let mut orders = js.get_stream("ORDERS").await.expect("ORDERS still exists");
    assert_eq!(orders.info().await.expect("info").state.messages, 1);
    orders
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("test-mail")
        .await
        .expect("the consumer still exists");
    let mut dlq = js.get_stream("JETWAY_DLQ").await.expect("DLQ exists");
    assert_eq!(dlq.info().await.expect("info").state.messages, 0);
    core.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spy.next())
            .await
            .is_err(),
        "a forged reply reached an inbox"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), spy_dlq.next())
            .await
            .is_err(),
        "a forged dead letter was sent"
    );
    let forbidden = s
        .metric("jetway_publish_total", &[("outcome", "forbidden")])
        .await;
    assert!(
        forbidden >= (RESERVED.len() * 2 - 2) as f64,
        "forbidden counted {forbidden}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_no_stream_captures_is_404_without_a_message_on_the_wire() {
    let nats = Nats::start();
    let s = Sidecar::start(&config_yaml(&nats, "")).await;
    // A request/reply service of another team, on a subject no stream
    // captures.
    let core = nats.core_client().await;
    let mut service = core.subscribe("billing.>").await.expect("subscribe");
    core.flush().await.expect("flush");
    for _ in 0..3 {
        let r = s.publish("billing.charge", b"{\"amount\":100}").await;
        assert_eq!(error_code(r).await, (404, "no_stream".to_string()));
    }
    let r = s
        .http
        .post(s.url("/v1/publish"))
        .json(&json!([{"subject": "billing.refund", "data": 1}]))
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 207);
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["results"][0]["error"]["code"], "no_stream");
    core.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), service.next())
            .await
            .is_err(),
        "the service received a publish"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_created_after_start_is_found() {
    let nats = Nats::start();
    let allow = "publish: { allow: [\"orders.>\", \"payments.>\"] }\n";
    let s = Sidecar::start(&config_yaml(&nats, allow)).await;
    let r = s.publish("payments.made", b"{}").await;
    assert_eq!(error_code(r).await, (404, "no_stream".to_string()));
    let js = nats.client().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "PAYMENTS".into(),
        subjects: vec!["payments.>".into()],
        ..Default::default()
    })
    .await
    .expect("create PAYMENTS");
    // The miss is remembered for a moment, then the server is asked again.
    let stored: Value = eventually("PAYMENTS found", || {
        let s = &s;
        async move {
            let r = s.publish("payments.made", b"{}").await;
            (r.status() == 200).then_some(())?;
            r.json().await.ok()
        }
    })
    .await;
    assert_eq!(stored["stream"], "PAYMENTS");
    let mut payments = js.get_stream("PAYMENTS").await.expect("PAYMENTS");
    assert_eq!(payments.info().await.expect("info").state.messages, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_that_is_not_a_pub_ack_is_502_never_503() {
    let nats = Nats::start();
    let allow = "publish: { allow: [\"orders.>\", \"svc.>\"] }\n";
    let s = Sidecar::start(&config_yaml(&nats, allow)).await;
    // A stream that sends no PubAck, and a core service that answers on
    // the same subject: the only answer jetway gets is not a PubAck.
    let js = nats.client().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "SVC".into(),
        subjects: vec!["svc.>".into()],
        no_ack: true,
        ..Default::default()
    })
    .await
    .expect("create SVC");
    let core = nats.core_client().await;
    let mut service = core.subscribe("svc.ping").await.expect("subscribe");
    core.flush().await.expect("flush");
    let responder = tokio::spawn(async move {
        while let Some(m) = service.next().await {
            if let Some(reply) = m.reply {
                let _ = core.publish(reply, "pong".into()).await;
                let _ = core.flush().await;
            }
        }
    });
    let r = s.publish("svc.ping", b"{}").await;
    let (status, code) = error_code(r).await;
    assert_eq!((status, code.as_str()), (502, "bad_gateway"));
    // It was stored all the same: "outcome unknown" was the right answer.
    let mut svc = js.get_stream("SVC").await.expect("SVC");
    assert_eq!(svc.info().await.expect("info").state.messages, 1);
    responder.abort();
    s.stop().await;
}

/// The least-privilege list names only this app's own streams, consumers,
/// dead letters and inbox (that a sidecar works with exactly this list is
/// shown by the publish and delivery suites run with
/// `NATS_LEAST_PRIVILEGE=1`, see scripts/test.sh).
#[test]
fn the_least_privilege_list_reaches_nothing_of_other_apps() {
    let yaml = "app_id: test\nstreams:\n  - { name: ORDERS, subjects: [\"orders.>\"] }\n\
                subscriptions:\n  - { name: mail, subject: orders.created, endpoint: \"http://127.0.0.1:1/\" }\n";
    let config = jetway::Config::from_yaml(yaml, Vec::new()).expect("config");
    let permissions = jetway::permissions::for_config(&config);
    let forbidden = [
        "$JS.API.STREAM.DELETE.OTHER",
        "$JS.API.STREAM.DELETE.ORDERS",
        "$JS.API.STREAM.PURGE.ORDERS",
        "$JS.API.STREAM.INFO.OTHER",
        "$JS.API.CONSUMER.DELETE.OTHER.x",
        // Pulling from another consumer of the app's own stream is allowed
        // (reads pull server-named consumers; docs/security.md says what
        // that reaches); acking or deleting it is not, nor any other stream.
        "$JS.API.CONSUMER.DELETE.ORDERS.victim-mail",
        "$JS.API.CONSUMER.MSG.NEXT.OTHER.victim-mail",
        "$JS.API.CONSUMER.CREATE.OTHER",
        "$JS.ACK.ORDERS.victim-mail.1.1.1.1.1",
        "$KV.JETWAY_SCHEMAS.order.created",
        "jetway.dlq.victim.hook",
        "other.event",
    ];
    for subject in &permissions.publish {
        for f in forbidden {
            assert!(
                !jetway::subject::matches(subject, f),
                "{subject} allows {f}"
            );
        }
    }
    for subject in &permissions.subscribe {
        assert!(
            !jetway::subject::matches(subject, "_INBOX.abc"),
            "{subject} reads other inboxes"
        );
    }
}

/// The shipped user of `deploy/nats/jetway-permissions.conf` holds exactly
/// what `jetway permissions` prints for the example config, and
/// nats-server accepts the file.
#[test]
fn the_shipped_permissions_match_the_example_config() {
    let root = env!("CARGO_MANIFEST_DIR");
    let configmap = std::fs::read_to_string(format!("{root}/deploy/kubernetes/configmap.yaml"))
        .expect("configmap");
    let (_, body) = configmap
        .split_once("jetway.yaml: |\n")
        .expect("jetway.yaml key");
    let dir = tempfile::tempdir().expect("tempdir");
    let creds = dir.path().join("nats.creds");
    std::fs::write(&creds, "").expect("creds");
    let yaml: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "/var/run/secrets/jetway/nats.creds",
            &creds.display().to_string(),
        );
    let config = jetway::Config::from_yaml(&yaml, Vec::new()).expect("example config");
    let block = jetway::permissions::for_config(&config).to_server_config();
    let indented: String = block.lines().map(|l| format!("        {l}\n")).collect();
    let shipped = std::fs::read_to_string(format!("{root}/deploy/nats/jetway-permissions.conf"))
        .expect("shipped permissions");
    assert!(
        shipped.contains(&indented),
        "deploy/nats/jetway-permissions.conf is out of date; regenerate it with \
         `jetway permissions --config` on the example config:\n{indented}"
    );
    let check = std::process::Command::new(nats_server_bin())
        .args(["-t", "-c"])
        .arg(format!("{root}/deploy/nats/jetway-permissions.conf"))
        .env("ORDERS_JETWAY_PASSWORD", "x")
        .output()
        .expect("nats-server -t");
    assert!(
        check.status.success(),
        "nats-server refuses the file: {}",
        String::from_utf8_lossy(&check.stderr)
    );
}

/// `jetway permissions --config FILE` prints the block for that config.
#[test]
fn jetway_permissions_prints_the_block_of_its_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jetway.yaml");
    let yaml = "app_id: shop\nstreams:\n  - { name: CARTS, subjects: [\"carts.>\"] }\n";
    std::fs::write(&path, yaml).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jetway"))
        .args(["permissions", "--config"])
        .arg(&path)
        .output()
        .expect("run jetway permissions");
    assert!(out.status.success());
    let config = jetway::Config::from_yaml(yaml, Vec::new()).expect("config");
    let want = jetway::permissions::for_config(&config).to_server_config();
    assert_eq!(String::from_utf8_lossy(&out.stdout), want);
    assert!(want.contains("\"carts.>\"") && want.contains("\"_INBOX_shop.>\""));
}
