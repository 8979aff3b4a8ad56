//! The `schemas:` section of the config (SPEC sections 2 and 9).

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use super::compat::{Mode, OpenContent};

/// What the sidecar does with typed publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ValidateMode {
    /// Invalid events are refused (422).
    #[default]
    Enforce,
    /// Invalid events are stored anyway, counted and logged.
    Warn,
    /// No validation.
    Off,
}

/// What happens to typed events whose type has no schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UnknownTypes {
    #[default]
    Allow,
    Reject,
}

/// A schema registered at start.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterEntry {
    #[serde(rename = "type")]
    pub event_type: String,
    pub file: PathBuf,
}

/// `schemas:`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemasConfig {
    /// JetStream KV bucket of the registry.
    pub bucket: String,
    /// Replicas of the bucket when jetway creates it.
    pub replicas: usize,
    pub validate: ValidateMode,
    pub unknown_types: UnknownTypes,
    /// Mode of a type's first version, when no one set it before.
    pub compatibility: Mode,
    pub open_content: OpenContent,
    /// Types this app may register or reconfigure; `None`: any.
    pub owns: Option<Vec<String>>,
    pub register: Vec<RegisterEntry>,
}

impl Default for SchemasConfig {
    fn default() -> Self {
        SchemasConfig {
            bucket: "JETWAY_SCHEMAS".into(),
            replicas: 1,
            validate: ValidateMode::Enforce,
            unknown_types: UnknownTypes::Allow,
            compatibility: Mode::Backward,
            open_content: OpenContent::Lenient,
            owns: None,
            register: Vec::new(),
        }
    }
}

/// Longest event type name.
pub const MAX_TYPE_LEN: usize = 128;

/// `[A-Za-z0-9._-]+`, at most 128 bytes.
pub fn is_valid_type(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= MAX_TYPE_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A pattern of `schemas.owns`: dot-separated tokens, `*` one token, `>`
/// the rest (last token only).
pub fn validate_owns_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("an empty pattern matches nothing".into());
    }
    let tokens: Vec<&str> = p.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        match *t {
            "" => return Err(format!("`{p}` has an empty token")),
            ">" if i + 1 != tokens.len() => {
                return Err(format!("`{p}`: `>` must be the last token"))
            }
            ">" | "*" => {}
            t if t.contains(['*', '>']) => {
                return Err(format!("`{p}`: wildcards must be whole tokens"))
            }
            t if !is_valid_type(t) => {
                return Err(format!("`{p}` has characters outside [A-Za-z0-9._-]"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether type `t` matches an owns pattern.
pub fn owns_matches(pattern: &str, t: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = t.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// A registration file read and parsed, or why it cannot be used.
pub fn read_schema_file(file: &std::path::Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let schema: Value =
        serde_json::from_str(&text).map_err(|e| format!("{} is not JSON: {e}", file.display()))?;
    super::validate::compile(&schema)
        .map_err(|e| format!("{} is not a valid JSON Schema: {e}", file.display()))?;
    Ok(schema)
}

impl SchemasConfig {
    /// Whether this app may register or reconfigure type `t`.
    /// The stream that holds the bucket (`KV_<bucket>`).
    pub fn stream(&self) -> String {
        format!("KV_{}", self.bucket)
    }

    pub fn owns(&self, t: &str) -> bool {
        self.owns
            .as_ref()
            .is_none_or(|patterns| patterns.iter().any(|p| owns_matches(p, t)))
    }

    /// Every problem, as (key path, message), `path` being this section's.
    pub fn problems(&self, path: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let key = |k: &str| format!("{path}.{k}");
        if self.bucket.is_empty()
            || self.bucket.len() > 64
            || !self
                .bucket
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
        {
            out.push((
                key("bucket"),
                format!("`{}` is not a bucket name ([A-Za-z0-9_-]+)", self.bucket),
            ));
        }
        if !(1..=5).contains(&self.replicas) {
            out.push((key("replicas"), "must be 1 to 5".into()));
        }
        for (i, p) in self.owns.iter().flatten().enumerate() {
            if let Err(e) = validate_owns_pattern(p) {
                out.push((format!("{path}.owns[{i}]"), e));
            }
        }
        for (i, entry) in self.register.iter().enumerate() {
            let at = format!("{path}.register[{i}]");
            if !is_valid_type(&entry.event_type) {
                out.push((
                    format!("{at}.type"),
                    format!(
                        "`{}` is not an event type ([A-Za-z0-9._-]+, at most {MAX_TYPE_LEN} bytes)",
                        entry.event_type
                    ),
                ));
            } else if !self.owns(&entry.event_type) {
                out.push((
                    format!("{at}.type"),
                    format!("`{}` is outside schemas.owns", entry.event_type),
                ));
            }
            if let Err(e) = read_schema_file(&entry.file) {
                out.push((format!("{at}.file"), e));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c: SchemasConfig = serde_norway::from_str("{}").expect("empty section");
        assert_eq!(c, SchemasConfig::default());
        assert_eq!(c.bucket, "JETWAY_SCHEMAS");
        assert_eq!(c.compatibility, Mode::Backward);
        assert_eq!(c.open_content, OpenContent::Lenient);
        assert!(c.problems("schemas").is_empty());
    }

    #[test]
    fn unknown_keys_and_values_are_refused() {
        assert!(serde_norway::from_str::<SchemasConfig>("nope: 1").is_err());
        assert!(serde_norway::from_str::<SchemasConfig>("validate: maybe").is_err());
        assert!(serde_norway::from_str::<SchemasConfig>("compatibility: sideways").is_err());
        let c: SchemasConfig =
            serde_norway::from_str("compatibility: full_transitive\nopen_content: strict")
                .expect("valid");
        assert_eq!(c.compatibility, Mode::FullTransitive);
    }

    #[test]
    fn problems_name_their_key_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, r#"{"type": "strung"}"#).expect("write");
        let yaml = format!(
            "bucket: 'no spaces'\nreplicas: 9\nowns: ['order.*', 'a.>.b']\nregister:\n  - {{type: order.created, file: {}}}\n  - {{type: billing.paid, file: {}}}\n",
            dir.path().join("missing.json").display(),
            bad.display()
        );
        let c: SchemasConfig = serde_norway::from_str(&yaml).expect("parses");
        let paths: Vec<String> = c.problems("schemas").into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            vec![
                "schemas.bucket",
                "schemas.replicas",
                "schemas.owns[1]",
                "schemas.register[0].file",
                "schemas.register[1].type",
                "schemas.register[1].file",
            ]
        );
    }

    #[test]
    fn owns_patterns_match_tokens() {
        assert!(owns_matches("order.*", "order.created"));
        assert!(!owns_matches("order.*", "order.created.v2"));
        assert!(owns_matches("order.>", "order.created.v2"));
        assert!(!owns_matches("order.>", "order"));
        assert!(!owns_matches("order.*", "billing.paid"));
        assert!(owns_matches("order.created", "order.created"));
        let c = SchemasConfig::default();
        assert!(c.owns("anything"));
    }

    #[test]
    fn type_names() {
        assert!(is_valid_type("order.created.v2"));
        assert!(is_valid_type("A_b-9"));
        assert!(!is_valid_type(""));
        assert!(!is_valid_type("a b"));
        assert!(!is_valid_type("a/b"));
        assert!(!is_valid_type(&"a".repeat(129)));
    }
}
