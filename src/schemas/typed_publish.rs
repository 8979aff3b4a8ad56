//! A typed publish (SPEC section 9): its type (`Jetway-Event-Type`,
//! `ce-type` or a structured CloudEvent's `type`), the pinned version, and
//! its validation, from memory only, so publishing keeps working while NATS
//! is away.

use axum::http::HeaderMap;
use serde_json::Value;

use super::config::{UnknownTypes, ValidateMode};
use super::registry::Lookup;
use super::{
    validate, SchemaError, Schemas, EVENT_TYPE_HEADER, SCHEMA_TYPE_HEADER, SCHEMA_VERSION_HEADER,
};
use crate::content_type::is_structured_cloudevent;

/// What a typed publish was checked as: the stamp of the stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub event_type: String,
    /// The version it validated against; `None` when it was stored
    /// unvalidated (`validate: warn` and invalid).
    pub version: Option<u32>,
}

impl Checked {
    /// Adds `Jetway-Schema-Type` and `Jetway-Schema-Version` to the
    /// headers a message is stored with.
    pub fn stamp(&self, headers: &mut async_nats::HeaderMap) {
        headers.insert(SCHEMA_TYPE_HEADER, self.event_type.as_str());
        if let Some(v) = self.version {
            headers.insert(SCHEMA_VERSION_HEADER, v.to_string().as_str());
        }
    }
}

impl Schemas {
    /// Checks a typed publish against its schema, from memory only. `None`
    /// when the event is untyped, validation is off, or the type has no
    /// schema and `unknown_types: allow`.
    pub fn check_publish(
        &self,
        event_type: Option<&str>,
        pinned: Option<&str>,
        body: &[u8],
        structured: bool,
    ) -> Result<Option<Checked>, SchemaError> {
        let Some(event_type) = event_type else {
            if pinned.is_some() {
                return Err(SchemaError::Header(
                    "Jetway-Schema-Version needs an event type (ce-type, a structured CloudEvent's type, or Jetway-Event-Type)".into(),
                ));
            }
            return Ok(None);
        };
        if self.config.validate == ValidateMode::Off {
            return Ok(None);
        }
        let pinned = match pinned {
            None => None,
            Some(p) => Some(p.trim().parse::<u32>().map_err(|_| {
                SchemaError::Header(format!(
                    "Jetway-Schema-Version must be a version number, got `{p}`"
                ))
            })?),
        };
        let (version, schema) = match self.registry.version(event_type, pinned) {
            Lookup::Found(n, v) => (n, v),
            Lookup::UnknownType => {
                self.count(event_type, false, "unknown_type");
                if let Some(n) = pinned {
                    return Err(SchemaError::UnknownVersion(format!(
                        "type `{event_type}` has no schema, so no version {n}"
                    )));
                }
                return match self.config.unknown_types {
                    UnknownTypes::Allow => Ok(None),
                    UnknownTypes::Reject => Err(SchemaError::UnknownType(format!(
                        "type `{event_type}` has no schema and schemas.unknown_types is reject; register one with POST /v1/schemas/{event_type}/versions"
                    ))),
                };
            }
            Lookup::UnknownVersion => {
                self.count(event_type, true, "unknown_version");
                return Err(SchemaError::UnknownVersion(format!(
                    "type `{event_type}` has no version {}",
                    pinned.unwrap_or(0)
                )));
            }
        };
        let errors = match validate::instance(body, structured) {
            Ok(instance) => schema.compiled.errors(&instance),
            Err(e) => vec![e],
        };
        if errors.is_empty() {
            self.count(event_type, true, "valid");
            return Ok(Some(Checked {
                event_type: event_type.to_string(),
                version: Some(version),
            }));
        }
        self.count(event_type, true, "invalid");
        match self.config.validate {
            ValidateMode::Warn => {
                tracing::warn!(
                    event_type,
                    version,
                    instance_path = %errors[0].instance_path,
                    schema_path = %errors[0].schema_path,
                    errors = errors.len(),
                    "event does not match its schema; stored anyway (schemas.validate: warn)"
                );
                Ok(Some(Checked {
                    event_type: event_type.to_string(),
                    version: None,
                }))
            }
            _ => Err(SchemaError::Violation {
                message: format!(
                    "the event does not match version {version} of `{event_type}` ({} error(s))",
                    errors.len()
                ),
                errors,
            }),
        }
    }

    /// [`Schemas::check_publish`] for a request (or batch item): the type,
    /// pinned version and body as the publish routes see them.
    pub fn check_request(
        &self,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Option<Checked>, SchemaError> {
        let structured = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(is_structured_cloudevent);
        let event_type = event_type(headers, body, structured)?;
        let pinned = match headers.get(SCHEMA_VERSION_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                SchemaError::Header("Jetway-Schema-Version is not printable ASCII".into())
            })?),
        };
        self.check_publish(event_type.as_deref(), pinned, body, structured)
    }
}

/// The type of an event: `Jetway-Event-Type`, `ce-type`, or a structured
/// CloudEvent's `type`; a `Jetway-Event-Type` that differs from the
/// CloudEvent's type is refused.
pub fn event_type(
    headers: &HeaderMap,
    body: &[u8],
    structured: bool,
) -> Result<Option<String>, SchemaError> {
    let header = |name: &str| -> Result<Option<String>, SchemaError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(|s| Some(s.to_string()))
                .map_err(|_| SchemaError::Header(format!("header {name} is not printable ASCII"))),
        }
    };
    let declared = header(EVENT_TYPE_HEADER)?;
    let ce = if structured {
        serde_json::from_slice::<Value>(body)
            .ok()
            .and_then(|v| v.get("type")?.as_str().map(str::to_string))
    } else {
        header("ce-type")?
    };
    match (declared, ce) {
        (Some(d), Some(c)) if d != c => Err(SchemaError::Header(format!(
            "Jetway-Event-Type `{d}` differs from the CloudEvent's type `{c}`"
        ))),
        (Some(t), _) | (None, Some(t)) => Ok(Some(t)),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::metrics::Metrics;
    use crate::schemas::{registry, SchemasConfig};
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_type_comes_from_headers_or_the_structured_body() {
        assert_eq!(
            event_type(&headers(&[("ce-type", "a")]), b"", false)
                .ok()
                .flatten(),
            Some("a".into())
        );
        assert_eq!(
            event_type(&headers(&[("jetway-event-type", "b")]), b"", false)
                .ok()
                .flatten(),
            Some("b".into())
        );
        let ce = br#"{"specversion":"1.0","id":"1","source":"s","type":"c"}"#;
        assert_eq!(
            event_type(&HeaderMap::new(), ce, true).ok().flatten(),
            Some("c".into())
        );
        let err =
            event_type(&headers(&[("jetway-event-type", "x")]), ce, true).expect_err("differs");
        assert!(matches!(err, SchemaError::Header(_)), "{err:?}");
        assert!(event_type(
            &headers(&[("jetway-event-type", "a"), ("ce-type", "a")]),
            b"",
            false
        )
        .is_ok());
        assert_eq!(
            event_type(&HeaderMap::new(), b"{}", false).ok().flatten(),
            None
        );
    }

    fn schemas(validate: ValidateMode, unknown: UnknownTypes) -> Schemas {
        let config = SchemasConfig {
            validate,
            unknown_types: unknown,
            ..Default::default()
        };
        let s = Schemas::new(config, Metrics::new(), Duration::from_secs(1));
        s.registry.apply(
            &registry::version_key("order.created", 1),
            br#"{"type":"object","properties":{"qty":{"type":"integer","minimum":1}},"required":["qty"]}"#,
        );
        s
    }

    #[test]
    fn typed_publishes_are_checked_from_memory() {
        let s = schemas(ValidateMode::Enforce, UnknownTypes::Allow);
        let ok = s.check_publish(Some("order.created"), None, br#"{"qty":2}"#, false);
        assert_eq!(
            ok.expect("valid"),
            Some(Checked {
                event_type: "order.created".into(),
                version: Some(1)
            })
        );
        match s.check_publish(Some("order.created"), None, br#"{"qty":0}"#, false) {
            Err(SchemaError::Violation { errors, .. }) => {
                assert_eq!(errors[0].instance_path, "/qty");
                assert_eq!(errors[0].schema_path, "/properties/qty/minimum");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.check_publish(Some("order.created"), None, b"nope", false),
            Err(SchemaError::Violation { .. })
        ));
        assert!(matches!(
            s.check_publish(Some("order.created"), Some("2"), br#"{"qty":2}"#, false),
            Err(SchemaError::UnknownVersion(_))
        ));
        assert!(matches!(
            s.check_publish(Some("order.created"), Some("x"), br#"{"qty":2}"#, false),
            Err(SchemaError::Header(_))
        ));
        assert_eq!(
            s.check_publish(Some("other"), None, b"{}", false)
                .expect("allowed"),
            None
        );
        assert_eq!(
            s.check_publish(None, None, b"{}", false).expect("untyped"),
            None
        );
        let text = s.metrics.render();
        assert!(
            text.contains(
                r#"jetway_schema_validations_total{outcome="valid",type="order.created"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"jetway_schema_validations_total{outcome="unknown_type",type="unknown"} 1"#
            ),
            "{text}"
        );
    }

    #[test]
    fn warn_stores_without_the_version_and_reject_refuses_unknown_types() {
        let warn = schemas(ValidateMode::Warn, UnknownTypes::Allow);
        let checked = warn.check_publish(Some("order.created"), None, br#"{"qty":0}"#, false);
        assert_eq!(
            checked.expect("stored"),
            Some(Checked {
                event_type: "order.created".into(),
                version: None
            })
        );
        let reject = schemas(ValidateMode::Enforce, UnknownTypes::Reject);
        assert!(matches!(
            reject.check_publish(Some("other"), None, b"{}", false),
            Err(SchemaError::UnknownType(_))
        ));
        let off = schemas(ValidateMode::Off, UnknownTypes::Reject);
        assert_eq!(
            off.check_publish(Some("order.created"), None, b"nope", false)
                .expect("off"),
            None
        );
    }

    #[test]
    fn the_stamp_names_type_and_version() {
        let mut h = async_nats::HeaderMap::new();
        Checked {
            event_type: "t".into(),
            version: Some(3),
        }
        .stamp(&mut h);
        assert_eq!(h.get(SCHEMA_TYPE_HEADER).map(|v| v.as_str()), Some("t"));
        assert_eq!(h.get(SCHEMA_VERSION_HEADER).map(|v| v.as_str()), Some("3"));
    }
}
