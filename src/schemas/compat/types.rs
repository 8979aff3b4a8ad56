//! `type`: the seven JSON types, `integer` a subset of `number`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::{join, Checker, Kind};

/// The seven JSON types; `integer` is a subset of `number`.
pub(super) const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "integer", "string",
];

pub(super) type Types = BTreeSet<&'static str>;

pub(super) fn all_types() -> Types {
    TYPES.into_iter().collect()
}

pub(super) fn types_of(schema: &Map<String, Value>) -> Option<Types> {
    let name = |s: &str| TYPES.into_iter().find(|t| *t == s);
    match schema.get("type")? {
        Value::String(s) => Some(name(s).into_iter().collect()),
        Value::Array(list) => Some(
            list.iter()
                .filter_map(Value::as_str)
                .filter_map(name)
                .collect(),
        ),
        _ => Some(Types::new()),
    }
}

/// Whether every value of type `t` is of one of `set`.
pub(super) fn type_covered(t: &str, set: &Types) -> bool {
    set.contains(t) || (t == "integer" && set.contains("number"))
}

pub(super) fn list(types: &Types) -> String {
    if types.is_empty() {
        return "nothing".into();
    }
    types.iter().copied().collect::<Vec<_>>().join(", ")
}

impl Checker<'_> {
    /// Reports the types the accepting side lost; answers the events'
    /// types (every type when they name none).
    pub(super) fn types(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
    ) -> Types {
        let (ev_name, acc_name) = self.sides();
        let ev_types = types_of(events).unwrap_or_else(all_types);
        let acc_types = types_of(accepting).unwrap_or_else(all_types);
        let lost: Types = ev_types
            .iter()
            .copied()
            .filter(|t| !type_covered(t, &acc_types))
            .collect();
        if !lost.is_empty() {
            let kind = if ev_types.iter().any(|t| {
                type_covered(t, &acc_types) || (*t == "number" && acc_types.contains("integer"))
            }) {
                Kind::TypeNarrowed
            } else {
                Kind::TypeChanged
            };
            let what = if types_of(events).is_none() {
                format!("the {acc_name} schema accepts only {} where the {ev_name} one accepted any type", list(&acc_types))
            } else {
                format!(
                    "the {acc_name} schema accepts {} where the {ev_name} one accepted {}",
                    list(&acc_types),
                    list(&ev_types)
                )
            };
            self.report(&join(path, "type"), kind, what);
        }
        ev_types
    }
}
