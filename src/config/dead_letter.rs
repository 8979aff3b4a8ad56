//! `dead_letter`: the stream that holds messages delivery gave up on
//! (SPEC 2, 5).

use std::time::Duration;

use super::streams::is_valid_stream_name;
use super::values::{duration, string, Section};
use super::Problem;

#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    pub stream: String,
    pub max_age: Duration,
}

const KEYS: [&str; 2] = ["stream", "max_age"];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> DeadLetterConfig {
    let dead_letter = top.child("dead_letter", &KEYS, p);
    let stream = dead_letter.or("stream", "JETWAY_DLQ".to_string(), string, p);
    if !is_valid_stream_name(&stream) {
        p.push(Problem {
            path: "dead_letter.stream".into(),
            message: format!("`{stream}` is not a valid stream name"),
        });
    }
    let max_age = dead_letter.or("max_age", Duration::from_secs(14 * 86_400), duration, p);
    DeadLetterConfig { stream, max_age }
}
