//! Event schemas (SPEC section 9): a registry of JSON Schemas per event
//! type in a JetStream key-value bucket, versions, validation of typed
//! publishes and compatibility checks of new versions.
//!
//! The pure core is [`compat::check`] and [`validate`]; [`registry`] keeps
//! compiled validators in memory, fed by a watch on the bucket, so the
//! publish path ([`Schemas::check_publish`]) never reads NATS and keeps
//! validating while NATS is away.
//!
//! [`Schemas`] holds the registry and this app's settings; `typed_publish`
//! checks a typed publish (its type, pinned version and body), `register`
//! adds versions and settings, [`routes`] serves `/v1/schemas`. Refusals
//! are [`SchemaError`]s, which `crate::error` turns into API answers.

pub mod cli;
pub mod compat;
pub mod config;
mod register;
pub mod registry;
pub mod routes;
mod typed_publish;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;
pub use compat::{Mode, OpenContent, Violation};
pub use config::SchemasConfig;
use config::{is_valid_type, MAX_TYPE_LEN};
pub use register::{Registered, VersionViolation};
use registry::Registry;
pub use typed_publish::{event_type, Checked};
pub use validate::ValidationError;

/// Header naming the type of an event whose body does not say it.
pub const EVENT_TYPE_HEADER: &str = "jetway-event-type";
/// Request header pinning a version; stored header naming the version.
pub const SCHEMA_VERSION_HEADER: &str = "Jetway-Schema-Version";
/// Stored header naming the type an event was validated as.
pub const SCHEMA_TYPE_HEADER: &str = "Jetway-Schema-Type";

/// The `type` label for types that have no schema (bounded labels).
const UNKNOWN_LABEL: &str = "unknown";

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

    /// The compatibility mode of a type: its stored setting, else this
    /// app's default.
    pub fn mode_of(&self, event_type: &str) -> Mode {
        self.registry
            .get(event_type)
            .and_then(|t| t.compatibility)
            .unwrap_or(self.config.compatibility)
    }
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
