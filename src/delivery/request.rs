//! The HTTP request of a delivery (SPEC section 4): the stored body and
//! headers, the `Jetway-*` headers, a stable `Idempotency-Key`, Standard
//! Webhooks signatures and a fresh span id in `traceparent`.

use base64::Engine;
use bytes::{BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, Uri};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{Secret, SigningSecret};
use crate::envelope::{Envelope, IdempotencyKey};

/// Whether a stored header goes to the endpoint as it is. NATS control
/// headers and jetway's own are not passed through.
fn passes_through(name: &str) -> bool {
    let starts = |prefix: &str| {
        name.get(..prefix.len())
            .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
    };
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    !(starts("nats-")
        || starts("jetway-")
        || starts("webhook-")
        || is("traceparent")
        || is("content-length")
        || is("host")
        || is("authorization")
        || is("idempotency-key"))
}

/// `v1,<base64 HMAC-SHA256 of "id.timestamp.body">` (Standard Webhooks).
pub fn sign(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC takes keys of any length, so this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(&secret.0) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// What a request needs beyond the message: per subscription, built once.
pub struct Target<'a> {
    pub endpoint: &'a Uri,
    /// `Host` of the endpoint (hyper's client would format it anew for
    /// every request).
    pub host: Option<&'a HeaderValue>,
    /// `Jetway-Subscription`: the subscription's name.
    pub subscription: &'a HeaderValue,
    /// `Jetway-Stream` of the subscription's stream, once known: used when
    /// the message comes from that stream (always, but for a replay of a
    /// dead letter from another).
    pub stream: Option<&'a HeaderValue>,
    pub signing_secret: Option<&'a SigningSecret>,
    pub callback_token: Option<&'a Secret>,
}

/// `Host` for requests to `endpoint`, as hyper's client writes it: the host,
/// and the port unless it is the scheme's default.
pub fn host_header(endpoint: &Uri) -> Option<HeaderValue> {
    let host = endpoint.host()?;
    let default_port = match endpoint.scheme_str() {
        Some("https") => 443,
        _ => 80,
    };
    match endpoint.port_u16() {
        Some(port) if port != default_port => HeaderValue::from_str(&format!("{host}:{port}")).ok(),
        _ => HeaderValue::from_str(host).ok(),
    }
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const SUBSCRIPTION: HeaderName = HeaderName::from_static("jetway-subscription");
const SUBJECT: HeaderName = HeaderName::from_static("jetway-subject");
const STREAM: HeaderName = HeaderName::from_static("jetway-stream");
const SEQUENCE: HeaderName = HeaderName::from_static("jetway-sequence");
const ATTEMPT: HeaderName = HeaderName::from_static("jetway-attempt");
const PUBLISHED_AT: HeaderName = HeaderName::from_static("jetway-published-at");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");
/// Headers jetway sets on every request (the `Jetway-*` ones, `Host`,
/// `Idempotency-Key`, `Content-Type`, `traceparent`, `Content-Length`).
const OWN_HEADERS: usize = 12;

fn insert(headers: &mut hyper::HeaderMap, name: HeaderName, value: &[u8]) {
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(name, v);
    }
}

/// The values of the headers that differ from message to message, written
/// into one buffer: each value is then a slice of it. One allocation for
/// all of them, where a `HeaderValue` made apiece costs one each.
struct Values {
    buf: BytesMut,
    /// Where each value ends in `buf`, in the order of [`Values::NAMES`].
    ends: [usize; 5],
}

impl Values {
    /// The headers, in the order their values are written.
    const NAMES: [HeaderName; 5] = [SUBJECT, SEQUENCE, ATTEMPT, PUBLISHED_AT, IDEMPOTENCY_KEY];

    fn write(env: &Envelope, key: IdempotencyKey<'_>) -> Values {
        let key_len = match key {
            IdempotencyKey::Id(id) => id.len(),
            IdempotencyKey::Position(stream, _) => stream.len() + 21,
        };
        // Sequence and attempt take 20 digits at most, the timestamp 35.
        let mut buf = BytesMut::with_capacity(env.subject.len() + key_len + 80);
        let mut ends = [0; 5];
        buf.extend_from_slice(env.subject.as_bytes());
        ends[0] = buf.len();
        let mut digits = itoa::Buffer::new();
        buf.extend_from_slice(digits.format(env.sequence).as_bytes());
        ends[1] = buf.len();
        buf.extend_from_slice(digits.format(env.attempt).as_bytes());
        ends[2] = buf.len();
        if env
            .published
            .format_into(&mut (&mut buf).writer(), &Rfc3339)
            .is_err()
        {
            // Left out, as an empty value is.
            buf.truncate(ends[2]);
        }
        ends[3] = buf.len();
        // The same text as `IdempotencyKey`'s `Display`.
        match key {
            IdempotencyKey::Id(id) => buf.extend_from_slice(id.as_bytes()),
            IdempotencyKey::Position(stream, seq) => {
                buf.extend_from_slice(stream.as_bytes());
                buf.extend_from_slice(b":");
                buf.extend_from_slice(digits.format(seq).as_bytes());
            }
        }
        ends[4] = buf.len();
        Values { buf, ends }
    }

    /// Inserts each value that is not empty and is a valid header value.
    fn insert_into(self, headers: &mut hyper::HeaderMap) {
        let buf = self.buf.freeze();
        let mut start = 0;
        for (name, end) in Self::NAMES.into_iter().zip(self.ends) {
            if end > start {
                if let Ok(v) = HeaderValue::from_maybe_shared(buf.slice(start..end)) {
                    headers.insert(name, v);
                }
            }
            start = end;
        }
    }
}

/// Builds the POST for one attempt. `now` gives the signing time, asked
/// for only when the subscription signs; `traceparent` is the attempt's
/// span context, when the message has one.
pub fn build(
    env: &Envelope,
    target: &Target<'_>,
    now: impl FnOnce() -> OffsetDateTime,
    traceparent: Option<HeaderValue>,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(env.payload.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.endpoint.clone();
    let headers = request.headers_mut();
    headers.reserve(OWN_HEADERS + env.headers.len());

    for (name, values) in env.headers.iter() {
        let name_str: &str = name.as_ref();
        if !passes_through(name_str) {
            continue;
        }
        let Ok(name) = HeaderName::from_bytes(name_str.as_bytes()) else {
            continue;
        };
        for value in values {
            if let Ok(v) = HeaderValue::from_str(value.as_str()) {
                headers.append(name.clone(), v);
            }
        }
    }
    if let Some(host) = target.host {
        headers.insert(HOST, host.clone());
    }
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT, tp);
    }
    let key = env.idempotency_key();
    headers.insert(SUBSCRIPTION, target.subscription.clone());
    match target.stream {
        Some(stream) if stream.as_bytes() == env.stream.as_bytes() => {
            headers.insert(STREAM, stream.clone());
        }
        _ => insert(headers, STREAM, env.stream.as_bytes()),
    }
    Values::write(env, key).insert_into(headers);
    if let Some(secret) = target.signing_secret {
        let key = key.to_string();
        let ts = now().unix_timestamp();
        insert(headers, WEBHOOK_ID, key.as_bytes());
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
        insert(
            headers,
            WEBHOOK_SIGNATURE,
            sign(secret, &key, ts, &env.payload).as_bytes(),
        );
    }
    if let Some(token) = target.callback_token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
            headers.insert(AUTHORIZATION, v);
        }
    }
    if !headers.contains_key(CONTENT_TYPE) && !env.payload.is_empty() {
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Content-Type", "application/json");
        headers.insert("ce-id", "7");
        headers.insert("x-tenant", "acme");
        headers.insert(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
        headers.insert("Nats-Expected-Last-Sequence", "3");
        headers.insert("Jetway-Original-Subject", "spoof");
        Envelope {
            subject: "orders.created".into(),
            stream: "ORDERS".into(),
            sequence: 42,
            attempt: 2,
            published: time::macros::datetime!(2026-01-02 03:04:05 UTC),
            headers,
            payload: Bytes::from_static(b"{\"a\":1}"),
        }
    }

    #[test]
    fn request_carries_every_spec_header() {
        let uri: Uri = "http://127.0.0.1:8080/events".parse().expect("uri");
        let token = Secret::new("cb");
        let host = host_header(&uri).expect("host");
        let target = Target {
            endpoint: &uri,
            host: Some(&host),
            subscription: &HeaderValue::from_static("emails"),
            stream: Some(&HeaderValue::from_static("ORDERS")),
            signing_secret: None,
            callback_token: Some(&token),
        };
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01";
        let req = build(
            &envelope(),
            &target,
            || OffsetDateTime::UNIX_EPOCH,
            Some(HeaderValue::from_static(tp)),
        );
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(get("host"), "127.0.0.1:8080");
        assert_eq!(get("content-type"), "application/json");
        assert_eq!(get("ce-id"), "7");
        assert_eq!(get("x-tenant"), "acme");
        // The attempt's context, never the stored one.
        assert_eq!(h.get_all("traceparent").iter().count(), 1);
        assert_eq!(get("traceparent"), tp);
        assert_eq!(get("jetway-subscription"), "emails");
        assert_eq!(get("jetway-subject"), "orders.created");
        assert_eq!(get("jetway-stream"), "ORDERS");
        assert_eq!(get("jetway-sequence"), "42");
        assert_eq!(get("jetway-attempt"), "2");
        assert_eq!(get("jetway-published-at"), "2026-01-02T03:04:05Z");
        assert_eq!(get("idempotency-key"), "ORDERS:42");
        assert_eq!(get("authorization"), "Bearer cb");
        assert!(h.get("nats-expected-last-sequence").is_none());
        assert!(h.get("jetway-original-subject").is_none());
        assert!(h.get("webhook-signature").is_none());
    }

    #[test]
    fn a_message_of_another_stream_names_its_own() {
        // A replayed dead letter names the stream it was first stored in.
        let uri: Uri = "http://127.0.0.1:8080/events".parse().expect("uri");
        let secret = SigningSecret(b"key".to_vec());
        let target = Target {
            endpoint: &uri,
            host: None,
            subscription: &HeaderValue::from_static("emails"),
            stream: Some(&HeaderValue::from_static("OTHER")),
            signing_secret: Some(&secret),
            callback_token: None,
        };
        let mut env = envelope();
        env.headers = async_nats::HeaderMap::new();
        env.published = time::macros::datetime!(2026-01-02 03:04:05.123456789 UTC);
        let req = build(&env, &target, || OffsetDateTime::UNIX_EPOCH, None);
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(get("jetway-stream"), "ORDERS");
        assert_eq!(get("jetway-published-at"), "2026-01-02T03:04:05.123456789Z");
        assert_eq!(get("content-type"), "application/octet-stream");
        assert!(h.get("traceparent").is_none());
        assert!(h.get("host").is_none(), "left to the client");
        assert_eq!(get("webhook-id"), "ORDERS:42");
        assert_eq!(
            get("webhook-signature"),
            sign(&secret, "ORDERS:42", 0, &env.payload)
        );
    }

    #[test]
    fn host_is_written_as_the_client_would() {
        for (uri, host) in [
            ("http://127.0.0.1:8080/events", Some("127.0.0.1:8080")),
            ("http://app/events", Some("app")),
            ("http://app:80/events", Some("app")),
            ("https://app:443/events", Some("app")),
            ("https://app:8443/events", Some("app:8443")),
            ("http://[::1]:9000/events", Some("[::1]:9000")),
            ("/events", None),
        ] {
            let uri: Uri = uri.parse().expect("uri");
            assert_eq!(
                host_header(&uri).as_ref().and_then(|v| v.to_str().ok()),
                host,
                "{uri}"
            );
        }
    }

    #[test]
    fn values_written_into_one_buffer_read_as_the_envelope_says() {
        let uri: Uri = "http://127.0.0.1:8080/events".parse().expect("uri");
        let target = Target {
            endpoint: &uri,
            host: None,
            subscription: &HeaderValue::from_static("emails"),
            stream: None,
            signing_secret: None,
            callback_token: None,
        };
        let mut env = envelope();
        env.sequence = u64::MAX;
        env.attempt = 1_000_000;
        let req = build(&env, &target, || OffsetDateTime::UNIX_EPOCH, None);
        let get = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        assert_eq!(get("jetway-subject"), "orders.created");
        assert_eq!(get("jetway-sequence"), u64::MAX.to_string());
        assert_eq!(get("jetway-attempt"), "1000000");
        assert_eq!(get("jetway-published-at"), "2026-01-02T03:04:05Z");
        assert_eq!(get("idempotency-key"), env.idempotency_key().to_string());
        assert_eq!(get("jetway-stream"), "ORDERS");

        env.headers.insert("Nats-Msg-Id", "order-1");
        let req = build(&env, &target, || OffsetDateTime::UNIX_EPOCH, None);
        let key = req
            .headers()
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok());
        assert_eq!(key, Some("order-1"));
    }

    #[test]
    fn message_id_is_the_idempotency_key() {
        let mut env = envelope();
        env.headers.insert("Nats-Msg-Id", "order-1");
        assert_eq!(env.idempotency_key().to_string(), "order-1");
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = SigningSecret(
            base64::engine::general_purpose::STANDARD
                .decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .expect("b64"),
        );
        let sig = sign(
            &secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
