//! `jetway tail SUBJECT` (SPEC section 1): follows a subject through the
//! sidecar's live read (NDJSON) and prints one readable line per message.
//! When the sidecar goes away it reconnects after the last sequence it
//! printed, so nothing is skipped or printed twice; Ctrl-C ends it.

use std::io::Write;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{header, Request, StatusCode, Uri};
use base64::Engine;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::reads::StoredMessage;

/// What `jetway tail` was asked for.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// The sidecar's API, e.g. `http://127.0.0.1:4480`.
    pub api: String,
    pub token: Option<String>,
    /// First stream sequence to print (inclusive); `None`: new ones only.
    pub from: Option<u64>,
    pub subject: String,
}

/// Why `jetway tail` gave up.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    #[error("bad --api URL {0}")]
    Url(String),
    #[error("the sidecar refused: {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("cannot write: {0}")]
    Output(#[from] std::io::Error),
}

/// Percent-encodes a subject for a path segment (`>` is not a URI
/// character; `*` and `.` stay as they are).
pub fn encode_subject(subject: &str) -> String {
    let mut out = String::with_capacity(subject.len());
    for b in subject.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'*') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn header<'a>(m: &'a StoredMessage, name: &str) -> Option<&'a str> {
    m.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.first())
        .map(String::as_str)
}

/// The body as one line of text when it is printable UTF-8, else its size.
fn body_text(data: &[u8]) -> String {
    match std::str::from_utf8(data) {
        Ok(text)
            if !text
                .chars()
                .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t')) =>
        {
            text.replace('\r', "\\r").replace('\n', "\\n")
        }
        _ => format!("<{} bytes>", data.len()),
    }
}

/// One line per message: sequence, time, subject, content type, ce-type
/// and idempotency key when present, then the body (or its size).
pub fn format_line(m: &StoredMessage) -> String {
    let mut line = format!("#{} {} {}", m.seq, m.time, m.subject);
    for (label, name) in [
        ("", "content-type"),
        ("type=", "ce-type"),
        ("key=", "nats-msg-id"),
    ] {
        if let Some(v) = header(m, name) {
            line.push_str(&format!(" {label}{v}"));
        }
    }
    let data = base64::engine::general_purpose::STANDARD
        .decode(&m.data_base64)
        .unwrap_or_default();
    line.push(' ');
    line.push_str(&body_text(&data));
    line
}

/// Follows the subject until `stop` completes. Returns an error only when
/// the sidecar refuses the read (bad subject, wrong token); an unreachable
/// or restarting sidecar is retried.
pub async fn tail(
    options: &TailOptions,
    out: &mut (impl Write + Send),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), TailError> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut after = options.from.map(|f| f.saturating_sub(1));
    let mut delay = Duration::from_millis(200);
    tokio::pin!(stop);
    loop {
        let url = format!(
            "{}/v1/subjects/{}/live{}",
            options.api.trim_end_matches('/'),
            encode_subject(&options.subject),
            after.map(|a| format!("?after={a}")).unwrap_or_default()
        );
        let uri: Uri = url
            .parse()
            .map_err(|_| TailError::Url(options.api.clone()))?;
        let mut request = Request::get(uri).header(header::ACCEPT, "application/x-ndjson");
        if let Some(token) = &options.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Empty::new())
            .map_err(|_| TailError::Url(options.api.clone()))?;
        let response = tokio::select! {
            _ = &mut stop => return Ok(()),
            r = client.request(request) => r,
        };
        match response {
            Ok(response) if response.status() == StatusCode::OK => {
                delay = Duration::from_millis(200);
                let mut body = response.into_body();
                let mut buf: Vec<u8> = Vec::new();
                loop {
                    let frame = tokio::select! {
                        _ = &mut stop => return Ok(()),
                        f = body.frame() => f,
                    };
                    let Some(Ok(frame)) = frame else { break };
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    buf.extend_from_slice(&data);
                    while let Some(i) = buf.iter().position(|&b| b == b'\n') {
                        let line: Vec<u8> = buf.drain(..=i).collect();
                        let line = &line[..i];
                        if line.is_empty() {
                            continue; // keep-alive
                        }
                        match serde_json::from_slice::<StoredMessage>(line) {
                            Ok(m) => {
                                writeln!(out, "{}", format_line(&m))?;
                                out.flush()?;
                                after = Some(m.seq);
                            }
                            Err(e) => {
                                eprintln!("jetway tail: skipping a line that is not a message: {e}")
                            }
                        }
                    }
                }
                eprintln!(
                    "jetway tail: the stream ended; reconnecting{}",
                    after.map(|a| format!(" after {a}")).unwrap_or_default()
                );
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                return Err(TailError::Refused { status, message });
            }
            Ok(response) => {
                eprintln!("jetway tail: {}; retrying", response.status());
            }
            Err(e) => {
                eprintln!("jetway tail: cannot reach {}: {e}; retrying", options.api);
            }
        }
        tokio::select! {
            _ = &mut stop => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: &[(&str, &str)], data: &[u8]) -> StoredMessage {
        StoredMessage {
            stream: "ORDERS".into(),
            seq: 42,
            subject: "orders.42".into(),
            time: "2024-05-01T12:00:00Z".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                .collect(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(data),
        }
    }

    #[test]
    fn lines_show_what_matters() {
        let table = [
            (message(&[], b"hello"), "#42 2024-05-01T12:00:00Z orders.42 hello"),
            (
                message(
                    &[
                        ("Content-Type", "application/json"),
                        ("ce-type", "order.created"),
                        ("Nats-Msg-Id", "k1"),
                        ("x-tenant", "t"),
                    ],
                    b"{\"id\":42}",
                ),
                "#42 2024-05-01T12:00:00Z orders.42 application/json type=order.created key=k1 {\"id\":42}",
            ),
            (message(&[], &[0, 159, 146, 150]), "#42 2024-05-01T12:00:00Z orders.42 <4 bytes>"),
            (message(&[], b"a\nb"), "#42 2024-05-01T12:00:00Z orders.42 a\\nb"),
            (message(&[], b"bell\x07"), "#42 2024-05-01T12:00:00Z orders.42 <5 bytes>"),
        ];
        for (m, want) in table {
            assert_eq!(format_line(&m), want);
        }
    }

    #[test]
    fn subjects_are_encoded_for_the_path() {
        assert_eq!(encode_subject("orders.>"), "orders.%3E");
        assert_eq!(encode_subject("orders.*.x-1"), "orders.*.x-1");
        assert_eq!(encode_subject("a/b?c"), "a%2Fb%3Fc");
    }
}
