//! Batch bodies, NDJSON and JSON arrays: refused whole with
//! `batch_invalid`, or 1 to MAX_ITEMS items whose `data` payloads are JSON.
#![no_main]

use jetway::publish::batch::{parse, MAX_ITEMS};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;

fuzz_target!(|input: (bool, &[u8])| {
    let (ndjson, body) = input;
    match parse(body, ndjson) {
        Ok(items) => {
            assert!((1..=MAX_ITEMS).contains(&items.len()));
            for item in items {
                if item.is_json {
                    // RawValue: checks the syntax without serde_json's
                    // recursion limit, which `data` (never interpreted by
                    // jetway) is not held to.
                    serde_json::from_slice::<Box<RawValue>>(&item.payload)
                        .expect("data is stored as its JSON text");
                }
            }
        }
        Err(e) => {
            assert_eq!(e.code(), "batch_invalid");
            assert_eq!(e.status().as_u16(), 400);
        }
    }
});
