//! Every Prometheus metric jetway exports, declared once (SPEC section 7).
//!
//! Label values are bounded: stream and subscription names come from the
//! config or the server, outcomes and reasons from fixed lists. Raw subjects
//! and error texts never become labels.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// The stream label for publishes refused before any stream was known.
pub const UNKNOWN_STREAM: &str = "unknown";

/// The registry and handles to every metric.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub nats_connected: IntGauge,
    pub nats_reconnects_total: IntCounter,
    pub publish_total: IntCounterVec,
    pub publish_duration_seconds: HistogramVec,
    pub deliveries_total: IntCounterVec,
    pub delivery_duration_seconds: HistogramVec,
    pub delivery_latency_seconds: HistogramVec,
    pub deliveries_in_flight: IntGaugeVec,
    pub consumer_pending: IntGaugeVec,
    pub consumer_ack_pending: IntGaugeVec,
    pub dead_letters_total: IntCounterVec,
    pub endpoint_up: GaugeVec,
    pub stream_warnings: IntGaugeVec,
    pub consumer_recreated_total: IntCounterVec,
    pub live_reads: IntGauge,
    pub trace_spans_exported_total: IntCounter,
    pub trace_spans_dropped_total: IntCounterVec,
    pub schema_validations_total: IntCounterVec,
    pub schema_registry_versions: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let build_info = Gauge::with_opts(
            Opts::new("jetway_build_info", "jetway build information")
                .const_label("version", env!("CARGO_PKG_VERSION")),
        )
        .expect("static metric definition");
        build_info.set(1.0);
        let fast = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let slow = vec![
            0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0,
        ];
        let m = Metrics {
            nats_connected: IntGauge::new(
                "jetway_nats_connected",
                "1 while connected to a NATS server",
            )
            .expect("static metric definition"),
            nats_reconnects_total: IntCounter::new(
                "jetway_nats_reconnects_total",
                "Reconnections to NATS after a lost connection",
            )
            .expect("static metric definition"),
            publish_total: IntCounterVec::new(
                Opts::new("jetway_publish_total", "Publish requests by outcome"),
                &["stream", "outcome"],
            )
            .expect("static metric definition"),
            publish_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "jetway_publish_duration_seconds",
                    "Time from request to PubAck",
                )
                .buckets(fast.clone()),
                &["stream"],
            )
            .expect("static metric definition"),
            deliveries_total: IntCounterVec::new(
                Opts::new("jetway_deliveries_total", "Delivery attempts by outcome"),
                &["subscription", "outcome"],
            )
            .expect("static metric definition"),
            delivery_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "jetway_delivery_duration_seconds",
                    "Endpoint response time per delivery attempt",
                )
                .buckets(fast),
                &["subscription"],
            )
            .expect("static metric definition"),
            delivery_latency_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "jetway_delivery_latency_seconds",
                    "Time from being stored to being delivered",
                )
                .buckets(slow),
                &["subscription"],
            )
            .expect("static metric definition"),
            deliveries_in_flight: IntGaugeVec::new(
                Opts::new(
                    "jetway_deliveries_in_flight",
                    "Deliveries awaiting the endpoint",
                ),
                &["subscription"],
            )
            .expect("static metric definition"),
            consumer_pending: IntGaugeVec::new(
                Opts::new(
                    "jetway_consumer_pending",
                    "Messages not yet delivered to the consumer (lag)",
                ),
                &["subscription"],
            )
            .expect("static metric definition"),
            consumer_ack_pending: IntGaugeVec::new(
                Opts::new(
                    "jetway_consumer_ack_pending",
                    "Messages delivered but not yet acknowledged",
                ),
                &["subscription"],
            )
            .expect("static metric definition"),
            dead_letters_total: IntCounterVec::new(
                Opts::new(
                    "jetway_dead_letters_total",
                    "Messages moved to the dead letter stream",
                ),
                &["subscription", "reason"],
            )
            .expect("static metric definition"),
            endpoint_up: GaugeVec::new(
                Opts::new(
                    "jetway_endpoint_up",
                    "1 while the subscription's endpoint answers",
                ),
                &["subscription"],
            )
            .expect("static metric definition"),
            stream_warnings: IntGaugeVec::new(
                Opts::new(
                    "jetway_stream_warnings",
                    "Durability warnings of a stream jetway uses (GET /v1/streams)",
                ),
                &["stream"],
            )
            .expect("static metric definition"),
            consumer_recreated_total: IntCounterVec::new(
                Opts::new(
                    "jetway_consumer_recreated_total",
                    "Durable consumers found gone and created again",
                ),
                &["subscription"],
            )
            .expect("static metric definition"),
            live_reads: IntGauge::new("jetway_live_reads", "Live reads open now")
                .expect("static metric definition"),
            trace_spans_exported_total: IntCounter::new(
                "jetway_trace_spans_exported_total",
                "Spans the OTLP collector accepted",
            )
            .expect("static metric definition"),
            trace_spans_dropped_total: IntCounterVec::new(
                Opts::new(
                    "jetway_trace_spans_dropped_total",
                    "Spans dropped: export queue full, or the collector failed",
                ),
                &["reason"],
            )
            .expect("static metric definition"),
            schema_validations_total: IntCounterVec::new(
                Opts::new(
                    "jetway_schema_validations_total",
                    "Typed publishes checked against their schema, by outcome",
                ),
                &["type", "outcome"],
            )
            .expect("static metric definition"),
            schema_registry_versions: IntGauge::new(
                "jetway_schema_registry_versions",
                "Schema versions known to this sidecar, all types",
            )
            .expect("static metric definition"),
            registry,
        };
        for reason in ["queue_full", "export_failed"] {
            m.trace_spans_dropped_total.with_label_values(&[reason]);
        }
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(build_info),
            Box::new(m.nats_connected.clone()),
            Box::new(m.nats_reconnects_total.clone()),
            Box::new(m.publish_total.clone()),
            Box::new(m.publish_duration_seconds.clone()),
            Box::new(m.deliveries_total.clone()),
            Box::new(m.delivery_duration_seconds.clone()),
            Box::new(m.delivery_latency_seconds.clone()),
            Box::new(m.deliveries_in_flight.clone()),
            Box::new(m.consumer_pending.clone()),
            Box::new(m.consumer_ack_pending.clone()),
            Box::new(m.dead_letters_total.clone()),
            Box::new(m.endpoint_up.clone()),
            Box::new(m.stream_warnings.clone()),
            Box::new(m.consumer_recreated_total.clone()),
            Box::new(m.live_reads.clone()),
            Box::new(m.trace_spans_exported_total.clone()),
            Box::new(m.trace_spans_dropped_total.clone()),
            Box::new(m.schema_validations_total.clone()),
            Box::new(m.schema_registry_versions.clone()),
        ];
        for c in collectors {
            m.registry
                .register(c)
                .expect("each metric is registered once");
        }
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The series of one subscription, looked up once (the delivery path
    /// then touches no label maps) and visible at zero from the start.
    pub fn subscription(&self, subscription: &str) -> SubscriptionMetrics {
        let s = [subscription];
        SubscriptionMetrics {
            success: self
                .deliveries_total
                .with_label_values(&[subscription, "success"]),
            retry: self
                .deliveries_total
                .with_label_values(&[subscription, "retry"]),
            dead_letter: self
                .deliveries_total
                .with_label_values(&[subscription, "dead_letter"]),
            rejected: self
                .dead_letters_total
                .with_label_values(&[subscription, "rejected"]),
            exhausted: self
                .dead_letters_total
                .with_label_values(&[subscription, "exhausted"]),
            duration: self.delivery_duration_seconds.with_label_values(&s),
            latency: self.delivery_latency_seconds.with_label_values(&s),
            in_flight: self.deliveries_in_flight.with_label_values(&s),
            pending: self.consumer_pending.with_label_values(&s),
            ack_pending: self.consumer_ack_pending.with_label_values(&s),
            endpoint_up: self.endpoint_up.with_label_values(&s),
            recreated: self.consumer_recreated_total.with_label_values(&s),
        }
    }
}

/// The series of publishes stored in one stream, looked up once (the
/// publish path then touches no label maps).
#[derive(Clone)]
pub struct StoredMetrics {
    pub ok: IntCounter,
    pub duplicate: IntCounter,
    pub duration: Histogram,
}

impl Metrics {
    /// The series of publishes stored in `stream`.
    pub fn stored(&self, stream: &str) -> StoredMetrics {
        StoredMetrics {
            ok: self.publish_total.with_label_values(&[stream, "ok"]),
            duplicate: self.publish_total.with_label_values(&[stream, "duplicate"]),
            duration: self.publish_duration_seconds.with_label_values(&[stream]),
        }
    }
}

/// Handles to every series of one subscription.
#[derive(Clone)]
pub struct SubscriptionMetrics {
    pub success: IntCounter,
    pub retry: IntCounter,
    pub dead_letter: IntCounter,
    pub rejected: IntCounter,
    pub exhausted: IntCounter,
    pub duration: Histogram,
    pub latency: Histogram,
    pub in_flight: IntGauge,
    pub pending: IntGauge,
    pub ack_pending: IntGauge,
    pub endpoint_up: Gauge,
    pub recreated: IntCounter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_spec_metric() {
        let m = Metrics::new();
        m.publish_total.with_label_values(&["ORDERS", "ok"]).inc();
        m.publish_duration_seconds
            .with_label_values(&["ORDERS"])
            .observe(0.01);
        let s = m.subscription("emails");
        s.duration.observe(0.01);
        s.latency.observe(0.01);
        m.stream_warnings.with_label_values(&["ORDERS"]).set(1);
        let text = m.render();
        for name in [
            "jetway_build_info{version=",
            "jetway_nats_connected",
            "jetway_nats_reconnects_total",
            "jetway_publish_total{outcome=\"ok\",stream=\"ORDERS\"} 1",
            "jetway_publish_duration_seconds_bucket",
            "jetway_deliveries_total{outcome=\"success\",subscription=\"emails\"} 0",
            "jetway_delivery_duration_seconds_bucket",
            "jetway_delivery_latency_seconds_bucket",
            "jetway_deliveries_in_flight{subscription=\"emails\"}",
            "jetway_consumer_pending{subscription=\"emails\"}",
            "jetway_consumer_ack_pending{subscription=\"emails\"}",
            "jetway_dead_letters_total{reason=\"rejected\",subscription=\"emails\"} 0",
            "jetway_endpoint_up{subscription=\"emails\"}",
            "jetway_stream_warnings{stream=\"ORDERS\"} 1",
            "jetway_consumer_recreated_total{subscription=\"emails\"} 0",
            "jetway_live_reads 0",
            "jetway_trace_spans_exported_total 0",
            "jetway_trace_spans_dropped_total{reason=\"queue_full\"} 0",
            "jetway_trace_spans_dropped_total{reason=\"export_failed\"} 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
