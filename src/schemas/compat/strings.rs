//! `minLength`, `maxLength`, `pattern`.

use serde_json::{Map, Value};

use super::{join, Checker, Kind};

impl Checker<'_> {
    /// The constraints on strings, for events that may be strings.
    pub(super) fn strings(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        path: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        self.min_count(events, accepting, "minLength", path, "length");
        self.max_count(events, accepting, "maxLength", path, "length");
        if let Some(p) = accepting.get("pattern") {
            if events.get("pattern") != Some(p) {
                self.report(&join(path, "pattern"), Kind::PatternChanged, format!("the {acc_name} schema requires `pattern` {p} which the {ev_name} one did not"));
            }
        }
    }
}
