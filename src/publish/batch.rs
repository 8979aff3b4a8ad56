//! Parsing of batch publish bodies: NDJSON or a JSON array of items. Pure:
//! a malformed batch is refused whole before anything is published.

use std::borrow::Cow;
use std::collections::BTreeMap;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::ApiError;

/// Most items one batch may hold.
pub const MAX_ITEMS: usize = 1000;

/// One item as sent by the client, borrowing its data from the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawItem<'a> {
    subject: String,
    /// Present means data, even `null` (stored as the JSON text `null`).
    #[serde(default, borrow, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    /// Borrowed unless it holds JSON escapes (base64 needs none).
    #[serde(default, borrow, deserialize_with = "base64_text")]
    data_base64: Option<Cow<'a, [u8]>>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

/// `Some` for any value that is there, `null` included: serde's plain
/// `Option` would read `"data": null` as no data at all.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

/// The text of `data_base64` as the bytes between its quotes, borrowed
/// from the body unless it holds escapes; `null` is none. Read as bytes,
/// not as a `str`: serde_json then finds the closing quote with `memchr`
/// (SIMD) and skips the UTF-8 check, where a `str` is scanned 8 bytes at a
/// time and then checked again, and the base64 text is nearly all of a
/// batch body (BENCHMARKS.md, round 5). What is not base64, a control
/// character or a byte beyond ASCII included, is refused by the decoding
/// ([`parse_body`]) as it was by serde before. By hand, too, because serde
/// borrows a `Cow` only when it is not inside an `Option`: the derived
/// `Option<Cow<str>>` copied every `data_base64` (2.2 MB of memcpy in a
/// batch of 100 x 16 KiB).
fn base64_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, [u8]>>, D::Error> {
    struct Text;
    impl<'de> serde::de::Visitor<'de> for Text {
        type Value = Option<Cow<'de, [u8]>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a base64 string")
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_bytes(Text)
        }
        fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_bytes<E>(self, v: &[u8]) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_vec())))
        }
    }
    d.deserialize_option(Text)
}

/// One parsed item: the payload is the JSON text of `data` byte for byte, or
/// the decoded `data_base64`.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub subject: String,
    pub payload: Bytes,
    /// True when the payload came from `data` (so it is JSON).
    pub is_json: bool,
    pub headers: BTreeMap<String, String>,
    pub idempotency_key: Option<String>,
}

/// Whether the body is NDJSON (else a JSON array), from its content type.
pub fn is_ndjson(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .map(|ct| {
            let ct = ct.trim();
            ct.eq_ignore_ascii_case("application/x-ndjson")
                || ct.eq_ignore_ascii_case("application/jsonl")
        })
        .unwrap_or(false)
}

/// Where an item's payload is.
enum Source {
    None,
    /// The JSON text of `data`, these bytes of the body.
    Json(std::ops::Range<usize>),
    /// `data_base64`, these bytes of the body.
    Base64(std::ops::Range<usize>),
    /// `data_base64` written with JSON escapes, unescaped by serde.
    Escaped(Vec<u8>),
    /// The JSON text of `data`, when it is not found in the body (serde
    /// borrows it from there, so never, but never assumed either).
    OwnedJson(String),
}

/// Where `part`, borrowed from `body`, lies in it.
fn range_in(body: &[u8], part: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (part.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
    let end = start.checked_add(part.len())?;
    (end <= body.len()).then_some(start..end)
}

/// Where each raw item's payload is in `body` (which they borrow from).
fn sources(raw: &[RawItem<'_>], body: &[u8]) -> Result<Vec<Source>, ApiError> {
    raw.iter()
        .enumerate()
        .map(|(position, r)| match (r.data, &r.data_base64) {
            (Some(_), Some(_)) => Err(ApiError::BatchInvalid(format!(
                "item {position}: give data or data_base64, not both"
            ))),
            (Some(data), None) => Ok(match range_in(body, data.get().as_bytes()) {
                Some(range) => Source::Json(range),
                None => Source::OwnedJson(data.get().to_string()),
            }),
            (None, Some(Cow::Borrowed(b64))) => Ok(match range_in(body, b64) {
                Some(range) => Source::Base64(range),
                None => Source::Escaped(b64.to_vec()),
            }),
            (None, Some(Cow::Owned(b64))) => Ok(Source::Escaped(b64.clone())),
            (None, None) => Ok(Source::None),
        })
        .collect()
}

/// Parses a whole batch body, or explains why it is malformed. The items'
/// payloads are parts of the body itself: `data` is its JSON text where it
/// stands, `data_base64` is decoded in place (base64 is longer than what
/// it decodes to, so the bytes fit where the text was). One buffer per
/// batch, the body's, and no copy of any payload: a separate buffer for the
/// payloads was another 1.6 MB per 100 x 16 KiB batch for the allocator to
/// find and give back.
///
/// `data_base64` is decoded with base64-simd (SIMD, chosen at run time),
/// not the `base64` crate: in a batch of 100 x 16 KiB the `base64` decode
/// was a third of jetway's instructions (9.4 per byte, plus zeroing the
/// buffer first). Both refuse the same inputs: `simd_decoding_agrees_with_the_base64_crate`.
pub fn parse_body(body: Bytes, ndjson: bool) -> Result<Vec<Item>, ApiError> {
    let (raw, sources) = {
        let raw = parse_raw(&body, ndjson)?;
        let sources = sources(&raw, &body)?;
        // What the items keep of their own: the payload's place is known.
        let raw: Vec<Kept> = raw
            .into_iter()
            .map(|r| Kept {
                subject: r.subject,
                headers: r.headers,
                idempotency_key: r.idempotency_key,
            })
            .collect();
        (raw, sources)
    };
    // The body's own buffer when nothing else holds it, else a copy.
    let mut buf = body
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
    let mut escaped = Vec::new();
    let mut spans = Vec::with_capacity(sources.len());
    for (position, source) in sources.into_iter().enumerate() {
        let invalid =
            || ApiError::BatchInvalid(format!("item {position}: data_base64 is not base64"));
        spans.push(match source {
            Source::None => (Place::Body(0..0), false),
            Source::Json(range) => (Place::Body(range), true),
            Source::Base64(range) => {
                let start = range.start;
                let decoded = base64_simd::STANDARD
                    .decode_inplace(&mut buf[range])
                    .map_err(|_| invalid())?;
                (Place::Body(start..start + decoded.len()), false)
            }
            Source::Escaped(b64) => {
                let start = escaped.len();
                base64_simd::STANDARD
                    .decode_append(&b64, &mut escaped)
                    .map_err(|_| invalid())?;
                (Place::Escaped(start..escaped.len()), false)
            }
            Source::OwnedJson(text) => {
                let start = escaped.len();
                escaped.extend_from_slice(text.as_bytes());
                (Place::Escaped(start..escaped.len()), true)
            }
        });
    }
    let (body, escaped) = (buf.freeze(), Bytes::from(escaped));
    Ok(raw
        .into_iter()
        .zip(spans)
        .map(|(r, (place, is_json))| Item {
            subject: r.subject,
            payload: match place {
                Place::Body(range) => body.slice(range),
                Place::Escaped(range) => escaped.slice(range),
            },
            is_json,
            headers: r.headers,
            idempotency_key: r.idempotency_key,
        })
        .collect())
}

/// A payload's bytes: in the body, or among those that were not there as
/// they are (escaped base64).
enum Place {
    Body(std::ops::Range<usize>),
    Escaped(std::ops::Range<usize>),
}

/// What an item keeps once its payload's place is known.
struct Kept {
    subject: String,
    headers: BTreeMap<String, String>,
    idempotency_key: Option<String>,
}

/// [`parse_body`] of a copy of `body`.
pub fn parse(body: &[u8], ndjson: bool) -> Result<Vec<Item>, ApiError> {
    parse_body(Bytes::copy_from_slice(body), ndjson)
}

/// The raw items of a whole batch body, borrowing from it, or why it is
/// malformed.
fn parse_raw(body: &[u8], ndjson: bool) -> Result<Vec<RawItem<'_>>, ApiError> {
    let raw: Vec<RawItem> = if ndjson {
        let mut items = Vec::new();
        // memchr, not `split` with a closure: that tested every byte of the
        // body one by one (6 instructions a byte, 13 M for 2 MB).
        for (n, line) in lines(body).enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            if items.len() == MAX_ITEMS {
                return Err(too_many());
            }
            let item = serde_json::from_slice(line)
                .map_err(|e| ApiError::BatchInvalid(format!("line {}: {e}", n + 1)))?;
            items.push(item);
        }
        items
    } else {
        serde_json::from_slice(body).map_err(|e| {
            ApiError::BatchInvalid(format!("body is not a JSON array of items: {e}"))
        })?
    };
    if raw.is_empty() {
        return Err(ApiError::BatchInvalid("the batch holds no items".into()));
    }
    if raw.len() > MAX_ITEMS {
        return Err(too_many());
    }
    Ok(raw)
}

/// The lines of a body, split at `\n` (a last line without one included).
fn lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(body);
    std::iter::from_fn(move || {
        let r = rest?;
        match memchr::memchr(b'\n', r) {
            Some(i) => {
                rest = Some(&r[i + 1..]);
                Some(&r[..i])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

fn too_many() -> ApiError {
    ApiError::BatchInvalid(format!("a batch holds at most {MAX_ITEMS} items"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_array_and_ndjson_parse_the_same() {
        let array = br#"[{"subject":"a.b","data":{"x": 1}},{"subject":"a.c","data_base64":"aGk=","headers":{"ce-id":"1"},"idempotency_key":"k"}]"#;
        let ndjson = b"{\"subject\":\"a.b\",\"data\":{\"x\": 1}}\r\n\n{\"subject\":\"a.c\",\"data_base64\":\"aGk=\",\"headers\":{\"ce-id\":\"1\"},\"idempotency_key\":\"k\"}\n";
        let a = parse(array, false).expect("array");
        let n = parse(ndjson, true).expect("ndjson");
        assert_eq!(a, n);
        assert_eq!(
            a[0].payload.as_ref(),
            br#"{"x": 1}"#,
            "data is stored byte for byte"
        );
        assert!(a[0].is_json);
        assert_eq!(a[1].payload.as_ref(), b"hi");
        assert_eq!(a[1].idempotency_key.as_deref(), Some("k"));
    }

    #[test]
    fn payloads_are_decoded_where_they_stand() {
        // Base64 written with a JSON escape (`\u003d` is `=`, `\/` is `/`)
        // is unescaped by serde first; the others are decoded in place, and
        // each payload is exactly its own bytes.
        let body = br#"[{"subject":"a","data_base64":"aGk\u003d"},{"subject":"a","data_base64":"/w=="},{"subject":"a","data_base64":"\/w=="},{"subject":"a","data":[1, 2]},{"subject":"a","data_base64":""},{"subject":"a"}]"#;
        let items = parse(body, false).expect("valid");
        let payloads: Vec<&[u8]> = items.iter().map(|i| i.payload.as_ref()).collect();
        assert_eq!(
            payloads,
            vec![
                &b"hi"[..],
                &[0xff][..],
                &[0xff][..],
                &b"[1, 2]"[..],
                &b""[..],
                &b""[..]
            ]
        );
        let json: Vec<bool> = items.iter().map(|i| i.is_json).collect();
        assert_eq!(json, vec![false, false, false, true, false, false]);
    }

    #[test]
    fn malformed_batches_are_refused_whole() {
        let table: Vec<(&[u8], bool)> = vec![
            (b"", false),
            (b"[]", false),
            (b"{}", false),
            (b"[{\"data\":1}]", false),
            (b"[{\"subject\":\"a\",\"extra\":1}]", false),
            (
                b"[{\"subject\":\"a\",\"data\":1,\"data_base64\":\"aGk=\"}]",
                false,
            ),
            (b"[{\"subject\":\"a\",\"data_base64\":\"%%%\"}]", false),
            (b"[{\"subject\":\"a\"},", false),
            (b"{\"subject\":\"a\"}\nnot json\n", true),
            (b"\n\n", true),
        ];
        for (body, ndjson) in table {
            let err = parse(body, ndjson).expect_err(&String::from_utf8_lossy(body));
            assert_eq!(err.code(), "batch_invalid");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let mut bomb = String::from("[{\"subject\":\"a\",\"data\":");
        bomb.push_str(&"[".repeat(100_000));
        let err = parse(bomb.as_bytes(), false).expect_err("bomb");
        assert_eq!(err.code(), "batch_invalid");
    }

    #[test]
    fn item_limit_holds() {
        let item = "{\"subject\":\"a\"}\n";
        assert_eq!(
            parse(item.repeat(MAX_ITEMS).as_bytes(), true)
                .expect("ok")
                .len(),
            MAX_ITEMS
        );
        assert!(parse(item.repeat(MAX_ITEMS + 1).as_bytes(), true).is_err());
        let array = format!("[{}]", vec!["{\"subject\":\"a\"}"; MAX_ITEMS + 1].join(","));
        assert!(parse(array.as_bytes(), false).is_err());
    }

    /// The decoder jetway used before, as the reference for what is base64.
    fn reference(s: &[u8]) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.decode(s).ok()
    }

    fn simd(s: &[u8]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        base64_simd::STANDARD.decode_append(s, &mut out).ok()?;
        Some(out)
    }

    #[test]
    fn simd_decoding_agrees_with_the_base64_crate() {
        // Every string of up to 4 symbols over an alphabet with the edge
        // cases: padding, trailing bits (`B`, `Q` end a group with bits
        // set), a URL-safe symbol and a space.
        let alphabet = b"AQB/+=-_ ";
        let mut inputs: Vec<Vec<u8>> = vec![Vec::new()];
        for len in 1..=4 {
            let mut next = Vec::new();
            for s in inputs.iter().filter(|s| s.len() == len - 1) {
                for &c in alphabet {
                    let mut t = s.clone();
                    t.push(c);
                    next.push(t);
                }
            }
            inputs.extend(next);
        }
        for s in &inputs {
            assert_eq!(simd(s), reference(s), "{:?}", String::from_utf8_lossy(s));
        }
    }

    proptest::proptest! {
        /// Long inputs (the SIMD paths) with one symbol changed anywhere.
        #[test]
        fn simd_decoding_agrees_on_long_inputs(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            at in proptest::prelude::any::<usize>(),
            with in proptest::sample::select(b"A=-_ .\n/+".to_vec()),
            corrupt in proptest::prelude::any::<bool>(),
        ) {
            use base64::Engine;
            let mut text = base64::engine::general_purpose::STANDARD.encode(&data).into_bytes();
            if corrupt && !text.is_empty() {
                let at = at % text.len();
                text[at] = with;
            }
            proptest::prop_assert_eq!(simd(&text), reference(&text));
        }
    }

    #[test]
    fn base64_text_is_borrowed_unless_escaped() {
        let item: RawItem =
            serde_json::from_slice(br#"{"subject":"a","data_base64":"a/8="}"#).expect("plain");
        assert!(matches!(item.data_base64, Some(Cow::Borrowed(b"a/8="))));
        let escaped: RawItem =
            serde_json::from_slice(br#"{"subject":"a","data_base64":"a\/8="}"#).expect("escaped");
        assert!(matches!(escaped.data_base64, Some(Cow::Owned(ref b)) if b == b"a/8="));
        let none = parse(br#"[{"subject":"a","data_base64":null}]"#, false).expect("null");
        assert!(none[0].payload.is_empty() && !none[0].is_json);
        // Read as bytes, the text is checked by the decoding alone: a
        // control character, a byte that is not UTF-8 or an escaped
        // character beyond ASCII is refused as serde refused the first
        // two. Each is 4 bytes once unescaped, like `YQ==` ("a"), which
        // passes with `Q` written as `\u0051`.
        let escaped_q = parse(br#"[{"subject":"a","data_base64":"Y\u0051=="}]"#, false);
        assert_eq!(escaped_q.expect("escaped Q")[0].payload.as_ref(), b"a");
        for bad in [
            &br#"[{"subject":"a","data_base64":5}]"#[..],
            br#"[{"subject":"a","data_base64":["YQ=="]}]"#,
            b"[{\"subject\":\"a\",\"data_base64\":\"Y\x01==\"}]",
            b"[{\"subject\":\"a\",\"data_base64\":\"Y\xff==\"}]",
            br#"[{"subject":"a","data_base64":"Y\u00e9="}]"#,
            br#"[{"subject":"a","data_base64":"Y\ud800"}]"#,
        ] {
            assert_eq!(
                parse(bad, false).expect_err("not a string").code(),
                "batch_invalid"
            );
        }
        let both = parse(
            br#"[{"subject":"a","data_base64":"a\/8="},{"subject":"b","data_base64":"a/8="}]"#,
            false,
        )
        .expect("same bytes");
        assert_eq!(both[0].payload, both[1].payload);
    }

    #[test]
    fn ndjson_lines_split_like_split() {
        for body in [
            &b""[..],
            b"\n",
            b"a",
            b"a\n",
            b"a\nb",
            b"\n\na\n\n",
            b"ab\ncd\n",
        ] {
            let ours: Vec<&[u8]> = lines(body).collect();
            let split: Vec<&[u8]> = body.split(|b| *b == b'\n').collect();
            assert_eq!(ours, split);
        }
    }

    #[test]
    fn content_type_selects_ndjson() {
        assert!(is_ndjson(Some("application/x-ndjson")));
        assert!(is_ndjson(Some("application/x-ndjson; charset=utf-8")));
        assert!(!is_ndjson(Some("application/json")));
        assert!(!is_ndjson(None));
    }
}
