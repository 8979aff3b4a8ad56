//! The HTTP request of a delivery (SPEC section 4): the stored body and
//! headers, the `Jetway-*` headers, a stable `Idempotency-Key`, Standard
//! Webhooks signatures and a fresh span id in `traceparent`.

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use hyper::header::{HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, Uri};
use sha2::Sha256;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::config::{Secret, SigningSecret};
use crate::envelope::Envelope;
use crate::publish::headers::is_valid_traceparent;

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

/// `traceparent` with the same trace and a new span id (this delivery is a
/// new span in the trace).
pub fn child_traceparent(parent: &str, span: u64) -> Option<String> {
    if !is_valid_traceparent(parent) {
        return None;
    }
    let mut parts = parent.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    parts.next()?;
    let flags = parts.next()?;
    Some(format!("{version}-{trace}-{:016x}-{flags}", span.max(1)))
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

/// What a request needs beyond the message.
pub struct Target<'a> {
    pub endpoint: &'a Uri,
    /// `Jetway-Subscription`: the subscription's name.
    pub subscription: &'a HeaderValue,
    pub signing_secret: Option<&'a SigningSecret>,
    pub callback_token: Option<&'a Secret>,
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
/// Headers jetway sets on every request, plus room for some of the app's.
const HEADER_CAPACITY: usize = 24;

fn insert(headers: &mut hyper::HeaderMap, name: HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// Builds the POST for one attempt. `now` is the signing time, `span` the
/// new span id.
pub fn build(
    env: &Envelope,
    target: &Target<'_>,
    now: OffsetDateTime,
    span: u64,
) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(env.payload.clone()));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = target.endpoint.clone();
    let headers = request.headers_mut();
    headers.reserve(HEADER_CAPACITY);

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
    if let Some(tp) = env
        .headers
        .get("traceparent")
        .and_then(|p| child_traceparent(p.as_str(), span))
    {
        insert(headers, TRACEPARENT, &tp);
    }
    let key = env.idempotency_key();
    headers.insert(SUBSCRIPTION, target.subscription.clone());
    insert(headers, SUBJECT, &env.subject);
    insert(headers, STREAM, &env.stream);
    headers.insert(SEQUENCE, HeaderValue::from(env.sequence));
    headers.insert(ATTEMPT, HeaderValue::from(env.attempt));
    if let Ok(published) = env.published.format(&Rfc3339) {
        insert(headers, PUBLISHED_AT, &published);
    }
    insert(headers, IDEMPOTENCY_KEY, &key);
    if let Some(secret) = target.signing_secret {
        let ts = now.unix_timestamp();
        insert(headers, WEBHOOK_ID, &key);
        headers.insert(WEBHOOK_TIMESTAMP, HeaderValue::from(ts));
        insert(
            headers,
            WEBHOOK_SIGNATURE,
            &sign(secret, &key, ts, &env.payload),
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
        let target = Target {
            endpoint: &uri,
            subscription: &HeaderValue::from_static("emails"),
            signing_secret: None,
            callback_token: Some(&token),
        };
        let req = build(&envelope(), &target, OffsetDateTime::UNIX_EPOCH, 0xabc);
        let h = req.headers();
        let get = |n: &str| h.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(get("content-type"), "application/json");
        assert_eq!(get("ce-id"), "7");
        assert_eq!(get("x-tenant"), "acme");
        assert_eq!(
            get("traceparent"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000abc-01"
        );
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
    fn message_id_is_the_idempotency_key() {
        let mut env = envelope();
        env.headers.insert("Nats-Msg-Id", "order-1");
        assert_eq!(env.idempotency_key(), "order-1");
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

    #[test]
    fn bad_traceparent_is_not_forwarded() {
        assert_eq!(child_traceparent("garbage", 1), None);
    }
}
