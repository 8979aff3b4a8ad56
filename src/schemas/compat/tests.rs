use super::*;
use serde_json::json;

use Mode::*;
use OpenContent::*;

fn order(extra: Value) -> Value {
    let mut base = json!({
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "qty": {"type": "integer", "minimum": 1, "maximum": 100},
            "status": {"enum": ["new", "paid"]},
            "note": {"type": "string", "maxLength": 50, "pattern": "^[a-z ]*$"},
            "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5}
        },
        "required": ["id", "qty"]
    });
    merge_into(&mut base, extra);
    base
}

/// Deep-merges `extra` into `base`; `null` deletes a key.
fn merge_into(base: &mut Value, extra: Value) {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            for (k, v) in e {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(existing) = b.get_mut(&k) {
                    if existing.is_object() && v.is_object() {
                        merge_into(existing, v);
                    } else {
                        *existing = v;
                    }
                } else {
                    b.insert(k, v);
                }
            }
        }
        (b, e) => *b = e,
    }
}

fn changes(old: &Value, new: &Value, mode: Mode, oc: OpenContent) -> Vec<&'static str> {
    check(old, new, mode, oc)
        .into_iter()
        .map(|v| v.change)
        .collect()
}

/// (what, old, new, backward changes, forward changes) under lenient.
type Case = (
    &'static str,
    Value,
    Value,
    Vec<&'static str>,
    Vec<&'static str>,
);

fn table() -> Vec<Case> {
    vec![
        (
            "annotations only",
            order(json!({})),
            order(
                json!({"title": "Order", "description": "x", "properties": {"id": {"description": "the id", "format": "uuid", "examples": ["a"]}}}),
            ),
            vec![],
            vec![],
        ),
        (
            "optional property added",
            order(json!({})),
            order(json!({"properties": {"coupon": {"type": "string"}}})),
            vec![],
            vec![],
        ),
        (
            "required property added",
            order(json!({})),
            order(
                json!({"properties": {"coupon": {"type": "string"}}, "required": ["id", "qty", "coupon"]}),
            ),
            vec!["property_added_required"],
            vec![],
        ),
        (
            "required entry dropped",
            order(json!({})),
            order(json!({"required": ["id"]})),
            vec![],
            vec!["property_required_removed"],
        ),
        (
            "type widened integer to number",
            order(json!({})),
            order(json!({"properties": {"qty": {"type": "number"}}})),
            vec![],
            vec!["type_widened"],
        ),
        (
            "type to a list holding it",
            order(json!({})),
            order(json!({"properties": {"id": {"type": ["string", "null"]}}})),
            vec![],
            vec!["type_widened"],
        ),
        (
            "type changed",
            order(json!({})),
            order(json!({"properties": {"id": {"type": "integer"}}})),
            vec!["type_changed"],
            vec!["type_changed"],
        ),
        (
            "enum value added",
            order(json!({})),
            order(json!({"properties": {"status": {"enum": ["new", "paid", "shipped"]}}})),
            vec![],
            vec!["enum_widened"],
        ),
        (
            "enum value removed",
            order(json!({})),
            order(json!({"properties": {"status": {"enum": ["new"]}}})),
            vec!["enum_narrowed"],
            vec![],
        ),
        (
            "bound loosened",
            order(json!({})),
            order(json!({"properties": {"qty": {"maximum": 1000}}})),
            vec![],
            vec!["bound_loosened"],
        ),
        (
            "bound tightened",
            order(json!({})),
            order(json!({"properties": {"qty": {"minimum": 2}}})),
            vec!["bound_tightened"],
            vec![],
        ),
        (
            "bound made exclusive",
            order(json!({})),
            order(json!({"properties": {"qty": {"maximum": null, "exclusiveMaximum": 100}}})),
            vec!["bound_tightened"],
            vec![],
        ),
        (
            "length loosened",
            order(json!({})),
            order(json!({"properties": {"note": {"maxLength": 500}}})),
            vec![],
            vec!["bound_loosened"],
        ),
        (
            "pattern removed",
            order(json!({})),
            order(json!({"properties": {"note": {"pattern": null}}})),
            vec![],
            vec!["pattern_changed"],
        ),
        (
            "pattern changed",
            order(json!({})),
            order(json!({"properties": {"note": {"pattern": "^[a-z]*$"}}})),
            vec!["pattern_changed"],
            vec!["pattern_changed"],
        ),
        (
            "items narrowed",
            order(json!({})),
            order(json!({"properties": {"tags": {"items": {"type": "string", "maxLength": 3}}}})),
            vec!["bound_tightened"],
            vec![],
        ),
        (
            "maxItems loosened",
            order(json!({})),
            order(json!({"properties": {"tags": {"maxItems": 10}}})),
            vec![],
            vec!["bound_loosened"],
        ),
        (
            "uniqueItems added",
            order(json!({})),
            order(json!({"properties": {"tags": {"uniqueItems": true}}})),
            vec!["items_narrowed"],
            vec![],
        ),
        (
            "property removed from open object",
            order(json!({})),
            order(json!({"properties": {"note": null}})),
            vec![],
            vec![],
        ),
        (
            "property removed from closed object",
            order(json!({"additionalProperties": false})),
            order(json!({"additionalProperties": false, "properties": {"note": null}})),
            vec!["property_removed_closed"],
            vec![],
        ),
        (
            "object closed",
            order(json!({})),
            order(json!({"additionalProperties": false})),
            vec![],
            vec![],
        ),
        (
            "unsupported keyword added",
            order(json!({})),
            order(json!({"not": {"required": ["x"]}})),
            vec!["unsupported_change"],
            vec![],
        ),
        (
            "unsupported keyword unchanged",
            order(json!({"dependentRequired": {"note": ["tags"]}})),
            order(json!({"dependentRequired": {"note": ["tags"]}, "title": "t"})),
            vec![],
            vec![],
        ),
        (
            "const changed",
            json!({"const": "a"}),
            json!({"const": "b"}),
            vec!["const_changed"],
            vec!["const_changed"],
        ),
        (
            "multipleOf loosened",
            json!({"type": "number", "multipleOf": 4}),
            json!({"type": "number", "multipleOf": 2}),
            vec![],
            vec!["bound_loosened"],
        ),
    ]
}

#[test]
fn each_change_kind_per_direction() {
    for (what, old, new, backward, forward) in table() {
        assert_eq!(
            changes(&old, &new, Backward, Lenient),
            backward,
            "backward: {what}"
        );
        assert_eq!(
            changes(&old, &new, Forward, Lenient),
            forward,
            "forward: {what}"
        );
        let mut full = backward.clone();
        full.extend(forward.iter().copied());
        assert_eq!(changes(&old, &new, Full, Lenient), full, "full: {what}");
        assert!(
            check(&old, &new, Mode::None, Lenient).is_empty(),
            "none: {what}"
        );
        // The transitive modes check one pair like their plain mode.
        assert_eq!(
            changes(&old, &new, BackwardTransitive, Lenient),
            backward,
            "{what}"
        );
        assert_eq!(
            changes(&old, &new, ForwardTransitive, Lenient),
            forward,
            "{what}"
        );
    }
}

#[test]
fn an_identical_schema_is_compatible_in_every_mode() {
    for (what, old, _, _, _) in table() {
        for mode in Mode::ALL {
            for oc in [Lenient, Strict] {
                assert!(
                    check(&old, &old, mode, oc).is_empty(),
                    "{what} {mode:?} {oc:?}"
                );
            }
        }
    }
}

#[test]
fn strict_reads_open_objects_literally() {
    let old = order(json!({}));
    let constrained = order(json!({"properties": {"coupon": {"type": "string"}}}));
    assert_eq!(
        changes(&old, &constrained, Backward, Strict),
        vec!["property_constrained"]
    );
    assert!(changes(&old, &constrained, Backward, Lenient).is_empty());
    // Unconstrained: still fine.
    let open = order(json!({"properties": {"coupon": {"description": "any"}}}));
    assert!(changes(&old, &open, Backward, Strict).is_empty());
    // Closing an open object breaks backward under strict, not lenient.
    let closed = order(json!({"additionalProperties": false}));
    assert_eq!(
        changes(&old, &closed, Backward, Strict),
        vec!["additional_properties_narrowed"]
    );
}

#[test]
fn every_violation_is_listed_with_path_and_advice() {
    let old = order(json!({}));
    let new = order(json!({
        "properties": {"qty": {"type": "string"}, "note": {"maxLength": 10}, "coupon": {"type": "string"}},
        "required": ["id", "qty", "coupon"]
    }));
    let v = check(&old, &new, Backward, Lenient);
    let got: Vec<(&str, &str)> = v.iter().map(|v| (v.path.as_str(), v.change)).collect();
    assert_eq!(
        got,
        vec![
            ("#/properties/coupon", "property_added_required"),
            ("#/properties/note/maxLength", "bound_tightened"),
            ("#/properties/qty/type", "type_changed"),
        ]
    );
    for v in &v {
        assert!(v.message.contains("new event type"), "{}", v.message);
    }
}

#[test]
fn local_refs_and_recursion() {
    let old = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "integer"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"
    });
    let widened = json!({
        "$defs": {"node": {"type": "object", "properties": {
            "value": {"type": "number"},
            "children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}},
        "$ref": "#/$defs/node"
    });
    assert!(check(&old, &widened, Backward, Lenient).is_empty());
    assert!(!check(&old, &widened, Forward, Lenient).is_empty());
    assert!(check(&old, &old, Full, Strict).is_empty());
    let unresolvable = json!({"$ref": "#/$defs/missing"});
    assert_eq!(
        changes(&old, &unresolvable, Backward, Lenient),
        vec!["unsupported_change"]
    );
}

#[test]
fn unions() {
    let old = json!({"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}]}}});
    let added = json!({"type": "object", "properties": {"v": {"anyOf": [{"type": "string"}, {"type": "integer"}, {"type": "null"}]}}});
    assert!(check(&old, &added, Backward, Lenient).is_empty());
    assert!(!check(&old, &added, Forward, Lenient).is_empty());
    // A union of types where a plain type was.
    let plain = json!({"type": "string"});
    let union = json!({"anyOf": [{"type": "string"}, {"type": "null"}]});
    assert!(check(&plain, &union, Backward, Lenient).is_empty());
    assert!(!check(&plain, &union, Forward, Lenient).is_empty());
    // oneOf with a discriminator: a new branch is fine backward.
    let a = json!({"type": "object", "properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]});
    let b = json!({"type": "object", "properties": {"kind": {"const": "b"}, "y": {"type": "string"}}, "required": ["kind"]});
    let c = json!({"type": "object", "properties": {"kind": {"const": "c"}}, "required": ["kind"]});
    let old = json!({"oneOf": [a, b]});
    let new = json!({"oneOf": [a, b, c]});
    assert!(
        check(&old, &new, Backward, Lenient).is_empty(),
        "{:?}",
        check(&old, &new, Backward, Lenient)
    );
    // Without a discriminator, overlap cannot be ruled out.
    let overlapping = json!({"oneOf": [{"type": "number"}, {"type": "integer"}]});
    assert!(!check(&json!({"type": "integer"}), &overlapping, Backward, Lenient).is_empty());
}

#[test]
fn enums_are_checked_value_by_value() {
    let old = json!({"enum": [1, 2, "x"]});
    assert!(check(
        &old,
        &json!({"type": ["integer", "string"]}),
        Backward,
        Lenient
    )
    .is_empty());
    assert_eq!(
        changes(&old, &json!({"type": "integer"}), Backward, Lenient),
        vec!["type_narrowed"]
    );
    assert!(check(&old, &json!({"enum": [1, 2, "x", null]}), Backward, Lenient).is_empty());
    // A value the old schema refused anyway is no event.
    let old = json!({"enum": [1, "x"], "type": "integer"});
    assert!(check(&old, &json!({"const": 1}), Backward, Lenient).is_empty());
}

#[test]
fn arrays_by_position() {
    let old = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "integer"}], "items": false});
    let wider = json!({"type": "array", "prefixItems": [{"type": "string"}, {"type": "number"}]});
    assert!(check(&old, &wider, Backward, Lenient).is_empty());
    assert!(!check(&old, &wider, Forward, Lenient).is_empty());
    let d7_old = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}], "additionalItems": false});
    let d7_new = json!({"$schema": "http://json-schema.org/draft-07/schema#", "type": "array", "items": [{"type": "string"}], "additionalItems": {"type": "integer"}});
    assert!(check(&d7_old, &d7_new, Backward, Lenient).is_empty());
    assert_eq!(
        changes(&d7_old, &d7_new, Forward, Lenient),
        vec!["items_widened"]
    );
}

#[test]
fn a_new_constraint_on_an_untyped_schema_narrows_it() {
    assert_eq!(
        changes(&json!({}), &json!({"type": "object"}), Backward, Lenient),
        vec!["type_narrowed"]
    );
    assert!(check(&json!({"type": "object"}), &json!({}), Backward, Lenient).is_empty());
    assert_eq!(
        changes(&json!(true), &json!(false), Backward, Lenient),
        vec!["type_narrowed"]
    );
    assert!(check(&json!(false), &json!({"type": "string"}), Backward, Lenient).is_empty());
}

#[test]
fn keywords_that_depend_on_the_whole_schema_must_not_change() {
    let old = json!({"type": "object", "properties": {"a": {}}, "unevaluatedProperties": false});
    let new =
        json!({"type": "object", "properties": {"a": {}, "b": {}}, "unevaluatedProperties": false});
    assert_eq!(
        changes(&old, &new, Backward, Lenient),
        vec!["unsupported_change"]
    );
    assert!(check(&old, &old, Backward, Lenient).is_empty());
    let pp_old = json!({"type": "object", "patternProperties": {"^x": {"type": "string"}}});
    let pp_new = json!({"type": "object", "patternProperties": {"^x": {"type": "integer"}}});
    assert_eq!(
        changes(&pp_old, &pp_new, Backward, Lenient),
        vec!["unsupported_change"]
    );
    assert!(check(&pp_old, &pp_old, Backward, Lenient).is_empty());
}

#[test]
fn modes_and_open_content_parse() {
    for m in Mode::ALL {
        assert_eq!(Mode::parse(m.as_str()), Some(m));
    }
    assert_eq!(Mode::parse("sideways"), Option::None);
    assert_eq!(OpenContent::parse("strict"), Some(Strict));
    assert!(Mode::FullTransitive.is_transitive() && !Mode::Full.is_transitive());
}
