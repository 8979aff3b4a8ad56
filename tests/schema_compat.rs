//! Soundness of the compatibility checker, by sampling: for random pairs of
//! schemas (an old one and a mutation of it), whenever `check` accepts a
//! change, every sampled event valid under the old schema (read as the
//! chosen `open_content` reads it) must validate under the new one
//! (`backward`), and the mirror image for `forward`. Validity is decided by
//! the `jsonschema` crate, an implementation independent of the checker.

use jetway::schemas::compat::{check, read_events, Mode, OpenContent};
use jetway::schemas::validate::compile;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const STRINGS: [&str; 7] = ["", "a", "ab", "new", "paid", "abc xyz", "Z9"];
const PATTERNS: [&str; 3] = ["^[a-z]*$", "^a", "b"];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

fn small_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..5) {
        0 => json!(rng.random_range(-3..12)),
        1 => json!(*pick(rng, &STRINGS)),
        2 => json!(rng.random_bool(0.5)),
        3 => Value::Null,
        _ => json!(rng.random_range(-3..12) as f64 + 0.5),
    }
}

/// A random schema over the keywords the checker reasons about.
fn schema(rng: &mut StdRng, depth: u32) -> Value {
    let leafy = depth >= 2;
    match rng.random_range(0..if leafy { 8 } else { 11 }) {
        0 => {
            let mut s = json!({"type": *pick(rng, &["integer", "number"])});
            if rng.random_bool(0.5) {
                s["minimum"] = json!(rng.random_range(-2..5));
            }
            if rng.random_bool(0.5) {
                s["maximum"] = json!(rng.random_range(4..12));
            }
            if rng.random_bool(0.2) {
                s["exclusiveMaximum"] = json!(rng.random_range(4..12));
            }
            if rng.random_bool(0.2) {
                s["multipleOf"] = json!(*pick(rng, &[1, 2, 3, 4]));
            }
            s
        }
        1 => {
            let mut s = json!({"type": "string"});
            if rng.random_bool(0.4) {
                s["minLength"] = json!(rng.random_range(0..3));
            }
            if rng.random_bool(0.4) {
                s["maxLength"] = json!(rng.random_range(1..8));
            }
            if rng.random_bool(0.3) {
                s["pattern"] = json!(*pick(rng, &PATTERNS));
            }
            s
        }
        2 => {
            let n = rng.random_range(1..4);
            json!({"enum": (0..n).map(|_| small_value(rng)).collect::<Vec<_>>()})
        }
        3 => json!({"const": small_value(rng)}),
        4 => {
            let all = [
                "null", "boolean", "integer", "number", "string", "object", "array",
            ];
            let n = rng.random_range(1..4);
            let mut types: Vec<&str> = (0..n).map(|_| *pick(rng, &all)).collect();
            types.sort_unstable();
            types.dedup();
            json!({ "type": types })
        }
        5 => json!({}),
        6 => json!({"type": *pick(rng, &["boolean", "null"])}),
        7 => json!({"description": "any"}),
        8 | 9 => {
            let mut props = Map::new();
            let mut required = Vec::new();
            for key in KEYS {
                if rng.random_bool(0.5) {
                    props.insert(key.into(), schema(rng, depth + 1));
                    if rng.random_bool(0.4) {
                        required.push(json!(key));
                    }
                }
            }
            let mut s = json!({"type": "object", "properties": props});
            if !required.is_empty() {
                s["required"] = json!(required);
            }
            match rng.random_range(0..5) {
                0 => s["additionalProperties"] = json!(false),
                1 => s["additionalProperties"] = json!(true),
                2 => s["additionalProperties"] = schema(rng, depth + 1),
                _ => {}
            }
            if rng.random_bool(0.15) {
                s["maxProperties"] = json!(rng.random_range(1..4));
            }
            s
        }
        _ => match rng.random_range(0..3) {
            0 => {
                let mut s = json!({"type": "array", "items": schema(rng, depth + 1)});
                if rng.random_bool(0.3) {
                    s["maxItems"] = json!(rng.random_range(1..4));
                }
                if rng.random_bool(0.2) {
                    s["uniqueItems"] = json!(true);
                }
                s
            }
            1 => {
                json!({"type": "array", "prefixItems": [schema(rng, depth + 1)], "items": schema(rng, depth + 1)})
            }
            _ => json!({"anyOf": [schema(rng, depth + 1), schema(rng, depth + 1)]}),
        },
    }
}

/// A mutation of `s`: most of it kept, parts changed the ways schemas
/// evolve (so that `check` accepts often enough to matter).
fn mutate(rng: &mut StdRng, s: &Value, depth: u32) -> Value {
    if rng.random_bool(0.15) {
        return schema(rng, depth);
    }
    let Value::Object(map) = s else {
        return s.clone();
    };
    let mut out = map.clone();
    for (k, v) in map {
        match k.as_str() {
            "properties" => {
                let mut props = v.as_object().cloned().unwrap_or_default();
                for (name, sub) in v.as_object().into_iter().flatten() {
                    props.insert(name.clone(), mutate(rng, sub, depth + 1));
                    if rng.random_bool(0.1) {
                        props.remove(name);
                    }
                }
                if rng.random_bool(0.3) {
                    props.insert((*pick(rng, &KEYS)).into(), schema(rng, depth + 1));
                }
                out.insert(k.clone(), Value::Object(props));
            }
            "items" | "additionalProperties" if v.is_object() => {
                out.insert(k.clone(), mutate(rng, v, depth + 1));
            }
            "anyOf" | "prefixItems" => {
                let mut items: Vec<Value> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|i| mutate(rng, i, depth + 1))
                    .collect();
                if rng.random_bool(0.3) {
                    items.push(schema(rng, depth + 1));
                }
                out.insert(k.clone(), Value::Array(items));
            }
            "minimum" | "maximum" | "exclusiveMaximum" | "minLength" | "maxLength" | "maxItems"
            | "maxProperties" => {
                if rng.random_bool(0.3) {
                    let n = v.as_i64().unwrap_or(0) + rng.random_range(-1..=2);
                    out.insert(k.clone(), json!(n.max(0)));
                } else if rng.random_bool(0.15) {
                    out.remove(k);
                }
            }
            "required" | "pattern" | "uniqueItems" | "multipleOf" | "additionalProperties"
                if rng.random_bool(0.25) =>
            {
                out.remove(k);
            }
            "enum" if rng.random_bool(0.4) => {
                let mut values = v.as_array().cloned().unwrap_or_default();
                if rng.random_bool(0.5) {
                    values.push(small_value(rng));
                } else if values.len() > 1 {
                    values.pop();
                }
                out.insert(k.clone(), Value::Array(values));
            }
            "type" if rng.random_bool(0.2) => {
                out.insert(
                    k.clone(),
                    json!(["integer", "number", "string", "null"][rng.random_range(0..4)]),
                );
            }
            _ => {}
        }
    }
    if rng.random_bool(0.1) {
        out.insert("required".into(), json!([*pick(rng, &KEYS)]));
    }
    Value::Object(out)
}

/// A random value shaped after `s` (often valid, sometimes not: validity
/// is decided by the validator afterwards).
fn instance(rng: &mut StdRng, s: &Value, depth: u32) -> Value {
    if depth > 4 || rng.random_bool(0.1) {
        return small_value(rng);
    }
    let Value::Object(map) = s else {
        return small_value(rng);
    };
    if let Some(Value::Array(values)) = map.get("enum") {
        if !values.is_empty() && rng.random_bool(0.8) {
            return pick(rng, values).clone();
        }
    }
    if let Some(c) = map.get("const") {
        if rng.random_bool(0.8) {
            return c.clone();
        }
    }
    if let Some(Value::Array(branches)) = map.get("anyOf") {
        if !branches.is_empty() {
            let branch = pick(rng, branches).clone();
            return instance(rng, &branch, depth + 1);
        }
    }
    let ty = match map.get("type") {
        Some(Value::String(t)) => t.clone(),
        Some(Value::Array(ts)) if !ts.is_empty() => {
            pick(rng, ts).as_str().unwrap_or("null").to_string()
        }
        _ => (*pick(
            rng,
            &["null", "boolean", "integer", "string", "object", "array"],
        ))
        .to_string(),
    };
    match ty.as_str() {
        "integer" => json!(rng.random_range(-3..13)),
        "number" => {
            if rng.random_bool(0.5) {
                json!(rng.random_range(-3..13))
            } else {
                json!(rng.random_range(-3..13) as f64 + 0.5)
            }
        }
        "string" => json!(*pick(rng, &STRINGS)),
        "boolean" => json!(rng.random_bool(0.5)),
        "object" => {
            let mut out = Map::new();
            let empty = Map::new();
            let props = map
                .get("properties")
                .and_then(Value::as_object)
                .unwrap_or(&empty);
            for (k, sub) in props {
                if rng.random_bool(0.7) {
                    out.insert(k.clone(), instance(rng, sub, depth + 1));
                }
            }
            if rng.random_bool(0.3) {
                let extra = map
                    .get("additionalProperties")
                    .cloned()
                    .unwrap_or(json!({}));
                out.insert((*pick(rng, &KEYS)).into(), instance(rng, &extra, depth + 1));
            }
            Value::Object(out)
        }
        "array" => {
            let n = rng.random_range(0..4);
            let mut items = Vec::new();
            for i in 0..n {
                let sub = map
                    .get("prefixItems")
                    .and_then(Value::as_array)
                    .and_then(|p| p.get(i))
                    .or_else(|| map.get("items"))
                    .cloned()
                    .unwrap_or(json!({}));
                items.push(instance(rng, &sub, depth + 1));
            }
            Value::Array(items)
        }
        _ => Value::Null,
    }
}

/// Checks one seed; returns how many events exercised an accepted change.
fn run_seed(seed: u64) -> Result<usize, String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let old = schema(&mut rng, 0);
    let new = mutate(&mut rng, &old, 0);
    let mut exercised = 0;
    for oc in [OpenContent::Lenient, OpenContent::Strict] {
        for (mode, from, to) in [(Mode::Backward, &old, &new), (Mode::Forward, &new, &old)] {
            if !check(&old, &new, mode, oc).is_empty() {
                continue;
            }
            let events = compile(&read_events(from, oc)).map_err(|e| format!("{e}: {from}"))?;
            let accepting = compile(to).map_err(|e| format!("{e}: {to}"))?;
            for _ in 0..48 {
                let event = instance(&mut rng, from, 0);
                if events.is_valid(&event) {
                    exercised += 1;
                    if !accepting.is_valid(&event) {
                        return Err(format!(
                            "{mode:?} {oc:?} accepted, yet {event} is valid under {from} and not under {to}"
                        ));
                    }
                }
            }
        }
    }
    Ok(exercised)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]
    #[test]
    fn accepted_changes_keep_every_sampled_event_valid(seed in any::<u64>()) {
        let result = run_seed(seed);
        prop_assert!(result.is_ok(), "seed {seed}: {}", result.err().unwrap_or_default());
    }
}

/// The property above is only worth something if accepted changes with
/// valid events come up often: count them over fixed seeds.
#[test]
fn the_sampling_exercises_accepted_changes() {
    let mut exercised = 0;
    let mut accepted_pairs = 0;
    for seed in 0..400 {
        match run_seed(seed) {
            Ok(n) => {
                exercised += n;
                if n > 0 {
                    accepted_pairs += 1;
                }
            }
            Err(e) => panic!("seed {seed}: {e}"),
        }
    }
    assert!(
        accepted_pairs >= 80,
        "only {accepted_pairs} of 400 pairs were accepted with events to test"
    );
    assert!(exercised >= 2000, "only {exercised} events exercised");
}
