//! The sidecar's configuration: the YAML file of SPEC section 2, `${VAR}`
//! expansion, `JETWAY_A__B` overrides and validation.
//!
//! Validation walks the document by hand instead of deriving `Deserialize`,
//! because serde stops at the first error while an operator wants every
//! problem at once, each with its key path (`subscriptions[1].retry.jitter`).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::Uri;
use serde_yaml::{Mapping, Value};

use crate::subject;

/// Largest `api.max_in_flight` (each one may hold a request body).
const MAX_IN_FLIGHT_LIMIT: u64 = 1_000_000;

/// Exit code for an invalid configuration (`EX_USAGE`).
pub const EXIT_INVALID: i32 = 64;

/// A string that must never reach logs, errors or metrics.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

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
    pub schemas: Option<crate::schemas::SchemasConfig>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// How jetway authenticates to NATS; at most one method.
#[derive(Debug, Clone)]
pub enum NatsAuth {
    None,
    CredentialsFile(PathBuf),
    NkeySeedFile(PathBuf),
    Token(Secret),
    UserPassword { user: String, password: Secret },
}

#[derive(Debug, Clone, Default)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl TlsConfig {
    pub fn is_enabled(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some()
    }
}

#[derive(Debug, Clone)]
pub struct NatsConfig {
    pub urls: Vec<String>,
    pub auth: NatsAuth,
    pub tls: TlsConfig,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub insecure_listen: bool,
    pub max_body: usize,
    pub max_in_flight: usize,
}

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    File,
    Memory,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: Storage,
    pub replicas: usize,
    pub max_age: Duration,
    pub duplicate_window: Duration,
}

#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// `None`: any subject a stream captures.
    pub allow: Option<Vec<String>>,
    /// Lower-case header names stored with the message.
    pub forward_headers: Vec<String>,
    pub generate_ids: bool,
}

#[derive(Debug, Clone)]
pub struct DeadLetterConfig {
    pub stream: String,
    pub max_age: Duration,
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub health_url: Option<Uri>,
    pub callback_token: Option<Secret>,
}

/// Where a new durable consumer starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deliver {
    All,
    New,
    Last,
    LastPerSubject,
    StartSequence(u64),
    StartTime(time::OffsetDateTime),
}

#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub multiplier: f64,
    pub jitter: f64,
    pub retry_on: Vec<u16>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            multiplier: 2.0,
            jitter: 0.2,
            retry_on: vec![408, 425, 429, 500, 502, 503, 504],
        }
    }
}

#[derive(Debug, Clone)]
pub struct SubscriptionConfig {
    pub name: String,
    pub subject: String,
    pub stream: Option<String>,
    pub endpoint: Uri,
    pub concurrency: usize,
    pub ordered: bool,
    pub timeout: Duration,
    pub deliver: Deliver,
    pub retry: RetryPolicy,
    /// The raw HMAC key decoded from `whsec_<base64>`.
    pub signing_secret: Option<SigningSecret>,
}

impl SubscriptionConfig {
    /// Deliveries this sidecar runs at once for the subscription.
    pub fn effective_concurrency(&self) -> usize {
        if self.ordered {
            1
        } else {
            self.concurrency
        }
    }
}

/// A Standard Webhooks signing key.
#[derive(Clone)]
pub struct SigningSecret(pub Vec<u8>);

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(***)")
    }
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
    Yaml(#[from] serde_yaml::Error),
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
        let mut root: Value = serde_yaml::from_str(text)?;
        if root.is_null() {
            root = Value::Mapping(Mapping::new());
        }
        let mut problems = Vec::new();
        apply_overrides(&mut root, &env, &mut problems);
        expand_vars(&mut root, "", &env, &mut problems);
        let config = parse(&root, &mut problems);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid(problems)),
        }
    }
}

/// The top-level keys, which `JETWAY_<KEY>...` overrides start with.
const TOP_LEVEL: [&str; 12] = [
    "schemas",
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
];

/// Whether an environment variable is a config override: `JETWAY_` and a
/// top-level key. Others are not jetway's: Kubernetes gives every pod
/// `JETWAY_PORT`, `JETWAY_SERVICE_HOST`... when a Service named jetway
/// exists, and a sidecar must not refuse to start over them. A typo below
/// the top level (`JETWAY_NATS__URLL`) is still an unknown key.
fn is_override(name: &str) -> bool {
    name.strip_prefix("JETWAY_")
        .map(|rest| rest.split("__").next().unwrap_or(""))
        .is_some_and(|top| TOP_LEVEL.contains(&top.to_ascii_lowercase().as_str()))
}

/// `JETWAY_NATS__URL=x` sets `nats.url`; a number segment indexes a list
/// (`JETWAY_SUBSCRIPTIONS__0__ENDPOINT`). Values are read as YAML scalars so
/// `true` and `16` keep their types.
fn apply_overrides(root: &mut Value, env: &[(String, String)], problems: &mut Vec<Problem>) {
    let mut overrides: Vec<&(String, String)> =
        env.iter().filter(|(k, _)| is_override(k)).collect();
    overrides.sort();
    for (key, raw) in overrides {
        let segments: Vec<String> = key["JETWAY_".len()..]
            .split("__")
            .map(|s| s.to_ascii_lowercase())
            .collect();
        if segments.iter().any(|s| s.is_empty()) {
            problems.push(Problem {
                path: key.clone(),
                message: "malformed override name (use JETWAY_SECTION__KEY)".into(),
            });
            continue;
        }
        let value =
            serde_yaml::from_str::<Value>(raw).unwrap_or_else(|_| Value::String(raw.clone()));
        let value = match value {
            Value::Null if !raw.trim().is_empty() && raw.trim() != "~" && raw.trim() != "null" => {
                Value::String(raw.clone())
            }
            other => other,
        };
        if let Err(message) = set_path(root, &segments, value) {
            problems.push(Problem {
                path: display_path(&segments),
                message: format!("cannot apply {key}: {message}"),
            });
        }
    }
}

/// `subscriptions[0].endpoint`, as problems in the file are named.
fn display_path(segments: &[String]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.parse::<usize>().is_ok() {
            out.push_str(&format!("[{s}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(s);
        }
    }
    out
}

fn set_path(node: &mut Value, segments: &[String], value: Value) -> Result<(), String> {
    let Some((first, rest)) = segments.split_first() else {
        *node = value;
        return Ok(());
    };
    if node.is_null() {
        *node = Value::Mapping(Mapping::new());
    }
    match node {
        Value::Mapping(map) => {
            let child = map
                .entry(Value::String(first.clone()))
                .or_insert(Value::Null);
            set_path(child, rest, value)
        }
        Value::Sequence(items) => {
            let index: usize = first
                .parse()
                .map_err(|_| format!("`{first}` is not a list index"))?;
            let child = items
                .get_mut(index)
                .ok_or_else(|| format!("list has no item {index}"))?;
            set_path(child, rest, value)
        }
        _ => Err(format!("`{first}` is below a plain value")),
    }
}

/// Replaces `${VAR}` in string values with the variable's value.
fn expand_vars(
    node: &mut Value,
    path: &str,
    env: &[(String, String)],
    problems: &mut Vec<Problem>,
) {
    match node {
        Value::String(s) if s.contains("${") => match expand_str(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => problems.push(Problem {
                path: path.to_string(),
                message,
            }),
        },
        Value::Mapping(map) => {
            for (key, child) in map.iter_mut() {
                let key = key.as_str().unwrap_or("?");
                expand_vars(child, &join(path, key), env, problems);
            }
        }
        Value::Sequence(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                expand_vars(child, &format!("{path}[{i}]"), env, problems);
            }
        }
        _ => {}
    }
}

/// Expands `${VAR}` references; an unset variable is an error, not "".
pub fn expand_str(input: &str, env: &[(String, String)]) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| "unterminated `${` in value".to_string())?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{name}}}` is not a valid variable reference"));
        }
        let value = env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// A mapping being read, with its key path; unknown keys are reported once.
struct Section<'a> {
    map: Option<&'a Mapping>,
    path: String,
}

impl<'a> Section<'a> {
    fn new(
        value: Option<&'a Value>,
        path: String,
        known: &[&str],
        problems: &mut Vec<Problem>,
    ) -> Section<'a> {
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Mapping(map)) => {
                for key in map.keys() {
                    match key.as_str() {
                        Some(k) if known.contains(&k) => {}
                        Some(k) => problems.push(Problem {
                            path: join(&path, k),
                            message: format!("unknown key (expected one of: {})", known.join(", ")),
                        }),
                        None => problems.push(Problem {
                            path: path.clone(),
                            message: "keys must be strings".into(),
                        }),
                    }
                }
                Some(map)
            }
            Some(_) => {
                problems.push(Problem {
                    path: path.clone(),
                    message: "expected a mapping".into(),
                });
                None
            }
        };
        Section { map, path }
    }

    fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map.and_then(|m| m.get(key)).filter(|v| !v.is_null())
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The value parsed, or `None` when absent (or invalid: then recorded).
    fn opt<T>(
        &self,
        key: &str,
        parse: impl Fn(&Value) -> Result<T, String>,
        problems: &mut Vec<Problem>,
    ) -> Option<T> {
        let value = self.raw(key)?;
        match parse(value) {
            Ok(v) => Some(v),
            Err(message) => {
                problems.push(Problem {
                    path: self.path(key),
                    message,
                });
                None
            }
        }
    }

    fn or<T>(
        &self,
        key: &str,
        default: T,
        parse: impl Fn(&Value) -> Result<T, String>,
        problems: &mut Vec<Problem>,
    ) -> T {
        self.opt(key, parse, problems).unwrap_or(default)
    }

    fn child(&self, key: &str, known: &[&str], problems: &mut Vec<Problem>) -> Section<'a> {
        Section::new(self.raw(key), self.path(key), known, problems)
    }
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err("expected a string".into()),
    }
}

/// A token or password: a YAML number would be silently rewritten (`0x1F`
/// becomes 31), so only strings are taken.
fn secret(v: &Value) -> Result<Secret, String> {
    match v {
        Value::String(s) => Ok(Secret(s.clone())),
        _ => Err("must be a string; quote it (e.g. \"0123\")".into()),
    }
}

fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s == "true" => Ok(true),
        Value::String(s) if s == "false" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn uint(v: &Value) -> Result<u64, String> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| "expected a whole number ≥ 0".into()),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("expected a whole number, got `{s}`")),
        _ => Err("expected a whole number".into()),
    }
}

fn float(v: &Value) -> Result<f64, String> {
    match v {
        Value::Number(n) => n.as_f64().ok_or_else(|| "expected a number".into()),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("expected a number, got `{s}`")),
        _ => Err("expected a number".into()),
    }
}

fn string_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Sequence(items) => items.iter().map(string).collect(),
        _ => Err("expected a list of strings".into()),
    }
}

fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        _ => Err("expected a duration such as 500ms, 10s, 5m, 2h or 7d".into()),
    }
}

fn size(v: &Value) -> Result<usize, String> {
    match v {
        Value::String(s) => parse_size(s),
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| "expected a size such as 512KiB or 1MiB".into()),
        _ => Err("expected a size such as 512KiB or 1MiB".into()),
    }
}

fn path_buf(v: &Value) -> Result<PathBuf, String> {
    string(v).map(|s| expand_home(&s))
}

fn expand_home(s: &str) -> PathBuf {
    match (s.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(s),
    }
}

/// Parses `500ms`, `10s`, `5m`, `2h`, `7d` (one number, one unit).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (use ms, s, m, h or d)"))?;
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration (e.g. 500ms, 10s, 5m, 2h, 7d)"))?;
    let millis = match unit {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{s}` has an unknown unit `{unit}` (use ms, s, m, h or d)"
            ))
        }
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses `512KiB`, `1MiB`, `1GiB`, `100B` or a plain number of bytes.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 512KiB, 1MiB)"))?;
    let factor: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}` has an unknown unit `{other}` (use B, KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// `[a-z0-9-]+`: app ids and subscription names end up in consumer names and
/// subjects, where dots, wildcards and upper case cause trouble.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A JetStream stream name: printable ASCII without space, `.`, `*`, `>`,
/// path separators.
pub fn is_valid_stream_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
}

fn http_uri(s: &str) -> Result<Uri, String> {
    let uri: Uri = s.parse().map_err(|e| format!("`{s}` is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.authority()) {
        (Some("http"), Some(_)) => Ok(uri),
        (Some("https"), _) => Err(format!(
            "`{s}`: https is not supported for the local app; use http://127.0.0.1:PORT/..."
        )),
        _ => Err(format!("`{s}` must be an absolute http:// URL")),
    }
}

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

    let log = top.child("log", &["format", "level"], p);
    let format = log.or(
        "format",
        LogFormat::Text,
        |v| match string(v)?.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("`{other}` is not text or json")),
        },
        p,
    );
    let level = log.or("level", "info".to_string(), string, p);
    if !is_valid_log_level(&level) {
        p.push(Problem {
            path: "log.level".into(),
            message: format!(
                "`{level}` is not a level (trace, debug, info, warn, error, off) or filter"
            ),
        });
    }

    let nats = parse_nats(&top, p);
    let api = parse_api(&top, p);

    let metrics = top.child("metrics", &["listen"], p);
    let metrics_listen = metrics.or(
        "listen",
        SocketAddr::from(([0, 0, 0, 0], 4481)),
        socket_addr,
        p,
    );

    let streams = parse_streams(&top, p);

    let publish = top.child("publish", &["allow", "forward_headers", "generate_ids"], p);
    let allow = publish.opt("allow", string_list, p);
    if let Some(allow) = &allow {
        for (i, pattern) in allow.iter().enumerate() {
            if let Err(e) = subject::validate_pattern(pattern) {
                p.push(Problem {
                    path: format!("publish.allow[{i}]"),
                    message: e.to_string(),
                });
            }
        }
    }
    let forward_headers: Vec<String> = publish
        .or("forward_headers", Vec::new(), string_list, p)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for (i, h) in forward_headers.iter().enumerate() {
        if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.push(Problem {
                path: format!("publish.forward_headers[{i}]"),
                message: format!("`{h}` is not a valid header name"),
            });
        }
    }
    let generate_ids = publish.or("generate_ids", false, boolean, p);

    let dead_letter = top.child("dead_letter", &["stream", "max_age"], p);
    let dlq_stream = dead_letter.or("stream", "JETWAY_DLQ".to_string(), string, p);
    if !is_valid_stream_name(&dlq_stream) {
        p.push(Problem {
            path: "dead_letter.stream".into(),
            message: format!("`{dlq_stream}` is not a valid stream name"),
        });
    }
    let dlq_max_age = dead_letter.or("max_age", Duration::from_secs(14 * 86_400), duration, p);

    let app = top.child("app", &["health_url", "callback_token"], p);
    let health_url = app.opt("health_url", |v| http_uri(&string(v)?), p);
    let callback_token = app.opt("callback_token", secret, p);

    let subscriptions = parse_subscriptions(&top, p);

    Some(Config {
        app_id: app_id?,
        shutdown_grace,
        log: LogConfig { format, level },
        nats: nats?,
        api: api?,
        metrics: MetricsConfig {
            listen: metrics_listen,
        },
        streams,
        publish: PublishConfig {
            allow,
            forward_headers,
            generate_ids,
        },
        dead_letter: DeadLetterConfig {
            stream: dlq_stream,
            max_age: dlq_max_age,
        },
        app: AppConfig {
            health_url,
            callback_token,
        },
        subscriptions,
        schemas: crate::schemas::config::parse_section(top.raw("schemas"), p),
    })
}

/// A level (`info`) or a filter of `target=level` directives; a bare word
/// that is not a level is a typo, not a target.
fn is_valid_log_level(level: &str) -> bool {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    tracing_subscriber::EnvFilter::try_new(level).is_ok()
        && level
            .split(',')
            .map(str::trim)
            .all(|d| d.contains('=') || LEVELS.contains(&d.to_ascii_lowercase().as_str()))
}

fn socket_addr(v: &Value) -> Result<SocketAddr, String> {
    let s = string(v)?;
    s.parse()
        .map_err(|_| format!("`{s}` is not an address such as 127.0.0.1:4480"))
}

/// Whether `scheme://user:pass@host` (or `user@host`) carries credentials.
fn url_has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.split(['/', '?', '#'])
        .next()
        .unwrap_or("")
        .contains('@')
}

fn parse_nats(top: &Section<'_>, p: &mut Vec<Problem>) -> Option<NatsConfig> {
    let nats = top.child(
        "nats",
        &[
            "url",
            "credentials_file",
            "nkey_seed_file",
            "token",
            "user",
            "password",
            "tls",
            "connect_timeout",
            "request_timeout",
        ],
        p,
    );
    let url = nats.or("url", "nats://127.0.0.1:4222".to_string(), string, p);
    let urls: Vec<String> = url
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    if urls.is_empty() {
        p.push(Problem {
            path: "nats.url".into(),
            message: "at least one server URL is required".into(),
        });
    }
    for u in &urls {
        // Checked before parsing so that neither message echoes a password.
        if url_has_credentials(u) {
            p.push(Problem {
                path: "nats.url".into(),
                message: "a server URL must not carry credentials; use nats.user and nats.password, nats.token or a credentials file".into(),
            });
        } else if u.parse::<async_nats::ServerAddr>().is_err() {
            p.push(Problem {
                path: "nats.url".into(),
                message: format!("`{u}` is not a NATS URL such as nats://127.0.0.1:4222"),
            });
        }
    }

    let creds = nats.opt("credentials_file", path_buf, p);
    let seed = nats.opt("nkey_seed_file", path_buf, p);
    let token = nats.opt("token", secret, p);
    let user = nats.opt("user", string, p);
    let password = nats.opt("password", secret, p);
    for (key, file) in [("credentials_file", &creds), ("nkey_seed_file", &seed)] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                p.push(Problem {
                    path: nats.path(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let methods = [
        creds.is_some(),
        seed.is_some(),
        token.is_some(),
        user.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if methods > 1 {
        p.push(Problem {
            path: "nats".into(),
            message: "set only one of credentials_file, nkey_seed_file, token, user/password"
                .into(),
        });
    }
    if user.is_some() != password.is_some() {
        p.push(Problem {
            path: "nats.password".into(),
            message: "user and password go together".into(),
        });
    }
    let auth = match (creds, seed, token, user, password) {
        (Some(c), _, _, _, _) => NatsAuth::CredentialsFile(c),
        (_, Some(s), _, _, _) => NatsAuth::NkeySeedFile(s),
        (_, _, Some(t), _, _) => NatsAuth::Token(t),
        (_, _, _, Some(user), Some(password)) => NatsAuth::UserPassword { user, password },
        _ => NatsAuth::None,
    };

    let tls_section = nats.child("tls", &["ca_file", "cert_file", "key_file"], p);
    let tls = TlsConfig {
        ca_file: tls_section.opt("ca_file", path_buf, p),
        cert_file: tls_section.opt("cert_file", path_buf, p),
        key_file: tls_section.opt("key_file", path_buf, p),
    };
    if tls.cert_file.is_some() != tls.key_file.is_some() {
        p.push(Problem {
            path: "nats.tls".into(),
            message: "cert_file and key_file go together".into(),
        });
    }
    for (key, file) in [
        ("ca_file", &tls.ca_file),
        ("cert_file", &tls.cert_file),
        ("key_file", &tls.key_file),
    ] {
        if let Some(file) = file {
            if let Err(e) = std::fs::metadata(file) {
                p.push(Problem {
                    path: tls_section.path(key),
                    message: format!("cannot read {}: {e}", file.display()),
                });
            }
        }
    }
    let connect_timeout = nats.or("connect_timeout", Duration::from_secs(5), duration, p);
    let request_timeout = nats.or("request_timeout", Duration::from_secs(5), duration, p);
    for (key, d) in [
        ("connect_timeout", connect_timeout),
        ("request_timeout", request_timeout),
    ] {
        if d.is_zero() {
            p.push(Problem {
                path: nats.path(key),
                message: "must be more than 0".into(),
            });
        }
    }
    Some(NatsConfig {
        urls,
        auth,
        tls,
        connect_timeout,
        request_timeout,
    })
}

fn parse_api(top: &Section<'_>, p: &mut Vec<Problem>) -> Option<ApiConfig> {
    let api = top.child(
        "api",
        &[
            "listen",
            "token",
            "insecure_listen",
            "max_body",
            "max_in_flight",
        ],
        p,
    );
    let listen = api.or(
        "listen",
        SocketAddr::from(([127, 0, 0, 1], 4480)),
        socket_addr,
        p,
    );
    let token = api.opt("token", secret, p);
    if matches!(&token, Some(t) if t.0.is_empty()) {
        p.push(Problem {
            path: "api.token".into(),
            message: "must not be empty (leave it unset to disable)".into(),
        });
    }
    let insecure_listen = api.or("insecure_listen", false, boolean, p);
    if !listen.ip().is_loopback() && token.is_none() && !insecure_listen {
        p.push(Problem {
            path: "api.listen".into(),
            message: format!(
                "{listen} is reachable from outside the pod but api.token is not set; \
                 set api.token, listen on 127.0.0.1, or set api.insecure_listen: true"
            ),
        });
    }
    let max_body = api.or("max_body", 1 << 20, size, p);
    if max_body == 0 {
        p.push(Problem {
            path: "api.max_body".into(),
            message: "must be more than 0".into(),
        });
    }
    let max_in_flight = api.or("max_in_flight", 10_000, uint, p);
    if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&max_in_flight) {
        p.push(Problem {
            path: "api.max_in_flight".into(),
            message: format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
        });
    }
    Some(ApiConfig {
        listen,
        token,
        insecure_listen,
        max_body,
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
    })
}

fn items<'a>(top: &Section<'a>, key: &str, p: &mut Vec<Problem>) -> Vec<(String, &'a Value)> {
    match top.raw(key) {
        None => Vec::new(),
        Some(Value::Sequence(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("{key}[{i}]"), v))
            .collect(),
        Some(_) => {
            p.push(Problem {
                path: key.into(),
                message: "expected a list".into(),
            });
            Vec::new()
        }
    }
}

fn parse_streams(top: &Section<'_>, p: &mut Vec<Problem>) -> Vec<StreamConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (path, value) in items(top, "streams", p) {
        let s = Section::new(
            Some(value),
            path.clone(),
            &[
                "name",
                "subjects",
                "storage",
                "replicas",
                "max_age",
                "duplicate_window",
            ],
            p,
        );
        let name = s.opt("name", string, p);
        match &name {
            None if s.raw("name").is_none() => p.push(Problem {
                path: s.path("name"),
                message: "required".into(),
            }),
            Some(n) if !is_valid_stream_name(n) => p.push(Problem {
                path: s.path("name"),
                message: format!("`{n}` is not a valid stream name (no spaces, dots, * or >)"),
            }),
            Some(n) if !names.insert(n.clone()) => p.push(Problem {
                path: s.path("name"),
                message: format!("stream `{n}` is listed twice"),
            }),
            _ => {}
        }
        let subjects = s.or("subjects", Vec::new(), string_list, p);
        if subjects.is_empty() {
            p.push(Problem {
                path: s.path("subjects"),
                message: "at least one subject is required".into(),
            });
        }
        for (i, subj) in subjects.iter().enumerate() {
            if let Err(e) = subject::validate_pattern(subj) {
                p.push(Problem {
                    path: format!("{}[{i}]", s.path("subjects")),
                    message: e.to_string(),
                });
            }
        }
        let storage = s.or(
            "storage",
            Storage::File,
            |v| match string(v)?.as_str() {
                "file" => Ok(Storage::File),
                "memory" => Ok(Storage::Memory),
                other => Err(format!("`{other}` is not file or memory")),
            },
            p,
        );
        let replicas = s.or("replicas", 1, uint, p);
        if !(1..=5).contains(&replicas) {
            p.push(Problem {
                path: s.path("replicas"),
                message: "must be between 1 and 5".into(),
            });
        }
        let max_age = s.or("max_age", Duration::ZERO, duration, p);
        let duplicate_window = s.or("duplicate_window", Duration::from_secs(120), duration, p);
        if !max_age.is_zero() && duplicate_window > max_age {
            p.push(Problem {
                path: s.path("duplicate_window"),
                message: format!(
                    "must not be longer than max_age ({max_age:?}); NATS refuses such a stream"
                ),
            });
        }
        if let Some(name) = name {
            out.push(StreamConfig {
                name,
                subjects,
                storage,
                replicas: replicas as usize,
                max_age,
                duplicate_window,
            });
        }
    }
    out
}

fn deliver(v: &Value) -> Result<Deliver, String> {
    match v {
        Value::String(s) => match s.as_str() {
            "all" => Ok(Deliver::All),
            "new" => Ok(Deliver::New),
            "last" => Ok(Deliver::Last),
            "last_per_subject" => Ok(Deliver::LastPerSubject),
            other => Err(format!(
                "`{other}` is not all, new, last, last_per_subject, {{start_sequence: N}} or {{start_time: RFC3339}}"
            )),
        },
        Value::Mapping(m) if m.len() == 1 => {
            if let Some(seq) = m.get("start_sequence") {
                let n = uint(seq)?;
                if n == 0 {
                    return Err("start_sequence starts at 1".into());
                }
                Ok(Deliver::StartSequence(n))
            } else if let Some(t) = m.get("start_time") {
                let s = string(t)?;
                time::OffsetDateTime::parse(&s, &time::format_description::well_known::Rfc3339)
                    .map(Deliver::StartTime)
                    .map_err(|_| format!("`{s}` is not an RFC 3339 time"))
            } else {
                Err("expected {start_sequence: N} or {start_time: RFC3339}".into())
            }
        }
        _ => Err("expected all, new, last, last_per_subject, {start_sequence: N} or {start_time: RFC3339}".into()),
    }
}

fn parse_retry(sub: &Section<'_>, p: &mut Vec<Problem>) -> RetryPolicy {
    let defaults = RetryPolicy::default();
    let r = sub.child(
        "retry",
        &[
            "max_attempts",
            "initial_backoff",
            "max_backoff",
            "multiplier",
            "jitter",
            "retry_on",
        ],
        p,
    );
    let max_attempts = r.or("max_attempts", u64::from(defaults.max_attempts), uint, p);
    if !(1..=1000).contains(&max_attempts) {
        p.push(Problem {
            path: r.path("max_attempts"),
            message: "must be between 1 and 1000".into(),
        });
    }
    let initial_backoff = r.or("initial_backoff", defaults.initial_backoff, duration, p);
    let max_backoff = r.or("max_backoff", defaults.max_backoff, duration, p);
    if initial_backoff.is_zero() {
        p.push(Problem {
            path: r.path("initial_backoff"),
            message: "must be more than 0".into(),
        });
    }
    if max_backoff < initial_backoff {
        p.push(Problem {
            path: r.path("max_backoff"),
            message: "must be at least initial_backoff".into(),
        });
    }
    let multiplier = r.or("multiplier", defaults.multiplier, float, p);
    if !(1.0..=100.0).contains(&multiplier) {
        p.push(Problem {
            path: r.path("multiplier"),
            message: "must be between 1.0 and 100".into(),
        });
    }
    let jitter = r.or("jitter", defaults.jitter, float, p);
    if !(0.0..=1.0).contains(&jitter) {
        p.push(Problem {
            path: r.path("jitter"),
            message: "must be between 0.0 and 1.0".into(),
        });
    }
    let retry_on = r.or(
        "retry_on",
        defaults.retry_on,
        |v| match v {
            Value::Sequence(items) => items
                .iter()
                .map(|i| {
                    let n = uint(i)?;
                    match u16::try_from(n) {
                        Ok(code) if (100..=599).contains(&code) && !(200..300).contains(&code) => {
                            Ok(code)
                        }
                        _ => Err(format!("{n} is not a non-2xx HTTP status")),
                    }
                })
                .collect(),
            _ => Err("expected a list of HTTP statuses".into()),
        },
        p,
    );
    RetryPolicy {
        max_attempts: max_attempts.clamp(1, 1000) as u32,
        initial_backoff,
        max_backoff,
        multiplier,
        jitter,
        retry_on,
    }
}

fn signing_secret(v: &Value) -> Result<SigningSecret, String> {
    use base64::Engine;
    let s = string(v)?;
    let encoded = s
        .strip_prefix("whsec_")
        .ok_or("must start with whsec_ (Standard Webhooks secret)")?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "the part after whsec_ must be base64".to_string())?;
    if key.len() < 16 {
        return Err("must hold at least 16 bytes of key material".into());
    }
    Ok(SigningSecret(key))
}

fn parse_subscriptions(top: &Section<'_>, p: &mut Vec<Problem>) -> Vec<SubscriptionConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (path, value) in items(top, "subscriptions", p) {
        let s = Section::new(
            Some(value),
            path.clone(),
            &[
                "name",
                "subject",
                "stream",
                "endpoint",
                "concurrency",
                "ordered",
                "timeout",
                "deliver",
                "retry",
                "signing_secret",
            ],
            p,
        );
        let name = s.opt("name", string, p);
        match &name {
            None if s.raw("name").is_none() => p.push(Problem {
                path: s.path("name"),
                message: "required".into(),
            }),
            Some(n) if !is_valid_name(n) => p.push(Problem {
                path: s.path("name"),
                message: format!("`{n}` must match [a-z0-9-]+"),
            }),
            Some(n) if !names.insert(n.clone()) => p.push(Problem {
                path: s.path("name"),
                message: format!("subscription `{n}` is listed twice"),
            }),
            _ => {}
        }
        let subject = s.opt("subject", string, p);
        match &subject {
            None if s.raw("subject").is_none() => p.push(Problem {
                path: s.path("subject"),
                message: "required".into(),
            }),
            Some(subj) => {
                if let Err(e) = subject::validate_pattern(subj) {
                    p.push(Problem {
                        path: s.path("subject"),
                        message: e.to_string(),
                    });
                }
            }
            None => {}
        }
        let stream = s.opt("stream", string, p);
        if let Some(st) = &stream {
            if !is_valid_stream_name(st) {
                p.push(Problem {
                    path: s.path("stream"),
                    message: format!("`{st}` is not a valid stream name"),
                });
            }
        }
        let endpoint = s.opt("endpoint", |v| http_uri(&string(v)?), p);
        if s.raw("endpoint").is_none() {
            p.push(Problem {
                path: s.path("endpoint"),
                message: "required (e.g. http://127.0.0.1:8080/events)".into(),
            });
        }
        let concurrency = s.or("concurrency", 16, uint, p);
        if !(1..=10_000).contains(&concurrency) {
            p.push(Problem {
                path: s.path("concurrency"),
                message: "must be between 1 and 10000".into(),
            });
        }
        let ordered = s.or("ordered", false, boolean, p);
        let timeout = s.or("timeout", Duration::from_secs(10), duration, p);
        if timeout.is_zero() {
            p.push(Problem {
                path: s.path("timeout"),
                message: "must be more than 0".into(),
            });
        }
        let deliver = s.or("deliver", Deliver::All, deliver, p);
        let retry = parse_retry(&s, p);
        let signing_secret = s.opt("signing_secret", signing_secret, p);
        if let (Some(name), Some(subject), Some(endpoint)) = (name, subject, endpoint) {
            out.push(SubscriptionConfig {
                name,
                subject,
                stream,
                endpoint,
                concurrency: concurrency.clamp(1, 10_000) as usize,
                ordered,
                timeout,
                deliver,
                retry,
                signing_secret,
            });
        }
    }
    out
}

/// A small, complete configuration used by `jetway dev` and in docs.
pub const EXAMPLE: &str = include_str!("../examples/jetway.yaml");

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, Vec<Problem>> {
        Config::from_yaml(yaml, Vec::new()).map_err(|e| e.problems())
    }

    fn paths(yaml: &str) -> Vec<String> {
        load(yaml)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|p| p.path)
            .collect()
    }

    #[test]
    fn durations_parse() {
        let table = [
            ("500ms", Some(Duration::from_millis(500))),
            ("10s", Some(Duration::from_secs(10))),
            ("5m", Some(Duration::from_secs(300))),
            ("2h", Some(Duration::from_secs(7200))),
            ("7d", Some(Duration::from_secs(7 * 86400))),
            ("0s", Some(Duration::ZERO)),
            ("10", None),
            ("s", None),
            ("1.5s", None),
            ("10 s", None),
            ("-1s", None),
            ("10w", None),
            ("99999999999999999999d", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_duration(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn sizes_parse() {
        let table = [
            ("512KiB", Some(512 * 1024)),
            ("1MiB", Some(1 << 20)),
            ("2GiB", Some(2 << 30)),
            ("100B", Some(100)),
            ("100", Some(100)),
            ("1MB", None),
            ("MiB", None),
            ("1.5MiB", None),
            ("", None),
        ];
        for (input, want) in table {
            assert_eq!(parse_size(input).ok(), want, "{input}");
        }
    }

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
    fn missing_app_id_is_required() {
        assert_eq!(paths("nats: {}\n"), vec!["app_id"]);
    }

    #[test]
    fn env_vars_expand_and_unset_ones_are_errors() {
        let env = vec![("NATS_TOKEN".to_string(), "s3cret".to_string())];
        let c = Config::from_yaml(
            "app_id: a\nnats: { token: \"${NATS_TOKEN}\" }\n",
            env.clone(),
        )
        .expect("valid");
        assert!(matches!(c.nats.auth, NatsAuth::Token(ref t) if t.expose() == "s3cret"));
        let err = Config::from_yaml("app_id: a\napi: { token: \"${MISSING}\" }\n", env)
            .expect_err("unset var");
        assert_eq!(err.problems()[0].path, "api.token");
        assert!(err.problems()[0].message.contains("MISSING"));
    }

    #[test]
    fn overrides_replace_file_values() {
        let env = vec![
            ("JETWAY_NATS__URL".to_string(), "nats://b:4222".to_string()),
            ("JETWAY_API__MAX_IN_FLIGHT".to_string(), "7".to_string()),
            (
                "JETWAY_SUBSCRIPTIONS__0__CONCURRENCY".to_string(),
                "3".to_string(),
            ),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let yaml = "app_id: a\nnats: { url: nats://a:4222 }\nsubscriptions: [{name: s, subject: x, endpoint: 'http://127.0.0.1:1/'}]\n";
        let c = Config::from_yaml(yaml, env).expect("valid");
        assert_eq!(c.nats.urls, vec!["nats://b:4222"]);
        assert_eq!(c.api.max_in_flight, 7);
        assert_eq!(c.subscriptions[0].concurrency, 3);

        let bad = vec![("JETWAY_NATS__NOPE".to_string(), "1".to_string())];
        let err = Config::from_yaml("app_id: a\n", bad).expect_err("unknown key");
        assert_eq!(err.problems()[0].path, "nats.nope");
    }

    #[test]
    fn kubernetes_service_variables_are_not_overrides() {
        let env: Vec<(String, String)> = [
            ("JETWAY_PORT", "tcp://10.0.0.1:4480"),
            ("JETWAY_SERVICE_HOST", "10.0.0.1"),
            ("JETWAY_SERVICE_PORT_METRICS", "4481"),
            ("JETWAY_PORT_4480_TCP_ADDR", "10.0.0.1"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert!(Config::from_yaml("app_id: a\n", env).is_ok());
    }

    #[test]
    fn public_listen_needs_token_or_explicit_opt_in() {
        assert_eq!(
            paths("app_id: a\napi: { listen: '0.0.0.0:1' }\n"),
            vec!["api.listen"]
        );
        assert!(load("app_id: a\napi: { listen: '0.0.0.0:1', token: t }\n").is_ok());
        assert!(load("app_id: a\napi: { listen: '0.0.0.0:1', insecure_listen: true }\n").is_ok());
    }

    #[test]
    fn credentials_in_nats_urls_are_refused_without_echo() {
        let err = Config::from_yaml(
            "app_id: a\nnats: { url: 'nats://u:hunter2@h:4222' }\n",
            Vec::new(),
        )
        .expect_err("credentials");
        let text = err.to_string();
        assert!(text.contains("nats.url"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(url_has_credentials("tls://tok@h:4222"));
        assert!(!url_has_credentials("nats://h:4222/path@x"));
        assert!(!url_has_credentials("nats://h:4222"));
        assert_eq!(
            paths("app_id: a\napi: { max_in_flight: 99999999999 }\n"),
            vec!["api.max_in_flight"]
        );
    }

    #[test]
    fn secrets_must_be_quoted_strings() {
        assert_eq!(
            paths("app_id: a\napi: { token: 0x1F }\n"),
            vec!["api.token"]
        );
        assert!(load("app_id: a\napi: { token: \"0x1F\" }\n").is_ok());
    }

    #[test]
    fn log_level_typos_are_caught() {
        assert_eq!(
            paths("app_id: a\nlog: { level: inof }\n"),
            vec!["log.level"]
        );
        assert!(load("app_id: a\nlog: { level: debug }\n").is_ok());
        assert!(load("app_id: a\nlog: { level: \"warn,jetway=debug\" }\n").is_ok());
    }

    #[test]
    fn duplicate_window_cannot_outlast_max_age() {
        assert_eq!(
            paths("app_id: a\nstreams: [{ name: S, subjects: [s], max_age: 1m }]\n"),
            vec!["streams[0].duplicate_window"]
        );
        assert!(load("app_id: a\nstreams: [{ name: S, subjects: [s], max_age: 1m, duplicate_window: 30s }]\n").is_ok());
    }

    #[test]
    fn override_problems_are_named_like_file_problems() {
        let env = vec![("JETWAY_SUBSCRIPTIONS__3__NAME".to_string(), "x".to_string())];
        let yaml =
            "app_id: a\nsubscriptions: [{name: s, subject: x, endpoint: 'http://127.0.0.1:1/'}]\n";
        let err = Config::from_yaml(yaml, env).expect_err("no such item");
        assert_eq!(err.problems()[0].path, "subscriptions[3].name");
    }

    #[test]
    fn only_one_nats_auth_method() {
        assert_eq!(
            paths("app_id: a\nnats: { token: t, user: u, password: p }\n"),
            vec!["nats"]
        );
        assert_eq!(
            paths("app_id: a\nnats: { user: u }\n"),
            vec!["nats.password"]
        );
    }

    #[test]
    fn deliver_policies_parse() {
        let table = [
            ("all", Some(Deliver::All)),
            ("new", Some(Deliver::New)),
            ("last", Some(Deliver::Last)),
            ("last_per_subject", Some(Deliver::LastPerSubject)),
            ("{start_sequence: 5}", Some(Deliver::StartSequence(5))),
            ("{start_sequence: 0}", None),
            (
                "{start_time: '2026-01-02T03:04:05Z'}",
                Some(Deliver::StartTime(
                    time::macros::datetime!(2026-01-02 03:04:05 UTC),
                )),
            ),
            ("{start_time: yesterday}", None),
            ("first", None),
        ];
        for (input, want) in table {
            let v: Value = serde_yaml::from_str(input).expect("yaml");
            assert_eq!(deliver(&v).ok(), want, "{input}");
        }
    }

    #[test]
    fn signing_secret_must_be_whsec_base64() {
        let v = Value::String("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into());
        assert_eq!(signing_secret(&v).expect("valid").0.len(), 24);
        assert!(signing_secret(&Value::String("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into())).is_err());
        assert!(signing_secret(&Value::String("whsec_!!!".into())).is_err());
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
