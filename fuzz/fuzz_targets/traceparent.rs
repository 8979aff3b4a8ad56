//! W3C `traceparent` and `tracestate` from any publisher: never a panic; a
//! parsed context formats back to what parses to itself, and a version-00
//! header formats back byte for byte.
#![no_main]

use jetway::telemetry::span::{
    format_traceparent, format_tracestate, parse_traceparent, parse_tracestate,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str)| {
    let (traceparent, tracestate) = input;
    if let Some(ctx) = parse_traceparent(traceparent) {
        let text = format_traceparent(&ctx);
        assert_eq!(parse_traceparent(&text), Some(ctx));
        let trimmed = traceparent.trim_matches(|c| c == ' ' || c == '\t');
        if trimmed.starts_with("00-") {
            assert_eq!(text, trimmed);
        }
    }
    if let Some(members) = parse_tracestate(tracestate) {
        let text = format_tracestate(&members);
        assert_eq!(parse_tracestate(&text), Some(members));
    }
});
