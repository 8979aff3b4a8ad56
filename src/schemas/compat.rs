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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

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

/// Annotations: never matter for validity.
const ANNOTATIONS: &[&str] = &[
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

/// Keywords [`check`] models (besides annotations and applicators it
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

/// The seven JSON types; `integer` is a subset of `number`.
const TYPES: [&str; 7] = [
    "null", "boolean", "object", "array", "number", "integer", "string",
];

type Types = BTreeSet<&'static str>;

fn all_types() -> Types {
    TYPES.into_iter().collect()
}

fn types_of(schema: &Map<String, Value>) -> Option<Types> {
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
fn type_covered(t: &str, set: &Types) -> bool {
    set.contains(t) || (t == "integer" && set.contains("number"))
}

fn is_trivial(schema: &Map<String, Value>) -> bool {
    schema.keys().all(|k| ANNOTATIONS.contains(&k.as_str()))
}

fn has_ref(v: &Value) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| k == "$ref" || k == "$dynamicRef" || k == "$recursiveRef" || has_ref(v)),
        Value::Array(items) => items.iter().any(has_ref),
        _ => false,
    }
}

fn join(path: &str, segment: &str) -> String {
    let escaped = segment.replace('~', "~0").replace('/', "~1");
    format!("{path}/{escaped}")
}

fn number(v: Option<&Value>) -> Option<f64> {
    v.and_then(Value::as_f64)
}

fn count(v: Option<&Value>) -> Option<u64> {
    v.and_then(Value::as_u64)
}

fn list(types: &Types) -> String {
    if types.is_empty() {
        return "nothing".into();
    }
    types.iter().copied().collect::<Vec<_>>().join(", ")
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

/// The validator behind the exact checks of finite languages.
fn accepts(root: &Value, schema: &Value, draft: Draft, value: &Value) -> Option<bool> {
    let inlined = inline(root, schema, 0)?;
    let validator = super::validate::compile_for_check(&inlined, draft)?;
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

/// The target of a local `$ref` (`#` or `#/json/pointer`).
fn resolve<'a>(root: &'a Value, reference: &str) -> Option<&'a Value> {
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

        // `$ref` on the events side: the target (and, from 2019-09 on, the
        // siblings too; ignoring them only adds events).
        if let Some(Value::String(r)) = events.get("$ref") {
            let Some(target) = resolve(self.events_root, r) else {
                self.report(
                    path,
                    Kind::Unsupported,
                    format!("`$ref` {r} of the {ev_name} schema is not a local JSON Pointer"),
                );
                return;
            };
            let mut rest = events.clone();
            rest.remove("$ref");
            let key = (
                format!("e{r}"),
                Value::Object(accepting.clone()).to_string(),
            );
            if self.is_assumed(&key) {
                return;
            }
            if self.events_draft == Draft::Draft7 || is_trivial(&rest) {
                self.assumed.insert(key, self.level);
                self.incl(target, &Value::Object(accepting.clone()), path, depth + 1);
                return;
            }
            // Either part alone over-approximates the events.
            let mut t = self.trial();
            t.assumed.insert(key, self.level);
            t.incl(target, &Value::Object(accepting.clone()), path, depth + 1);
            if t.violations.is_empty() {
                return;
            }
            self.incl(
                &Value::Object(rest),
                &Value::Object(accepting.clone()),
                path,
                depth + 1,
            );
            return;
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
                return;
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
            return;
        }

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
                    return;
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
                return;
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
            return;
        }

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
            return;
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

        // Finite languages: exact, value by value.
        let finite: Option<(Vec<Value>, bool)> = match (events.get("const"), events.get("enum")) {
            (Some(c), _) => Some((vec![c.clone()], true)),
            (None, Some(Value::Array(values))) => Some((values.clone(), false)),
            _ => None,
        };
        if let Some((values, is_const)) = finite {
            self.finite(events, accepting, values, is_const, path);
            return;
        }

        // Types.
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
        let live = |t: &str| {
            ev_types.iter().any(|e| {
                *e == t || (t == "number" && *e == "integer") || (t == "integer" && *e == "number")
            })
        };

        // `enum`/`const` on the accepting side with no finite events: only
        // provable for the finite types.
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
                    self.report(&join(path, key), kind, format!("the {acc_name} schema allows only listed values (`{key}`) where the {ev_name} one allowed any {}", list(&ev_types)));
                }
            }
        }

        if live("number") || live("integer") {
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
                    format!(
                        "the lower bound of the {acc_name} schema is above the {ev_name} one's"
                    ),
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
                    format!(
                        "the upper bound of the {acc_name} schema is below the {ev_name} one's"
                    ),
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
        if live("string") {
            self.min_count(events, accepting, "minLength", path, "length");
            self.max_count(events, accepting, "maxLength", path, "length");
            if let Some(p) = accepting.get("pattern") {
                if events.get("pattern") != Some(p) {
                    self.report(&join(path, "pattern"), Kind::PatternChanged, format!("the {acc_name} schema requires `pattern` {p} which the {ev_name} one did not"));
                }
            }
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

    fn is_empty_language(&self, events: &Value) -> bool {
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

    fn arrays(
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

    fn objects(
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

fn required(schema: &Map<String, Value>) -> BTreeSet<String> {
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

#[cfg(test)]
mod tests;
