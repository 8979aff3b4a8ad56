//! The operator commands (`jetway subscriptions`, `jetway dlq ...`,
//! `jetway pause|resume`): a thin client of a running sidecar's `/v1` API
//! (SPEC sections 5 and 6), printing tables for people and the API's JSON
//! for scripts (`--json`). docs/cli.md describes them and their exit codes.

use std::process::ExitCode;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use clap::{Args, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde::Deserialize;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where the sidecar's API is when neither `--api` nor `JETWAY_CLI_API` says.
pub const DEFAULT_API: &str = "http://127.0.0.1:4480";

/// Exit codes (docs/cli.md); 0 is success.
pub mod exit {
    /// The sidecar answered with an error (bad request, NATS unavailable, ...).
    pub const API_ERROR: u8 = 1;
    /// Wrong arguments (clap's own code).
    pub const USAGE: u8 = 2;
    /// `dlq replay` ran, but some dead letters failed again and stay.
    pub const REPLAY_FAILED: u8 = 3;
    /// No such subscription or dead letter.
    pub const NOT_FOUND: u8 = 4;
    /// The sidecar could not be reached (sysexits EX_UNAVAILABLE).
    pub const UNREACHABLE: u8 = 69;
    /// Token missing or wrong (sysexits EX_NOPERM).
    pub const UNAUTHORIZED: u8 = 77;
}

/// How to reach the sidecar, and how to print.
#[derive(Args, Debug, Clone)]
pub struct Remote {
    /// The sidecar's API (`api.listen`).
    #[arg(long, env = "JETWAY_CLI_API", default_value = DEFAULT_API)]
    pub api: String,
    /// The sidecar's `api.token`, when it has one.
    #[arg(long, env = "JETWAY_CLI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// The operator commands, flattened into `jetway`'s own.
#[derive(Subcommand, Debug)]
pub enum Operator {
    /// List the subscriptions: state, pending, in flight, dead letters.
    Subscriptions {
        #[command(flatten)]
        remote: Remote,
    },
    /// Read, replay and discard dead letters.
    Dlq {
        #[command(subcommand)]
        command: Dlq,
    },
    /// Stop fetching for a subscription (deliveries in flight finish).
    Pause {
        subscription: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Fetch and deliver again for a paused subscription.
    Resume {
        subscription: String,
        #[command(flatten)]
        remote: Remote,
    },
}

#[derive(Subcommand, Debug)]
pub enum Dlq {
    /// List the dead letters of a subscription, oldest first.
    List {
        subscription: String,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Only those after this dead-letter sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Show one dead letter: its headers and body.
    Show {
        subscription: String,
        sequence: u64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Deliver dead letters again (all, or the given sequences).
    Replay {
        subscription: String,
        sequences: Vec<u64>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Discard one dead letter.
    Delete {
        subscription: String,
        sequence: u64,
        #[command(flatten)]
        remote: Remote,
    },
}

/// Why a command failed; each kind has its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("cannot reach the sidecar at {api}: {reason}. Is jetway running there? Set --api or JETWAY_CLI_API")]
    Unreachable { api: String, reason: String },
    #[error(
        "the sidecar at {api} needs a token: give its api.token with --token or JETWAY_CLI_TOKEN"
    )]
    TokenMissing { api: String },
    #[error("the sidecar at {api} refused the token (401): check --token or JETWAY_CLI_TOKEN against its api.token")]
    TokenWrong { api: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the sidecar answered {status}: {message}")]
    Api { status: u16, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{failed} dead letters failed again and stay in the DLQ")]
    ReplayFailed { failed: u64 },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Unreachable { .. } => exit::UNREACHABLE,
            CliError::TokenMissing { .. } | CliError::TokenWrong { .. } => exit::UNAUTHORIZED,
            CliError::NotFound(_) => exit::NOT_FOUND,
            CliError::Api { .. } => exit::API_ERROR,
            CliError::Invalid(_) => exit::USAGE,
            CliError::ReplayFailed { .. } => exit::REPLAY_FAILED,
        }
    }
}

/// Runs one operator command; prints its output or its error.
pub fn main(command: Operator) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jetway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(command)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err((out, e)) => {
            print!("{out}");
            eprintln!("jetway: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

/// The output of a command, or (what it printed before failing, why).
async fn run(command: Operator) -> Result<String, (String, CliError)> {
    let no_output = |e| (String::new(), e);
    match command {
        Operator::Subscriptions { remote } => {
            let api = Api::new(&remote).map_err(no_output)?;
            let v = api.call(Method::GET, "/v1/subscriptions", None).await;
            let v = v.map_err(no_output)?;
            Ok(if remote.json {
                json_line(&v)
            } else {
                subscriptions_table(&v)
            })
        }
        Operator::Pause {
            subscription,
            remote,
        } => pause_or_resume(&remote, &subscription, "pause").await,
        Operator::Resume {
            subscription,
            remote,
        } => pause_or_resume(&remote, &subscription, "resume").await,
        Operator::Dlq { command } => dlq(command).await,
    }
}

async fn pause_or_resume(
    remote: &Remote,
    subscription: &str,
    action: &str,
) -> Result<String, (String, CliError)> {
    let no_output = |e| (String::new(), e);
    let api = Api::new(remote).map_err(no_output)?;
    let path = format!("/v1/subscriptions/{}/{action}", segment(subscription));
    let v = api
        .call(Method::POST, &path, None)
        .await
        .map_err(no_output)?;
    Ok(if remote.json {
        json_line(&v)
    } else {
        format!(
            "{}: {}\n",
            v["name"].as_str().unwrap_or(subscription),
            v["state"].as_str().unwrap_or("?")
        )
    })
}

async fn dlq(command: Dlq) -> Result<String, (String, CliError)> {
    let no_output = |e| (String::new(), e);
    match command {
        Dlq::List {
            subscription,
            limit,
            after,
            remote,
        } => {
            let api = Api::new(&remote).map_err(no_output)?;
            let path = format!(
                "/v1/dead-letters/{}?limit={limit}&after={after}",
                segment(&subscription)
            );
            let v = api
                .call(Method::GET, &path, None)
                .await
                .map_err(no_output)?;
            if remote.json {
                return Ok(json_line(&v));
            }
            let page: Page = parse(&v).map_err(no_output)?;
            let mut out = dead_letters_table(&page.items, OffsetDateTime::now_utc());
            if let Some(next) = page.next {
                out.push_str(&format!("(more: --after {next})\n"));
            }
            Ok(out)
        }
        Dlq::Show {
            subscription,
            sequence,
            remote,
        } => {
            let api = Api::new(&remote).map_err(no_output)?;
            // One page of one item, starting just before it.
            let path = format!(
                "/v1/dead-letters/{}?limit=1&after={}",
                segment(&subscription),
                sequence.saturating_sub(1)
            );
            let v = api
                .call(Method::GET, &path, None)
                .await
                .map_err(no_output)?;
            let item = v["items"]
                .as_array()
                .and_then(|items| items.first())
                .filter(|i| i["dlq_sequence"].as_u64() == Some(sequence))
                .cloned()
                .ok_or_else(|| {
                    no_output(CliError::NotFound(format!(
                        "no dead letter {sequence} for subscription {subscription}"
                    )))
                })?;
            if remote.json {
                return Ok(json_line(&item));
            }
            let item: Item = parse(&item).map_err(no_output)?;
            Ok(show(&item))
        }
        Dlq::Replay {
            subscription,
            sequences,
            remote,
        } => {
            let api = Api::new(&remote).map_err(no_output)?;
            let path = format!("/v1/dead-letters/{}/replay", segment(&subscription));
            let body = (!sequences.is_empty())
                .then(|| serde_json::json!({ "sequences": sequences }).to_string());
            let v = api
                .call(Method::POST, &path, body)
                .await
                .map_err(no_output)?;
            let failed = v["failed"].as_u64().unwrap_or(0);
            let out = if remote.json {
                json_line(&v)
            } else {
                let remaining = v["remaining"]
                    .as_u64()
                    .map(|r| format!(", remaining {r}"))
                    .unwrap_or_default();
                format!(
                    "replayed {}, failed {failed}{remaining}\n",
                    v["replayed"].as_u64().unwrap_or(0),
                )
            };
            if failed > 0 {
                return Err((out, CliError::ReplayFailed { failed }));
            }
            Ok(out)
        }
        Dlq::Delete {
            subscription,
            sequence,
            remote,
        } => {
            let api = Api::new(&remote).map_err(no_output)?;
            let path = format!("/v1/dead-letters/{}/{sequence}", segment(&subscription));
            api.call(Method::DELETE, &path, None)
                .await
                .map_err(no_output)?;
            Ok(if remote.json {
                json_line(&serde_json::json!({
                    "subscription": subscription,
                    "dlq_sequence": sequence,
                    "deleted": true,
                }))
            } else {
                format!("deleted dead letter {sequence} of {subscription}\n")
            })
        }
    }
}

/// A subscription as `GET /v1/subscriptions` reports it.
#[derive(Debug, Deserialize)]
struct Status {
    name: String,
    state: String,
    pending: Option<u64>,
    in_flight: Option<i64>,
    dead_letters: Option<u64>,
}

/// A dead letter as `GET /v1/dead-letters/{subscription}` reports it.
#[derive(Debug, Deserialize)]
struct Item {
    dlq_sequence: u64,
    #[serde(default)]
    original_subject: String,
    #[serde(default)]
    original_stream: String,
    #[serde(default)]
    original_sequence: u64,
    #[serde(default)]
    reason: String,
    status: Option<u16>,
    error: Option<String>,
    #[serde(default)]
    attempts: u64,
    #[serde(default)]
    at: String,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    data_base64: String,
}

#[derive(Debug, Deserialize)]
struct Page {
    items: Vec<Item>,
    next: Option<u64>,
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T, CliError> {
    T::deserialize(v).map_err(|e| CliError::Api {
        status: 200,
        message: format!("an answer this jetway cannot read: {e}"),
    })
}

fn json_line(v: &Value) -> String {
    format!("{v}\n")
}

/// A path segment: subscription names are `[a-z0-9-]+`, anything else
/// is percent-encoded so it cannot change the route.
fn segment(s: &str) -> String {
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

/// Columns padded to their widest cell, two spaces apart (kubectl style).
fn table(headings: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headings.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(headings.to_vec());
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
    }
    out
}

fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn subscriptions_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["subscriptions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| Status::deserialize(s).ok())
        .map(|s| {
            vec![
                s.name,
                s.state,
                or_dash(s.pending),
                or_dash(s.in_flight),
                or_dash(s.dead_letters),
            ]
        })
        .collect();
    table(
        &["NAME", "STATE", "PENDING", "IN FLIGHT", "DEAD LETTERS"],
        &rows,
    )
}

/// Most characters of an error shown in a table cell.
const ERROR_CELL: usize = 60;

fn dead_letters_table(items: &[Item], now: OffsetDateTime) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.dlq_sequence.to_string(),
                i.reason.clone(),
                or_dash(i.status),
                i.attempts.to_string(),
                age(&i.at, now),
                one_line(i.error.as_deref().unwrap_or("-"), ERROR_CELL),
            ]
        })
        .collect();
    table(
        &["SEQUENCE", "REASON", "STATUS", "ATTEMPTS", "AGE", "ERROR"],
        &rows,
    )
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max {
        flat.chars().take(max - 1).collect::<String>() + "…"
    } else {
        flat
    }
}

/// How long ago an RFC 3339 time was, kubectl style: `42s`, `5m`, `3h`, `2d`.
fn age(at: &str, now: OffsetDateTime) -> String {
    let Ok(t) = OffsetDateTime::parse(at, &Rfc3339) else {
        return "?".to_string();
    };
    let secs = (now - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn show(i: &Item) -> String {
    let mut out = String::new();
    let field = |out: &mut String, k: &str, v: &str| out.push_str(&format!("{k:<10} {v}\n"));
    field(&mut out, "sequence:", &i.dlq_sequence.to_string());
    field(
        &mut out,
        "original:",
        &format!(
            "{} (stream {}, sequence {})",
            i.original_subject, i.original_stream, i.original_sequence
        ),
    );
    field(&mut out, "reason:", &i.reason);
    field(&mut out, "status:", &or_dash(i.status));
    field(&mut out, "attempts:", &i.attempts.to_string());
    field(&mut out, "at:", &i.at);
    field(&mut out, "error:", i.error.as_deref().unwrap_or("-"));
    out.push_str("headers:\n");
    for (name, values) in &i.headers {
        for value in values {
            out.push_str(&format!("  {name}: {value}\n"));
        }
    }
    out.push('\n');
    match base64::engine::general_purpose::STANDARD.decode(&i.data_base64) {
        Ok(body) => match String::from_utf8(body) {
            Ok(text) if !text.chars().any(|c| c.is_control() && !c.is_whitespace()) => {
                out.push_str(&text);
                if !text.ends_with('\n') {
                    out.push('\n');
                }
            }
            Ok(_) | Err(_) => out.push_str(&format!("(binary body, base64)\n{}\n", i.data_base64)),
        },
        Err(_) => out.push_str(&format!("(body as sent, base64)\n{}\n", i.data_base64)),
    }
    out
}

/// Connection setup, and how long one request may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A client of one sidecar's `/v1` API.
struct Api {
    base: String,
    token: Option<String>,
    client: Client<HttpConnector, Full<Bytes>>,
}

impl Api {
    fn new(remote: &Remote) -> Result<Api, CliError> {
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
    async fn call(
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn table_pads_columns_to_the_widest_cell() {
        let t = table(
            &["NAME", "STATE"],
            &[
                vec!["order-emails".into(), "running".into()],
                vec!["a".into(), "paused".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME          STATE\norder-emails  running\na             paused\n"
        );
    }

    #[test]
    fn age_reads_like_kubectl() {
        let now = datetime!(2026-01-02 00:00:00 UTC);
        for (at, want) in [
            ("2026-01-01T23:59:18Z", "42s"),
            ("2026-01-01T23:55:00Z", "5m"),
            ("2026-01-01T21:00:00Z", "3h"),
            ("2025-12-28T00:00:00Z", "5d"),
            ("2026-01-02T00:00:05Z", "0s"),
            ("yesterday", "?"),
        ] {
            assert_eq!(age(at, now), want, "{at}");
        }
    }

    #[test]
    fn errors_are_one_short_line_in_a_table() {
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("0123456789abc", 5), "0123…");
    }

    #[test]
    fn names_cannot_change_the_route() {
        assert_eq!(segment("order-emails"), "order-emails");
        assert_eq!(segment("../x?y"), "%2E%2E%2Fx%3Fy");
    }

    #[test]
    fn every_error_kind_has_its_exit_code() {
        let api = "http://127.0.0.1:1".to_string();
        for (e, code) in [
            (
                CliError::Unreachable {
                    api: api.clone(),
                    reason: "refused".into(),
                },
                69,
            ),
            (CliError::TokenMissing { api: api.clone() }, 77),
            (CliError::TokenWrong { api }, 77),
            (CliError::NotFound("x".into()), 4),
            (
                CliError::Api {
                    status: 503,
                    message: "x".into(),
                },
                1,
            ),
            (CliError::ReplayFailed { failed: 1 }, 3),
            (CliError::Invalid("x".into()), 2),
        ] {
            assert_eq!(e.exit_code(), code, "{e}");
        }
    }
}
