//! The standard OpenTelemetry variables over the `tracing:` section (whose
//! keys and rules are in `config::tracing`), resolved by a pure function of
//! an environment map into what the exporter needs.

use std::collections::BTreeMap;

use hyper::header::{HeaderName, HeaderValue};
use hyper::Uri;

use super::sampler::Sampler;
use crate::config::{export_header as header, traces_url, TracingConfig, MAX_TRACING_QUEUE};

/// What the exporter runs with, once file and environment are combined.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The full URL spans are POSTed to.
    pub url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub service_name: String,
    pub sampler: Sampler,
    pub queue: usize,
}

/// The file's section with `OTEL_*` variables over it. `None`: no export
/// (no endpoint anywhere, or `OTEL_SDK_DISABLED=true`). The second value
/// lists variables that were ignored, and why (for a warning at start).
pub fn resolve(
    file: &TracingConfig,
    app_id: &str,
    env: &BTreeMap<String, String>,
) -> (Option<ExportSettings>, Vec<String>) {
    let mut warnings = Vec::new();
    let var = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return (None, warnings);
    }
    // The signal's own URL is used as it is; a base URL gets /v1/traces.
    let url = if let Some(url) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        traces_url(url, false).map_err(|e| format!("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: {e}"))
    } else if let Some(base) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        traces_url(base, true).map_err(|e| format!("OTEL_EXPORTER_OTLP_ENDPOINT: {e}"))
    } else if let Some(base) = &file.otlp_endpoint {
        traces_url(base, true).map_err(|e| format!("tracing.otlp_endpoint: {e}"))
    } else {
        return (None, warnings);
    };
    let url = match url {
        Ok(url) => url,
        Err(e) => {
            warnings.push(format!("{e}; no spans are exported"));
            return (None, warnings);
        }
    };

    let mut headers: Vec<(HeaderName, HeaderValue)> = file
        .headers
        .iter()
        .filter_map(|(n, v)| header(n, v).ok())
        .collect();
    if let Some(list) = var("OTEL_EXPORTER_OTLP_HEADERS") {
        match parse_headers(list) {
            Ok(parsed) => {
                for (name, value) in parsed {
                    headers.retain(|(n, _)| n != name);
                    headers.push((name, value));
                }
            }
            Err(e) => warnings.push(format!("OTEL_EXPORTER_OTLP_HEADERS ignored: {e}")),
        }
    }

    let service_name = var("OTEL_SERVICE_NAME")
        .map(str::to_string)
        .or_else(|| file.service_name.clone())
        .unwrap_or_else(|| app_id.to_string());

    let mut ratio = file.sample_ratio;
    if let Some(sampler) = var("OTEL_TRACES_SAMPLER") {
        let arg = var("OTEL_TRACES_SAMPLER_ARG");
        match sampler {
            "parentbased_always_on" => ratio = 1.0,
            "parentbased_always_off" => ratio = 0.0,
            "parentbased_traceidratio" => match arg.map(str::parse::<f64>) {
                None => ratio = 1.0,
                Some(Ok(r)) if (0.0..=1.0).contains(&r) => ratio = r,
                Some(_) => warnings.push(format!(
                    "OTEL_TRACES_SAMPLER_ARG `{}` is not a ratio between 0 and 1; using {ratio}",
                    arg.unwrap_or_default()
                )),
            },
            other => warnings.push(format!(
                "OTEL_TRACES_SAMPLER `{other}` is not supported (jetway always follows the parent: \
                 parentbased_traceidratio, parentbased_always_on, parentbased_always_off); using ratio {ratio}"
            )),
        }
    }

    let settings = ExportSettings {
        url,
        headers,
        service_name,
        sampler: Sampler { ratio },
        queue: file.queue.clamp(1, MAX_TRACING_QUEUE),
    };
    (Some(settings), warnings)
}

/// `OTEL_EXPORTER_OTLP_HEADERS`: `key1=value1,key2=value2`, values
/// percent-decoded (W3C baggage format, as the OTLP exporter spec says).
pub fn parse_headers(list: &str) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for pair in list.split(',') {
        if pair.trim().is_empty() {
            continue;
        }
        let (name, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("`{}` is not key=value", pair.trim()))?;
        let value = percent_decode(value.trim()).ok_or("a value is not percent-encoded UTF-8")?;
        out.push(header(name, &value)?);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn file(endpoint: Option<&str>) -> TracingConfig {
        TracingConfig {
            otlp_endpoint: endpoint.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn endpoint_table() {
        for (file_endpoint, vars, want) in [
            (None, vec![], None),
            (
                Some("http://c:4318"),
                vec![],
                Some("http://c:4318/v1/traces"),
            ),
            (
                Some("http://c:4318/"),
                vec![],
                Some("http://c:4318/v1/traces"),
            ),
            (
                Some("http://c:4318"),
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")],
                Some("http://e:4318/v1/traces"),
            ),
            (
                None,
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318/base/")],
                Some("http://e:4318/base/v1/traces"),
            ),
            (
                Some("http://c:4318"),
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318"),
                    ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9/custom"),
                ],
                Some("http://t:9/custom"),
            ),
            (
                Some("http://c:4318"),
                vec![("OTEL_SDK_DISABLED", "TRUE")],
                None,
            ),
            (
                Some("http://c:4318"),
                vec![("OTEL_SDK_DISABLED", "false")],
                Some("http://c:4318/v1/traces"),
            ),
            (
                None,
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "not a url")],
                None,
            ),
            (None, vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "")], None),
        ] {
            let (settings, _) = resolve(&file(file_endpoint), "orders", &env(&vars));
            assert_eq!(
                settings.map(|s| s.url.to_string()).as_deref(),
                want,
                "{file_endpoint:?} {vars:?}"
            );
        }
    }

    #[test]
    fn a_bad_endpoint_variable_warns() {
        let (settings, warnings) = resolve(
            &file(None),
            "a",
            &env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://x:4318")]),
        );
        assert!(settings.is_none());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
    }

    #[test]
    fn sampler_table() {
        for (vars, want, warns) in [
            (vec![], 0.5, false),
            (
                vec![("OTEL_TRACES_SAMPLER", "parentbased_always_on")],
                1.0,
                false,
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "parentbased_always_off")],
                0.0,
                false,
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")],
                1.0,
                false,
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
                ],
                0.25,
                false,
            ),
            (
                vec![
                    ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                    ("OTEL_TRACES_SAMPLER_ARG", "2"),
                ],
                0.5,
                true,
            ),
            (vec![("OTEL_TRACES_SAMPLER", "always_on")], 0.5, true),
            // The argument alone does nothing.
            (vec![("OTEL_TRACES_SAMPLER_ARG", "0.1")], 0.5, false),
        ] {
            let f = TracingConfig {
                sample_ratio: 0.5,
                ..file(Some("http://c:4318"))
            };
            let (settings, warnings) = resolve(&f, "a", &env(&vars));
            let settings = settings.expect("export on");
            assert_eq!(settings.sampler.ratio, want, "{vars:?}");
            assert_eq!(!warnings.is_empty(), warns, "{vars:?}: {warnings:?}");
        }
    }

    #[test]
    fn service_name_and_headers() {
        let f = TracingConfig {
            service_name: Some("from-file".into()),
            headers: [
                ("x-a".to_string(), "1".to_string()),
                ("x-b".to_string(), "2".to_string()),
            ]
            .into(),
            ..file(Some("http://c:4318"))
        };
        let (s, _) = resolve(&f, "app", &BTreeMap::new());
        let s = s.expect("on");
        assert_eq!(s.service_name, "from-file");
        assert_eq!(s.headers.len(), 2);
        let (s, w) = resolve(
            &f,
            "app",
            &env(&[
                ("OTEL_SERVICE_NAME", "from-env"),
                (
                    "OTEL_EXPORTER_OTLP_HEADERS",
                    "x-b=two%20words, api-key=k%3D1",
                ),
            ]),
        );
        assert!(w.is_empty(), "{w:?}");
        let s = s.expect("on");
        assert_eq!(s.service_name, "from-env");
        let got: Vec<(String, String)> = s
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("x-a".to_string(), "1".to_string()),
                ("x-b".to_string(), "two words".to_string()),
                ("api-key".to_string(), "k=1".to_string()),
            ]
        );
        let (s, _) = resolve(&file(Some("http://c:4318")), "app", &BTreeMap::new());
        assert_eq!(s.expect("on").service_name, "app");
        let (_, w) = resolve(
            &f,
            "app",
            &env(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]),
        );
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b").as_deref(), Some("a b"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("plain").as_deref(), Some("plain"));
    }
}
