//! The NATS permissions a sidecar needs for its config, and nothing more
//! (least privilege, `deploy/nats/` and `docs/security.md`). Many teams
//! share one NATS account: a sidecar's user may publish its app's
//! subjects, call the JetStream API for its own streams, consumers and
//! direct gets, ack its own consumers' messages, write its own dead
//! letters, and receive on its own inbox prefix. Everything else of the
//! account stays out of reach even if jetway had a bug.
//!
//! The integration suites run once against a server that grants exactly
//! this list (see `tests/common`), so it stays true.

use crate::config::Config;
use crate::nats::{inbox_prefix, DLQ_PREFIX};
use crate::subject;

/// Subjects one NATS user may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
}

/// What the sidecar of `config` needs.
pub fn for_config(config: &Config) -> Permissions {
    let api = "$JS.API";
    let mut publish: Vec<String> = Vec::new();
    // The app's own events: `publish.allow`, else what its streams capture.
    match &config.publish.allow {
        Some(allow) => publish.extend(allow.iter().cloned()),
        None => {
            for s in &config.streams {
                publish.extend(s.subjects.iter().cloned());
            }
        }
    }
    // Account info (limits at start) and the lookup of the stream that
    // captures a subject outside the configured streams.
    publish.push(format!("{api}.INFO"));
    publish.push(format!("{api}.STREAM.NAMES"));
    let dlq = &config.dead_letter.stream;
    let streams = config
        .streams
        .iter()
        .map(|s| s.name.as_str())
        .chain(std::iter::once(dlq.as_str()));
    for name in streams {
        for call in [
            "STREAM.INFO",
            "STREAM.CREATE",
            "STREAM.MSG.GET",
            "DIRECT.GET",
        ] {
            publish.push(format!("{api}.{call}.{name}"));
        }
        publish.push(format!("{api}.DIRECT.GET.{name}.>"));
    }
    // History and live reads (SPEC 6) use short-lived consumers the server
    // names: created without a name, pulled by whatever name it gave. They
    // are not deleted by name (no CONSUMER.DELETE.<stream>.* here, which
    // would reach other apps' consumers): they expire 15 s after their
    // reader goes away.
    for s in &config.streams {
        publish.push(format!("{api}.CONSUMER.CREATE.{}", s.name));
        publish.push(format!("{api}.CONSUMER.MSG.NEXT.{}.*", s.name));
    }
    publish.push(format!("{api}.STREAM.MSG.DELETE.{dlq}"));
    // Counting its dead letters: a consumer (any name) filtered on them,
    // and on nothing else (the server checks the filter in the subject).
    publish.push(format!(
        "{api}.CONSUMER.CREATE.{dlq}.*.{DLQ_PREFIX}.{}.>",
        config.app_id
    ));
    publish.push(format!("{DLQ_PREFIX}.{}.>", config.app_id));
    for sub in &config.subscriptions {
        let consumer = format!("{}-{}", config.app_id, sub.name);
        // A subscription without `stream` finds it from its subject at
        // start; a configured stream that overlaps it is the one, else any.
        let stream = sub
            .stream
            .clone()
            .or_else(|| {
                config
                    .streams
                    .iter()
                    .find(|s| {
                        s.subjects
                            .iter()
                            .any(|p| subject::overlaps(p, &sub.subject))
                    })
                    .map(|s| s.name.clone())
            })
            .unwrap_or_else(|| "*".to_string());
        for call in ["CONSUMER.INFO", "CONSUMER.CREATE", "CONSUMER.DELETE"] {
            publish.push(format!("{api}.{call}.{stream}.{consumer}"));
        }
        // 2.9+ names the filter in the create subject.
        publish.push(format!("{api}.CONSUMER.CREATE.{stream}.{consumer}.>"));
        publish.push(format!("{api}.CONSUMER.MSG.NEXT.{stream}.{consumer}"));
        publish.push(format!("$JS.ACK.{stream}.{consumer}.>"));
    }
    registry(config, &mut publish);
    dedup(&mut publish);
    Permissions {
        publish,
        subscribe: vec![format!("{}.>", inbox_prefix(&config.app_id))],
    }
}

/// The schema registry (SPEC 9): its bucket's stream read, created if
/// missing and watched by every sidecar; writes only to the keys of the
/// types in `schemas.owns` (`schema.<type>.<N>`, `config.<type>`), so a
/// sidecar cannot register versions of another team's types even with a bug.
fn registry(config: &Config, publish: &mut Vec<String>) {
    let schemas = config.schemas.clone().unwrap_or_default();
    let bucket = &schemas.bucket;
    let stream = schemas.stream();
    let api = "$JS.API";
    for call in [
        "STREAM.INFO",
        "STREAM.CREATE",
        "STREAM.MSG.GET",
        "DIRECT.GET",
    ] {
        publish.push(format!("{api}.{call}.{stream}"));
    }
    publish.push(format!("{api}.DIRECT.GET.{stream}.>"));
    // The watch: an ordered push consumer the server names, delivering to
    // the sidecar's inbox, with flow control answered on `$JS.FC`.
    publish.push(format!("{api}.CONSUMER.CREATE.{stream}"));
    publish.push(format!("$JS.FC.{stream}.>"));
    let owned: Vec<String> = match &schemas.owns {
        Some(patterns) => patterns.clone(),
        None => vec![">".to_string()],
    };
    for pattern in &owned {
        // A version key has one token more than its type.
        let versions = if pattern.ends_with('>') {
            pattern.clone()
        } else {
            format!("{pattern}.*")
        };
        publish.push(format!("$KV.{bucket}.schema.{versions}"));
        publish.push(format!("$KV.{bucket}.config.{pattern}"));
    }
}

fn dedup(list: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    list.retain(|s| seen.insert(s.clone()));
}

impl Permissions {
    /// The `permissions` block of a user in a nats-server config file.
    pub fn to_server_config(&self) -> String {
        let list = |items: &[String]| {
            items
                .iter()
                .map(|s| format!("      \"{s}\""))
                .collect::<Vec<_>>()
                .join(",\n")
        };
        format!(
            "permissions: {{\n  publish: {{\n    allow: [\n{}\n    ]\n  }},\n  subscribe: {{\n    allow: [\n{}\n    ]\n  }}\n}}\n",
            list(&self.publish),
            list(&self.subscribe)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Config {
        let yaml = format!(
            "app_id: orders\n\
             streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"] }}\n{extra}"
        );
        Config::from_yaml(&yaml, Vec::new()).expect("valid config")
    }

    #[test]
    fn only_the_apps_own_subjects_streams_and_consumers() {
        let p = for_config(&config(
            "subscriptions:\n  - { name: mail, subject: orders.created, endpoint: \"http://127.0.0.1:1/\" }\n",
        ));
        for want in [
            "orders.>",
            "$JS.API.STREAM.INFO.ORDERS",
            "$JS.API.DIRECT.GET.ORDERS.>",
            "$JS.API.CONSUMER.CREATE.ORDERS.orders-mail.>",
            "$JS.API.CONSUMER.MSG.NEXT.ORDERS.orders-mail",
            "$JS.ACK.ORDERS.orders-mail.>",
            "jetway.dlq.orders.>",
            "$JS.API.STREAM.MSG.DELETE.JETWAY_DLQ",
        ] {
            assert!(p.publish.iter().any(|s| s == want), "missing {want}");
        }
        // Nothing that reaches past the app: no whole-API wildcard, no
        // stream deletion, no other app's dead letters, no other inbox.
        for s in &p.publish {
            assert!(!s.ends_with("$JS.API.>") && s != ">", "{s}");
            assert!(!s.contains("STREAM.DELETE"), "{s}");
            assert!(!s.contains("STREAM.UPDATE"), "{s}");
            assert!(!s.contains("STREAM.PURGE"), "{s}");
            assert!(
                !s.starts_with("jetway.") || s == "jetway.dlq.orders.>",
                "{s}"
            );
        }
        assert_eq!(p.subscribe, vec!["_INBOX_orders.>".to_string()]);
    }

    #[test]
    fn the_registry_is_read_by_all_and_written_only_for_owned_types() {
        let p = for_config(&config(
            "schemas: { owns: [\"order.>\", \"invoice.paid\"] }\n",
        ));
        for want in [
            "$JS.API.STREAM.INFO.KV_JETWAY_SCHEMAS",
            "$JS.API.DIRECT.GET.KV_JETWAY_SCHEMAS.>",
            "$JS.API.CONSUMER.CREATE.KV_JETWAY_SCHEMAS",
            "$KV.JETWAY_SCHEMAS.schema.order.>",
            "$KV.JETWAY_SCHEMAS.config.order.>",
            "$KV.JETWAY_SCHEMAS.schema.invoice.paid.*",
            "$KV.JETWAY_SCHEMAS.config.invoice.paid",
        ] {
            assert!(p.publish.iter().any(|s| s == want), "missing {want}");
        }
        assert!(
            !p.publish
                .iter()
                .any(|s| s == "$KV.JETWAY_SCHEMAS.>" || s == "$KV.JETWAY_SCHEMAS.schema.>"),
            "writes beyond schemas.owns"
        );
        // Without owns, the app owns every type (SPEC 9).
        let all = for_config(&config(""));
        assert!(all
            .publish
            .iter()
            .any(|s| s == "$KV.JETWAY_SCHEMAS.schema.>"));
    }

    #[test]
    fn publish_allow_narrows_the_app_subjects() {
        let p = for_config(&config("publish: { allow: [\"orders.eu.>\"] }\n"));
        assert!(p.publish.iter().any(|s| s == "orders.eu.>"));
        assert!(!p.publish.iter().any(|s| s == "orders.>"));
    }

    #[test]
    fn the_server_config_block_lists_every_subject_once() {
        let p = for_config(&config(""));
        let block = p.to_server_config();
        assert!(block.starts_with("permissions: {"));
        assert_eq!(block.matches("\"$JS.API.STREAM.INFO.ORDERS\"").count(), 1);
        assert!(block.contains("\"_INBOX_orders.>\""));
    }
}
