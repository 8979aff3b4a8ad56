//! `tracing`: OTLP span export (SPEC section 10). The `OTEL_*` variables
//! over it are resolved in `telemetry::config`.

use std::collections::BTreeMap;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;
use serde_norway::Value;

use super::values::{float, string, uint, Section};
use super::Problem;

/// Most spans the queue may be set to hold.
pub const MAX_TRACING_QUEUE: usize = 1 << 20;

/// `tracing:` as written in the config file.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// OTLP/HTTP base URL; spans go to `{otlp_endpoint}/v1/traces`.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the resource; the app_id when absent.
    pub service_name: Option<String>,
    /// Share of the traces jetway starts itself that are sampled.
    pub sample_ratio: f64,
    /// Extra headers of every export request.
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for export at most.
    pub queue: usize,
}

impl Default for TracingConfig {
    fn default() -> Self {
        TracingConfig {
            otlp_endpoint: None,
            service_name: None,
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
            queue: 2048,
        }
    }
}

const KEYS: [&str; 5] = [
    "otlp_endpoint",
    "service_name",
    "sample_ratio",
    "headers",
    "queue",
];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> TracingConfig {
    let tracing = top.child("tracing", &KEYS, p);
    let defaults = TracingConfig::default();
    let otlp_endpoint = tracing.opt("otlp_endpoint", string, p);
    if let Some(endpoint) = &otlp_endpoint {
        if let Err(message) = traces_url(endpoint, true) {
            p.push(Problem {
                path: tracing.path("otlp_endpoint"),
                message,
            });
        }
    }
    let service_name = tracing.opt("service_name", string, p);
    if service_name.as_deref() == Some("") {
        p.push(Problem {
            path: tracing.path("service_name"),
            message: "must not be empty".into(),
        });
    }
    let sample_ratio = tracing.or("sample_ratio", defaults.sample_ratio, float, p);
    if !(0.0..=1.0).contains(&sample_ratio) {
        p.push(Problem {
            path: tracing.path("sample_ratio"),
            message: format!("{sample_ratio} is not between 0.0 and 1.0"),
        });
    }
    let headers = parse_headers(&tracing, p);
    let queue = tracing.or("queue", defaults.queue as u64, uint, p);
    if queue == 0 || queue > MAX_TRACING_QUEUE as u64 {
        p.push(Problem {
            path: tracing.path("queue"),
            message: format!("must be between 1 and {MAX_TRACING_QUEUE}"),
        });
    }
    TracingConfig {
        otlp_endpoint,
        service_name,
        sample_ratio,
        headers,
        queue: usize::try_from(queue).unwrap_or(MAX_TRACING_QUEUE),
    }
}

/// `tracing.headers`: a mapping of header name to value, each checked.
fn parse_headers(tracing: &Section<'_>, p: &mut Vec<Problem>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let map = match tracing.raw("headers") {
        None => return out,
        Some(Value::Mapping(map)) => map,
        Some(_) => {
            p.push(Problem {
                path: tracing.path("headers"),
                message: "expected a mapping of header name to value".into(),
            });
            return out;
        }
    };
    for (name, value) in map {
        let Some(name) = name.as_str() else {
            p.push(Problem {
                path: tracing.path("headers"),
                message: "header names must be strings".into(),
            });
            continue;
        };
        let path = format!("{}.{name}", tracing.path("headers"));
        let checked = string(value).and_then(|v| export_header(name, &v).map(|_| v));
        match checked {
            Ok(v) => {
                out.insert(name.to_string(), v);
            }
            Err(message) => p.push(Problem { path, message }),
        }
    }
    out
}

/// The URL spans are POSTed to: `base` with `/v1/traces` appended when it
/// is a base URL. Only `http`: jetway's client has no TLS (a collector
/// agent on the node or in the pod is the usual setup).
pub fn traces_url(base: &str, append: bool) -> Result<Uri, String> {
    let text = if append {
        format!("{}/v1/traces", base.trim_end_matches('/'))
    } else {
        base.to_string()
    };
    let uri: Uri = text.parse().map_err(|_| format!("`{base}` is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "`{base}`: https is not supported; export to a collector over http (e.g. a node-local agent)"
            ))
        }
        _ => return Err(format!("`{base}` is not an http:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{base}` has no host"));
    }
    Ok(uri)
}

/// One export header, as it goes on the request.
pub fn export_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), String> {
    let n = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{name}` is not a header name"))?;
    let v = HeaderValue::from_str(value.trim())
        .map_err(|_| "the value is not a valid header value".to_string())?;
    Ok((n, v))
}

#[cfg(test)]
mod tests {
    use super::TracingConfig;
    use crate::config::test_support::{load, paths};

    #[test]
    fn defaults_follow_the_spec() {
        let c = load("app_id: a\n").expect("valid").tracing;
        assert_eq!(c, TracingConfig::default());
        assert_eq!(c.queue, 2048);
        assert_eq!(c.sample_ratio, 1.0);
        assert_eq!(c.otlp_endpoint, None);
        let c = load("app_id: a\ntracing: {}\n").expect("valid").tracing;
        assert_eq!(c, TracingConfig::default());
        assert_eq!(
            paths("app_id: a\ntracing: { otlp_endpont: x }\n"),
            vec!["tracing.otlp_endpont"],
            "unknown keys are problems"
        );
    }

    #[test]
    fn keys_are_read() {
        let c = load(
            "app_id: a\ntracing:\n  otlp_endpoint: http://c:4318\n  service_name: orders-sidecar\n  \
             sample_ratio: 0.25\n  headers: { x-tenant: t1 }\n  queue: 10\n",
        )
        .expect("valid")
        .tracing;
        assert_eq!(c.otlp_endpoint.as_deref(), Some("http://c:4318"));
        assert_eq!(c.service_name.as_deref(), Some("orders-sidecar"));
        assert_eq!(c.sample_ratio, 0.25);
        assert_eq!(c.headers.get("x-tenant").map(String::as_str), Some("t1"));
        assert_eq!(c.queue, 10);
    }

    #[test]
    fn problems_name_their_keys() {
        assert_eq!(
            paths(
                "app_id: a\ntracing:\n  otlp_endpoint: ftp://x\n  service_name: ''\n  \
                 sample_ratio: 1.5\n  headers: { bad name: v }\n  queue: 0\n"
            ),
            vec![
                "tracing.otlp_endpoint",
                "tracing.service_name",
                "tracing.sample_ratio",
                "tracing.headers.bad name",
                "tracing.queue",
            ]
        );
        assert_eq!(
            paths("app_id: a\ntracing: { otlp_endpoint: 'https://collector:4318' }\n"),
            vec!["tracing.otlp_endpoint"]
        );
        assert_eq!(
            paths("app_id: a\ntracing: { headers: [a] }\n"),
            vec!["tracing.headers"]
        );
    }
}
