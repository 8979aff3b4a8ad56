//! Which configured stream, and which filter, a read of a subject uses
//! (pure).

use crate::error::ApiError;
use crate::subject;

/// Whether a subject or pattern names something jetway never reads or
/// writes for an app: the server's own (`$JS.`, `$KV.`, `$SYS.`, ...),
/// reply inboxes and jetway's dead letters.
pub fn is_reserved(subject: &str) -> bool {
    let first = subject.split('.').next().unwrap_or("");
    first.starts_with('$') || first == "_INBOX" || first == "jetway"
}

/// The subjects two patterns have in common, as one pattern (`None` when
/// they share none): `*.created` and `orders.>` give `orders.created`.
pub fn intersect(a: &str, b: &str) -> Option<String> {
    let (mut x, mut y) = (a.split('.'), b.split('.'));
    let mut out: Vec<&str> = Vec::new();
    loop {
        match (x.next(), y.next()) {
            (Some(">"), Some(t)) => {
                out.push(t);
                out.extend(y);
                return Some(out.join("."));
            }
            (Some(t), Some(">")) => {
                out.push(t);
                out.extend(x);
                return Some(out.join("."));
            }
            (Some("*"), Some(t)) | (Some(t), Some("*")) => out.push(t),
            (Some(s), Some(t)) if s == t => out.push(s),
            (None, None) => return Some(out.join(".")),
            _ => return None,
        }
    }
}

/// Where a read goes: a configured stream and the consumer's filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub stream: String,
    pub filter: String,
}

/// The one configured stream a subject (wildcards allowed) reads from:
/// 403 for reserved subjects, 404 when no configured stream captures it,
/// 400 when it spans several. The filter is narrowed to what the stream
/// holds (`>` on a stream of `orders.>` reads `orders.>`).
pub fn resolve(streams: &[(String, Vec<String>)], subject: &str) -> Result<Target, ApiError> {
    subject::validate_pattern(subject)?;
    if is_reserved(subject) {
        return Err(ApiError::SubjectReserved(subject.to_string()));
    }
    let mut found = streams.iter().filter_map(|(name, patterns)| {
        let common: Vec<String> = patterns
            .iter()
            .filter_map(|p| intersect(subject, p))
            .collect();
        (!common.is_empty()).then_some((name, common))
    });
    let Some((name, common)) = found.next() else {
        return Err(ApiError::NoStream(subject.to_string()));
    };
    if let Some((other, _)) = found.next() {
        return Err(ApiError::BadRequest(format!(
            "subject {subject} spans several streams ({name}, {other}); read each part on its own"
        )));
    }
    let filter = match common.as_slice() {
        [one] => one.clone(),
        _ => subject.to_string(),
    };
    Ok(Target {
        stream: name.clone(),
        filter,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams() -> Vec<(String, Vec<String>)> {
        vec![
            ("ORDERS".into(), vec!["orders.>".into()]),
            ("PAY".into(), vec!["pay.*".into(), "pay.x.>".into()]),
        ]
    }

    #[test]
    fn reserved_subjects() {
        for s in [
            "$JS.API.>",
            "$KV.x.y",
            "_INBOX.abc",
            "jetway.dlq.a.b",
            "jetway.>",
            "$SYS.>",
        ] {
            assert!(is_reserved(s), "{s}");
        }
        for s in ["orders.>", "jetwayx.a", "inbox.a", "*", ">"] {
            assert!(!is_reserved(s), "{s}");
        }
    }

    #[test]
    fn patterns_intersect() {
        let table = [
            ("*.created", "orders.>", Some("orders.created")),
            (">", "orders.>", Some("orders.>")),
            ("orders.*", "orders.>", Some("orders.*")),
            ("orders.42", "orders.>", Some("orders.42")),
            ("orders.*.x", "orders.a.*", Some("orders.a.x")),
            ("pay.a", "orders.>", None),
            ("orders", "orders.>", None),
            (">", ">", Some(">")),
            ("*", "pay.*", None),
        ];
        for (a, b, want) in table {
            assert_eq!(intersect(a, b).as_deref(), want, "{a} ∩ {b}");
            assert_eq!(intersect(b, a).as_deref(), want, "{b} ∩ {a}");
        }
    }

    #[test]
    fn subjects_resolve_to_one_configured_stream() {
        let ok = |s: &str, stream: &str, filter: &str| {
            assert_eq!(
                resolve(&streams(), s).map_err(|e| e.code()),
                Ok(Target {
                    stream: stream.into(),
                    filter: filter.into()
                }),
                "{s}"
            );
        };
        ok("orders.42", "ORDERS", "orders.42");
        ok("orders.*", "ORDERS", "orders.*");
        ok("*.42.x", "ORDERS", "orders.42.x");
        ok("pay.x", "PAY", "pay.x");
        // Two subject patterns of one stream: the server filters.
        ok("pay.>", "PAY", "pay.>");
        let err = |s: &str| resolve(&streams(), s).map_err(|e| e.code()).err();
        assert_eq!(err(">"), Some("bad_request"));
        assert_eq!(err("*.x"), Some("bad_request"));
        assert_eq!(err("*.x.>"), Some("bad_request"));
        assert_eq!(err("nothing.here"), Some("no_stream"));
        assert_eq!(err("jetway.dlq.>"), Some("subject_reserved"));
        assert_eq!(err("$JS.API.INFO"), Some("subject_reserved"));
        assert_eq!(err("orders..x"), Some("subject_invalid"));
        assert_eq!(err("orders.>.x"), Some("subject_invalid"));
    }
}
