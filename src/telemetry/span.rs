//! A small span model and the W3C trace context (`traceparent`,
//! `tracestate`) as pure functions: what jetway records of a publish or a
//! delivery attempt before it is encoded for OTLP (`export.rs`).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// The sampled bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// The identity of one span within a trace, as `traceparent` carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl SpanContext {
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The same trace and flags with another span id.
    pub fn with_span_id(&self, span_id: [u8; 8]) -> SpanContext {
        SpanContext { span_id, ..*self }
    }

    /// `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        format_traceparent(self)
    }

    /// The 32 hex digits of the trace id (for log lines).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The 16 hex digits of the span id (for log lines).
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

/// Lower-case hex digits, as bytes (a table, not `format!`: this runs for
/// every traced publish and delivery; one UTF-8 check at the end is cheaper
/// than a `char` push per digit).
fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)]);
        out.push(DIGITS[usize::from(b & 0x0f)]);
    }
}

fn hex(bytes: &[u8]) -> String {
    let mut out = Vec::with_capacity(bytes.len() * 2);
    push_hex(&mut out, bytes);
    String::from_utf8(out).unwrap_or_default()
}

fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let bytes = s.as_bytes();
    if bytes.len() != N * 2 {
        return None;
    }
    let digit = |b: u8| match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

/// Parses a W3C `traceparent`. Version 00 has exactly four fields; a later
/// version may append fields, which are ignored (W3C trace context 4.3).
/// Upper-case hex, all-zero ids and version `ff` are invalid.
pub fn parse_traceparent(value: &str) -> Option<SpanContext> {
    let value = value.trim_matches(|c| c == ' ' || c == '\t');
    let mut parts = value.split('-');
    let version = unhex::<1>(parts.next()?)?[0];
    let trace_id = unhex::<16>(parts.next()?)?;
    let span_id = unhex::<8>(parts.next()?)?;
    let flags = unhex::<1>(parts.next()?)?[0];
    let rest = parts.next();
    if version == 0xff || (version == 0 && rest.is_some()) {
        return None;
    }
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(SpanContext {
        trace_id,
        span_id,
        flags,
    })
}

/// Formats a context as a version-00 `traceparent`.
pub fn format_traceparent(ctx: &SpanContext) -> String {
    let mut out = Vec::with_capacity(55);
    out.extend_from_slice(b"00-");
    push_hex(&mut out, &ctx.trace_id);
    out.push(b'-');
    push_hex(&mut out, &ctx.span_id);
    out.push(b'-');
    push_hex(&mut out, &[ctx.flags]);
    String::from_utf8(out).unwrap_or_default()
}

/// Parses a W3C `tracestate` into its list members (`key=value`), in
/// order; `None` when it is not valid (then it is still passed on as it
/// came: jetway never rewrites it). Empty members are allowed and skipped.
pub fn parse_tracestate(value: &str) -> Option<Vec<(&str, &str)>> {
    let mut members = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let (key, val) = member.split_once('=')?;
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && key
                .bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'*' | b'/' | b'@'))
            && key.bytes().filter(|b| *b == b'@').count() <= 1;
        let val_ok = !val.is_empty()
            && val.len() <= 256
            && val
                .bytes()
                .all(|b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
            && !val.ends_with(' ');
        if !key_ok || !val_ok {
            return None;
        }
        members.push((key, val));
    }
    if members.len() > 32 {
        return None;
    }
    Some(members)
}

/// Formats list members as a `tracestate` value.
pub fn format_tracestate(members: &[(&str, &str)]) -> String {
    members
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// A fresh non-zero trace id.
pub fn new_trace_id() -> [u8; 16] {
    loop {
        let id: [u8; 16] = rand::random();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A fresh non-zero span id.
pub fn new_span_id() -> [u8; 8] {
    loop {
        let id: [u8; 8] = rand::random();
        if id != [0; 8] {
            return id;
        }
    }
}

/// What the span stands for (OTLP `SpanKind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Hands a message to a broker: `publish`, dead letters.
    Producer,
    /// Works on a message taken from a broker: `process`.
    Consumer,
}

/// An attribute value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A fixed value (`nats`, `send`...): no allocation per span.
    Static(&'static str),
    Str(String),
    /// One string shared by the spans of a subscription (its consumer, its
    /// span name): a reference count, no allocation per span.
    Shared(Arc<str>),
    Int(i64),
}

impl Value {
    /// The string, or "" for a number.
    pub fn text(&self) -> &str {
        match self {
            Value::Static(s) => s,
            Value::Str(s) => s,
            Value::Shared(s) => s,
            Value::Int(_) => "",
        }
    }
}

impl From<Arc<str>> for Value {
    fn from(s: Arc<str>) -> Self {
        Value::Shared(s)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::Str(s)
    }
}

impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Value::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}

impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Value::Int(i64::from(n))
    }
}

/// Whether the operation succeeded (OTLP `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Unset,
    Error(String),
}

/// One finished span, waiting for export.
#[derive(Debug, Clone)]
pub struct Span {
    pub context: SpanContext,
    pub parent: Option<[u8; 8]>,
    /// Whether the parent is another process's span (a traceparent).
    pub parent_is_remote: bool,
    /// The `tracestate` that came with the context, untouched.
    pub trace_state: Option<String>,
    pub kind: Kind,
    pub name: Value,
    pub attributes: Vec<(&'static str, Value)>,
    /// Nanoseconds since the Unix epoch.
    pub start: u64,
    pub end: u64,
    pub status: Status,
}

/// Now, in nanoseconds since the Unix epoch.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_table() {
        let ok = parse_traceparent(TP).expect("valid");
        assert!(ok.is_sampled());
        assert_eq!(ok.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ok.span_id_hex(), "00f067aa0ba902b7");
        for (input, valid) in [
            (TP, true),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
                true,
            ),
            // A later version may add fields.
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                true,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                false,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                false,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
                false,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
                false,
            ),
            ("", false),
            ("garbage", false),
            (
                "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                false,
            ),
        ] {
            assert_eq!(parse_traceparent(input).is_some(), valid, "{input}");
        }
    }

    #[test]
    fn traceparent_round_trips_and_keeps_flags() {
        let ctx = parse_traceparent(TP).expect("valid");
        assert_eq!(format_traceparent(&ctx), TP);
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = parse_traceparent(unsampled).expect("valid");
        assert!(!ctx.is_sampled());
        let child = ctx.with_span_id([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            child.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-00"
        );
    }

    #[test]
    fn tracestate_table() {
        assert_eq!(
            parse_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            Some(vec![("congo", "t61rcWkgMzE"), ("rojo", "00f067aa0ba902b7")])
        );
        assert_eq!(
            parse_tracestate("a=1, ,b@vendor=2"),
            Some(vec![("a", "1"), ("b@vendor", "2")])
        );
        assert_eq!(parse_tracestate(""), Some(vec![]));
        for bad in ["a", "A=1", "a=", "=1", "a=1=2", "a@b@c=1"] {
            assert_eq!(parse_tracestate(bad), None, "{bad}");
        }
        let many = (0..33)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(parse_tracestate(&many), None);
        let members = parse_tracestate("x=1,y=2").expect("valid");
        assert_eq!(format_tracestate(&members), "x=1,y=2");
    }

    proptest::proptest! {
        // The same properties as fuzz/fuzz_targets/traceparent.rs, in CI.
        #[test]
        fn parsers_round_trip(tp in "[0-9a-f-]{0,60}|00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", ts in "[ -~]{0,80}") {
            if let Some(ctx) = parse_traceparent(&tp) {
                let text = format_traceparent(&ctx);
                proptest::prop_assert_eq!(parse_traceparent(&text), Some(ctx));
                if tp.starts_with("00-") {
                    proptest::prop_assert_eq!(&text, &tp);
                }
            }
            if let Some(members) = parse_tracestate(&ts) {
                let text = format_tracestate(&members);
                proptest::prop_assert_eq!(parse_tracestate(&text), Some(members));
            }
        }
    }

    #[test]
    fn fresh_ids_are_not_zero() {
        assert_ne!(new_trace_id(), [0; 16]);
        assert_ne!(new_span_id(), [0; 8]);
    }
}
