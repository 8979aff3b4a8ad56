//! The consumer is jetway's own (SPEC section 4, issue 19): a subscription
//! changed between runs updates its consumer in place where the server
//! allows it, and is a `config_conflict` where it does not, until
//! `POST /v1/subscriptions/{name}/reset`. Whether a filter can change in
//! place depends on the server: the filter test first asks the server it
//! runs on (`NATS_SERVER_BIN`) and asserts the matching behaviour.
mod common;
use common::*;

use std::net::SocketAddr;
use std::process::Command;

use async_nats::jetstream;
use serde_json::Value;
use tokio::net::TcpListener;

/// A sidecar started without waiting for `/readyz` (a conflict keeps it 503).
struct Running {
    api: SocketAddr,
    metrics: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), jetway::RunError>>,
    http: reqwest::Client,
}

impl Running {
    async fn start(yaml: &str) -> Running {
        let config = jetway::Config::from_yaml(yaml, Vec::new()).expect("valid test config");
        let api = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let metrics = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (api_addr, metrics_addr) = (
            api.local_addr().expect("addr"),
            metrics.local_addr().expect("addr"),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(jetway::run(
            config,
            jetway::Listeners { api, metrics },
            async move {
                let _ = rx.await;
            },
        ));
        Running {
            api: api_addr,
            metrics: metrics_addr,
            stop: Some(tx),
            task,
            http: reqwest::Client::new(),
        }
    }

    async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task)
            .await
            .expect("join")
            .expect("run ended cleanly");
    }

    /// `/readyz`: status and body.
    async fn readyz(&self) -> Option<(u16, String)> {
        let r = self
            .http
            .get(format!("http://{}/readyz", self.metrics))
            .send()
            .await
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.text().await.ok()?))
    }

    /// The `/v1/subscriptions` entry of `name`.
    async fn subscription(&self, name: &str) -> Option<Value> {
        let all: Value = self
            .http
            .get(format!("http://{}/v1/subscriptions", self.api))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        all["subscriptions"]
            .as_array()?
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
    }

    async fn wait_state(&self, name: &str, state: &str) -> Value {
        eventually(&format!("{name} in state {state}"), || async {
            self.subscription(name)
                .await
                .filter(|s| s["state"] == state)
        })
        .await
    }

    async fn reset(&self, name: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("http://{}/v1/subscriptions/{name}/reset", self.api))
            .send()
            .await
            .expect("reset");
        let code = r.status().as_u16();
        (code, r.json().await.expect("json"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `(major, minor)` of the nats-server the tests run.
fn server_version() -> (u64, u64) {
    let out = Command::new(nats_server_bin())
        .arg("--version")
        .output()
        .expect("nats-server --version");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .unwrap_or_else(|| panic!("no version in {text:?}"));
    let mut parts = version
        .split('.')
        .map(|p| p.parse::<u64>().expect("number"));
    (parts.next().expect("major"), parts.next().expect("minor"))
}

fn subscription(name: &str, subject: &str, endpoint: &Endpoint, extra: &str) -> String {
    format!(
        "  - {{ name: {name}, subject: \"{subject}\", endpoint: \"{}\"{extra} }}\n",
        endpoint.url("/")
    )
}

async fn publish(js: &jetstream::Context, subject: &str) -> u64 {
    js.publish(subject.to_string(), "{}".into())
        .await
        .expect("publish")
        .await
        .expect("puback")
        .sequence
}

async fn consumer(js: &jetstream::Context, name: &str) -> jetstream::consumer::Info {
    js.get_stream("ORDERS")
        .await
        .expect("stream")
        .consumer_info(name)
        .await
        .expect("consumer info")
}

/// Waits until the consumer acknowledged everything up to `seq`: any
/// message at or below it that matched its filter has reached the endpoint.
async fn wait_acked(js: &jetstream::Context, name: &str, seq: u64) {
    eventually(&format!("{name} acked through {seq}"), || async {
        let info = consumer(js, name).await;
        (info.ack_floor.stream_sequence >= seq).then_some(())
    })
    .await;
}

fn subjects(endpoint: &Endpoint) -> Vec<String> {
    endpoint
        .received()
        .iter()
        .map(|r| r.header("jetway-subject").unwrap_or_default())
        .collect()
}

/// Whether this server changes a durable consumer's filter in place, asked
/// on a stream of its own.
async fn server_changes_filters(js: &jetstream::Context) -> bool {
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: "PROBE".into(),
            subjects: vec!["probe.>".into()],
            ..Default::default()
        })
        .await
        .expect("stream");
    let config = |filter: &str| jetstream::consumer::pull::Config {
        durable_name: Some("c".into()),
        filter_subject: filter.into(),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    stream
        .create_consumer(config("probe.a"))
        .await
        .expect("create");
    let changed = stream.create_consumer(config("probe.b")).await.is_ok();
    let filter = stream
        .consumer_info("c")
        .await
        .expect("info")
        .config
        .filter_subject;
    assert_eq!(changed, filter == "probe.b", "answer and state agree");
    changed
}

#[tokio::test]
async fn filter_change_updates_in_place_or_is_a_conflict_as_the_server_allows() {
    let version = server_version();
    let nats = Nats::start();
    let js = nats.client().await;
    let updatable = server_changes_filters(&js).await;
    let endpoint = Endpoint::ok().await;
    let control = Endpoint::ok().await;
    let control_sub = subscription("control", "orders.>", &control, "");

    let first = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}{control_sub}",
            subscription("orders", "orders.created", &endpoint, "")
        ),
    ))
    .await;
    wait_ready(first.metrics).await;
    publish(&js, "orders.created").await;
    endpoint.wait_for(1).await;
    first.stop().await;

    let second = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}{control_sub}",
            subscription("orders", "orders.paid", &endpoint, "")
        ),
    ))
    .await;
    if updatable {
        eprintln!("nats-server {version:?} changes filters: updated in place");
        wait_ready(second.metrics).await;
        let info = consumer(&js, "test-orders").await;
        assert_eq!(info.config.filter_subject, "orders.paid");
        let created = publish(&js, "orders.created").await;
        let paid = publish(&js, "orders.paid").await;
        assert!(created < paid);
        endpoint.wait_for(2).await;
        wait_acked(&js, "test-orders", paid).await;
        assert_eq!(subjects(&endpoint), ["orders.created", "orders.paid"]);
        let status = second.wait_state("orders", "running").await;
        assert_eq!(status["subject"], "orders.paid");
    } else {
        eprintln!("nats-server {version:?} refuses filter changes: a config conflict");
        let status = second.wait_state("orders", "config_conflict").await;
        assert_eq!(status["pending"], Value::Null);
        let (code, body) = eventually("readyz answers", || second.readyz()).await;
        assert_eq!(code, 503, "{body}");
        assert!(body.contains("subscription orders"), "{body}");
        assert!(body.contains("filter_subject"), "{body}");
        // The old filter is not used: the control subscription gets both,
        // the conflicted one neither.
        let created = publish(&js, "orders.created").await;
        let paid = publish(&js, "orders.paid").await;
        control.wait_for(3).await;
        wait_acked(&js, "test-control", paid).await;
        assert_eq!(endpoint.count(), 1, "nothing delivered while in conflict");
        let info = consumer(&js, "test-orders").await;
        assert_eq!(info.config.filter_subject, "orders.created");
        assert!(info.delivered.stream_sequence < created);
        assert_eq!(info.num_ack_pending, 0);

        let (code, status) = second.reset("orders").await;
        assert_eq!(code, 200, "{status}");
        assert_eq!(status["state"], "running");
        wait_ready(second.metrics).await;
        let info = consumer(&js, "test-orders").await;
        assert_eq!(info.config.filter_subject, "orders.paid");
        // Created anew from `deliver: all`: the stored orders.paid event.
        endpoint.wait_for(2).await;
        wait_acked(&js, "test-orders", paid).await;
        assert_eq!(subjects(&endpoint), ["orders.created", "orders.paid"]);
    }
    second.stop().await;
}

#[tokio::test]
async fn deliver_change_is_a_config_conflict_until_reset() {
    let nats = Nats::start();
    let js = nats.client().await;
    let endpoint = Endpoint::ok().await;
    let control = Endpoint::ok().await;
    let control_sub = subscription("control", "orders.>", &control, "");

    let first = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}{control_sub}",
            subscription("orders", "orders.>", &endpoint, "")
        ),
    ))
    .await;
    wait_ready(first.metrics).await;
    publish(&js, "orders.a").await;
    endpoint.wait_for(1).await;
    first.stop().await;

    let second = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}{control_sub}",
            subscription("orders", "orders.>", &endpoint, ", deliver: new")
        ),
    ))
    .await;
    second.wait_state("orders", "config_conflict").await;
    let (code, body) = eventually("readyz answers", || second.readyz()).await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("subscription orders") && body.contains("deliver_policy"),
        "{body}"
    );
    let before_reset = publish(&js, "orders.b").await;
    control.wait_for(2).await;
    wait_acked(&js, "test-control", before_reset).await;
    assert_eq!(endpoint.count(), 1, "nothing delivered while in conflict");
    // The consumer on the server was left as it was.
    let info = consumer(&js, "test-orders").await;
    assert_eq!(
        info.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::All
    );

    let (code, status) = second.reset("orders").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["state"], "running");
    wait_ready(second.metrics).await;
    assert_eq!(
        consumer(&js, "test-orders").await.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::New
    );
    // Created anew from `deliver: new`: what was stored before is not sent.
    let after_reset = publish(&js, "orders.c").await;
    endpoint.wait_for(2).await;
    wait_acked(&js, "test-orders", after_reset).await;
    assert_eq!(subjects(&endpoint), ["orders.a", "orders.c"]);

    let (code, _) = second.reset("nope").await;
    assert_eq!(code, 404);
    second.stop().await;
}

#[tokio::test]
async fn concurrency_ordered_and_timeout_changes_update_the_consumer() {
    let nats = Nats::start();
    let js = nats.client().await;
    let endpoint = Endpoint::ok().await;
    let runs = [
        (", concurrency: 16", 1024, 5),
        (", concurrency: 32, timeout: 40s", 2048, 20),
        (", concurrency: 32, ordered: true", 1, 5),
    ];
    for (n, (extra, max_ack_pending, ack_wait_secs)) in runs.into_iter().enumerate() {
        let run = Running::start(&config_yaml(
            &nats,
            &format!(
                "subscriptions:\n{}",
                subscription("orders", "orders.>", &endpoint, extra)
            ),
        ))
        .await;
        wait_ready(run.metrics).await;
        let info = consumer(&js, "test-orders").await;
        assert_eq!(info.config.max_ack_pending, max_ack_pending, "run {n}");
        assert_eq!(
            info.config.ack_wait,
            std::time::Duration::from_secs(ack_wait_secs),
            "run {n}"
        );
        let seq = publish(&js, "orders.x").await;
        endpoint.wait_for(n + 1).await;
        wait_acked(&js, "test-orders", seq).await;
        run.wait_state("orders", "running").await;
        run.stop().await;
    }
    assert_eq!(endpoint.count(), 3, "each event delivered once");
}

async fn metric(run: &Running, name: &str, sub: &str) -> f64 {
    let text = run
        .http
        .get(format!("http://{}/metrics", run.metrics))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    metric_value(&text, name, &[("subscription", sub)]).unwrap_or(0.0)
}

async fn post(run: &Running, path: &str) {
    let r = run
        .http
        .post(format!("http://{}{path}", run.api))
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 200, "{path}");
}

#[tokio::test]
async fn a_deleted_consumer_is_created_again_after_the_last_acked_sequence() {
    let nats = Nats::start();
    let js = nats.client().await;
    let endpoint = Endpoint::ok().await;
    let yaml = config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}",
            subscription("orders", "orders.>", &endpoint, "")
        ),
    );
    let run = Running::start(&yaml).await;
    wait_ready(run.metrics).await;
    let mut last = 0;
    for _ in 0..3 {
        last = publish(&js, "orders.x").await;
    }
    endpoint.wait_for(3).await;
    wait_acked(&js, "test-orders", last).await;
    // Held back (pending, or handed back by a pull already open), so
    // jetway's next look at the consumer, which this waits for, sees the
    // ack floor at the third and one not done.
    post(&run, "/v1/subscriptions/orders/pause").await;
    let fourth = publish(&js, "orders.x").await;
    eventually("jetway saw the ack floor", || async {
        let pending = metric(&run, "jetway_consumer_pending", "orders").await;
        let ack_pending = metric(&run, "jetway_consumer_ack_pending", "orders").await;
        (pending + ack_pending == 1.0).then_some(())
    })
    .await;

    js.get_stream("ORDERS")
        .await
        .expect("stream")
        .delete_consumer("test-orders")
        .await
        .expect("delete consumer");
    eventually("consumer created again", || async {
        (metric(&run, "jetway_consumer_recreated_total", "orders").await == 1.0).then_some(())
    })
    .await;
    let info = consumer(&js, "test-orders").await;
    assert_eq!(
        info.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: fourth
        }
    );
    post(&run, "/v1/subscriptions/orders/resume").await;
    let fifth = publish(&js, "orders.x").await;
    endpoint.wait_for(5).await;
    wait_acked(&js, "test-orders", fifth).await;
    let by_key = endpoint.by_key();
    assert_eq!(by_key.len(), 5, "{by_key:?}");
    assert!(by_key.values().all(|n| *n == 1), "each once: {by_key:?}");
    run.wait_state("orders", "running").await;
    run.stop().await;

    // Its new start is jetway's own: no conflict at the next start.
    let again = Running::start(&yaml).await;
    wait_ready(again.metrics).await;
    again.wait_state("orders", "running").await;
    again.stop().await;
}

#[tokio::test]
async fn a_deleted_stream_is_created_again_with_its_consumer() {
    let nats = Nats::start();
    let js = nats.client().await;
    let endpoint = Endpoint::ok().await;
    let run = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}",
            subscription("orders", "orders.>", &endpoint, "")
        ),
    ))
    .await;
    wait_ready(run.metrics).await;
    publish(&js, "orders.x").await;
    endpoint.wait_for(1).await;

    js.delete_stream("ORDERS").await.expect("delete stream");
    eventually("consumer created again", || async {
        (metric(&run, "jetway_consumer_recreated_total", "orders").await == 1.0).then_some(())
    })
    .await;
    // The stream starts over; its consumer starts from `deliver` (all).
    let info = consumer(&js, "test-orders").await;
    assert_eq!(
        info.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::All
    );
    let seq = publish(&js, "orders.y").await;
    assert_eq!(seq, 1, "a new stream");
    endpoint.wait_for(2).await;
    wait_acked(&js, "test-orders", seq).await;
    assert_eq!(subjects(&endpoint), ["orders.x", "orders.y"]);
    run.wait_state("orders", "running").await;
    run.stop().await;
}

/// An operator deletes the stream and adds it back before jetway looks
/// (`nats stream rm` then `nats stream add`, or another replica recreating
/// it): the new stream starts over at sequence 1, so a consumer started
/// after the old ack floor would skip its first events.
#[tokio::test]
async fn a_stream_created_anew_by_someone_else_is_read_from_its_start() {
    let nats = Nats::start();
    let js = nats.client().await;
    let endpoint = Endpoint::ok().await;
    let run = Running::start(&config_yaml(
        &nats,
        &format!(
            "subscriptions:\n{}",
            subscription("orders", "orders.>", &endpoint, "")
        ),
    ))
    .await;
    wait_ready(run.metrics).await;
    let mut last = 0;
    for _ in 0..3 {
        last = publish(&js, "orders.x").await;
    }
    endpoint.wait_for(3).await;
    wait_acked(&js, "test-orders", last).await;
    // As in the deleted-consumer test: jetway's next look, which this
    // waits for, sees the ack floor at the third.
    post(&run, "/v1/subscriptions/orders/pause").await;
    publish(&js, "orders.held").await;
    eventually("jetway saw the ack floor", || async {
        let pending = metric(&run, "jetway_consumer_pending", "orders").await;
        let ack_pending = metric(&run, "jetway_consumer_ack_pending", "orders").await;
        (pending + ack_pending == 1.0).then_some(())
    })
    .await;

    js.delete_stream("ORDERS").await.expect("delete stream");
    js.create_stream(jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        ..Default::default()
    })
    .await
    .expect("the operator adds it back");
    let first = publish(&js, "orders.new").await;
    assert_eq!(first, 1, "a new stream");
    eventually("consumer created again", || async {
        (metric(&run, "jetway_consumer_recreated_total", "orders").await == 1.0).then_some(())
    })
    .await;
    let info = consumer(&js, "test-orders").await;
    assert_eq!(
        info.config.deliver_policy,
        jetstream::consumer::DeliverPolicy::All,
        "not after the old stream's ack floor ({last})"
    );
    post(&run, "/v1/subscriptions/orders/resume").await;
    wait_acked(&js, "test-orders", first).await;
    assert_eq!(
        subjects(&endpoint),
        ["orders.x", "orders.x", "orders.x", "orders.new"]
    );
    run.wait_state("orders", "running").await;
    run.stop().await;
}

/// SPEC 4 expects 2.9 servers to refuse a filter change; 2.9.10, like 2.15.1,
/// changes it. This pins what the servers the tests run on do, so a server
/// that behaves otherwise shows here first.
#[tokio::test]
async fn servers_from_2_9_10_change_a_filter_in_place() {
    let version = server_version();
    let nats = Nats::start();
    let js = nats.client().await;
    let changed = server_changes_filters(&js).await;
    eprintln!("nats-server {version:?} changes a filter in place: {changed}");
    assert!(
        version >= (2, 9),
        "tests run on 2.9.10 and later: {version:?}"
    );
    assert!(changed, "nats-server {version:?} refused a filter change");
}
