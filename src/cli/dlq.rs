//! `jetway dlq list|show|replay|delete`: the dead letters of a
//! subscription.

use base64::Engine;
use clap::Subcommand;
use hyper::Method;
use serde::Deserialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::client::{parse, segment, Api};
use super::output::{json_line, or_dash, table};
use super::{CliError, Remote};

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

/// `jetway dlq list|show|replay|delete`.
pub(super) async fn run(command: Dlq) -> Result<String, (String, CliError)> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

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
}
