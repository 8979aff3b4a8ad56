//! The shortest end-to-end path: publish, store, deliver.
mod common;
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_event_is_stored_and_delivered() {
    let (_nats, endpoint, sidecar) = start_one_subscription().await;
    let resp = sidecar.publish("orders.created", b"hello").await;
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["stream"], "ORDERS");
    assert_eq!(body["seq"], 1);
    assert_eq!(body["duplicate"], false);
    endpoint.wait_for(1).await;
    let got = &endpoint.received()[0];
    assert_eq!(got.body.as_ref(), b"hello");
    assert_eq!(got.header("jetway-sequence").as_deref(), Some("1"));
    let m = wait_metric_at_least(
        &sidecar,
        "jetway_deliveries_total",
        &[("subscription", "s1"), ("outcome", "success")],
        1.0,
    )
    .await;
    assert_eq!(m, 1.0);
    sidecar.stop().await;
}
