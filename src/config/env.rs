//! The environment's part in the config, applied to the parsed document
//! before validation: `JETWAY_SECTION__KEY=value` overrides first, then
//! `${VAR}` expansion in string values.

use serde_norway::{Mapping, Value};

use super::values::join;
use super::{Problem, TOP_LEVEL};

/// Whether an environment variable is a config override: `JETWAY_` and a
/// top-level key. Others are not jetway's: Kubernetes gives every pod
/// `JETWAY_PORT`, `JETWAY_SERVICE_HOST`... when a Service named jetway
/// exists, and a sidecar must not refuse to start over them. A typo below
/// the top level (`JETWAY_NATS__URLL`) is still an unknown key.
fn is_override(name: &str) -> bool {
    name.strip_prefix("JETWAY_")
        .map(|rest| rest.split("__").next().unwrap_or(""))
        .is_some_and(|top| TOP_LEVEL.contains(&top.to_ascii_lowercase().as_str()))
}

/// `JETWAY_NATS__URL=x` sets `nats.url`; a number segment indexes a list
/// (`JETWAY_SUBSCRIPTIONS__0__ENDPOINT`). Values are read as YAML scalars so
/// `true` and `16` keep their types.
pub(super) fn apply_overrides(
    root: &mut Value,
    env: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    let mut overrides: Vec<&(String, String)> =
        env.iter().filter(|(k, _)| is_override(k)).collect();
    overrides.sort();
    for (key, raw) in overrides {
        let segments: Vec<String> = key["JETWAY_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if segments.iter().any(|s| s.is_empty()) {
            problems.push(Problem {
                path: key.clone(),
                message: "malformed override name (use JETWAY_SECTION__KEY)".into(),
            });
            continue;
        }
        let value =
            serde_norway::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone()));
        let value = match value {
            Value::Null if !raw.trim().is_empty() && raw.trim() != "~" && raw.trim() != "null" => {
                Value::String(raw.clone())
            }
            other => other,
        };
        if let Err(message) = set_path(root, &segments, value) {
            problems.push(Problem {
                path: display_path(&segments),
                message: format!("cannot apply {key}: {message}"),
            });
        }
    }
}

/// `subscriptions[0].endpoint`, as problems in the file are named.
fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

fn set_path(node: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    match node {
        Value::Mapping(map) => {
            let child = map
                .entry(Value::String(first.clone()))
                .or_insert(Value::Null);
            set_path(child, rest, value)
        }
        Value::Sequence(items) => {
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not a list index"))?;
            let child = items
                .get_mut(index)
                .ok_or_else(|| format!("list has no item {index}"))?;
            set_path(child, rest, value)
        }
        _ => Err(format!("`{first}` is below a plain value")),
    }
}

/// Replaces `${VAR}` in string values with the variable's value.
pub(super) fn expand_vars(
    node: &mut Value,
    path: &str,
    env: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    match node {
        Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                let key = key.as_str().unwrap_or("?");
                expand_vars(child, &join(path, key), env, problems);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                expand_vars(child, &format!("{path}[{i}]"), env, problems);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}` references; an unset variable is an error, not "".
pub fn expand_str(input: &str, env: &[(String, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not a valid variable reference"));
        }
        let value = env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, NatsAuth};

    #[test]
    fn env_vars_expand_and_unset_ones_are_errors() {
        let env = vec![("NATS_TOKEN".to_string(), "s3cret".to_string())];
        let c = Config::from_yaml(
            "app_id: a\nnats: { token: \"${NATS_TOKEN}\" }\n",
            env.clone(),
        )
        .expect("valid");
        assert!(matches!(c.nats.auth, NatsAuth::Token(ref t) if t.expose() == "s3cret"));
        let err = Config::from_yaml("app_id: a\napi: { token: \"${MISSING}\" }\n", env)
            .expect_err("unset var");
        assert_eq!(err.problems()[0].path, "api.token");
        assert!(err.problems()[0].message.contains("MISSING"));
    }

    #[test]
    fn overrides_replace_file_values() {
        let env = vec![
            ("JETWAY_NATS__URL".to_string(), "nats://b:4222".to_string()),
            ("JETWAY_API__MAX_IN_FLIGHT".to_string(), "7".to_string()),
            (
                "JETWAY_SUBSCRIPTIONS__0__CONCURRENCY".to_string(),
                "3".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let yaml = "app_id: a\nnats: { url: nats://a:4222 }\nsubscriptions: [{name: s, subject: x, endpoint: 'http://127.0.0.1:1/'}]\n";
        let c = Config::from_yaml(yaml, env).expect("valid");
        assert_eq!(c.nats.urls, vec!["nats://b:4222"]);
        assert_eq!(c.api.max_in_flight, 7);
        assert_eq!(c.subscriptions[0].concurrency, 3);

        let bad = vec![("JETWAY_NATS__NOPE".to_string(), "1".to_string())];
        let err = Config::from_yaml("app_id: a\n", bad).expect_err("unknown key");
        assert_eq!(err.problems()[0].path, "nats.nope");
    }

    #[test]
    fn kubernetes_service_variables_are_not_overrides() {
        let env: Vec<(String, String)> = [
            ("JETWAY_PORT", "tcp://10.0.0.1:4480"),
            ("JETWAY_SERVICE_HOST", "10.0.0.1"),
            ("JETWAY_SERVICE_PORT_METRICS", "4481"),
            ("JETWAY_PORT_4480_TCP_ADDR", "10.0.0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(Config::from_yaml("app_id: a\n", env).is_ok());
    }

    #[test]
    fn override_problems_are_named_like_file_problems() {
        let env = vec![("JETWAY_SUBSCRIPTIONS__3__NAME".to_string(), "x".to_string())];
        let yaml =
            "app_id: a\nsubscriptions: [{name: s, subject: x, endpoint: 'http://127.0.0.1:1/'}]\n";
        let err = Config::from_yaml(yaml, env).expect_err("no such item");
        assert_eq!(err.problems()[0].path, "subscriptions[3].name");
    }
}
