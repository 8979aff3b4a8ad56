//! `streams`: the JetStream streams jetway ensures at start (SPEC 2).

use std::collections::HashSet;
use std::time::Duration;

use super::values::{duration, string, string_list, uint, Section};
use super::Problem;
use crate::subject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub replicas: usize,
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

const KEYS: [&str; 6] = [
    "name",
    "subjects",
    "storage",
    "replicas",
    "max_age",
    "duplicate_window",
];

/// A JetStream stream name: printable ASCII without space, `.`, `*`, `>`,
/// path separators.
pub fn is_valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> Vec<StreamConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (path, value) in top.items("streams", p) {
        let s = Section::new(Some(value), path.clone(), &KEYS, p);
        let name = s.opt("name", string, p);
        match &name {
            None if s.raw("name").is_none() => p.push(Problem {
                path: s.path("name"),
                message: "required".into(),
            }),
            Some(n) if !is_valid_stream_name(n) => p.push(Problem {
                path: s.path("name"),
                message: format!("`{n}` is not a valid stream name (no spaces, dots, * or >)"),
            }),
            Some(n) if !names.insert(n.clone()) => p.push(Problem {
                path: s.path("name"),
                message: format!("stream `{n}` is listed twice"),
            }),
            _ => {}
        }
        let subjects = s.or("subjects", Vec::new(), string_list, p);
        if subjects.is_empty() {
            p.push(Problem {
                path: s.path("subjects"),
                message: "at least one subject is required".into(),
            });
        }
        for (i, subj) in subjects.iter().enumerate() {
            if let Err(e) = subject::validate_pattern(subj) {
                p.push(Problem {
                    path: format!("{}[{i}]", s.path("subjects")),
                    message: e.to_string(),
                });
            }
        }
        let storage = s.or(
            "storage",
            Storage::File,
            |v| match string(v)?.as_str() {
                "file" => Ok(Storage::File),
                "memory" => Ok(Storage::Memory),
                other => Err(format!("`{other}` is not file or memory")),
            },
            p,
        );
        let replicas = s.or("replicas", 1, uint, p);
        if !(1..=5).contains(&replicas) {
            p.push(Problem {
                path: s.path("replicas"),
                message: "must be between 1 and 5".into(),
            });
        }
        let max_age = s.or("max_age", Duration::ZERO, duration, p);
        let duplicate_window = s.or("duplicate_window", Duration::from_secs(120), duration, p);
        if !max_age.is_zero() && duplicate_window > max_age {
            p.push(Problem {
                path: s.path("duplicate_window"),
                message: format!(
                    "must not be longer than max_age ({max_age:?}); NATS refuses such a stream"
                ),
            });
        }
        if let Some(name) = name {
            out.push(StreamConfig {
                name,
                subjects,
                storage,
                replicas: replicas as usize,
                max_age,
                duplicate_window,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{load, paths};

    #[test]
    fn duplicate_window_cannot_outlast_max_age() {
        assert_eq!(
            paths("app_id: a\nstreams: [{ name: S, subjects: [s], max_age: 1m }]\n"),
            vec!["streams[0].duplicate_window"]
        );
        assert!(load("app_id: a\nstreams: [{ name: S, subjects: [s], max_age: 1m, duplicate_window: 30s }]\n").is_ok());
    }
}
