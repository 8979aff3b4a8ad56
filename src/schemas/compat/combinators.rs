//! `anyOf`, `oneOf`, `allOf`: unions and conjunctions on either side.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::objects::required;
use super::references::{has_ref, resolve};
use super::types::{type_covered, types_of};
use super::unmodelled::ANNOTATIONS;
use super::{join, Checker, Kind, Violation};

impl Checker<'_> {
    /// Unions and conjunctions of events; `Break` when they settled the
    /// comparison.
    pub(super) fn event_combinators(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> ControlFlow<()> {
        // The same union on both sides (free of references): the events
        // meet it already; the rest decides.
        for key in ["anyOf", "oneOf"] {
            if let (Some(e), Some(a)) = (events.get(key), accepting.get(key)) {
                if e == a && !has_ref(e) {
                    let (mut e_rest, mut a_rest) = (events.clone(), accepting.clone());
                    e_rest.remove(key);
                    a_rest.remove(key);
                    self.incl(
                        &Value::Object(e_rest),
                        &Value::Object(a_rest),
                        path,
                        depth + 1,
                    );
                    return ControlFlow::Break(());
                }
            }
        }

        // Unions of events: each branch on its own, merged with the rest
        // where their keywords do not overlap (a merge only adds events).
        for key in ["anyOf", "oneOf"] {
            if let Some(Value::Array(branches)) = events.get(key) {
                let mut rest = events.clone();
                rest.remove(key);
                for (i, branch) in branches.iter().enumerate() {
                    let merged = merge(&rest, branch);
                    self.incl(
                        &merged,
                        &Value::Object(accepting.clone()),
                        &join(&join(path, key), &i.to_string()),
                        depth + 1,
                    );
                }
                return ControlFlow::Break(());
            }
        }
        if let Some(Value::Array(parts)) = events.get("allOf") {
            let mut merged = events.clone();
            merged.remove("allOf");
            let mut merged = Value::Object(merged);
            for part in parts {
                merged = merge_map(&merged, part);
            }
            self.incl(&merged, &Value::Object(accepting.clone()), path, depth + 1);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// The accepting side's `allOf` (every part must hold), `anyOf` and
    /// `oneOf` (one branch must take every event).
    pub(super) fn accepting_combinators(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        // The accepting side is a conjunction: every part must hold.
        if let Some(Value::Array(parts)) = accepting.get("allOf") {
            let ev = Value::Object(events.clone());
            for (i, part) in parts.iter().enumerate() {
                self.incl(
                    &ev,
                    part,
                    &join(&join(path, "allOf"), &i.to_string()),
                    depth + 1,
                );
            }
        }
        if let Some(Value::Array(branches)) = accepting.get("anyOf") {
            self.some_branch(events, branches, &join(path, "anyOf"), depth, false);
        }
        if let Some(Value::Array(branches)) = accepting.get("oneOf") {
            if events.get("oneOf") == accepting.get("oneOf")
                && !has_ref(&Value::Array(branches.clone()))
            {
                // Identical: the events already meet it.
            } else {
                self.some_branch(events, branches, &join(path, "oneOf"), depth, true);
            }
        }
    }

    /// `accepting` has branches, one of which must take every event.
    fn some_branch(
        &mut self,
        events: &Map<String, Value>,
        branches: &[Value],
        path: &str,
        depth: usize,
        exclusive: bool,
    ) {
        let (ev_name, acc_name) = self.sides();
        let ev = Value::Object(events.clone());
        let mut best: Option<Vec<Violation>> = None;
        for (i, branch) in branches.iter().enumerate() {
            let mut t = self.trial();
            t.incl(&ev, branch, &join(path, &i.to_string()), depth + 1);
            if t.violations.is_empty() {
                if exclusive {
                    let overlapping = branches
                        .iter()
                        .enumerate()
                        .any(|(j, other)| j != i && !disjoint(events, other, self.accepting_root));
                    if overlapping {
                        self.report(path, Kind::Unsupported, format!("events of the {ev_name} schema may match more than one `oneOf` branch of the {acc_name} one; jetway cannot prove exactly one matches"));
                    }
                }
                return;
            }
            if best.as_ref().is_none_or(|b| t.violations.len() < b.len()) {
                best = Some(t.violations);
            }
        }
        match best {
            Some(violations) => self.violations.extend(violations),
            None => self.report(
                path,
                Kind::TypeNarrowed,
                format!("the {acc_name} schema's branches accept nothing"),
            ),
        }
    }
}

/// `rest` and `branch` as one schema when their keywords do not overlap
/// (the merge then admits at least what both together admit), else the
/// branch alone (which admits more).
fn merge(rest: &Map<String, Value>, branch: &Value) -> Value {
    merge_map(&Value::Object(rest.clone()), branch)
}

fn merge_map(base: &Value, part: &Value) -> Value {
    match (base, part) {
        (Value::Object(b), Value::Object(p)) => {
            let overlap = p
                .keys()
                .any(|k| b.contains_key(k) && !ANNOTATIONS.contains(&k.as_str()));
            if overlap || p.contains_key("$ref") || b.contains_key("$ref") {
                // Keep whichever constrains more would need reasoning; the
                // part alone over-approximates `base ∧ part` soundly.
                return part.clone();
            }
            let mut out = b.clone();
            for (k, v) in p {
                out.insert(k.clone(), v.clone());
            }
            Value::Object(out)
        }
        (Value::Object(b), Value::Bool(true)) => Value::Object(b.clone()),
        (_, part) => part.clone(),
    }
}

/// Whether no event of `events` can match `other` (for `oneOf`): by type,
/// or by a required property whose `const` differs.
fn disjoint(events: &Map<String, Value>, other: &Value, root: &Value) -> bool {
    let other = match other {
        Value::Bool(b) => return !*b,
        Value::Object(m) => match m
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| resolve(root, r))
        {
            Some(Value::Object(t)) if m.len() == 1 => t,
            _ => m,
        },
        _ => return false,
    };
    if let (Some(a), Some(b)) = (types_of(events), types_of(other)) {
        if a.iter().all(|t| {
            !b.iter().any(|u| {
                type_covered(t, &[*u].into_iter().collect())
                    || type_covered(u, &[*t].into_iter().collect())
            })
        }) {
            return true;
        }
    }
    let consts = |m: &Map<String, Value>| -> BTreeMap<String, Value> {
        let req = required(m);
        m.get("properties")
            .and_then(Value::as_object)
            .map(|p| {
                p.iter()
                    .filter(|(k, _)| req.contains(*k))
                    .filter_map(|(k, v)| v.get("const").map(|c| (k.clone(), c.clone())))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (a, b) = (consts(events), consts(other));
    a.iter().any(|(k, v)| b.get(k).is_some_and(|w| w != v))
}
