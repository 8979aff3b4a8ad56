//! Registering versions and settings: create-only writes to the bucket,
//! each new version checked against the ones it must stay compatible with
//! ([`super::compat::check`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::registry::{self, StoreError};
use super::{check_type_name, compat, Mode, SchemaError, Schemas, Violation};

/// A violation found against one existing version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VersionViolation {
    /// The existing version the new one breaks.
    pub version: u32,
    #[serde(flatten)]
    pub violation: Violation,
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

impl Schemas {
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
