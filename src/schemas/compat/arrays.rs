//! `items`, `prefixItems`, `additionalItems`, `minItems`, `maxItems`,
//! `uniqueItems`.

use serde_json::{Map, Value};

use super::{count, join, Checker, Draft, Kind};

impl Checker<'_> {
    pub(super) fn arrays(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
        depth: usize,
    ) {
        let (ev_name, acc_name) = self.sides();
        self.min_count(events, accepting, "minItems", path, "number of items");
        self.max_count(events, accepting, "maxItems", path, "number of items");
        if accepting.get("uniqueItems") == Some(&Value::Bool(true))
            && events.get("uniqueItems") != Some(&Value::Bool(true))
        {
            self.report(&join(path, "uniqueItems"), Kind::ItemsNarrowed, format!("the {acc_name} schema requires unique items; the {ev_name} one allowed repeats"));
        }
        let (ev_prefix, ev_tail) = item_schemas(events, self.events_draft);
        let (acc_prefix, acc_tail, acc_prefix_key, acc_tail_key) = {
            let (p, t) = item_schemas(accepting, self.accepting_draft);
            let (pk, tk) = match self.accepting_draft {
                Draft::Draft202012 => ("prefixItems", "items"),
                _ if accepting.get("items").is_some_and(Value::is_array) => {
                    ("items", "additionalItems")
                }
                _ => ("prefixItems", "items"),
            };
            (p, t, pk, tk)
        };
        let max_len = count(events.get("maxItems")).map(|n| n as usize);
        let positions = ev_prefix.len().max(acc_prefix.len());
        for i in 0..positions {
            if max_len.is_some_and(|m| i >= m) {
                return;
            }
            let e = ev_prefix.get(i).copied().unwrap_or(ev_tail);
            let (a, at) = match acc_prefix.get(i) {
                Some(a) => (*a, join(&join(path, acc_prefix_key), &i.to_string())),
                None => (acc_tail, join(path, acc_tail_key)),
            };
            self.items(e, a, &at, depth);
        }
        if max_len.is_some_and(|m| positions >= m) {
            return;
        }
        self.items(ev_tail, acc_tail, &join(path, acc_tail_key), depth);
    }

    fn items(&mut self, events: &Value, accepting: &Value, path: &str, depth: usize) {
        let (ev_name, acc_name) = self.sides();
        let mut t = self.trial();
        t.level += 1;
        t.incl(events, accepting, path, depth + 1);
        if t.violations.is_empty() {
            return;
        }
        if accepting == &Value::Bool(false) {
            self.report(
                path,
                Kind::ItemsNarrowed,
                format!("the {acc_name} schema allows no items here where the {ev_name} one did"),
            );
        } else {
            self.violations.extend(t.violations);
        }
    }
}

/// The schemas of array positions: the fixed prefix and the rest.
fn item_schemas(schema: &Map<String, Value>, draft: Draft) -> (Vec<&Value>, &Value) {
    const TRUE: &Value = &Value::Bool(true);
    match draft {
        Draft::Draft202012 => {
            let prefix = schema
                .get("prefixItems")
                .and_then(Value::as_array)
                .map(|v| v.iter().collect())
                .unwrap_or_default();
            (prefix, schema.get("items").unwrap_or(TRUE))
        }
        _ => match schema.get("items") {
            Some(Value::Array(prefix)) => (
                prefix.iter().collect(),
                schema.get("additionalItems").unwrap_or(TRUE),
            ),
            Some(items) => (Vec::new(), items),
            None => (Vec::new(), TRUE),
        },
    }
}
