//! Keywords the checker does not model: annotations (never matter),
//! groups that must be identical as a whole, and keywords that make the
//! whole schema identical or refused.

use std::collections::HashSet;
use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::references::has_ref;
use super::{join, Checker, Kind};

/// Annotations: never matter for validity.
pub(super) const ANNOTATIONS: &[&str] = &[
    "title",
    "description",
    "examples",
    "default",
    "$comment",
    "format",
    "deprecated",
    "readOnly",
    "writeOnly",
    "$schema",
    "$defs",
    "definitions",
];

/// Keywords [`check`](super::check) models (besides annotations and applicators it
/// handles on its own: `$ref`, `anyOf`, `oneOf`, `allOf`).
const MODELLED: &[&str] = &[
    "type",
    "properties",
    "required",
    "additionalProperties",
    "items",
    "prefixItems",
    "additionalItems",
    "enum",
    "const",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "$ref",
    "anyOf",
    "oneOf",
    "allOf",
];

/// Keyword groups whose meaning depends on each other: an unmodelled group
/// must be identical as a whole.
const GROUPS: &[&[&str]] = &[
    &["if", "then", "else"],
    &["contains", "minContains", "maxContains"],
];

/// Keywords that depend on every other keyword of their schema: where one
/// appears, the whole schema must be identical.
const WHOLE: &[&str] = &[
    "unevaluatedProperties",
    "unevaluatedItems",
    "$dynamicRef",
    "$recursiveRef",
    "$dynamicAnchor",
    "$recursiveAnchor",
    "$id",
    "$anchor",
];

pub(super) fn is_trivial(schema: &Map<String, Value>) -> bool {
    schema.keys().all(|k| ANNOTATIONS.contains(&k.as_str()))
}

impl Checker<'_> {
    /// Keywords not modelled: identical or refused. `Break` when a keyword
    /// that depends on the whole schema decided it.
    pub(super) fn unmodelled(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
    ) -> ControlFlow<()> {
        // Keywords not modelled: identical or refused.
        if accepting.keys().any(|k| WHOLE.contains(&k.as_str()))
            || events.keys().any(|k| WHOLE.contains(&k.as_str()))
        {
            if events != accepting || has_ref(&Value::Object(accepting.clone())) {
                let kw: Vec<&str> = accepting
                    .keys()
                    .chain(events.keys())
                    .map(String::as_str)
                    .filter(|k| WHOLE.contains(k))
                    .collect();
                self.report(path, Kind::Unsupported, format!("`{}` changed, or the schema around it did; jetway cannot prove such a change safe", kw.join("`, `")));
            }
            return ControlFlow::Break(());
        }
        let mut grouped: HashSet<&str> = HashSet::new();
        for group in GROUPS {
            grouped.extend(group.iter().copied());
            if group.iter().any(|k| accepting.contains_key(*k)) {
                let same = group.iter().all(|k| accepting.get(*k) == events.get(*k));
                let refs = group.iter().any(|k| accepting.get(*k).is_some_and(has_ref));
                if !same || refs {
                    self.report(
                        path,
                        Kind::Unsupported,
                        format!(
                            "`{}` changed; jetway does not reason about it",
                            group.join("`/`")
                        ),
                    );
                }
            }
        }
        for (k, v) in accepting {
            let k = k.as_str();
            if ANNOTATIONS.contains(&k)
                || MODELLED.contains(&k)
                || grouped.contains(k)
                || k == "patternProperties"
            {
                continue;
            }
            if events.get(k) != Some(v) || has_ref(v) {
                self.report(
                    &join(path, k),
                    Kind::Unsupported,
                    format!("keyword `{k}` was added or changed; jetway does not reason about it"),
                );
            }
        }
        ControlFlow::Continue(())
    }
}
