//! The HTTP client of one sidecar's `/v1` API: the token, timeouts, and
//! each failure as the `CliError` kind that gives its exit code.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::Value;

use super::{CliError, Remote};

/// Connection setup, and how long one request may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one sidecar's `/v1` API.
pub(super) struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    pub(super) fn new(remote: &Remote) -> Result<Api, CliError> {
        let base = remote.api.trim_end_matches('/').to_string();
        let base = if base.contains("://") {
            base
        } else {
            format!("http://{base}")
        };
        if !base.starts_with("http://") {
            return Err(CliError::Invalid(format!(
                "--api {base}: the sidecar's API is plain HTTP on the pod's loopback (http://HOST:PORT)"
            )));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let client = Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
        Ok(Api {
            base,
            token: remote.token.clone().filter(|t| !t.is_empty()),
            client,
        })
    }

    /// One request; the JSON answer of a 2xx (`null` for 204).
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| CliError::Invalid(format!("--api {}: {e}", self.base)))?;
        let unreachable = |reason: String| CliError::Unreachable {
            api: self.base.clone(),
            reason,
        };
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(connect_reason(&e)))?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(format!("the answer broke off: {e}")))?
                .to_bytes();
            Ok::<_, CliError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                unreachable(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs()))
            })??;
        let json: Option<Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return match (status, json) {
                (StatusCode::NO_CONTENT, _) => Ok(Value::Null),
                (_, Some(v)) => Ok(v),
                (_, None) => Err(unreachable(format!(
                    "{url} answered {status} with something that is not JSON: is this a jetway API?"
                ))),
            };
        }
        let message = json
            .as_ref()
            .and_then(|v| v["error"]["message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(match status {
            StatusCode::UNAUTHORIZED if self.token.is_none() => CliError::TokenMissing {
                api: self.base.clone(),
            },
            StatusCode::UNAUTHORIZED => CliError::TokenWrong {
                api: self.base.clone(),
            },
            StatusCode::NOT_FOUND => CliError::NotFound(message),
            _ => CliError::Api {
                status: status.as_u16(),
                message,
            },
        })
    }
}

/// The innermost cause of a failed connection, e.g. "Connection refused".
fn connect_reason(e: &hyper_util::client::legacy::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    source.to_string()
}

pub(super) fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| CliError::Api {
        status: 200,
        message: format!("an answer this jetway cannot read: {e}"),
    })
}

/// A path segment: subscription names are `[a-z0-9-]+`, anything else
/// is percent-encoded so it cannot change the route.
pub(super) fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_change_the_route() {
        assert_eq!(segment("order-emails"), "order-emails");
        assert_eq!(segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }
}
