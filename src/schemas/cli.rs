//! `jetway schema check|register --type T FILE [--api URL] [--token T]`:
//! for a producer's CI, so a build refuses a breaking change before it
//! ships. Talks to a running sidecar's API (the registry's checks live
//! there, with the type's mode and the app's `schemas.owns`).

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// What the command ends with.
pub enum Outcome {
    /// Compatible (check) or registered (register): exit 0.
    Ok,
    /// Incompatible, invalid or refused: exit 1.
    Refused,
    /// The sidecar could not be asked or answered unexpectedly: exit 2.
    Failed(String),
}

/// Runs `jetway schema check` (`dry_run`) or `register`.
pub async fn run(
    api: &str,
    token: Option<&str>,
    event_type: &str,
    file: &std::path::Path,
    dry_run: bool,
) -> Outcome {
    let schema = match std::fs::read(file) {
        Ok(s) => s,
        Err(e) => return Outcome::Failed(format!("cannot read {}: {e}", file.display())),
    };
    if serde_json::from_slice::<Value>(&schema).is_err() {
        eprintln!("{} is not JSON", file.display());
        return Outcome::Refused;
    }
    let query = if dry_run { "?dry_run=true" } else { "" };
    let url = format!(
        "{}/v1/schemas/{event_type}/versions{query}",
        api.trim_end_matches('/')
    );
    let mut request = hyper::Request::post(&url).header("content-type", "application/schema+json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let request = match request.body(Full::new(Bytes::from(schema))) {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("bad URL {url}: {e}")),
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = match client.request(request).await {
        Ok(r) => r,
        Err(e) => return Outcome::Failed(format!("cannot reach {url}: {e}")),
    };
    let status = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return Outcome::Failed(format!("reading the answer of {url}: {e}")),
    };
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let verb = if dry_run { "would be" } else { "is" };
    match status {
        200 => {
            println!(
                "{event_type}: identical to version {} (nothing to register)",
                body["version"]
            );
            Outcome::Ok
        }
        201 => {
            println!(
                "{event_type}: compatible; {verb} version {}",
                body["version"]
            );
            Outcome::Ok
        }
        409 => {
            let violations = body["error"]["violations"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            println!(
                "{event_type}: {} ({} violation(s))",
                body["error"]["message"].as_str().unwrap_or("incompatible"),
                violations.len()
            );
            for v in violations {
                println!(
                    "  version {}: {} {}: {}",
                    v["version"],
                    v["path"].as_str().unwrap_or(""),
                    v["change"].as_str().unwrap_or(""),
                    v["message"].as_str().unwrap_or("")
                );
            }
            Outcome::Refused
        }
        400 | 403 | 422 => {
            println!(
                "{event_type}: {} ({})",
                body["error"]["message"].as_str().unwrap_or("refused"),
                body["error"]["code"].as_str().unwrap_or("")
            );
            Outcome::Refused
        }
        other => Outcome::Failed(format!(
            "{url} answered {other}: {}",
            body["error"]["message"].as_str().unwrap_or("")
        )),
    }
}
