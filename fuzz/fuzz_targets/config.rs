//! The config file: any text is a config or a list of problems (exit 64),
//! never a panic. The duration and size parsers are fed the same text.
#![no_main]

use jetway::config::{parse_duration, parse_size, Config};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = Config::from_yaml(text, Vec::new());
    if let Ok(d) = parse_duration(text) {
        // Whole milliseconds, so formatting it back gives the same value.
        let again = parse_duration(&format!("{}ms", d.as_millis())).expect("reparse");
        assert_eq!(again, d);
    }
    let _ = parse_size(text);
});
