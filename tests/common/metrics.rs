//! Reading and asserting Prometheus series.

use std::net::SocketAddr;

use super::{eventually, Sidecar};

/// The `/metrics` text of a metrics listener.
pub async fn metrics_text(http: &reqwest::Client, metrics: SocketAddr) -> String {
    http.get(format!("http://{metrics}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text")
}

/// Parses the Prometheus text for a series whose labels include `labels`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let all = labels.iter().all(|(k, v)| {
            series_labels
                .split(',')
                .any(|p| p == format!("{k}=\"{v}\""))
        });
        if all {
            *total.get_or_insert(0.0) += value.parse::<f64>().ok()?;
        }
    }
    total
}

/// Waits until a metric series has exactly `want`.
pub async fn wait_metric(s: &Sidecar, name: &str, labels: &[(&str, &str)], want: f64) {
    let what = format!("{name}{labels:?} == {want}");
    eventually(&what, || async {
        (s.metric(name, labels).await == want).then_some(())
    })
    .await;
}

/// Waits until a metric series is at least `least`; returns its value.
pub async fn wait_metric_at_least(
    s: &Sidecar,
    name: &str,
    labels: &[(&str, &str)],
    least: f64,
) -> f64 {
    let what = format!("{name}{labels:?} >= {least}");
    eventually(&what, || async {
        let v = s.metric(name, labels).await;
        (v >= least).then_some(v)
    })
    .await
}

/// Asserts one series has exactly `want` now.
pub async fn assert_metric(s: &Sidecar, name: &str, labels: &[(&str, &str)], want: f64) {
    assert_eq!(s.metric(name, labels).await, want, "{name}{labels:?}");
}

/// Asserts the series of `name` for one subscription, by the value of
/// its second label: `outcome` for `jetway_deliveries_total`, `reason`
/// for `jetway_dead_letters_total`, e.g.
/// `assert_counts(&s, "jetway_deliveries_total", "s1", &[("success", 0.), ("retry", 2.)])`.
pub async fn assert_counts(s: &Sidecar, name: &str, subscription: &str, want: &[(&str, f64)]) {
    let key = if name == "jetway_dead_letters_total" {
        "reason"
    } else {
        "outcome"
    };
    let text = s.metrics_text().await;
    for (value, count) in want {
        let labels = [("subscription", subscription), (key, *value)];
        assert_eq!(
            metric_value(&text, name, &labels).unwrap_or(0.0),
            *count,
            "{name}{labels:?}"
        );
    }
}

/// `jetway_publish_total{stream, outcome}`.
pub async fn outcome(s: &Sidecar, stream: &str, outcome: &str) -> f64 {
    s.metric(
        "jetway_publish_total",
        &[("stream", stream), ("outcome", outcome)],
    )
    .await
}
