//! `Retry-After` from an endpoint: seconds or an HTTP date, anything else
//! ignored; never a panic, whatever the clock says.
#![no_main]

use std::time::{Duration, SystemTime};

use jetway::delivery::retry::parse_retry_after;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| {
    let (value, now_secs) = input;
    // Any instant SystemTime can hold on Linux (i64 seconds).
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now_secs % (i64::MAX as u64 / 2));
    if let Some(wait) = parse_retry_after(value, now) {
        if let Ok(secs) = value.trim().parse::<u64>() {
            assert_eq!(wait, Duration::from_secs(secs));
        }
    }
});
