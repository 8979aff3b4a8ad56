//! The request headers `tests/properties.rs` and the fuzz target
//! `fuzz/fuzz_targets/headers.rs` build and check the header mapping
//! with, written once. Both include this file with `#[path]`: the fuzz
//! crate is a workspace of its own and cannot reach the tests' modules,
//! and the library need not carry test code. It needs only what both
//! already depend on (`axum::http`, `jetway`).

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use jetway::config::PublishConfig;

/// Header names the mapping treats specially, and some it ignores.
pub const NAMES: &[&str] = &[
    "content-type",
    "idempotency-key",
    "jetway-expected-last-subject-sequence",
    "jetway-expected-last-sequence",
    "jetway-expected-stream",
    "ce-specversion",
    "ce-id",
    "ce-source",
    "ce-type",
    "ce-subject",
    "traceparent",
    "tracestate",
    "x-tenant",
    "x-other",
    "authorization",
    "nats-msg-id",
    "nats-expected-stream",
];

/// The headers of a request from raw (name, value) pairs: only what hyper
/// could have handed over, so a pair that is no valid name or value is
/// left out.
pub fn header_map<N, V>(pairs: impl IntoIterator<Item = (N, V)>) -> HeaderMap
where
    N: AsRef<[u8]>,
    V: AsRef<[u8]>,
{
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_ref()),
            HeaderValue::from_bytes(value.as_ref()),
        ) {
            headers.append(n, v);
        }
    }
    headers
}

/// The publish settings the header mapping is checked with.
pub fn publish_config(generate_ids: bool) -> PublishConfig {
    PublishConfig {
        allow: None,
        forward_headers: vec!["x-tenant".into()],
        generate_ids,
    }
}

/// The names SPEC section 3 says a publish may store.
pub fn is_documented(name: &str) -> bool {
    matches!(
        name,
        "Content-Type"
            | "Nats-Msg-Id"
            | "Nats-Expected-Last-Subject-Sequence"
            | "Nats-Expected-Last-Sequence"
            | "Nats-Expected-Stream"
            | "traceparent"
            | "tracestate"
            | "x-tenant"
    ) || name.starts_with("ce-")
}
