//! Validation of events against JSON Schemas (SPEC section 9): a pure
//! layer over the `jsonschema` crate. Drafts 2020-12 (the default), 2019-09
//! and 7 by `$schema`; `$ref` only inside the document (the retriever
//! refuses every fetch, and the crate is built without its HTTP and file
//! resolvers); `format` is an annotation.

use serde::Serialize;
use serde_json::Value;

/// Most errors reported for one event.
pub const MAX_ERRORS: usize = 20;

/// One reason an event does not validate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationError {
    /// JSON Pointer into the event.
    pub instance_path: String,
    /// JSON Pointer into the schema, to the keyword that refused it.
    pub schema_path: String,
    pub message: String,
}

/// A schema compiled for validation.
pub struct Compiled {
    validator: jsonschema::Validator,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Compiled")
    }
}

/// Refuses every fetch: a schema may only refer inside itself.
struct NoFetch;

impl jsonschema::Retrieve for NoFetch {
    fn retrieve(
        &self,
        uri: &jsonschema::Uri<String>,
    ) -> Result<Value, Box<dyn std::error::Error + Send + Sync>> {
        Err(format!("`$ref` to {uri} is outside the schema; jetway fetches nothing").into())
    }
}

/// The draft a schema declares, or why it is not one jetway supports.
pub fn draft(schema: &Value) -> Result<jsonschema::Draft, String> {
    match schema.get("$schema") {
        None => Ok(jsonschema::Draft::Draft202012),
        Some(Value::String(s)) => {
            let s = s.trim_end_matches('#');
            match s {
                "https://json-schema.org/draft/2020-12/schema" => {
                    Ok(jsonschema::Draft::Draft202012)
                }
                "https://json-schema.org/draft/2019-09/schema" => {
                    Ok(jsonschema::Draft::Draft201909)
                }
                "http://json-schema.org/draft-07/schema" => Ok(jsonschema::Draft::Draft7),
                other => Err(format!(
                    "$schema `{other}` is not JSON Schema 2020-12, 2019-09 or draft 7"
                )),
            }
        }
        Some(_) => Err("$schema must be a string".into()),
    }
}

fn options(draft: jsonschema::Draft) -> jsonschema::ValidationOptions<'static> {
    jsonschema::options()
        .with_draft(draft)
        .should_validate_formats(false)
        .with_retriever(NoFetch)
}

/// Compiles a schema, or says why it is not a valid JSON Schema.
pub fn compile(schema: &Value) -> Result<Compiled, String> {
    if !schema.is_object() && !schema.is_boolean() {
        return Err("a JSON Schema is an object or a boolean".into());
    }
    let draft = draft(schema)?;
    options(draft)
        .build(schema)
        .map(|validator| Compiled { validator })
        .map_err(|e| e.to_string())
}

/// A validator for the compatibility checker's exact checks (a schema
/// fragment with its references already inlined).
pub(crate) fn compile_for_check(
    schema: &Value,
    draft: super::compat::Draft,
) -> Option<jsonschema::Validator> {
    let draft = match draft {
        super::compat::Draft::Draft7 => jsonschema::Draft::Draft7,
        super::compat::Draft::Draft201909 => jsonschema::Draft::Draft201909,
        super::compat::Draft::Draft202012 => jsonschema::Draft::Draft202012,
    };
    options(draft).build(schema).ok()
}

impl Compiled {
    /// Whether `instance` validates.
    pub fn is_valid(&self, instance: &Value) -> bool {
        self.validator.is_valid(instance)
    }

    /// Why `instance` does not validate: empty when it does; at most
    /// [`MAX_ERRORS`].
    pub fn errors(&self, instance: &Value) -> Vec<ValidationError> {
        if self.validator.is_valid(instance) {
            return Vec::new();
        }
        self.validator
            .iter_errors(instance)
            .take(MAX_ERRORS)
            .map(|e| ValidationError {
                instance_path: e.instance_path().as_str().to_string(),
                schema_path: e.schema_path().as_str().to_string(),
                message: e.to_string(),
            })
            .collect()
    }
}

/// The instance of an event body: its JSON, or for a structured CloudEvent
/// its `data` (or `data_base64` decoded and parsed; `null` without either).
pub fn instance(body: &[u8], structured_cloudevent: bool) -> Result<Value, ValidationError> {
    let not_json = |what: &str, e: serde_json::Error| ValidationError {
        instance_path: String::new(),
        schema_path: String::new(),
        message: format!("{what} is not JSON: {e}"),
    };
    let value: Value = serde_json::from_slice(body).map_err(|e| not_json("the event", e))?;
    if !structured_cloudevent {
        return Ok(value);
    }
    let Value::Object(mut event) = value else {
        return Ok(Value::Null);
    };
    if let Some(data) = event.remove("data") {
        return Ok(data);
    }
    match event.get("data_base64") {
        Some(Value::String(b64)) => {
            use base64::Engine;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| ValidationError {
                    instance_path: "/data_base64".into(),
                    schema_path: String::new(),
                    message: format!("data_base64 is not base64: {e}"),
                })?;
            serde_json::from_slice(&bytes).map_err(|e| not_json("data_base64", e))
        }
        _ => Ok(Value::Null),
    }
}

/// Canonical JSON of a schema (object keys sorted, no spaces), to tell
/// identical registrations apart from new ones.
pub fn canonical(schema: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(
                    keys.into_iter()
                        .map(|k| (k.clone(), sort(&map[k])))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    sort(schema).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn compiled(schema: Value) -> Compiled {
        compile(&schema).expect("valid schema")
    }

    #[test]
    fn errors_carry_json_pointers() {
        let schema = compiled(json!({
            "type": "object",
            "properties": {"items": {"type": "array", "items": {
                "type": "object", "properties": {"qty": {"type": "integer", "minimum": 1}}}}}
        }));
        let errors = schema.errors(&json!({"items": [{"qty": 0}]}));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].instance_path, "/items/0/qty");
        assert_eq!(
            errors[0].schema_path,
            "/properties/items/items/properties/qty/minimum"
        );
        assert!(schema.errors(&json!({"items": [{"qty": 1}]})).is_empty());
    }

    #[test]
    fn at_most_twenty_errors() {
        let schema = compiled(json!({"type": "array", "items": {"type": "string"}}));
        let many: Vec<u32> = (0..50).collect();
        assert_eq!(schema.errors(&json!(many)).len(), MAX_ERRORS);
    }

    #[test]
    fn remote_refs_are_refused() {
        for r in [
            "https://example.com/s.json",
            "file:///etc/passwd",
            "other.json#/x",
        ] {
            let err = compile(&json!({"$ref": r})).expect_err(r);
            assert!(!err.is_empty());
        }
        let local = compiled(json!({
            "$defs": {"qty": {"type": "integer"}},
            "properties": {"q": {"$ref": "#/$defs/qty"}}
        }));
        assert!(!local.is_valid(&json!({"q": "x"})));
        assert!(local.is_valid(&json!({"q": 1})));
    }

    #[test]
    fn format_is_not_asserted() {
        let schema = compiled(json!({"type": "string", "format": "email"}));
        assert!(schema.is_valid(&json!("not an email")));
    }

    #[test]
    fn drafts_by_dollar_schema() {
        // Draft 7: `items` as an array is positional, `$ref` hides siblings.
        let d7 = compiled(json!({
            "$schema": "http://json-schema.org/draft-07/schema#",
            "items": [{"type": "string"}]
        }));
        assert!(d7.is_valid(&json!(["a", 1])));
        assert!(!d7.is_valid(&json!([1])));
        let d2020 = compiled(json!({"prefixItems": [{"type": "string"}], "items": false}));
        assert!(!d2020.is_valid(&json!(["a", 1])));
        assert!(compile(&json!({"$schema": "http://json-schema.org/draft-04/schema#"})).is_err());
        let d2019 = compiled(json!({
            "$schema": "https://json-schema.org/draft/2019-09/schema",
            "type": "object", "dependentRequired": {"a": ["b"]}
        }));
        assert!(!d2019.is_valid(&json!({"a": 1})));
    }

    #[test]
    fn invalid_schemas_are_refused_with_a_reason() {
        for s in [
            json!({"type": "strung"}),
            json!({"minimum": "one"}),
            json!("a string"),
        ] {
            assert!(compile(&s).is_err(), "{s}");
        }
    }

    #[test]
    fn structured_cloudevents_validate_their_data() {
        let ce = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data":{"a":1}}"#;
        assert_eq!(instance(ce, true).expect("json"), json!({"a": 1}));
        let b64 = br#"{"specversion":"1.0","id":"1","source":"s","type":"t","data_base64":"eyJhIjoyfQ=="}"#;
        assert_eq!(instance(b64, true).expect("json"), json!({"a": 2}));
        let none = br#"{"specversion":"1.0","id":"1","source":"s","type":"t"}"#;
        assert_eq!(instance(none, true).expect("json"), Value::Null);
        assert!(instance(b"not json", false).is_err());
    }

    #[test]
    fn canonical_json_ignores_key_order_and_spacing() {
        let a: Value =
            serde_json::from_str(r#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#).expect("json");
        let b: Value = serde_json::from_str(r#"{"a":{"x":null,"y":[1,2]},"b":1}"#).expect("json");
        assert_eq!(canonical(&a), canonical(&b));
    }
}
