//! Property tests of the parsers of untrusted input (subjects, headers,
//! CloudEvents, batches, Retry-After, config values): they never panic,
//! whatever they are given, and what one accepts the others agree with.
//! The fuzz targets in `fuzz/` dig deeper; these run in CI.

#[path = "common/header_list.rs"]
mod header_list;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine;
use jetway::config::{parse_duration, parse_size, Config};
use jetway::delivery::retry::parse_retry_after;
use jetway::publish::batch::{self, MAX_ITEMS};
use jetway::publish::headers::{
    cloudevent_msg_id, is_valid_traceparent, map_headers, validate_structured_cloudevent,
    MAX_ID_LEN,
};
use jetway::subject::{self, MAX_LEN};
use proptest::prelude::*;
use serde_json::json;

use header_list::{header_map, is_documented, publish_config, NAMES};

/// Printable ASCII that may appear in a subject token.
fn token_char() -> impl Strategy<Value = char> {
    (0x21u8..=0x7e)
        .prop_filter("not a dot or wildcard", |b| {
            !matches!(b, b'.' | b'*' | b'>')
        })
        .prop_map(char::from)
}

fn token() -> impl Strategy<Value = String> {
    prop::collection::vec(token_char(), 1..12).prop_map(|cs| cs.into_iter().collect())
}

/// A valid concrete subject (no wildcards, at most 255 bytes).
fn valid_subject() -> impl Strategy<Value = String> {
    prop::collection::vec(token(), 1..8)
        .prop_map(|ts| ts.join("."))
        .prop_filter("at most MAX_LEN", |s| s.len() <= MAX_LEN)
}

/// Any string, biased towards subject-like ones.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[a-z.*> \t\u{7f}\u{e9}]{0,20}",
        valid_subject(),
    ]
}

static DURATION_UNITS: [&str; 5] = ["ms", "s", "m", "h", "d"];
static SIZE_UNITS: [&str; 5] = ["", "B", "KiB", "MiB", "GiB"];

fn header_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(String::into_bytes),
        Just(b"1.0".to_vec()),
        Just(b"application/cloudevents+json".to_vec()),
        Just(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_vec()),
        "[0-9]{1,25}".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..40),
    ]
}

fn header_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(NAMES).prop_map(str::to_string),
        "(ce-|x-|nats-|jetway-)?[a-z0-9-]{1,12}",
    ]
}

/// A JSON value of bounded depth.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-z]{1,5}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Data {
    None,
    Json(serde_json::Value),
    Base64(Vec<u8>),
}

#[derive(Debug, Clone)]
struct GenItem {
    subject: String,
    data: Data,
    headers: BTreeMap<String, String>,
    idempotency_key: Option<String>,
}

fn batch_item() -> impl Strategy<Value = GenItem> {
    (
        any_text(),
        prop_oneof![
            Just(Data::None),
            json_value().prop_map(Data::Json),
            prop::collection::vec(any::<u8>(), 0..64).prop_map(Data::Base64),
        ],
        prop::collection::btree_map("[a-z-]{1,10}", any::<String>(), 0..3),
        prop::option::of(any::<String>()),
    )
        .prop_map(|(subject, data, headers, idempotency_key)| GenItem {
            subject,
            data,
            headers,
            idempotency_key,
        })
}

impl GenItem {
    fn to_json(&self) -> serde_json::Value {
        let mut v = json!({ "subject": self.subject });
        match &self.data {
            Data::None => {}
            Data::Json(d) => v["data"] = d.clone(),
            Data::Base64(b) => {
                v["data_base64"] = base64::engine::general_purpose::STANDARD.encode(b).into()
            }
        }
        if !self.headers.is_empty() {
            v["headers"] = json!(self.headers);
        }
        if let Some(k) = &self.idempotency_key {
            v["idempotency_key"] = k.clone().into();
        }
        v
    }

    fn check(&self, item: &batch::Item) {
        assert_eq!(item.subject, self.subject);
        assert_eq!(item.headers, self.headers);
        assert_eq!(item.idempotency_key, self.idempotency_key);
        match &self.data {
            Data::None => assert!(item.payload.is_empty() && !item.is_json),
            Data::Json(d) => {
                assert!(item.is_json);
                // Stored byte for byte as it was sent: here, serde_json's text.
                assert_eq!(item.payload.as_ref(), d.to_string().as_bytes());
            }
            Data::Base64(b) => {
                assert!(!item.is_json);
                assert_eq!(item.payload.as_ref(), b.as_slice());
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn subject_functions_never_panic(a in any_text(), b in any_text()) {
        let _ = subject::validate(&a);
        let _ = subject::validate_pattern(&a);
        let _ = subject::matches(&a, &b);
        let _ = subject::overlaps(&a, &b);
    }

    #[test]
    fn every_accepted_subject_is_matched_by_tail_and_itself(s in any_text()) {
        if subject::validate(&s).is_ok() {
            prop_assert!(s.len() <= MAX_LEN);
            prop_assert!(s.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'));
            prop_assert!(subject::validate_pattern(&s).is_ok());
            prop_assert!(subject::matches(">", &s));
            prop_assert!(subject::matches(&s, &s));
        }
    }

    #[test]
    fn generated_subjects_are_valid_and_match_their_wildcards(
        s in valid_subject(),
        stars in prop::collection::vec(any::<bool>(), 8),
        tail_at in any::<prop::sample::Index>(),
    ) {
        prop_assert_eq!(subject::validate(&s), Ok(()));
        prop_assert!(subject::matches(">", &s));
        prop_assert!(subject::matches(&s, &s));
        let tokens: Vec<&str> = s.split('.').collect();
        let starred: Vec<&str> = tokens
            .iter()
            .zip(stars.iter().cycle())
            .map(|(t, star)| if *star { "*" } else { *t })
            .collect();
        let pattern = starred.join(".");
        prop_assert_eq!(subject::validate_pattern(&pattern), Ok(()));
        prop_assert!(subject::matches(&pattern, &s), "{} ~ {}", pattern, s);
        prop_assert!(subject::overlaps(&pattern, &s) && subject::overlaps(&s, &pattern));
        // `>` stands for one or more tokens, never none.
        let cut = tail_at.index(tokens.len());
        let tail = if cut == 0 { ">".to_string() } else { format!("{}.>", tokens[..cut].join(".")) };
        prop_assert_eq!(subject::validate_pattern(&tail), Ok(()));
        prop_assert!(subject::matches(&tail, &s), "{} ~ {}", tail, s);
        let deeper = format!("{}.>", s);
        prop_assert!(!subject::matches(&deeper, &s));
        // A subject with a wildcard in it is a pattern, never a subject.
        prop_assert_eq!(subject::validate(&pattern).is_ok(), !pattern.contains('*'));
    }

    #[test]
    fn durations_round_trip(n in 0u64..1_000_000_000, unit in prop::sample::select(&DURATION_UNITS[..])) {
        let millis = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => 86_400_000,
        };
        let want = Duration::from_millis(n * millis);
        prop_assert_eq!(parse_duration(&format!("{n}{unit}")), Ok(want));
        // And back from the duration itself.
        prop_assert_eq!(parse_duration(&format!("{}ms", want.as_millis())), Ok(want));
    }

    #[test]
    fn sizes_round_trip(n in 0usize..1_000_000, unit in prop::sample::select(&SIZE_UNITS[..])) {
        let factor = match unit {
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => 1,
        };
        prop_assert_eq!(parse_size(&format!("{n}{unit}")), Ok(n * factor));
    }

    #[test]
    fn config_value_parsers_never_panic(s in any::<String>()) {
        let _ = parse_duration(&s);
        let _ = parse_size(&s);
    }

    #[test]
    fn config_text_never_panics(s in prop_oneof![
        any::<String>(),
        "(app_id|api|nats|streams|subscriptions|retry|- |: |\\{|\\}|\\[|\\]|\n|  |[a-z0-9_]{1,6}|\\$\\{|&a|\\*a){0,40}",
    ]) {
        let _ = Config::from_yaml(&s, Vec::new());
    }

    #[test]
    fn generated_configs_parse_to_their_values(
        app_id in "[a-z0-9-]{1,20}",
        grace in 1u64..100_000,
        max_body in 1usize..4096,
        sub in "[a-z0-9-]{1,20}",
        concurrency in 1u64..=10_000,
        // `${` starts an environment reference in any config value.
        subject in valid_subject().prop_filter("no ${", |s| !s.contains("${")),
    ) {
        let yaml = format!(
            "app_id: '{app_id}'\nshutdown_grace: {grace}s\napi: {{ max_body: {max_body}KiB }}\n\
             subscriptions:\n  - {{ name: '{sub}', subject: '{}', endpoint: 'http://127.0.0.1:8080/x', concurrency: {concurrency} }}\n",
            subject.replace('\'', "''"),
        );
        let c = Config::from_yaml(&yaml, Vec::new()).map_err(|e| TestCaseError::fail(format!("{yaml}: {e}")))?;
        prop_assert_eq!(c.app_id, app_id);
        prop_assert_eq!(c.shutdown_grace, Duration::from_secs(grace));
        prop_assert_eq!(c.api.max_body, max_body * 1024);
        prop_assert_eq!(&c.subscriptions[0].subject, &subject);
        prop_assert_eq!(c.subscriptions[0].concurrency as u64, concurrency);
    }

    #[test]
    fn retry_after_never_panics(s in any::<String>(), now in any::<u32>()) {
        let _ = parse_retry_after(&s, SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(now)));
    }

    #[test]
    fn retry_after_seconds_and_dates_round_trip(secs in any::<u32>(), now in 0u64..4_000_000_000) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(now);
        let want = Duration::from_secs(u64::from(secs));
        prop_assert_eq!(parse_retry_after(&secs.to_string(), now), Some(want));
        prop_assert_eq!(parse_retry_after(&format!(" {secs}\t"), now), Some(want));
        let date = httpdate::fmt_http_date(now + want);
        prop_assert_eq!(parse_retry_after(&date, now), Some(want));
        // A date in the past means at once.
        let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).expect("after the epoch");
        let past = httpdate::fmt_http_date(SystemTime::UNIX_EPOCH + since_epoch.saturating_sub(want));
        prop_assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
    }

    #[test]
    fn batch_parse_never_panics(body in prop::collection::vec(any::<u8>(), 0..256), ndjson in any::<bool>()) {
        if let Err(e) = batch::parse(&body, ndjson) {
            prop_assert_eq!(e.code(), "batch_invalid");
        }
    }

    #[test]
    fn batch_parse_never_panics_on_json_like_text(
        body in "(\\[|\\]|\\{|\\}|,|:|\n|\"subject\"|\"data\"|\"data_base64\"|\"headers\"|\"a\"|1|null|\"aGk=\"| ){0,60}",
        ndjson in any::<bool>(),
    ) {
        match batch::parse(body.as_bytes(), ndjson) {
            Ok(items) => prop_assert!((1..=MAX_ITEMS).contains(&items.len())),
            Err(e) => prop_assert_eq!(e.code(), "batch_invalid"),
        }
    }

    #[test]
    fn a_serialized_batch_parses_to_the_same_items(items in prop::collection::vec(batch_item(), 1..20)) {
        let values: Vec<serde_json::Value> = items.iter().map(GenItem::to_json).collect();
        let array = serde_json::to_vec(&values).expect("json");
        let ndjson: String = values.iter().map(|v| format!("{v}\n")).collect();
        let from_array = batch::parse(&array, false).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let from_ndjson = batch::parse(ndjson.as_bytes(), true).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(from_array.len(), items.len());
        prop_assert_eq!(&from_array, &from_ndjson);
        for (want, got) in items.iter().zip(&from_array) {
            want.check(got);
        }
    }

    #[test]
    fn map_headers_stores_only_documented_headers(
        pairs in prop::collection::vec((header_name(), header_value()), 0..12),
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            Just(br#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#.to_vec()),
        ],
        generate_ids in any::<bool>(),
    ) {
        // Only what hyper could have handed over.
        let headers = header_map(pairs.iter().map(|(n, v)| (n, v)));
        match map_headers(&headers, &body, &publish_config(generate_ids), || "jw-gen".into()) {
            Ok(mapped) => {
                for (name, _) in mapped.headers.iter() {
                    prop_assert!(is_documented(name.as_ref()), "stored {}", name);
                }
                if let Some(id) = &mapped.msg_id {
                    let stored = mapped.headers.get("Nats-Msg-Id").map(|v| v.as_str().to_string());
                    prop_assert_eq!(stored.as_deref(), Some(id.as_str()));
                }
                prop_assert!(!generate_ids || mapped.msg_id.is_some());
            }
            Err(e) => {
                prop_assert!(matches!(e.code(), "header_invalid" | "cloudevent_invalid"), "{}", e.code());
                prop_assert_eq!(e.status().as_u16(), 400);
            }
        }
    }

    #[test]
    fn idempotency_key_becomes_the_message_id(key in "[!-~][ -~]{0,254}[!-~]") {
        prop_assume!(key.len() <= MAX_ID_LEN);
        let mut headers = HeaderMap::new();
        headers.insert("idempotency-key", HeaderValue::from_str(&key).expect("visible ASCII"));
        let mapped = map_headers(&headers, b"", &publish_config(true), || unreachable!())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(mapped.msg_id.as_deref(), Some(key.as_str()));
    }

    #[test]
    fn structured_cloudevents_give_their_source_and_id(
        id in any::<String>(),
        source in any::<String>(),
        ty in any::<String>(),
        data in json_value(),
    ) {
        let body = serde_json::to_vec(&json!({
            "specversion": "1.0", "id": id, "source": source, "type": ty, "data": data,
        })).expect("json");
        let result = validate_structured_cloudevent(&body);
        if id.is_empty() || source.is_empty() || ty.is_empty() {
            prop_assert_eq!(result.map_err(|e| e.code()), Err("cloudevent_invalid"));
        } else {
            let got = result.map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(got, (source.clone(), id.clone()));
            let msg_id = cloudevent_msg_id(&source, &id);
            prop_assert!(msg_id.starts_with("ce-") && msg_id.len() == 35);
        }
    }

    #[test]
    fn cloudevent_ids_never_collide_across_sources(a in ("[ -~]{1,8}", "[ -~]{1,8}"), b in ("[ -~]{1,8}", "[ -~]{1,8}")) {
        prop_assume!(a != b);
        prop_assert_ne!(cloudevent_msg_id(&a.0, &a.1), cloudevent_msg_id(&b.0, &b.1));
    }

    #[test]
    fn structured_cloudevent_parsing_never_panics(body in prop::collection::vec(any::<u8>(), 0..128)) {
        if let Err(e) = validate_structured_cloudevent(&body) {
            prop_assert_eq!(e.code(), "cloudevent_invalid");
        }
    }

    #[test]
    fn traceparents_are_lower_hex_with_nonzero_ids(
        version in "[0-9a-e][0-9a-f]",
        trace in "[0-9a-f]{32}",
        span in "[0-9a-f]{16}",
        flags in "[0-9a-f]{2}",
        junk in any::<String>(),
    ) {
        let tp = format!("{version}-{trace}-{span}-{flags}");
        let nonzero = trace.bytes().any(|b| b != b'0') && span.bytes().any(|b| b != b'0');
        prop_assert_eq!(is_valid_traceparent(&tp), nonzero);
        prop_assert!(!is_valid_traceparent(&tp.to_uppercase()) || !tp.bytes().any(|b| b.is_ascii_lowercase()));
        let _ = is_valid_traceparent(&junk);
    }
}

/// Today `"data": null` is taken as no data: an empty payload without the
/// JSON content type, not the JSON text `null`. Kept visible here so a
/// change of that rule is a decision, not an accident.
#[test]
fn batch_data_null_is_the_json_text_null() {
    let items = batch::parse(br#"[{"subject":"a","data":null}]"#, false).expect("valid");
    assert_eq!(items[0].payload.as_ref(), b"null");
    assert!(items[0].is_json);
    let items = batch::parse(br#"[{"subject":"a"}]"#, false).expect("valid");
    assert!(items[0].payload.is_empty());
    assert!(!items[0].is_json);
}

#[test]
fn batch_item_limit_is_exact() {
    let item = "{\"subject\":\"a\"}\n";
    assert_eq!(
        batch::parse(item.repeat(MAX_ITEMS).as_bytes(), true)
            .expect("the limit itself is fine")
            .len(),
        MAX_ITEMS
    );
    let err = batch::parse(item.repeat(MAX_ITEMS + 1).as_bytes(), true).expect_err("over");
    assert_eq!(err.code(), "batch_invalid");
}
