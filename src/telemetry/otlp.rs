//! The OTLP protobuf body of one export request, written straight from
//! jetway's spans with `prost`'s wire-format functions.
//!
//! Why not build the `opentelemetry-proto` messages and `encode_to_vec`
//! them (as before): those messages own every string, so each span cost
//! about fifteen allocations (a key and a value per attribute, the ids)
//! only to be encoded and freed at once; on the bench's 2 cores that was
//! a measurable part of what tracing costs the publish path. The tests
//! check that the bytes are exactly the ones `prost` writes for the same
//! messages, and that `opentelemetry-proto` decodes them.

use prost::encoding::{encoded_len_varint, key_len, WireType};

use super::span::{Kind, Span, Status, Value};

/// `Span.kind` values (`opentelemetry.proto.trace.v1.Span.SpanKind`).
const SPAN_KIND_PRODUCER: u64 = 4;
const SPAN_KIND_CONSUMER: u64 = 5;
/// `Status.code` `STATUS_CODE_ERROR`.
const STATUS_CODE_ERROR: u64 = 2;

/// The length of a length-delimited field of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The length of a string or bytes field; proto3 leaves empty ones out.
fn bytes_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        delimited_len(tag, len)
    }
}

/// A varint, into a buffer reserved beforehand (prost's `encode_varint`
/// goes through `BufMut` one byte at a time: a third of the encoding's
/// instructions in callgrind).
fn put_varint_raw(mut value: u64, buf: &mut Vec<u8>) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

fn put_key(tag: u32, wire: WireType, buf: &mut Vec<u8>) {
    put_varint_raw(u64::from(tag << 3 | wire as u32), buf);
}

fn put_delimited(tag: u32, len: usize, buf: &mut Vec<u8>) {
    put_key(tag, WireType::LengthDelimited, buf);
    put_varint_raw(len as u64, buf);
}

fn put_bytes(tag: u32, data: &[u8], buf: &mut Vec<u8>) {
    if !data.is_empty() {
        put_delimited(tag, data.len(), buf);
        buf.extend_from_slice(data);
    }
}

fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        put_key(tag, WireType::Varint, buf);
        put_varint_raw(value, buf);
    }
}

fn put_fixed64(tag: u32, value: u64, buf: &mut Vec<u8>) {
    if value != 0 {
        put_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

fn value_str(value: &Value) -> Option<&str> {
    match value {
        Value::Int(_) => None,
        v => Some(v.text()),
    }
}

/// `AnyValue`: `string_value` (1) or `int_value` (3). A oneof member is
/// written even when empty or zero.
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Int(n) => key_len(3) + encoded_len_varint(*n as u64),
        _ => delimited_len(1, value_str(value).map_or(0, str::len)),
    }
}

fn put_any_value(value: &Value, buf: &mut Vec<u8>) {
    match value {
        Value::Int(n) => {
            put_key(3, WireType::Varint, buf);
            put_varint_raw(*n as u64, buf);
        }
        _ => {
            let s = value_str(value).unwrap_or_default();
            put_delimited(1, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
    }
}

/// `KeyValue`: `key` (1), `value` (2, always there).
fn key_value_len(key: &str, value: &Value) -> usize {
    bytes_len(1, key.len()) + delimited_len(2, any_value_len(value))
}

fn put_key_value(tag: u32, key: &str, value: &Value, buf: &mut Vec<u8>) {
    let value_len = any_value_len(value);
    put_delimited(
        tag,
        bytes_len(1, key.len()) + delimited_len(2, value_len),
        buf,
    );
    put_bytes(1, key.as_bytes(), buf);
    put_delimited(2, value_len, buf);
    put_any_value(value, buf);
}

/// `Status`: `message` (2), `code` (3).
fn status_len(message: &str) -> usize {
    bytes_len(2, message.len()) + key_len(3) + encoded_len_varint(STATUS_CODE_ERROR)
}

/// Low byte: the W3C trace flags; bit 8: the parent's remoteness is known;
/// bit 9: the parent is remote.
fn flags(span: &Span) -> u32 {
    u32::from(span.context.flags) | 0x100 | if span.parent_is_remote { 0x200 } else { 0 }
}

fn kind(span: &Span) -> u64 {
    match span.kind {
        Kind::Producer => SPAN_KIND_PRODUCER,
        Kind::Consumer => SPAN_KIND_CONSUMER,
    }
}

fn end(span: &Span) -> u64 {
    span.end.max(span.start)
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + 8
    }
}

/// The encoded length of one `Span` message, without its own key.
fn span_len(span: &Span) -> usize {
    let attributes: usize = span
        .attributes
        .iter()
        .map(|(k, v)| delimited_len(9, key_value_len(k, v)))
        .sum();
    let status = match &span.status {
        Status::Unset => 0,
        Status::Error(message) => delimited_len(15, status_len(message)),
    };
    bytes_len(1, span.context.trace_id.len())
        + bytes_len(2, span.context.span_id.len())
        + bytes_len(3, span.trace_state.as_deref().map_or(0, str::len))
        + span.parent.map_or(0, |p| bytes_len(4, p.len()))
        + key_len(16)
        + 4
        + bytes_len(5, span.name.text().len())
        + key_len(6)
        + encoded_len_varint(kind(span))
        + fixed64_len(7, span.start)
        + fixed64_len(8, end(span))
        + attributes
        + status
}

/// Writes one span (`len` bytes: [`span_len`]) as field `tag` of the
/// enclosing `ScopeSpans`, in the order `prost` writes the fields (by tag
/// number).
fn put_span(tag: u32, span: &Span, len: usize, buf: &mut Vec<u8>) {
    put_delimited(tag, len, buf);
    put_bytes(1, &span.context.trace_id, buf);
    put_bytes(2, &span.context.span_id, buf);
    put_bytes(3, span.trace_state.as_deref().unwrap_or("").as_bytes(), buf);
    if let Some(parent) = &span.parent {
        put_bytes(4, parent, buf);
    }
    put_bytes(5, span.name.text().as_bytes(), buf);
    put_varint(6, kind(span), buf);
    put_fixed64(7, span.start, buf);
    put_fixed64(8, end(span), buf);
    for (key, value) in &span.attributes {
        put_key_value(9, key, value, buf);
    }
    if let Status::Error(message) = &span.status {
        put_delimited(15, status_len(message), buf);
        put_bytes(2, message.as_bytes(), buf);
        put_varint(3, STATUS_CODE_ERROR, buf);
    }
    put_key(16, WireType::ThirtyTwoBit, buf);
    buf.extend_from_slice(&flags(span).to_le_bytes());
}

/// What every export request of one process starts with: the `Resource`
/// and the `InstrumentationScope`, encoded once.
pub struct Preamble {
    /// `ResourceSpans.resource` (field 1), key included.
    resource: Vec<u8>,
    /// `ScopeSpans.scope` (field 1), key included.
    scope: Vec<u8>,
}

impl Preamble {
    pub fn new(service_name: &str) -> Preamble {
        let version = env!("CARGO_PKG_VERSION");
        let attributes = [
            ("service.name", Value::Str(service_name.to_string())),
            ("telemetry.sdk.name", Value::Static("jetway")),
            ("telemetry.sdk.language", Value::Static("rust")),
            ("telemetry.sdk.version", Value::Static(version)),
        ];
        let mut body = Vec::new();
        for (key, value) in &attributes {
            put_key_value(1, key, value, &mut body);
        }
        let mut resource = Vec::with_capacity(body.len() + 4);
        put_delimited(1, body.len(), &mut resource);
        resource.extend_from_slice(&body);

        let scope_len = bytes_len(1, "jetway".len()) + bytes_len(2, version.len());
        let mut scope = Vec::with_capacity(scope_len + 4);
        put_delimited(1, scope_len, &mut scope);
        put_bytes(1, b"jetway", &mut scope);
        put_bytes(2, version.as_bytes(), &mut scope);
        Preamble { resource, scope }
    }

    /// The body of one `ExportTraceServiceRequest` holding `spans`.
    pub fn encode(&self, spans: &[Span]) -> Vec<u8> {
        let lens: Vec<usize> = spans.iter().map(span_len).collect();
        let spans_len: usize = lens.iter().map(|len| delimited_len(2, *len)).sum();
        let scope_spans_len = self.scope.len() + spans_len;
        let resource_spans_len = self.resource.len() + delimited_len(2, scope_spans_len);
        let mut buf = Vec::with_capacity(delimited_len(1, resource_spans_len));
        put_delimited(1, resource_spans_len, &mut buf);
        buf.extend_from_slice(&self.resource);
        put_delimited(2, scope_spans_len, &mut buf);
        buf.extend_from_slice(&self.scope);
        for (span, len) in spans.iter().zip(lens) {
            put_span(2, span, len, &mut buf);
        }
        debug_assert_eq!(buf.len(), buf.capacity());
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::span::SpanContext;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as otlp;
    use prost::Message;

    /// The same request built as `opentelemetry-proto` messages: what
    /// `prost` writes for them is the reference.
    fn reference(service_name: &str, spans: &[Span]) -> Vec<u8> {
        let string = |key: &str, value: &str| KeyValue {
            key: key.to_string(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(value.to_string())),
            }),
            ..Default::default()
        };
        let version = env!("CARGO_PKG_VERSION");
        let spans = spans
            .iter()
            .map(|span| otlp::Span {
                trace_id: span.context.trace_id.to_vec(),
                span_id: span.context.span_id.to_vec(),
                trace_state: span.trace_state.clone().unwrap_or_default(),
                parent_span_id: span.parent.map(|p| p.to_vec()).unwrap_or_default(),
                flags: flags(span),
                name: span.name.text().to_string(),
                kind: match span.kind {
                    Kind::Producer => otlp::span::SpanKind::Producer,
                    Kind::Consumer => otlp::span::SpanKind::Consumer,
                } as i32,
                start_time_unix_nano: span.start,
                end_time_unix_nano: end(span),
                attributes: span
                    .attributes
                    .iter()
                    .map(|(key, value)| KeyValue {
                        key: key.to_string(),
                        value: Some(AnyValue {
                            value: Some(match value {
                                Value::Int(n) => any_value::Value::IntValue(*n),
                                v => any_value::Value::StringValue(
                                    value_str(v).unwrap_or_default().to_string(),
                                ),
                            }),
                        }),
                        ..Default::default()
                    })
                    .collect(),
                status: match &span.status {
                    Status::Unset => None,
                    Status::Error(message) => Some(otlp::Status {
                        message: message.clone(),
                        code: otlp::status::StatusCode::Error as i32,
                    }),
                },
                ..Default::default()
            })
            .collect();
        ExportTraceServiceRequest {
            resource_spans: vec![otlp::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![
                        string("service.name", service_name),
                        string("telemetry.sdk.name", "jetway"),
                        string("telemetry.sdk.language", "rust"),
                        string("telemetry.sdk.version", version),
                    ],
                    ..Default::default()
                }),
                scope_spans: vec![otlp::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "jetway".into(),
                        version: version.into(),
                        ..Default::default()
                    }),
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
        .encode_to_vec()
    }

    fn span(kind: Kind, status: Status, attributes: Vec<(&'static str, Value)>) -> Span {
        Span {
            context: SpanContext {
                trace_id: [1; 16],
                span_id: [2; 8],
                flags: 1,
            },
            parent: Some([3; 8]),
            parent_is_remote: true,
            trace_state: Some("a=b".into()),
            kind,
            name: "process emails".into(),
            attributes,
            start: 10,
            end: 20,
            status,
        }
    }

    #[test]
    fn writes_the_bytes_prost_writes_and_a_collector_decodes() {
        let long = "x".repeat(300);
        let spans = vec![
            span(
                Kind::Consumer,
                Status::Error("boom".into()),
                vec![
                    ("messaging.system", Value::Static("nats")),
                    ("messaging.nats.sequence", Value::Int(7)),
                    ("messaging.destination.name", Value::Str(long.clone())),
                    ("empty", Value::Str(String::new())),
                    ("negative", Value::Int(-1)),
                    (
                        "messaging.consumer.group.name",
                        Value::Shared("app-emails".into()),
                    ),
                    ("zero", Value::Int(0)),
                ],
            ),
            Span {
                parent: None,
                trace_state: None,
                parent_is_remote: false,
                start: 0,
                end: 0,
                name: Value::Str(long),
                ..span(Kind::Producer, Status::Error(String::new()), vec![])
            },
            Span {
                end: 5,
                ..span(Kind::Producer, Status::Unset, vec![])
            },
        ];
        let preamble = Preamble::new("orders");
        for n in 0..=spans.len() {
            let body = preamble.encode(&spans[..n]);
            assert_eq!(body, reference("orders", &spans[..n]), "{n} spans");
            let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
            assert_eq!(decoded.resource_spans[0].scope_spans[0].spans.len(), n);
        }
        let body = preamble.encode(&spans);
        let decoded = ExportTraceServiceRequest::decode(body.as_slice()).expect("decodes");
        let rs = &decoded.resource_spans[0];
        let service = &rs.resource.as_ref().expect("resource").attributes[0];
        assert_eq!(service.key, "service.name");
        let s = &rs.scope_spans[0].spans[0];
        assert_eq!(s.trace_id, vec![1; 16]);
        assert_eq!(s.parent_span_id, vec![3; 8]);
        assert_eq!(s.kind, otlp::span::SpanKind::Consumer as i32);
        assert_eq!(s.name, "process emails");
        assert_eq!(s.trace_state, "a=b");
        assert_eq!(s.flags, 0x301);
        assert_eq!(s.attributes.len(), 7);
        assert_eq!(
            s.status.as_ref().map(|st| st.code),
            Some(otlp::status::StatusCode::Error as i32)
        );
        // The end is never before the start.
        assert_eq!(rs.scope_spans[0].spans[2].end_time_unix_nano, 10);
    }
}
