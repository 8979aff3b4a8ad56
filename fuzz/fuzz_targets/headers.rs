//! Request headers (whatever hyper lets through) plus the body, mapped to
//! the stored NATS headers: refused with a 400 code, or only headers of
//! the documented set are stored.
#![no_main]

/// The header names, request builder and checks `tests/properties.rs`
/// uses too.
#[path = "../../tests/common/header_list.rs"]
mod header_list;

use arbitrary::Arbitrary;
use header_list::{header_map, is_documented, publish_config, NAMES};
use jetway::publish::headers::{map_headers, CLOUDEVENTS_JSON};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Name {
    /// One of the names the mapping looks at, so the fuzzer reaches every
    /// branch quickly.
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
    let headers = header_map(input.headers.into_iter().map(|(name, value)| {
        let name = match name {
            Name::Known(i) => NAMES[usize::from(i) % NAMES.len()].as_bytes().to_vec(),
            Name::Raw(bytes) => bytes,
        };
        let value = match value {
            Value::Raw(bytes) => bytes,
            Value::CloudEventsJson => CLOUDEVENTS_JSON.as_bytes().to_vec(),
            Value::SpecVersion => b"1.0".to_vec(),
        };
        (name, value)
    }));
    let config = publish_config(input.generate_ids);
    match map_headers(&headers, &input.body, &config, || "jw-generated".into()) {
        Ok(mapped) => {
            for (name, _) in mapped.headers.iter() {
                let name = name.to_string();
                assert!(is_documented(&name), "stored an undocumented header {name}");
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
