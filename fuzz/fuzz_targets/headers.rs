//! Request headers (whatever hyper lets through) plus the body, mapped to
//! the stored NATS headers: refused with a 400 code, or only headers of
//! the documented set are stored.
#![no_main]

use arbitrary::Arbitrary;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use jetway::config::PublishConfig;
use jetway::publish::headers::{map_headers, CLOUDEVENTS_JSON};
use libfuzzer_sys::fuzz_target;

/// Names the mapping looks at, so the fuzzer reaches every branch quickly.
const KNOWN: &[&str] = &[
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
    "authorization",
];

#[derive(Debug, Arbitrary)]
enum Name {
    Known(u8),
    Raw(Vec<u8>),
}

#[derive(Debug, Arbitrary)]
enum Value {
    Raw(Vec<u8>),
    CloudEventsJson,
    SpecVersion,
}

#[derive(Debug, Arbitrary)]
struct Input {
    headers: Vec<(Name, Value)>,
    body: Vec<u8>,
    generate_ids: bool,
}

fuzz_target!(|input: Input| {
    let mut headers = HeaderMap::new();
    for (name, value) in input.headers {
        let name = match name {
            Name::Known(i) => HeaderName::from_static(KNOWN[usize::from(i) % KNOWN.len()]),
            Name::Raw(bytes) => match HeaderName::from_bytes(&bytes) {
                Ok(n) => n,
                Err(_) => continue,
            },
        };
        let value = match value {
            Value::Raw(bytes) => match HeaderValue::from_bytes(&bytes) {
                Ok(v) => v,
                Err(_) => continue,
            },
            Value::CloudEventsJson => HeaderValue::from_static(CLOUDEVENTS_JSON),
            Value::SpecVersion => HeaderValue::from_static("1.0"),
        };
        headers.append(name, value);
    }
    let config = PublishConfig {
        allow: None,
        forward_headers: vec!["x-tenant".into()],
        generate_ids: input.generate_ids,
    };
    match map_headers(&headers, &input.body, &config, || "jw-generated".into()) {
        Ok(mapped) => {
            for (name, _) in mapped.headers.iter() {
                let name = name.to_string();
                let lower = name.to_ascii_lowercase();
                let documented = matches!(
                    name.as_str(),
                    "Content-Type"
                        | "Nats-Msg-Id"
                        | "Nats-Expected-Last-Subject-Sequence"
                        | "Nats-Expected-Last-Sequence"
                        | "Nats-Expected-Stream"
                        | "traceparent"
                        | "tracestate"
                        | "x-tenant"
                ) || lower.starts_with("ce-");
                assert!(documented, "stored an undocumented header {name}");
            }
            if input.generate_ids {
                assert!(mapped.msg_id.is_some(), "generate_ids always gives an id");
            }
        }
        Err(e) => {
            assert!(
                matches!(e.code(), "header_invalid" | "cloudevent_invalid"),
                "unexpected code {}",
                e.code()
            );
            assert_eq!(e.status().as_u16(), 400);
        }
    }
});
