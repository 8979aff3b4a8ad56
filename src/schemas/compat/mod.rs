//! Compatibility of two versions of an event schema (SPEC section 9): a
//! pure function, [`check`], with no I/O.
//!
//! Every mode reduces to inclusion of languages: `backward` asks that every
//! event valid under the old schema be valid under the new one (old ⊆ new),
//! `forward` the reverse, `full` both. [`check`] proves inclusion over the
//! keywords it understands and reports everything it cannot prove, so it is
//! sound (it never accepts a change for which a breaking event exists) and
//! conservative where it is incomplete.
//!
//! How soundness is kept:
//! - the *included* side (the events) may be over-approximated: a keyword
//!   of it that the checker does not model only removes events, so ignoring
//!   it is safe;
//! - the *including* side (the schema that must accept them) is a
//!   conjunction of keyword groups; each group is either modelled, or must
//!   appear identically (and free of `$ref`) in the included side, else the
//!   change is `unsupported_change`;
//! - finite languages (`enum`, `const`) are checked exactly, value by value,
//!   with the real validator.
//!
//! `open_content: lenient` closes the *events* side: an object schema that
//! declares `properties` without `additionalProperties` describes events
//! carrying only those properties. The accepting side is read literally.
//!
//! One file per family of keywords: `references` (`$ref`), `combinators`
//! (`anyOf`, `oneOf`, `allOf`), `unmodelled` (what must stay identical),
//! `finite` (`enum`, `const`), `types`, `numbers`, `strings`, `arrays`,
//! `objects`. This file holds the modes, the walk ([`check`],
//! `Checker::incl`, which hands each family its part in turn) and the
//! messages.

mod arrays;
mod combinators;
mod finite;
mod numbers;
mod objects;
mod references;
mod strings;
mod types;
mod unmodelled;

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use references::has_ref;
use unmodelled::is_trivial;

/// The seven compatibility modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    None,
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Mode {
    /// Every mode, for tables and parsing.
    pub const ALL: [Mode; 7] = [
        Mode::None,
        Mode::Backward,
        Mode::BackwardTransitive,
        Mode::Forward,
        Mode::ForwardTransitive,
        Mode::Full,
        Mode::FullTransitive,
    ];

    /// The config and API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::None => "none",
            Mode::Backward => "backward",
            Mode::BackwardTransitive => "backward_transitive",
            Mode::Forward => "forward",
            Mode::ForwardTransitive => "forward_transitive",
            Mode::Full => "full",
            Mode::FullTransitive => "full_transitive",
        }
    }

    /// Parses the config and API spelling.
    pub fn parse(s: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == s)
    }

    /// Whether a new version is checked against every version, not only the
    /// latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Mode::BackwardTransitive | Mode::ForwardTransitive | Mode::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Mode::Backward | Mode::BackwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Mode::Forward | Mode::ForwardTransitive | Mode::Full | Mode::FullTransitive
        )
    }
}

/// How an object schema that does not set `additionalProperties` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenContent {
    /// Events carry only the declared properties.
    Lenient,
    /// Literally: any extra property is allowed.
    Strict,
}

impl OpenContent {
    pub fn as_str(self) -> &'static str {
        match self {
            OpenContent::Lenient => "lenient",
            OpenContent::Strict => "strict",
        }
    }

    pub fn parse(s: &str) -> Option<OpenContent> {
        match s {
            "lenient" => Some(OpenContent::Lenient),
            "strict" => Some(OpenContent::Strict),
            _ => None,
        }
    }
}

/// One reason a new version is not compatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    /// JSON Pointer (as a URI fragment) into the new schema.
    pub path: String,
    /// From a fixed set, stable for programs.
    pub change: &'static str,
    /// What breaks and what to do about it.
    pub message: String,
}

/// Nesting beyond which nothing more is proven (deeper differences are
/// reported as `unsupported_change`).
const MAX_DEPTH: usize = 64;

/// JSON Schema drafts that change what `items` and `$ref` mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Draft {
    Draft7,
    Draft201909,
    Draft202012,
}

impl Draft {
    /// The draft a document declares in `$schema` (2020-12 when it declares
    /// none).
    pub fn of(doc: &Value) -> Draft {
        match doc.get("$schema").and_then(Value::as_str) {
            Some(s) if s.contains("draft-07") || s.contains("draft-06") => Draft::Draft7,
            Some(s) if s.contains("2019-09") => Draft::Draft201909,
            _ => Draft::Draft202012,
        }
    }
}

/// Checks a new version against an old one. Empty when compatible.
pub fn check(old: &Value, new: &Value, mode: Mode, open_content: OpenContent) -> Vec<Violation> {
    let mut out = Vec::new();
    // A root `$id` names the document; only local references are allowed,
    // so it changes nothing the checker reasons about.
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Value::Object(map) = &mut v {
            map.remove("$id");
        }
        v
    };
    let (old, new) = (strip(old), strip(new));
    if mode.backward() {
        let events = read_events(&old, open_content);
        let mut c = Checker::new(&events, &new, Direction::Backward);
        c.incl(&events, &new, "#", 0);
        out.extend(c.violations);
    }
    if mode.forward() {
        let events = read_events(&new, open_content);
        let mut c = Checker::new(&events, &old, Direction::Forward);
        c.incl(&events, &old, "#", 0);
        out.extend(c.violations);
    }
    let mut seen = HashSet::new();
    out.retain(|v| seen.insert((v.path.clone(), v.change, v.message.clone())));
    out
}

/// The schema of the events a version describes, under `open_content`:
/// lenient closes every object schema that declares `properties` but not
/// `additionalProperties` (nor `unevaluatedProperties`).
pub fn read_events(schema: &Value, open_content: OpenContent) -> Value {
    let mut schema = schema.clone();
    if open_content == OpenContent::Lenient {
        close(&mut schema, 0);
    }
    schema
}

fn close(v: &mut Value, depth: usize) {
    if depth > MAX_DEPTH {
        return;
    }
    match v {
        Value::Object(map) => {
            if map.contains_key("properties")
                && !map.contains_key("additionalProperties")
                && !map.contains_key("patternProperties")
                && !map.contains_key("unevaluatedProperties")
            {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, child) in map.iter_mut() {
                // Values of these are data, not schemas.
                if matches!(key.as_str(), "enum" | "const" | "examples" | "default") {
                    continue;
                }
                close(child, depth + 1);
            }
        }
        Value::Array(items) => {
            for item in items {
                close(item, depth + 1);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    /// The included side is the old version.
    Backward,
    /// The included side is the new version.
    Forward,
}

fn join(path: &str, segment: &str) -> String {
    let escaped = segment.replace('~', "~0").replace('/', "~1");
    format!("{path}/{escaped}")
}

fn count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

struct Checker<'a> {
    events_root: &'a Value,
    accepting_root: &'a Value,
    events_draft: Draft,
    accepting_draft: Draft,
    direction: Direction,
    violations: Vec<Violation>,
    /// `$ref` pairs being proven, with the event depth where they were met:
    /// met again deeper inside the event, they are assumed (coinduction, by
    /// induction on the finite event).
    assumed: HashMap<(String, String), usize>,
    /// How deep inside the event (properties and items) the walk is.
    level: usize,
}

impl<'a> Checker<'a> {
    fn new(events_root: &'a Value, accepting_root: &'a Value, direction: Direction) -> Self {
        Checker {
            events_root,
            accepting_root,
            events_draft: Draft::of(events_root),
            accepting_draft: Draft::of(accepting_root),
            direction,
            violations: Vec::new(),
            assumed: HashMap::new(),
            level: 0,
        }
    }

    /// A sub-checker on the same documents, for trying alternatives.
    fn trial(&self) -> Checker<'a> {
        Checker {
            events_root: self.events_root,
            accepting_root: self.accepting_root,
            events_draft: self.events_draft,
            accepting_draft: self.accepting_draft,
            direction: self.direction,
            violations: Vec::new(),
            assumed: self.assumed.clone(),
            level: self.level,
        }
    }

    /// Whether a `$ref` pair is being proven further out in the walk, and
    /// the event has been descended into since (so the assumption is only
    /// used for a strictly smaller event).
    fn is_assumed(&self, key: &(String, String)) -> bool {
        self.assumed
            .get(key)
            .is_some_and(|level| *level < self.level)
    }

    /// The stable code for a kind of failure, as seen from the new version.
    fn code(&self, kind: Kind) -> &'static str {
        let backward = self.direction == Direction::Backward;
        match kind {
            Kind::TypeNarrowed if backward => "type_narrowed",
            Kind::TypeNarrowed => "type_widened",
            Kind::TypeChanged => "type_changed",
            Kind::RequiredAdded if backward => "property_added_required",
            Kind::RequiredAdded => "property_required_removed",
            Kind::ClosedRemoved if backward => "property_removed_closed",
            Kind::ClosedRemoved => "property_added_closed",
            Kind::Constrained if backward => "property_constrained",
            Kind::Constrained => "property_unconstrained",
            Kind::AdditionalNarrowed if backward => "additional_properties_narrowed",
            Kind::AdditionalNarrowed => "additional_properties_widened",
            Kind::EnumNarrowed if backward => "enum_narrowed",
            Kind::EnumNarrowed => "enum_widened",
            Kind::ConstChanged => "const_changed",
            Kind::BoundTightened if backward => "bound_tightened",
            Kind::BoundTightened => "bound_loosened",
            Kind::PatternChanged => "pattern_changed",
            Kind::ItemsNarrowed if backward => "items_narrowed",
            Kind::ItemsNarrowed => "items_widened",
            Kind::Unsupported => "unsupported_change",
        }
    }

    /// Who reads whom, for messages.
    fn readers(&self) -> &'static str {
        match self.direction {
            Direction::Backward => {
                "events valid under the old version would fail the new one (consumers on the new schema could not read stored events)"
            }
            Direction::Forward => {
                "events valid under the new version would fail the old one (consumers still on the old schema could not read them)"
            }
        }
    }

    fn report(&mut self, path: &str, kind: Kind, what: String) {
        let advice = match kind {
            Kind::Unsupported => "; make this change in a new event type (e.g. `<type>.v2`), or set the type's compatibility to none if no consumer depends on it",
            _ => "; revert this change, or publish the new shape as a new event type (e.g. `<type>.v2`) during a migration",
        };
        let message = format!("{what}: {}{advice}", self.readers());
        self.violations.push(Violation {
            path: path.to_string(),
            change: self.code(kind),
            message,
        });
    }

    /// What the old/new schema is called in messages, for each side.
    fn sides(&self) -> (&'static str, &'static str) {
        match self.direction {
            Direction::Backward => ("old", "new"),
            Direction::Forward => ("new", "old"),
        }
    }

    /// Proves that every event valid under `events` is valid under
    /// `accepting`, recording what it cannot prove.
    fn incl(&mut self, events: &Value, accepting: &Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            if events != accepting || has_ref(events) {
                self.report(
                    path,
                    Kind::Unsupported,
                    "the schemas nest too deeply to compare".into(),
                );
            }
            return;
        }
        let (ev_name, acc_name) = self.sides();
        // Booleans and trivial schemas.
        let accepting = match accepting {
            Value::Bool(true) => return,
            Value::Bool(false) => {
                if !self.is_empty_language(events) {
                    self.report(path, Kind::TypeNarrowed, format!("the {acc_name} schema accepts nothing here where the {ev_name} one accepted values"));
                }
                return;
            }
            Value::Object(map) if is_trivial(map) => return,
            Value::Object(map) => map,
            _ => {
                self.report(
                    path,
                    Kind::Unsupported,
                    format!("the {acc_name} schema here is not a schema"),
                );
                return;
            }
        };
        let events = match events {
            Value::Bool(false) => return,
            Value::Bool(true) => &Map::new(),
            Value::Object(map) => map,
            _ => return,
        };
        if self.references(events, accepting, path, depth).is_break()
            || self
                .event_combinators(events, accepting, path, depth)
                .is_break()
        {
            return;
        }
        self.accepting_combinators(events, accepting, path, depth);
        if self.unmodelled(events, accepting, path).is_break()
            || self.finite_events(events, accepting, path).is_break()
        {
            return;
        }

        let ev_types = self.types(events, accepting, path);
        let live = |t: &str| {
            ev_types.iter().any(|e| {
                *e == t || (t == "number" && *e == "integer") || (t == "integer" && *e == "number")
            })
        };
        self.listed_values(accepting, &ev_types, path);
        if live("number") || live("integer") {
            self.numbers(events, accepting, &ev_types, path);
        }
        if live("string") {
            self.strings(events, accepting, path);
        }
        if live("array") {
            self.arrays(events, accepting, path, depth);
        }
        if live("object") {
            self.objects(events, accepting, path, depth);
        }
    }

    fn min_count(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        key: &str,
        path: &str,
        what: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        if let Some(a) = count(accepting.get(key)) {
            if a > 0 && count(events.get(key)).is_none_or(|e| e < a) {
                self.report(&join(path, key), Kind::BoundTightened, format!("the {acc_name} schema requires a {what} of at least {a}, more than the {ev_name} one"));
            }
        }
    }

    fn max_count(
        &mut self,
        events: &Map<String, Value>,
        accepting: &Map<String, Value>,
        key: &str,
        path: &str,
        what: &str,
    ) {
        let (ev_name, acc_name) = self.sides();
        if let Some(a) = count(accepting.get(key)) {
            if count(events.get(key)).is_none_or(|e| e > a) {
                self.report(&join(path, key), Kind::BoundTightened, format!("the {acc_name} schema allows a {what} of at most {a}, less than the {ev_name} one"));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    TypeNarrowed,
    TypeChanged,
    RequiredAdded,
    ClosedRemoved,
    Constrained,
    AdditionalNarrowed,
    EnumNarrowed,
    ConstChanged,
    BoundTightened,
    PatternChanged,
    ItemsNarrowed,
    Unsupported,
}

#[cfg(test)]
mod tests;
