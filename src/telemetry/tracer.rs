//! What the publish and delivery paths call: one span per stored message
//! (`publish {stream}`), per delivery attempt (`process {subscription}`)
//! and per dead letter, on the OpenTelemetry messaging conventions (SPEC
//! section 10). Each call is cheap and never waits: a finished span is
//! `try_send` into the export queue. With export off, nothing is built
//! and the stored `traceparent` stays as the publisher sent it.

use std::fmt;
use std::sync::Arc;

use super::export::Queue;
use super::sampler::Sampler;
use super::span::{self, Kind, Span, SpanContext, Status, Value};

/// The handle the publish and delivery code hold; cheap to clone.
#[derive(Clone, Default)]
pub struct Tracer {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    queue: Queue,
    sampler: Sampler,
}

/// A span being recorded; exported when it ends.
struct Open {
    queue: Queue,
    span: Span,
}

impl Open {
    fn finish(mut self, status: Status) {
        self.span.end = span::now_nanos();
        self.span.status = status;
        self.queue.push(self.span);
    }
}

/// The facts of one delivery attempt a process span records.
pub struct Delivery<'a> {
    /// `process {subscription}`.
    pub span_name: &'a Arc<str>,
    /// The durable consumer (`<app_id>-<subscription>`).
    pub consumer: &'a Arc<str>,
    pub subject: &'a str,
    pub stream: &'a str,
    pub sequence: u64,
    pub attempt: u64,
}

fn header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    crate::envelope::stored_header(headers, name)
}

impl Tracer {
    /// Exports nothing; the paths behave as without tracing.
    pub fn disabled() -> Tracer {
        Tracer { inner: None }
    }

    /// Spans go to `queue`, roots are sampled by `sampler`.
    pub fn new(queue: Queue, sampler: Sampler) -> Tracer {
        Tracer {
            inner: Some(Arc::new(Inner { queue, sampler })),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A child of `parent` (or a new root), and whether it is sampled.
    fn child(&self, inner: &Inner, parent: Option<&SpanContext>) -> SpanContext {
        let trace_id = parent.map_or_else(span::new_trace_id, |p| p.trace_id);
        let sampled = inner.sampler.sample(parent, &trace_id);
        let flags = match parent {
            Some(p) => p.flags,
            None if sampled => span::SAMPLED,
            None => 0,
        };
        SpanContext {
            trace_id,
            span_id: span::new_span_id(),
            flags,
        }
    }

    /// The `publish` span of one message about to be stored. Its context
    /// replaces the `traceparent` in `headers`, so the trace goes on where
    /// the message is delivered; an unsampled parent is left as it came.
    /// With export off this does nothing.
    pub fn publish(&self, headers: &mut async_nats::HeaderMap, subject: &str) -> PublishSpan {
        let Some(inner) = &self.inner else {
            return PublishSpan { open: None };
        };
        let parent = header(headers, "traceparent").and_then(span::parse_traceparent);
        if parent.is_some_and(|p| !p.is_sampled()) {
            return PublishSpan { open: None };
        }
        let ctx = self.child(inner, parent.as_ref());
        headers.insert("traceparent", ctx.traceparent().as_str());
        if !ctx.is_sampled() {
            return PublishSpan { open: None };
        }
        let mut attributes = Vec::with_capacity(8);
        attributes.push(("messaging.system", Value::Static("nats")));
        attributes.push(("messaging.operation.type", Value::Static("send")));
        attributes.push(("messaging.operation.name", Value::Static("publish")));
        attributes.push(("messaging.destination.name", subject.into()));
        if let Some(id) = header(headers, "Nats-Msg-Id") {
            attributes.push(("messaging.message.id", id.into()));
        }
        PublishSpan {
            open: Some(Box::new(Open {
                queue: inner.queue.clone(),
                span: Span {
                    context: ctx,
                    parent: parent.map(|p| p.span_id),
                    parent_is_remote: true,
                    // Without a parent there is no tracestate to keep
                    // (W3C: it goes with a valid traceparent only), and no
                    // lookup is spent on it.
                    trace_state: parent
                        .and_then(|_| header(headers, "tracestate"))
                        .map(str::to_string),
                    kind: Kind::Producer,
                    name: Value::Static(""),
                    attributes,
                    start: span::now_nanos(),
                    end: 0,
                    status: Status::Unset,
                },
            })),
        }
    }

    /// The `process` span of one delivery attempt, child of the stored
    /// `traceparent` (a root when there is none). Even with export off it
    /// carries the stored context with a new span id, for the request and
    /// the log lines.
    pub fn process(&self, stored: &async_nats::HeaderMap, d: &Delivery<'_>) -> ProcessSpan {
        let parent = header(stored, "traceparent").and_then(span::parse_traceparent);
        let Some(inner) = &self.inner else {
            return ProcessSpan {
                context: parent.map(|p| p.with_span_id(span::new_span_id())),
                open: None,
            };
        };
        let ctx = self.child(inner, parent.as_ref());
        let open = ctx.is_sampled().then(|| {
            let mut attributes = Vec::with_capacity(12);
            attributes.push(("messaging.system", Value::Static("nats")));
            attributes.push(("messaging.operation.type", Value::Static("process")));
            attributes.push(("messaging.operation.name", Value::Static("process")));
            attributes.push(("messaging.destination.name", d.subject.into()));
            attributes.push(("messaging.consumer.group.name", d.consumer.clone().into()));
            attributes.push(("messaging.nats.stream", d.stream.into()));
            attributes.push(("messaging.nats.sequence", d.sequence.into()));
            attributes.push(("messaging.nats.delivery_attempt", d.attempt.into()));
            if let Some(id) = header(stored, "Nats-Msg-Id") {
                attributes.push(("messaging.message.id", id.into()));
            }
            Box::new(Open {
                queue: inner.queue.clone(),
                span: Span {
                    context: ctx,
                    parent: parent.map(|p| p.span_id),
                    parent_is_remote: true,
                    trace_state: parent
                        .and_then(|_| header(stored, "tracestate"))
                        .map(str::to_string),
                    kind: Kind::Consumer,
                    name: d.span_name.clone().into(),
                    attributes,
                    start: span::now_nanos(),
                    end: 0,
                    status: Status::Unset,
                },
            })
        });
        ProcessSpan {
            context: Some(ctx),
            open,
        }
    }

    /// The `publish {dead-letter stream}` span, child of the attempt that
    /// gave up.
    pub fn dead_letter(
        &self,
        attempt: &ProcessSpan,
        dlq_stream: &str,
        subject: &str,
    ) -> PublishSpan {
        let (Some(inner), Some(open)) = (&self.inner, &attempt.open) else {
            return PublishSpan { open: None };
        };
        let parent = open.span.context;
        let attributes = vec![
            ("messaging.system", Value::Static("nats")),
            ("messaging.operation.type", Value::Static("send")),
            ("messaging.operation.name", Value::Static("publish")),
            ("messaging.destination.name", subject.into()),
            ("messaging.nats.stream", dlq_stream.into()),
        ];
        PublishSpan {
            open: Some(Box::new(Open {
                queue: inner.queue.clone(),
                span: Span {
                    context: parent.with_span_id(span::new_span_id()),
                    parent: Some(parent.span_id),
                    parent_is_remote: false,
                    trace_state: open.span.trace_state.clone(),
                    kind: Kind::Producer,
                    name: Value::Str(format!("publish {dlq_stream}")),
                    attributes,
                    start: span::now_nanos(),
                    end: 0,
                    status: Status::Unset,
                },
            })),
        }
    }
}

/// A `publish` span in progress; `end` exports it. Dropped without `end`
/// (the request went away), it is not exported.
#[must_use]
pub struct PublishSpan {
    open: Option<Box<Open>>,
}

impl PublishSpan {
    /// This span's `traceparent`, when it is exported: stored with the
    /// message so the trace goes on where the message is read next.
    pub fn traceparent(&self) -> Option<String> {
        self.open.as_ref().map(|o| o.span.context.traceparent())
    }

    /// Ends the span: stored as `seq` in `stream`, or failed with `error`
    /// (a bounded kind, e.g. `timeout`).
    pub fn end(self, stream: &str, seq: Option<u64>, error: Option<&str>) {
        let Some(mut open) = self.open else { return };
        if open.span.name.text().is_empty() {
            open.span.name = Value::Str(format!("publish {stream}"));
            open.span
                .attributes
                .push(("messaging.nats.stream", stream.into()));
        }
        if let Some(seq) = seq {
            open.span
                .attributes
                .push(("messaging.nats.sequence", seq.into()));
        }
        let status = match error {
            Some(e) => {
                open.span.attributes.push(("error.type", e.into()));
                Status::Error(e.to_string())
            }
            None => Status::Unset,
        };
        open.finish(status);
    }
}

/// A `process` span in progress: the context sent to the endpoint and put
/// on log lines; `end` exports it.
#[must_use]
pub struct ProcessSpan {
    context: Option<SpanContext>,
    open: Option<Box<Open>>,
}

impl ProcessSpan {
    /// The `traceparent` for the endpoint: this attempt's context (the
    /// stored trace and flags with this attempt's span id, or with export
    /// on a new trace when the message had none), so the app's spans are
    /// its children.
    pub fn traceparent(&self) -> Option<String> {
        self.context.map(|c| c.traceparent())
    }

    /// For log lines: the trace id, when the message has a context.
    pub fn trace_id(&self) -> Option<HexId<16>> {
        self.context.map(|c| HexId(c.trace_id))
    }

    /// For log lines: this attempt's span id, when the message has a context.
    pub fn span_id(&self) -> Option<HexId<8>> {
        self.context.map(|c| HexId(c.span_id))
    }

    /// Ends the attempt: `outcome` is `ack`, `retry`, `dead_letter` or
    /// `endpoint_down`; `error` a bounded kind (`timeout`, `http_503`...).
    pub fn end(self, outcome: &'static str, status: Option<u16>, error: Option<&str>) {
        let Some(mut open) = self.open else { return };
        if let Some(code) = status {
            open.span
                .attributes
                .push(("http.response.status_code", code.into()));
        }
        open.span
            .attributes
            .push(("jetway.outcome", Value::Static(outcome)));
        let status = match error {
            Some(e) => {
                open.span.attributes.push(("error.type", e.into()));
                Status::Error(e.to_string())
            }
            None => Status::Unset,
        };
        open.finish(status);
    }
}

/// An id shown as lower-case hex, formatted only when a line is written.
#[derive(Debug, Clone, Copy)]
pub struct HexId<const N: usize>(pub [u8; N]);

impl<const N: usize> fmt::Display for HexId<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Trace and span id of a stored `traceparent`, for log lines.
pub fn log_ids(headers: &async_nats::HeaderMap) -> (Option<HexId<16>>, Option<HexId<8>>) {
    match header(headers, "traceparent").and_then(span::parse_traceparent) {
        Some(c) => (Some(HexId(c.trace_id)), Some(HexId(c.span_id))),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process_span(stored: Option<&str>) -> ProcessSpan {
        let mut headers = async_nats::HeaderMap::new();
        if let Some(tp) = stored {
            headers.insert("traceparent", tp);
        }
        let name: Arc<str> = Arc::from("process s1");
        let consumer: Arc<str> = Arc::from("app-s1");
        Tracer::disabled().process(
            &headers,
            &Delivery {
                span_name: &name,
                consumer: &consumer,
                subject: "orders.created",
                stream: "ORDERS",
                sequence: 1,
                attempt: 1,
            },
        )
    }

    #[test]
    fn with_export_off_the_endpoint_gets_the_stored_trace_with_a_new_span_id() {
        let stored = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let sent = process_span(Some(stored))
            .traceparent()
            .expect("traceparent");
        let (sent_parts, stored_parts): (Vec<&str>, Vec<&str>) =
            (sent.split('-').collect(), stored.split('-').collect());
        assert_eq!(sent_parts.len(), 4);
        assert_eq!(sent_parts[0], "00");
        assert_eq!(sent_parts[1], stored_parts[1], "same trace");
        assert_ne!(sent_parts[2], stored_parts[2], "a new span id");
        assert_eq!(
            sent_parts[3], "00",
            "the flags as stored: not sampled stays so"
        );
    }

    #[test]
    fn without_a_valid_stored_context_the_endpoint_gets_none() {
        assert_eq!(process_span(None).traceparent(), None);
        assert_eq!(process_span(Some("garbage")).traceparent(), None);
        let zero_trace = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(process_span(Some(zero_trace)).traceparent(), None);
    }
}
