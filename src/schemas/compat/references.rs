//! `$ref`: local references on either side, resolved in their own
//! document. A pair of references met again deeper inside the event is
//! assumed (coinduction, by induction on the finite event), which keeps
//! recursive schemas finite to check.

use std::ops::ControlFlow;

use serde_json::{Map, Value};

use super::unmodelled::is_trivial;
use super::{Checker, Draft, Kind};

impl Checker<'_> {
    /// `$ref` on the events side or on the accepting side; `Break` when it
    /// settled the comparison.
    pub(super) fn references(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) -> ControlFlow<()> {
        let (ev_name, acc_name) = self.sides();
        // `$ref` on the events side: the target (and, from 2019-09 on, the
        // siblings too; ignoring them only adds events).
        if let Some(Value::String(r)) = events.get("$ref") {
            let Some(target) = resolve(self.events_root, r) else {
                self.report(
                    path,
                    Kind::Unsupported,
                    format!("`$ref` {r} of the {ev_name} schema is not a local JSON Pointer"),
                );
                return ControlFlow::Break(());
            };
            let mut rest = events.clone();
            rest.remove("$ref");
            let key = (
                format!("e{r}"),
                Value::Object(accepting.clone()).to_string(),
            );
            if self.is_assumed(&key) {
                return ControlFlow::Break(());
            }
            if self.events_draft == Draft::Draft7 || is_trivial(&rest) {
                self.assumed.insert(key, self.level);
                self.incl(target, &Value::Object(accepting.clone()), path, depth + 1);
                return ControlFlow::Break(());
            }
            // Either part alone over-approximates the events.
            let mut t = self.trial();
            t.assumed.insert(key, self.level);
            t.incl(target, &Value::Object(accepting.clone()), path, depth + 1);
            if t.violations.is_empty() {
                return ControlFlow::Break(());
            }
            self.incl(
                &Value::Object(rest),
                &Value::Object(accepting.clone()),
                path,
                depth + 1,
            );
            return ControlFlow::Break(());
        }
        // `$ref` on the accepting side: target and siblings both apply
        // (draft 7: the target only).
        if let Some(Value::String(r)) = accepting.get("$ref") {
            let Some(target) = resolve(self.accepting_root, r) else {
                self.report(
                    path,
                    Kind::Unsupported,
                    format!("`$ref` {r} of the {acc_name} schema is not a local JSON Pointer"),
                );
                return ControlFlow::Break(());
            };
            let events_v = Value::Object(events.clone());
            let key = (events_v.to_string(), format!("a{r}"));
            if !self.is_assumed(&key) {
                self.assumed.insert(key, self.level);
                self.incl(&events_v, target, path, depth + 1);
            }
            if self.accepting_draft != Draft::Draft7 {
                let mut rest = accepting.clone();
                rest.remove("$ref");
                self.incl(&events_v, &Value::Object(rest), path, depth + 1);
            }
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

pub(super) fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "$ref" || k == "$dynamicRef" || k == "$recursiveRef" || has_ref(v)),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

/// The target of a local `$ref` (`#` or `#/json/pointer`).
pub(super) fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
    let pointer = reference.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    if !pointer.starts_with('/') {
        return None;
    }
    let decoded = percent_decode(pointer)?;
    root.pointer(&decoded)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}
