//! `properties`, `required`, `additionalProperties`,
//! `patternProperties` (identical only), `minProperties`, `maxProperties`.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::references::has_ref;
use super::{join, Checker, Kind};

impl Checker<'_> {
    pub(super) fn objects(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        self.min_count(
            events,
            accepting,
            "minProperties",
            path,
            "number of properties",
        );
        self.max_count(
            events,
            accepting,
            "maxProperties",
            path,
            "number of properties",
        );
        self.level += 1;
        self.properties(events, accepting, path, depth);
        self.level -= 1;
    }

    fn properties(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let (ev_name, acc_name) = self.sides();

        let empty = Map::new();
        let ev_props = events
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let acc_props = accepting
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        // With `patternProperties`, the events' undeclared properties are
        // read as unconstrained (an over-approximation).
        let ev_extra = if events.contains_key("patternProperties") {
            &Value::Bool(true)
        } else {
            events
                .get("additionalProperties")
                .unwrap_or(&Value::Bool(true))
        };
        if accepting.contains_key("patternProperties") {
            let same = ["properties", "patternProperties", "additionalProperties"]
                .iter()
                .all(|k| accepting.get(*k) == events.get(*k));
            if !same || has_ref(accepting.get("patternProperties").unwrap_or(&Value::Null)) {
                self.report(&join(path, "patternProperties"), Kind::Unsupported, "`patternProperties` (or the properties around it) changed; jetway does not reason about it".into());
            }
        }
        let acc_extra = accepting
            .get("additionalProperties")
            .unwrap_or(&Value::Bool(true));
        let ev_required = required(events);
        let acc_required = required(accepting);

        for name in &acc_required {
            if !ev_required.contains(name) {
                self.report(&join(&join(path, "properties"), name), Kind::RequiredAdded, format!("the {acc_name} schema requires property `{name}`, which the {ev_name} one did not"));
            }
        }
        let names: BTreeSet<&String> = ev_props.keys().chain(acc_props.keys()).collect();
        for name in names {
            let at = join(&join(path, "properties"), name);
            let e = ev_props.get(name.as_str()).unwrap_or(ev_extra);
            if matches!(e, Value::Bool(false)) {
                continue;
            }
            match acc_props.get(name.as_str()) {
                Some(a) => {
                    if ev_props.contains_key(name.as_str()) {
                        self.incl(e, a, &at, depth + 1);
                    } else {
                        let mut t = self.trial();
                        t.incl(e, a, &at, depth + 1);
                        if !t.violations.is_empty() {
                            self.report(&at, Kind::Constrained, format!("the {acc_name} schema constrains property `{name}`, which the {ev_name} one left open (any value); under open_content: strict an open object may carry it with any value"));
                        }
                    }
                }
                None => {
                    if !accepting.contains_key("patternProperties") {
                        let mut t = self.trial();
                        t.incl(e, acc_extra, &at, depth + 1);
                        if !t.violations.is_empty() {
                            if ev_props.contains_key(name.as_str()) {
                                self.report(&at, Kind::ClosedRemoved, format!("the {acc_name} schema no longer allows property `{name}` (its object does not allow other properties), which the {ev_name} one declared"));
                            } else {
                                self.violations.extend(t.violations);
                            }
                        }
                    }
                }
            }
        }
        // Every other property name.
        if !matches!(ev_extra, Value::Bool(false)) && !accepting.contains_key("patternProperties") {
            let at = join(path, "additionalProperties");
            let mut t = self.trial();
            t.incl(ev_extra, acc_extra, &at, depth + 1);
            if !t.violations.is_empty() {
                self.report(&at, Kind::AdditionalNarrowed, format!("the {acc_name} schema restricts undeclared properties more than the {ev_name} one"));
            }
        }
    }
}

pub(super) fn required(schema: &Map<String, Value>) -> BTreeSet<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}
