//! `enum` and `const`: finite languages, checked exactly, value by value,
//! with the real validator.

use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::references::resolve;
use super::types::{list, Types};
use super::{join, Checker, Draft, Kind};
use crate::schemas::validate;

impl Checker<'_> {
    /// Finite events (`const`, `enum`): `Break`, each value was checked.
    pub(super) fn finite_events(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
    ) -> ControlFlow<()> {
        let finite: Option<(Vec<Value>, bool)> = match (events.get("const"), events.get("enum")) {
            (Some(c), _) => Some((vec![c.clone()], true)),
            (None, Some(Value::Array(values))) => Some((values.clone(), false)),
            _ => None,
        };
        if let Some((values, is_const)) = finite {
            self.finite(events, accepting, values, is_const, path);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// `enum`/`const` on the accepting side with no finite events: only
    /// provable for the finite types.
    pub(super) fn listed_values(
        &mut self,
        accepting: &Map<String, Value>,
        ev_types: &Types,
        path: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        for key in ["enum", "const"] {
            if let Some(v) = accepting.get(key) {
                let allowed: Vec<&Value> = match (key, v) {
                    ("enum", Value::Array(values)) => values.iter().collect(),
                    ("const", v) => vec![v],
                    _ => Vec::new(),
                };
                let covered = ev_types.iter().all(|t| match *t {
                    "null" => allowed.contains(&&Value::Null),
                    "boolean" => {
                        allowed.contains(&&Value::Bool(true))
                            && allowed.contains(&&Value::Bool(false))
                    }
                    _ => false,
                });
                if !covered {
                    let kind = if key == "enum" {
                        Kind::EnumNarrowed
                    } else {
                        Kind::ConstChanged
                    };
                    self.report(&join(path, key), kind, format!("the {acc_name} schema allows only listed values (`{key}`) where the {ev_name} one allowed any {}", list(ev_types)));
                }
            }
        }
    }

    pub(super) fn is_empty_language(&self, events: &Value) -> bool {
        match events {
            Value::Bool(false) => true,
            Value::Object(map) => {
                matches!(map.get("enum"), Some(Value::Array(v)) if v.is_empty())
                    || matches!(map.get("type"), Some(Value::Array(v)) if v.is_empty())
            }
            _ => false,
        }
    }

    /// An event side with finitely many values: each must be accepted.
    fn finite(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        values: Vec<Value>,
        is_const: bool,
        path: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        let ev = Value::Object(events.clone());
        let acc = Value::Object(accepting.clone());
        let mut refused = Vec::new();
        for value in values {
            // Values the events side refuses anyway are not events.
            if accepts(self.events_root, &ev, self.events_draft, &value) == Some(false) {
                continue;
            }
            if accepts(self.accepting_root, &acc, self.accepting_draft, &value) != Some(true) {
                refused.push(value);
            }
        }
        if refused.is_empty() {
            return;
        }
        let shown: Vec<String> = refused.iter().take(5).map(Value::to_string).collect();
        let (kind, key) = if accepting.contains_key("const") && is_const {
            (Kind::ConstChanged, "const")
        } else if accepting.contains_key("enum") || accepting.contains_key("const") {
            (
                Kind::EnumNarrowed,
                if accepting.contains_key("enum") {
                    "enum"
                } else {
                    "const"
                },
            )
        } else {
            (Kind::TypeNarrowed, "")
        };
        let at = if key.is_empty() {
            path.to_string()
        } else {
            join(path, key)
        };
        self.report(
            &at,
            kind,
            format!(
                "the {acc_name} schema refuses {} allowed by the {ev_name} one",
                shown.join(", ")
            ),
        );
    }
}

/// The validator behind the exact checks of finite languages.
fn accepts(root: &Value, schema: &Value, draft: Draft, value: &Value) -> Option<bool> {
    let inlined = inline(root, schema, 0)?;
    let validator = validate::compile_for_check(&inlined, draft)?;
    Some(validator.is_valid(value))
}

/// `schema` with every local `$ref` replaced by its target, or `None` when
/// it refers to itself (recursion) or elsewhere.
fn inline(root: &Value, schema: &Value, depth: usize) -> Option<Value> {
    if depth > 16 {
        return None;
    }
    match schema {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                if k == "$ref" {
                    continue;
                }
                if matches!(
                    k.as_str(),
                    "enum" | "const" | "examples" | "default" | "$defs" | "definitions"
                ) {
                    if !matches!(k.as_str(), "$defs" | "definitions") {
                        out.insert(k.clone(), v.clone());
                    }
                    continue;
                }
                out.insert(k.clone(), inline(root, v, depth + 1)?);
            }
            if let Some(Value::String(r)) = map.get("$ref") {
                let target = resolve(root, r)?;
                let target = inline(root, target, depth + 1)?;
                let mut all = vec![target];
                if !out.is_empty() {
                    all.push(Value::Object(out));
                }
                let mut wrapped = Map::new();
                wrapped.insert("allOf".into(), Value::Array(all));
                return Some(Value::Object(wrapped));
            }
            Some(Value::Object(out))
        }
        Value::Array(items) => items
            .iter()
            .map(|i| inline(root, i, depth + 1))
            .collect::<Option<Vec<_>>>()
            .map(Value::Array),
        other => Some(other.clone()),
    }
}
