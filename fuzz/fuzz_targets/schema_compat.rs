//! The compatibility checker on arbitrary pairs of schemas: it must never
//! panic, loop or overflow its stack; and when it accepts a backward change, the old schema's
//! `examples` (events the fuzzer put there) that are valid under the old
//! schema must be valid under the new one.
#![no_main]

use jetway::schemas::compat::{check, read_events, Mode, OpenContent};
use jetway::schemas::validate::compile;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(2, '\n');
    let (Some(a), Some(b)) = (parts.next(), parts.next()) else {
        return;
    };
    let (Ok(old), Ok(new)) = (
        serde_json::from_str::<Value>(a),
        serde_json::from_str::<Value>(b),
    ) else {
        return;
    };
    // Only schemas the registry would store.
    if compile(&old).is_err() || compile(&new).is_err() {
        return;
    }
    for oc in [OpenContent::Lenient, OpenContent::Strict] {
        for mode in Mode::ALL {
            let _ = check(&old, &new, mode, oc);
        }
        if check(&old, &new, Mode::Backward, oc).is_empty() {
            let (Ok(events), Ok(accepting)) = (compile(&read_events(&old, oc)), compile(&new)) else {
                return;
            };
            if let Some(Value::Array(examples)) = old.get("examples") {
                for e in examples {
                    if events.is_valid(e) {
                        assert!(accepting.is_valid(e), "accepted, yet {e} breaks");
                    }
                }
            }
        }
    }
});
