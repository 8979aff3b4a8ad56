//! `subscriptions`: what this app receives, where it is delivered, and the
//! retry policy and signing of those deliveries (SPEC 2, 4).

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use hyper::Uri;
use serde_norway::Value;

use super::streams::is_valid_stream_name;
use super::values::{boolean, duration, float, http_uri, is_valid_name, string, uint, Section};
use super::Problem;
use crate::subject;

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

const KEYS: [&str; 10] = [
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
];

const RETRY_KEYS: [&str; 6] = [
    "max_attempts",
    "initial_backoff",
    "max_backoff",
    "multiplier",
    "jitter",
    "retry_on",
];

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
    let r = sub.child("retry", &RETRY_KEYS, p);
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

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> Vec<SubscriptionConfig> {
    let mut out = Vec::new();
    let mut names = HashSet::new();
    for (path, value) in top.items("subscriptions", p) {
        let s = Section::new(Some(value), path.clone(), &KEYS, p);
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

#[cfg(test)]
mod tests {
    use super::*;

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
            let v: Value = serde_norway::from_str(input).expect("yaml");
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
}
