//! `log`: the log format and level (SPEC 2).

use super::values::{string, Section};
use super::Problem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

const KEYS: [&str; 2] = ["format", "level"];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> LogConfig {
    let log = top.child("log", &KEYS, p);
    let format = log.or(
        "format",
        LogFormat::Text,
        |v| match string(v)?.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not text or json")),
        },
        p,
    );
    let level = log.or("level", "info".to_string(), string, p);
    if !is_valid_log_level(&level) {
        p.push(Problem {
            path: "log.level".into(),
            message: format!(
                "`{level}` is not a level (trace, debug, info, warn, error, off) or filter"
            ),
        });
    }
    LogConfig { format, level }
}

/// A level (`info`) or a filter of `target=level` directives; a bare word
/// that is not a level is a typo, not a target.
fn is_valid_log_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    tracing_subscriber::EnvFilter::try_new(level).is_ok()
        && level
            .split(',')
            .map(str::trim)
            .all(|d| d.contains('=') || LEVELS.contains(&d.to_ascii_lowercase().as_str()))
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{load, paths};

    #[test]
    fn log_level_typos_are_caught() {
        assert_eq!(
            paths("app_id: a\nlog: { level: inof }\n"),
            vec!["log.level"]
        );
        assert!(load("app_id: a\nlog: { level: debug }\n").is_ok());
        assert!(load("app_id: a\nlog: { level: \"warn,jetway=debug\" }\n").is_ok());
    }
}
