//! The sidecar's configuration: the YAML file of SPEC section 2, `${VAR}`
//! expansion, `JETWAY_A__B` overrides and validation.
//!
//! Validation walks the document by hand instead of deriving `Deserialize`,
//! because serde stops at the first error while an operator wants every
//! problem at once, each with its key path (`subscriptions[1].retry.jitter`).
//!
//! One file per section of the file, holding its structs and the rules of
//! its keys (`nats`, `api`, `metrics`, `streams`, `publish`, `dead_letter`,
//! `app`, `subscriptions`, `log`); [`values`] has the readers they share
//! and [`env`] the environment's overrides and `${VAR}` expansion. This file
//! holds [`Config`] and the order in which the sections are read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_norway::{Mapping, Value};

mod api;
mod app;
mod dead_letter;
mod env;
mod log;
mod metrics;
mod nats;
mod publish;
mod schemas;
mod streams;
mod subscriptions;
mod tracing;
mod values;

pub use api::ApiConfig;
pub use app::AppConfig;
pub use dead_letter::DeadLetterConfig;
pub use env::expand_str;
pub use log::{LogConfig, LogFormat};
pub use metrics::MetricsConfig;
pub use nats::{NatsAuth, NatsConfig, TlsConfig};
pub use publish::PublishConfig;
pub use streams::{is_valid_stream_name, Storage, StreamConfig};
pub use subscriptions::{Deliver, RetryPolicy, SigningSecret, SubscriptionConfig};
pub use tracing::{export_header, traces_url, TracingConfig, MAX_TRACING_QUEUE};
pub use values::{is_valid_name, parse_duration, parse_size, Secret};

use values::{duration, string, Section};

/// Exit code for an invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID: i32 = 64;

/// A small, complete configuration used by `jetway dev` and in docs.
pub const EXAMPLE: &str = include_str!("../../examples/jetway.yaml");

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub app_id: String,
    pub shutdown_grace: Duration,
    pub log: LogConfig,
    pub nats: NatsConfig,
    pub api: ApiConfig,
    pub metrics: MetricsConfig,
    pub streams: Vec<StreamConfig>,
    pub publish: PublishConfig,
    pub dead_letter: DeadLetterConfig,
    pub app: AppConfig,
    pub subscriptions: Vec<SubscriptionConfig>,
    /// `tracing:` (SPEC section 10).
    pub tracing: TracingConfig,
    /// `schemas:` (SPEC section 9); its rules live with the registry in
    /// `crate::schemas::config`.
    pub schemas: Option<crate::schemas::SchemasConfig>,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Why a configuration could not be used; carries every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config is not valid YAML: {0}")]
    Yaml(#[from] serde_norway::Error),
    #[error("{} problem(s) in the config:\n{}", .0.len(), .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, for callers that list them.
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            ConfigError::Invalid(problems) => problems.clone(),
            other => vec![Problem {
                path: String::new(),
                message: other.to_string(),
            }],
        }
    }
}

impl Config {
    /// Reads, expands, overrides from the process environment and validates.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::from_yaml(&text, std::env::vars())
    }

    /// Parses YAML text with the given environment (for `${VAR}` and
    /// `JETWAY_*` overrides), collecting every problem.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let mut root: Value = serde_norway::from_str(text)?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        let mut problems = Vec::new();
        env::apply_overrides(&mut root, &env, &mut problems);
        env::expand_vars(&mut root, "", &env, &mut problems);
        let config = parse(&root, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// The top-level keys, which `JETWAY_<KEY>...` overrides start with.
const TOP_LEVEL: [&str; 13] = [
    "app_id",
    "shutdown_grace",
    "log",
    "nats",
    "api",
    "metrics",
    "streams",
    "publish",
    "dead_letter",
    "app",
    "subscriptions",
    "tracing",
    "schemas",
];

/// Reads every section in file order, so problems come out in that order.
fn parse(root: &Value, p: &mut Vec<Problem>) -> Option<Config> {
    let top = Section::new(Some(root), String::new(), &TOP_LEVEL, p);

    let app_id = top.opt("app_id", string, p);
    match &app_id {
        None if top.raw("app_id").is_none() => p.push(Problem {
            path: "app_id".into(),
            message: "required (the app's name, [a-z0-9-]+)".into(),
        }),
        Some(id) if !is_valid_name(id) => p.push(Problem {
            path: "app_id".into(),
            message: format!("`{id}` must match [a-z0-9-]+ (at most 64 characters)"),
        }),
        _ => {}
    }
    let shutdown_grace = top.or("shutdown_grace", Duration::from_secs(20), duration, p);
    let log = log::parse(&top, p);
    let nats = nats::parse(&top, p);
    let api = api::parse(&top, p);
    let metrics = metrics::parse(&top, p);
    let streams = streams::parse(&top, p);
    let publish = publish::parse(&top, p);
    let dead_letter = dead_letter::parse(&top, p);
    let app = app::parse(&top, p);
    let subscriptions = subscriptions::parse(&top, p);
    let tracing = tracing::parse(&top, p);
    let schemas = schemas::parse(top.raw("schemas"), p);

    Some(Config {
        app_id: app_id?,
        shutdown_grace,
        log,
        nats,
        api,
        metrics,
        streams,
        publish,
        dead_letter,
        app,
        subscriptions,
        tracing,
        schemas,
    })
}

/// What the tests of every section load configs with.
#[cfg(test)]
mod test_support {
    use super::{Config, Problem};

    pub(super) fn load(yaml: &str) -> Result<Config, Vec<Problem>> {
        Config::from_yaml(yaml, Vec::new()).map_err(|e| e.problems())
    }

    /// The key paths of the problems in `yaml` (none if it is valid).
    pub(super) fn paths(yaml: &str) -> Vec<String> {
        load(yaml)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{load, paths};
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load("app_id: orders\n").expect("valid");
        assert_eq!(c.app_id, "orders");
        assert_eq!(c.shutdown_grace, Duration::from_secs(20));
        assert_eq!(c.api.listen, "127.0.0.1:4480".parse().expect("addr"));
        assert_eq!(c.api.max_body, 1 << 20);
        assert_eq!(c.api.max_in_flight, 10_000);
        assert_eq!(c.metrics.listen, "0.0.0.0:4481".parse().expect("addr"));
        assert_eq!(c.dead_letter.stream, "JETWAY_DLQ");
        assert_eq!(c.nats.urls, vec!["nats://127.0.0.1:4222"]);
        assert_eq!(c.nats.request_timeout, Duration::from_secs(5));
    }

    #[test]
    fn example_config_is_valid() {
        let c = load(EXAMPLE).expect("the shipped example must be valid");
        assert!(!c.streams.is_empty());
        assert!(!c.subscriptions.is_empty());
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let yaml = r#"
app_id: Orders
shutdown_grace: 20
bogus: 1
nats: { url: "nats://a:4222, ::bad::", connect_timeout: 5x }
api: { listen: "0.0.0.0:4480", max_body: 1MB }
streams:
  - { name: "OR.DERS", subjects: ["orders..x"], storage: disk, replicas: 7 }
subscriptions:
  - name: Emails
    subject: "orders.>"
    endpoint: "ftp://x"
    concurrency: 0
    deliver: sometimes
    retry: { jitter: 2, multiplier: 0.5, retry_on: [200, 503], typo: 1 }
    signing_secret: nope
  - { name: ok, subject: a, endpoint: "http://127.0.0.1:1/x", timeout: 0s }
"#;
        let got = paths(yaml);
        let want = [
            "app_id",
            "shutdown_grace",
            "bogus",
            "nats.url",
            "nats.connect_timeout",
            "api.listen",
            "api.max_body",
            "streams[0].name",
            "streams[0].subjects[0]",
            "streams[0].storage",
            "streams[0].replicas",
            "subscriptions[0].name",
            "subscriptions[0].endpoint",
            "subscriptions[0].concurrency",
            "subscriptions[0].deliver",
            "subscriptions[0].retry.jitter",
            "subscriptions[0].retry.multiplier",
            "subscriptions[0].retry.retry_on",
            "subscriptions[0].retry.typo",
            "subscriptions[0].signing_secret",
            "subscriptions[1].timeout",
        ];
        for w in want {
            assert!(
                got.iter().any(|g| g == w),
                "missing problem at {w}; got {got:?}"
            );
        }
    }

    #[test]
    fn yaml_syntax_errors_name_line_and_column() {
        let err = Config::from_yaml("app_id: a\nnats: [\n", Vec::new()).expect_err("bad yaml");
        assert!(matches!(err, ConfigError::Yaml(_)), "{err:?}");
        let text = err.to_string();
        assert!(text.contains("line 3 column 1"), "{text}");
    }

    #[test]
    fn missing_app_id_is_required() {
        assert_eq!(paths("nats: {}\n"), vec!["app_id"]);
    }

    #[test]
    fn secrets_do_not_debug_print() {
        let c = Config::from_yaml(
            "app_id: a\napi: { token: tok-123 }\napp: { callback_token: cb-456 }\nnats: { password: pw-789, user: u }\n",
            Vec::new(),
        )
        .expect("valid");
        let dbg = format!("{c:?}");
        for secret in ["tok-123", "cb-456", "pw-789"] {
            assert!(!dbg.contains(secret), "{secret} leaked in {dbg}");
        }
    }
}
