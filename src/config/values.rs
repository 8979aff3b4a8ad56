//! Reading the document: [`Section`], which walks one mapping and reports
//! its unknown keys, and the value parsers every section shares (strings,
//! secrets, numbers, durations, sizes, names, addresses, URLs).
//!
//! Each parser turns one YAML value into a typed value or a message; the
//! section that calls it adds the key path.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;
use serde_norway::{Mapping, Value};

use super::Problem;

/// A string that must never reach logs, errors or metrics.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// `a.b` from a path and a key; the top level has the empty path.
pub(super) fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping being read, with its key path; unknown keys are reported once.
pub(super) struct Section<'a> {
    map: Option<&'a Mapping>,
    path: String,
}

impl<'a> Section<'a> {
    pub(super) fn new(
        value: Option<&'a Value>,
        path: String,
        known: &[&str],
        problems: &mut Vec<Problem>,
    ) -> Section<'a> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(map)) => {
                for key in map.keys() {
                    match key.as_str() {
                        Some(k) if known.contains(&k) => {}
                        Some(k) => problems.push(Problem {
                            path: join(&path, k),
                            message: format!("unknown key (expected one of: {})", known.join(", ")),
                        }),
                        None => problems.push(Problem {
                            path: path.clone(),
                            message: "keys must be strings".into(),
                        }),
                    }
                }
                Some(map)
            }
            Some(_) => {
                problems.push(Problem {
                    path: path.clone(),
                    message: "expected a mapping".into(),
                });
                None
            }
        };
        Section { map, path }
    }

    pub(super) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    pub(super) fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value parsed, or `None` when absent (or invalid: then recorded).
    pub(super) fn opt<T>(
        &self,
        key: &str,
        parse: impl Fn(&Value) -> Result<T, String>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let value = self.raw(key)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(message) => {
                problems.push(Problem {
                    path: self.path(key),
                    message,
                });
                None
            }
        }
    }

    pub(super) fn or<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&Value) -> Result<T, String>,
        problems: &mut Vec<Problem>,
    ) -> T {
        self.opt(key, parse, problems).unwrap_or(default)
    }

    pub(super) fn child(
        &self,
        key: &str,
        known: &[&str],
        problems: &mut Vec<Problem>,
    ) -> Section<'a> {
        Section::new(self.raw(key), self.path(key), known, problems)
    }

    /// The items of the list under `key`, each with its path (`key[i]`).
    pub(super) fn items(&self, key: &str, p: &mut Vec<Problem>) -> Vec<(String, &'a Value)> {
        match self.raw(key) {
            None => Vec::new(),
            Some(Value::Sequence(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("{key}[{i}]"), v))
                .collect(),
            Some(_) => {
                p.push(Problem {
                    path: key.into(),
                    message: "expected a list".into(),
                });
                Vec::new()
            }
        }
    }
}

pub(super) fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string".into()),
    }
}

/// A token or password: a YAML number would be silently rewritten (`0x1F`
/// becomes 31), so only strings are taken.
pub(super) fn secret(v: &Value) -> Result<Secret, String> {
    match v {
        Value::String(s) => Ok(Secret(s.clone())),
        _ => Err("must be a string; quote it (e.g. \"0123\")".into()),
    }
}

pub(super) fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

pub(super) fn uint(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "expected a whole number ≥ 0".into()),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("expected a whole number, got `{s}`")),
        _ => Err("expected a whole number".into()),
    }
}

pub(super) fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "expected a number".into()),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("expected a number, got `{s}`")),
        _ => Err("expected a number".into()),
    }
}

pub(super) fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(items) => items.iter().map(string).collect(),
        _ => Err("expected a list of strings".into()),
    }
}

pub(super) fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        _ => Err("expected a duration such as 500ms, 10s, 5m, 2h or 7d".into()),
    }
}

pub(super) fn size(v: &Value) -> Result<usize, String> {
    match v {
        Value::String(s) => parse_size(s),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| "expected a size such as 512KiB or 1MiB".into()),
        _ => Err("expected a size such as 512KiB or 1MiB".into()),
    }
}

pub(super) fn path_buf(v: &Value) -> Result<PathBuf, String> {
    string(v).map(|s| expand_home(&s))
}

fn expand_home(s: &str) -> PathBuf {
    match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
    }
}

pub(super) fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.parse()
        .map_err(|_| format!("`{s}` is not an address such as 127.0.0.1:4480"))
}

/// An absolute `http://` URL of the local app (`app.health_url`, endpoints).
pub(super) fn http_uri(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => Err(format!(
            "`{s}`: https is not supported for the local app; use http://127.0.0.1:PORT/..."
        )),
        _ => Err(format!("`{s}` must be an absolute http:// URL")),
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `7d` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 10s, 5m, 2h, 7d)"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses `512KiB`, `1MiB`, `1GiB`, `100B` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512KiB, 1MiB)"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}` has an unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `[a-z0-9-]+`: app ids and subscription names end up in consumer names and
/// subjects, where dots, wildcards and upper case cause trouble.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{load, paths};

    #[test]
    fn durations_parse() {
        let table = [
            ("500ms", Some(Duration::from_millis(500))),
            ("10s", Some(Duration::from_secs(10))),
            ("5m", Some(Duration::from_secs(300))),
            ("2h", Some(Duration::from_secs(7200))),
            ("7d", Some(Duration::from_secs(7 * 86400))),
            ("0s", Some(Duration::ZERO)),
            ("10", None),
            ("s", None),
            ("1.5s", None),
            ("10 s", None),
            ("-1s", None),
            ("10w", None),
            ("99999999999999999999d", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_duration(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn sizes_parse() {
        let table = [
            ("512KiB", Some(512 * 1024)),
            ("1MiB", Some(1 << 20)),
            ("2GiB", Some(2 << 30)),
            ("100B", Some(100)),
            ("100", Some(100)),
            ("1MB", None),
            ("MiB", None),
            ("1.5MiB", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_size(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn secrets_must_be_quoted_strings() {
        assert_eq!(
            paths("app_id: a\napi: { token: 0x1F }\n"),
            vec!["api.token"]
        );
        assert!(load("app_id: a\napi: { token: \"0x1F\" }\n").is_ok());
    }
}
