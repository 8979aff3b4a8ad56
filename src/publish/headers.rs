//! Request headers to stored NATS headers (SPEC section 3's table), with
//! CloudEvents validation. Pure functions: no I/O, table-tested and fuzzed.

use async_nats::header::{HeaderName as NatsName, HeaderValue as NatsValue};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName};
use sha2::{Digest, Sha256};

use crate::config::{is_valid_stream_name, PublishConfig};
use crate::content_type::is_structured_cloudevent;
use crate::error::ApiError;

pub use crate::content_type::CLOUDEVENTS_JSON;
/// Longest Idempotency-Key accepted.
pub const MAX_ID_LEN: usize = 256;

/// The headers a message is stored with, and whether it carries a
/// `Nats-Msg-Id` (which makes retrying the publish safe).
#[derive(Debug, Clone)]
pub struct Mapped {
    pub headers: async_nats::HeaderMap,
    pub msg_id: Option<String>,
    /// Whether the request names an event type or schema version (a
    /// `ce-*` or `Jetway-*` header, or a structured CloudEvent): only then
    /// is there a schema to look up (SPEC section 9).
    pub may_be_typed: bool,
}

// Names looked up in every request, parsed once (a `&str` name is parsed
// and checked on every lookup).
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const EXPECTED_LAST_SUBJECT_SEQUENCE: HeaderName =
    HeaderName::from_static("jetway-expected-last-subject-sequence");
const EXPECTED_LAST_SEQUENCE: HeaderName = HeaderName::from_static("jetway-expected-last-sequence");
const EXPECTED_STREAM: HeaderName = HeaderName::from_static("jetway-expected-stream");

fn text<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(Some)
            .map_err(|_| ApiError::HeaderInvalid(format!("header {name} is not printable ASCII"))),
    }
}

fn sequence(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    match text(headers, name)? {
        None => Ok(None),
        Some(v) => v.trim().parse().map(Some).map_err(|_| {
            ApiError::HeaderInvalid(format!("header {name} must be a whole number, got `{v}`"))
        }),
    }
}

fn put(out: &mut async_nats::HeaderMap, name: &str, value: &str) -> Result<(), ApiError> {
    let n: NatsName = name
        .parse()
        .map_err(|_| ApiError::HeaderInvalid(format!("header name `{name}` cannot be stored")))?;
    let v: NatsValue = value
        .parse()
        .map_err(|_| ApiError::HeaderInvalid(format!("header {name} has a line break")))?;
    out.insert(n, v);
    Ok(())
}

/// A W3C `traceparent`: `00-<32 hex>-<16 hex>-<2 hex>`, ids not all zero.
pub fn is_valid_traceparent(v: &str) -> bool {
    let parts: Vec<&str> = v.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
        && (parts[0] != "00" || parts.len() == 4)
}

/// The message id of a CloudEvent: a hash of its source and id, so a resent
/// event is stored once and equal ids from two sources never collide.
pub fn cloudevent_msg_id(source: &str, id: &str) -> String {
    let mut h = Sha256::new();
    h.update((source.len() as u64).to_be_bytes());
    h.update(source.as_bytes());
    h.update(id.as_bytes());
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("ce-{hex}")
}

/// Checks a structured CloudEvent body and returns its (source, id).
pub fn validate_structured_cloudevent(body: &[u8]) -> Result<(String, String), ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::CloudEventInvalid(format!("body is not JSON: {e}")))?;
    let obj = value
        .as_object()
        .ok_or_else(|| ApiError::CloudEventInvalid("a CloudEvent must be a JSON object".into()))?;
    let field = |name: &str| -> Result<String, ApiError> {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(_) => Err(ApiError::CloudEventInvalid(format!(
                "CloudEvent attribute `{name}` must be a non-empty string"
            ))),
            None => Err(ApiError::CloudEventInvalid(format!(
                "CloudEvent attribute `{name}` is required"
            ))),
        }
    };
    let specversion = field("specversion")?;
    if specversion != "1.0" {
        return Err(ApiError::CloudEventInvalid(format!(
            "specversion must be 1.0, got `{specversion}`"
        )));
    }
    let id = field("id")?;
    let source = field("source")?;
    field("type")?;
    Ok((source, id))
}

/// Checks binary-mode `ce-*` headers; returns (source, id) when present.
fn validate_binary_cloudevent(headers: &HeaderMap) -> Result<Option<(String, String)>, ApiError> {
    const SPECVERSION: HeaderName = HeaderName::from_static("ce-specversion");
    let Some(specversion) = text(headers, &SPECVERSION)? else {
        return Ok(None);
    };
    if specversion != "1.0" {
        return Err(ApiError::CloudEventInvalid(format!(
            "ce-specversion must be 1.0, got `{specversion}`"
        )));
    }
    let get = |name: &'static str| -> Result<String, ApiError> {
        match text(headers, &HeaderName::from_static(name))? {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(ApiError::CloudEventInvalid(format!(
                "header {name} is required with ce-specversion"
            ))),
        }
    };
    let id = get("ce-id")?;
    let source = get("ce-source")?;
    get("ce-type")?;
    Ok(Some((source, id)))
}

/// Maps request headers (and, for structured CloudEvents, the body) to the
/// NATS headers the message is stored with. `generated_id` is used when
/// `publish.generate_ids` is on and the event brings no id of its own.
pub fn map_headers(
    headers: &HeaderMap,
    body: &[u8],
    config: &PublishConfig,
    generated_id: impl FnOnce() -> String,
) -> Result<Mapped, ApiError> {
    let mut out = async_nats::HeaderMap::new();

    // One pass over what the request carries: the headers stored as they
    // are, and whether any `Jetway-*` or `ce-*` header is there at all
    // (most requests have none, and then none is looked up).
    let (mut jetway, mut ce) = (false, false);
    for (name, value) in headers {
        let name = name.as_str();
        jetway |= name.starts_with("jetway-");
        let is_ce = name.starts_with("ce-");
        ce |= is_ce;
        let stored = is_ce
            || name == "traceparent"
            || name == "tracestate"
            || config.forward_headers.iter().any(|f| f == name);
        if !stored {
            continue;
        }
        let value = value.to_str().map_err(|_| {
            ApiError::HeaderInvalid(format!("header {name} is not printable ASCII"))
        })?;
        if name == "traceparent" && !is_valid_traceparent(value) {
            return Err(ApiError::HeaderInvalid(format!(
                "traceparent `{value}` is not a W3C trace context"
            )));
        }
        put(&mut out, name, value)?;
    }

    let content_type = text(headers, &CONTENT_TYPE)?;
    if let Some(ct) = content_type {
        put(&mut out, "Content-Type", ct)?;
    }

    let mut msg_id = match text(headers, &IDEMPOTENCY_KEY)? {
        Some(key) if key.is_empty() || key.len() > MAX_ID_LEN => {
            return Err(ApiError::HeaderInvalid(format!(
                "Idempotency-Key must be 1 to {MAX_ID_LEN} characters"
            )))
        }
        Some(key) => Some(key.to_string()),
        None => None,
    };

    if jetway {
        if let Some(seq) = sequence(headers, &EXPECTED_LAST_SUBJECT_SEQUENCE)? {
            put(
                &mut out,
                "Nats-Expected-Last-Subject-Sequence",
                &seq.to_string(),
            )?;
        }
        if let Some(seq) = sequence(headers, &EXPECTED_LAST_SEQUENCE)? {
            put(&mut out, "Nats-Expected-Last-Sequence", &seq.to_string())?;
        }
        if let Some(stream) = text(headers, &EXPECTED_STREAM)? {
            if !is_valid_stream_name(stream) {
                return Err(ApiError::HeaderInvalid(format!(
                    "Jetway-Expected-Stream `{stream}` is not a stream name"
                )));
            }
            put(&mut out, "Nats-Expected-Stream", stream)?;
        }
    }

    let binary_ce = if ce {
        validate_binary_cloudevent(headers)?
    } else {
        None
    };
    let structured = content_type.is_some_and(is_structured_cloudevent);
    let ce_ids = if structured {
        Some(validate_structured_cloudevent(body)?)
    } else {
        binary_ce
    };

    if msg_id.is_none() {
        msg_id = match ce_ids {
            Some((source, id)) => Some(cloudevent_msg_id(&source, &id)),
            None if config.generate_ids => Some(generated_id()),
            None => None,
        };
    }
    if let Some(id) = &msg_id {
        put(&mut out, "Nats-Msg-Id", id)?;
    }
    Ok(Mapped {
        headers: out,
        msg_id,
        may_be_typed: jetway || ce || structured,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn cfg() -> PublishConfig {
        PublishConfig {
            allow: None,
            forward_headers: vec!["x-tenant".into()],
            generate_ids: false,
        }
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                axum::http::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    fn stored(m: &Mapped) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = m
            .headers
            .iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
            .collect();
        v.sort();
        v
    }

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn headers_map_as_the_spec_table_says() {
        let m = map_headers(
            &req(&[
                ("content-type", "application/json"),
                ("idempotency-key", "k1"),
                ("jetway-expected-last-subject-sequence", "4"),
                ("jetway-expected-last-sequence", "9"),
                ("jetway-expected-stream", "ORDERS"),
                ("traceparent", TP),
                ("tracestate", "a=b"),
                ("x-tenant", "acme"),
                ("x-other", "dropped"),
                ("authorization", "Bearer secret"),
            ]),
            b"{}",
            &cfg(),
            || unreachable!(),
        )
        .expect("valid");
        assert_eq!(m.msg_id.as_deref(), Some("k1"));
        let want: Vec<(String, String)> = [
            ("Content-Type", "application/json"),
            ("Nats-Expected-Last-Sequence", "9"),
            ("Nats-Expected-Last-Subject-Sequence", "4"),
            ("Nats-Expected-Stream", "ORDERS"),
            ("Nats-Msg-Id", "k1"),
            ("traceparent", TP),
            ("tracestate", "a=b"),
            ("x-tenant", "acme"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(stored(&m), want);
    }

    /// Request headers, body, and the code they must be refused with.
    type Case<'a> = (Vec<(&'a str, &'a str)>, &'a [u8], &'a str);

    #[test]
    fn bad_headers_are_400_with_the_right_code() {
        let table: Vec<Case> = vec![
            (
                vec![("jetway-expected-last-sequence", "x")],
                b"",
                "header_invalid",
            ),
            (
                vec![("jetway-expected-last-subject-sequence", "-1")],
                b"",
                "header_invalid",
            ),
            (
                vec![("jetway-expected-stream", "A.B")],
                b"",
                "header_invalid",
            ),
            (
                vec![("traceparent", "00-zz-00f067aa0ba902b7-01")],
                b"",
                "header_invalid",
            ),
            (vec![("idempotency-key", "")], b"", "header_invalid"),
            (
                vec![("ce-specversion", "1.0"), ("ce-id", "1")],
                b"",
                "cloudevent_invalid",
            ),
            (
                vec![
                    ("ce-specversion", "0.3"),
                    ("ce-id", "1"),
                    ("ce-source", "s"),
                    ("ce-type", "t"),
                ],
                b"",
                "cloudevent_invalid",
            ),
            (
                vec![("content-type", CLOUDEVENTS_JSON)],
                b"[1]",
                "cloudevent_invalid",
            ),
            (
                vec![("content-type", CLOUDEVENTS_JSON)],
                b"not json",
                "cloudevent_invalid",
            ),
            (
                vec![("content-type", CLOUDEVENTS_JSON)],
                br#"{"specversion":"1.0","id":"1","source":"s"}"#,
                "cloudevent_invalid",
            ),
            (
                vec![("content-type", CLOUDEVENTS_JSON)],
                br#"{"specversion":"1.0","id":1,"source":"s","type":"t"}"#,
                "cloudevent_invalid",
            ),
        ];
        for (headers, body, code) in table {
            let err = map_headers(&req(&headers), body, &cfg(), String::new)
                .expect_err(&format!("{headers:?} must fail"));
            assert_eq!(err.code(), code, "{headers:?}");
            assert_eq!(err.status().as_u16(), 400);
        }
        let long = "k".repeat(MAX_ID_LEN + 1);
        let err = map_headers(
            &req(&[("idempotency-key", &long)]),
            b"",
            &cfg(),
            String::new,
        )
        .expect_err("too long");
        assert_eq!(err.code(), "header_invalid");
    }

    #[test]
    fn non_ascii_header_values_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-tenant",
            HeaderValue::from_bytes(b"caf\xe9").expect("obs-text"),
        );
        let err = map_headers(&h, b"", &cfg(), String::new).expect_err("non-ascii");
        assert_eq!(err.code(), "header_invalid");
    }

    #[test]
    fn cloudevents_get_an_id_from_source_and_id() {
        let binary = map_headers(
            &req(&[
                ("ce-specversion", "1.0"),
                ("ce-id", "42"),
                ("ce-source", "/orders"),
                ("ce-type", "created"),
            ]),
            b"",
            &cfg(),
            || unreachable!(),
        )
        .expect("valid");
        let structured = map_headers(
            &req(&[(
                "content-type",
                "application/cloudevents+json; charset=utf-8",
            )]),
            br#"{"specversion":"1.0","id":"42","source":"/orders","type":"created"}"#,
            &cfg(),
            || unreachable!(),
        )
        .expect("valid");
        assert_eq!(binary.msg_id, structured.msg_id);
        assert_eq!(binary.msg_id, Some(cloudevent_msg_id("/orders", "42")));
        assert_ne!(cloudevent_msg_id("/a", "b1"), cloudevent_msg_id("/ab", "1"));
        assert_ne!(
            cloudevent_msg_id("/orders", "42"),
            cloudevent_msg_id("/payments", "42")
        );
        let keyed = map_headers(
            &req(&[
                ("content-type", CLOUDEVENTS_JSON),
                ("idempotency-key", "mine"),
            ]),
            br#"{"specversion":"1.0","id":"42","source":"/orders","type":"created"}"#,
            &cfg(),
            || unreachable!(),
        )
        .expect("valid");
        assert_eq!(keyed.msg_id.as_deref(), Some("mine"));
    }

    #[test]
    fn generated_ids_only_when_enabled_and_no_id_given() {
        let mut c = cfg();
        let none = map_headers(&req(&[]), b"", &c, || "gen".into()).expect("valid");
        assert_eq!(none.msg_id, None);
        c.generate_ids = true;
        let gen = map_headers(&req(&[]), b"", &c, || "gen".into()).expect("valid");
        assert_eq!(gen.msg_id.as_deref(), Some("gen"));
        let own = map_headers(&req(&[("idempotency-key", "k")]), b"", &c, || "gen".into())
            .expect("valid");
        assert_eq!(own.msg_id.as_deref(), Some("k"));
    }

    #[test]
    fn traceparent_validation() {
        assert!(is_valid_traceparent(TP));
        assert!(!is_valid_traceparent(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"
        ));
        assert!(!is_valid_traceparent(""));
    }
}
