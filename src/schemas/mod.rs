//! Event schemas (SPEC section 9): a registry of JSON Schemas per event
//! type in a JetStream key-value bucket, versions, validation of typed
//! publishes and compatibility checks of new versions.
//!
//! The pure core is [`compat::check`] and [`validate`]; [`registry`] keeps
//! compiled validators in memory, fed by a watch on the bucket, so the
//! publish path ([`Schemas::check_publish`]) never reads NATS and keeps
//! validating while NATS is away.

pub mod cli;
pub mod compat;
pub mod config;
pub mod registry;
pub mod routes;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;
use crate::metrics::Metrics;
pub use compat::{Mode, OpenContent, Violation};
pub use config::SchemasConfig;
use config::{is_valid_type, UnknownTypes, ValidateMode, MAX_TYPE_LEN};
use registry::{Lookup, Registry, StoreError};
pub use validate::ValidationError;

/// Header naming the type of an event whose body does not say it.
pub const EVENT_TYPE_HEADER: &str = "jetway-event-type";
/// Request header pinning a version; stored header naming the version.
pub const SCHEMA_VERSION_HEADER: &str = "Jetway-Schema-Version";
/// Stored header naming the type an event was validated as.
pub const SCHEMA_TYPE_HEADER: &str = "Jetway-Schema-Type";

/// The `type` label for types that have no schema (bounded labels).
const UNKNOWN_LABEL: &str = "unknown";

/// A violation found against one existing version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionViolation {
    /// The existing version the new one breaks.
    pub version: u32,
    #[serde(flatten)]
    pub violation: Violation,
}

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

/// The outcome of registering a version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registered {
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u32,
    /// False when an identical version existed (200 instead of 201).
    #[serde(skip)]
    pub created: bool,
}

/// The registry, the validators, and this app's schema settings.
pub struct Schemas {
    config: SchemasConfig,
    registry: Arc<Registry>,
    metrics: Metrics,
    request_timeout: Duration,
    /// The connection, to refuse a registration while it is down (a write
    /// would wait in the client's buffer and might land later).
    client: std::sync::OnceLock<async_nats::Client>,
}

impl Schemas {
    pub fn new(config: SchemasConfig, metrics: Metrics, request_timeout: Duration) -> Schemas {
        Schemas {
            config,
            registry: Arc::new(Registry::default()),
            metrics,
            request_timeout,
            client: std::sync::OnceLock::new(),
        }
    }

    pub fn config(&self) -> &SchemasConfig {
        &self.config
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Opens (creating if missing) the bucket, retrying until NATS
    /// answers, then follows it for as long as the process runs.
    pub async fn run(self: Arc<Self>, js: async_nats::jetstream::Context) {
        let _ = self.client.set(js.client());
        let mut delay = Duration::from_millis(200);
        let store = loop {
            match registry::open_bucket(&js, &self.config.bucket, self.config.replicas).await {
                Ok(store) => break store,
                Err(e) => {
                    tracing::info!(error = %e, bucket = %self.config.bucket, "schema registry not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        self.registry.set_store(store);
        let gauge = self.metrics.schema_registry_versions.clone();
        self.registry
            .clone()
            .follow(move |n| gauge.set(n as i64))
            .await;
    }

    /// Waits until the watch has delivered what the bucket held, for at
    /// most the request timeout (registrations need the whole picture).
    async fn synced(&self) -> Result<(), SchemaError> {
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        while !self.registry.is_synced() {
            if tokio::time::Instant::now() >= deadline {
                return Err(SchemaError::Unavailable(
                    "the schema registry (NATS) is not reachable".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    fn count(&self, event_type: &str, known: bool, outcome: &str) {
        let label = if known { event_type } else { UNKNOWN_LABEL };
        self.metrics
            .schema_validations_total
            .with_label_values(&[label, outcome])
            .inc();
    }

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
    ) -> Result<Option<Checked>, ApiError> {
        let structured = headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|ct| ct.split(';').next())
            .is_some_and(|ct| {
                ct.trim()
                    .eq_ignore_ascii_case(crate::publish::headers::CLOUDEVENTS_JSON)
            });
        let event_type = event_type(headers, body, structured)?;
        let pinned = match headers.get(SCHEMA_VERSION_HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| {
                ApiError::HeaderInvalid("Jetway-Schema-Version is not printable ASCII".into())
            })?),
        };
        Ok(self.check_publish(event_type.as_deref(), pinned, body, structured)?)
    }

    /// The compatibility mode of a type: its stored setting, else this
    /// app's default.
    pub fn mode_of(&self, event_type: &str) -> Mode {
        self.registry
            .get(event_type)
            .and_then(|t| t.compatibility)
            .unwrap_or(self.config.compatibility)
    }

    fn check_owned(&self, event_type: &str) -> Result<(), SchemaError> {
        check_type_name(event_type)?;
        if self.config.owns(event_type) {
            Ok(())
        } else {
            Err(SchemaError::Forbidden(format!(
                "type `{event_type}` is outside schemas.owns of this app; the team that owns it registers its schemas"
            )))
        }
    }

    /// Registers `raw` as the next version of `event_type` (or, with
    /// `dry_run`, answers what that would do). Versions are written
    /// create-only: when another sidecar took the number, its version is
    /// read and the new one is checked against it too.
    pub async fn register(
        &self,
        event_type: &str,
        raw: &[u8],
        dry_run: bool,
    ) -> Result<Registered, SchemaError> {
        self.check_owned(event_type)?;
        let schema: Value = serde_json::from_slice(raw)
            .map_err(|e| SchemaError::BadRequest(format!("the body is not JSON: {e}")))?;
        let version = registry::compile_version(raw).map_err(SchemaError::Invalid)?;
        let version = Arc::new(version);
        let connected = self
            .client
            .get()
            .is_some_and(|c| c.connection_state() == async_nats::connection::State::Connected);
        if self.registry.store().is_none() || !connected {
            return Err(SchemaError::Unavailable(
                "the schema registry (NATS) is not reachable; nothing was registered".into(),
            ));
        }
        self.synced().await?;
        // Each failed create means one more version was learnt.
        for _ in 0..1000 {
            let state = self.registry.get(event_type).unwrap_or_default();
            if let Some((n, _)) = state
                .versions
                .iter()
                .find(|(_, v)| v.canonical == version.canonical)
            {
                return Ok(Registered {
                    event_type: event_type.to_string(),
                    version: *n,
                    created: false,
                });
            }
            let mode = state.compatibility.unwrap_or(self.config.compatibility);
            let against: Vec<(&u32, &Arc<registry::Version>)> = if mode.is_transitive() {
                state.versions.iter().collect()
            } else {
                state.versions.iter().next_back().into_iter().collect()
            };
            let violations: Vec<VersionViolation> = against
                .into_iter()
                .flat_map(|(n, old)| {
                    compat::check(&old.schema, &schema, mode, self.config.open_content)
                        .into_iter()
                        .map(|violation| VersionViolation {
                            version: *n,
                            violation,
                        })
                })
                .collect();
            if !violations.is_empty() {
                return Err(SchemaError::Incompatible { mode, violations });
            }
            let next = state.versions.keys().next_back().map_or(1, |n| n + 1);
            if dry_run {
                return Ok(Registered {
                    event_type: event_type.to_string(),
                    version: next,
                    created: true,
                });
            }
            if state.compatibility.is_none() {
                let setting =
                    serde_json::json!({ "compatibility": self.config.compatibility.as_str() });
                match self
                    .registry
                    .create(
                        &registry::config_key(event_type),
                        Bytes::from(setting.to_string()),
                    )
                    .await
                {
                    Ok(()) => {
                        self.registry.apply(
                            &registry::config_key(event_type),
                            setting.to_string().as_bytes(),
                        );
                    }
                    Err(StoreError::Exists) => {
                        self.learn(&registry::config_key(event_type)).await?;
                        continue;
                    }
                    Err(e) => return Err(unavailable(e)),
                }
            }
            let key = registry::version_key(event_type, next);
            match self.registry.create(&key, version.raw.clone()).await {
                Ok(()) => {
                    self.registry.insert(event_type, next, version.clone());
                    self.metrics
                        .schema_registry_versions
                        .set(self.registry.version_count() as i64);
                    tracing::info!(event_type, version = next, "schema version registered");
                    return Ok(Registered {
                        event_type: event_type.to_string(),
                        version: next,
                        created: true,
                    });
                }
                Err(StoreError::Exists) => self.learn(&key).await?,
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(SchemaError::Unavailable(
            "too many concurrent registrations of this type; retry".into(),
        ))
    }

    /// Reads a key another sidecar wrote into the map.
    async fn learn(&self, key: &str) -> Result<(), SchemaError> {
        match self.registry.fetch(key).await.map_err(unavailable)? {
            Some(value) => {
                if !self.registry.apply(key, &value) {
                    return Err(SchemaError::Unavailable(format!(
                        "the registry holds an unreadable value at {key}; an operator must repair it"
                    )));
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Sets a type's compatibility mode.
    pub async fn set_mode(&self, event_type: &str, mode: Mode) -> Result<(), SchemaError> {
        self.check_owned(event_type)?;
        let setting = serde_json::json!({ "compatibility": mode.as_str() }).to_string();
        self.registry
            .put(
                &registry::config_key(event_type),
                Bytes::from(setting.clone()),
            )
            .await
            .map_err(unavailable)?;
        self.registry
            .apply(&registry::config_key(event_type), setting.as_bytes());
        Ok(())
    }

    /// Registers the schemas of `schemas.register`, through the same checks
    /// as the API. NATS being away is waited out; an invalid or
    /// incompatible schema is an error (exit 64).
    pub async fn register_from_config(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (i, entry) in self.config.register.iter().enumerate() {
            let at = format!("schemas.register[{i}]");
            let raw = match std::fs::read(&entry.file) {
                Ok(raw) => raw,
                Err(e) => {
                    problems.push(format!(
                        "{at}.file: cannot read {}: {e}",
                        entry.file.display()
                    ));
                    continue;
                }
            };
            loop {
                match self.register(&entry.event_type, &raw, false).await {
                    Ok(r) => {
                        tracing::info!(event_type = %r.event_type, version = r.version, new = r.created, file = %entry.file.display(), "schema from the config in place");
                        break;
                    }
                    Err(SchemaError::Unavailable(e)) => {
                        tracing::info!(error = %e, "waiting for the schema registry to register schemas.register");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(SchemaError::Incompatible { violations, mode }) => {
                        for v in violations {
                            problems.push(format!(
                                "{at}: {} is not {} compatible with version {} of `{}`: {} {}: {}",
                                entry.file.display(),
                                mode.as_str(),
                                v.version,
                                entry.event_type,
                                v.violation.path,
                                v.violation.change,
                                v.violation.message
                            ));
                        }
                        break;
                    }
                    Err(e) => {
                        problems.push(format!("{at}: {e}"));
                        break;
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn unavailable(e: StoreError) -> SchemaError {
    SchemaError::Unavailable(format!(
        "the schema registry (NATS) did not confirm the write: {e}; if it was stored after all, registering the same schema again answers its version"
    ))
}

/// `[A-Za-z0-9._-]+`, at most 128 bytes; else 400.
pub fn check_type_name(event_type: &str) -> Result<(), SchemaError> {
    if is_valid_type(event_type) {
        Ok(())
    } else {
        Err(SchemaError::BadRequest(format!(
            "`{event_type}` is not an event type ([A-Za-z0-9._-]+, at most {MAX_TYPE_LEN} bytes)"
        )))
    }
}

/// The type of an event: `Jetway-Event-Type`, `ce-type`, or a structured
/// CloudEvent's `type`; a `Jetway-Event-Type` that differs from the
/// CloudEvent's type is refused.
pub fn event_type(
    headers: &HeaderMap,
    body: &[u8],
    structured: bool,
) -> Result<Option<String>, ApiError> {
    let header = |name: &str| -> Result<Option<String>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v.to_str().map(|s| Some(s.to_string())).map_err(|_| {
                ApiError::HeaderInvalid(format!("header {name} is not printable ASCII"))
            }),
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
        (Some(d), Some(c)) if d != c => Err(ApiError::HeaderInvalid(format!(
            "Jetway-Event-Type `{d}` differs from the CloudEvent's type `{c}`"
        ))),
        (Some(t), _) | (None, Some(t)) => Ok(Some(t)),
        (None, None) => Ok(None),
    }
}

/// Why a schema operation or a typed publish was refused.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SchemaError {
    #[error("{message}")]
    Violation {
        message: String,
        errors: Vec<ValidationError>,
    },
    #[error("{0}")]
    UnknownVersion(String),
    #[error("{0}")]
    UnknownType(String),
    #[error("the new version is not {} compatible ({} violation(s))", .mode.as_str(), .violations.len())]
    Incompatible {
        mode: Mode,
        violations: Vec<VersionViolation>,
    },
    #[error("not a valid JSON Schema: {0}")]
    Invalid(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Header(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(err.code(), "header_invalid");
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
