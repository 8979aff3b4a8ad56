//! `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum`,
//! `multipleOf`.

use serde_json::{Map, Value};

use super::types::Types;
use super::{join, Checker, Kind};

impl Checker<'_> {
    /// The bounds of numbers, for events that may be numbers.
    pub(super) fn numbers(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        ev_types: &Types,
        path: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        let integers_only = ev_types
            .iter()
            .all(|t| *t == "integer" || !matches!(*t, "number"));
        if !lower_holds(lower(events), lower(accepting)) {
            let key = if accepting.contains_key("exclusiveMinimum") {
                "exclusiveMinimum"
            } else {
                "minimum"
            };
            self.report(
                &join(path, key),
                Kind::BoundTightened,
                format!("the lower bound of the {acc_name} schema is above the {ev_name} one's"),
            );
        }
        if !upper_holds(upper(events), upper(accepting)) {
            let key = if accepting.contains_key("exclusiveMaximum") {
                "exclusiveMaximum"
            } else {
                "maximum"
            };
            self.report(
                &join(path, key),
                Kind::BoundTightened,
                format!("the upper bound of the {acc_name} schema is below the {ev_name} one's"),
            );
        }
        if !multiple_holds(
            number(events.get("multipleOf")),
            number(accepting.get("multipleOf")),
            integers_only,
        ) {
            self.report(
                &join(path, "multipleOf"),
                Kind::BoundTightened,
                format!(
                    "`multipleOf` of the {acc_name} schema does not divide the {ev_name} one's"
                ),
            );
        }
    }
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

/// A lower or upper bound on numbers: value and exclusivity.
#[derive(Debug, Clone, Copy)]
struct Bound {
    value: f64,
    exclusive: bool,
}

fn lower(schema: &Map<String, Value>) -> Option<Bound> {
    let inclusive = number(schema.get("minimum")).map(|value| Bound {
        value,
        exclusive: false,
    });
    let exclusive = number(schema.get("exclusiveMinimum")).map(|value| Bound {
        value,
        exclusive: true,
    });
    match (inclusive, exclusive) {
        (Some(a), Some(b)) => Some(if b.value >= a.value { b } else { a }),
        (a, b) => a.or(b),
    }
}

fn upper(schema: &Map<String, Value>) -> Option<Bound> {
    let inclusive = number(schema.get("maximum")).map(|value| Bound {
        value,
        exclusive: false,
    });
    let exclusive = number(schema.get("exclusiveMaximum")).map(|value| Bound {
        value,
        exclusive: true,
    });
    match (inclusive, exclusive) {
        (Some(a), Some(b)) => Some(if b.value <= a.value { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// Whether every number meeting lower bound `events` meets `accepting`.
fn lower_holds(events: Option<Bound>, accepting: Option<Bound>) -> bool {
    match (events, accepting) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(e), Some(a)) => {
            a.value < e.value || (a.value == e.value && (!a.exclusive || e.exclusive))
        }
    }
}

fn upper_holds(events: Option<Bound>, accepting: Option<Bound>) -> bool {
    match (events, accepting) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(e), Some(a)) => {
            a.value > e.value || (a.value == e.value && (!a.exclusive || e.exclusive))
        }
    }
}

/// Whether every multiple of `events` (or every number, when `None`) is a
/// multiple of `accepting`. Exact only for ratios that floats hold exactly;
/// anything else is refused.
fn multiple_holds(events: Option<f64>, accepting: Option<f64>, integers_only: bool) -> bool {
    let Some(a) = accepting else { return true };
    if integers_only && a == 1.0 {
        return true;
    }
    let Some(e) = events else { return false };
    if a <= 0.0 || e <= 0.0 {
        return false;
    }
    let ratio = e / a;
    ratio.fract() == 0.0 && (ratio * a - e).abs() == 0.0
}
