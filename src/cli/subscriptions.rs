//! `jetway subscriptions`, `jetway pause|resume`.

use hyper::Method;
use serde::Deserialize;
use serde_json::Value;

use super::client::{segment, Api};
use super::output::{json_line, or_dash, table};
use super::{CliError, Remote};

/// `jetway subscriptions`: a table of `GET /v1/subscriptions`.
pub(super) async fn list(remote: &Remote) -> Result<String, (String, CliError)> {
    let no_output = |e| (String::new(), e);
    let api = Api::new(remote).map_err(no_output)?;
    let v = api.call(Method::GET, "/v1/subscriptions", None).await;
    let v = v.map_err(no_output)?;
    Ok(if remote.json {
        json_line(&v)
    } else {
        subscriptions_table(&v)
    })
}

pub(super) async fn pause_or_resume(
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

/// A subscription as `GET /v1/subscriptions` reports it.
#[derive(Debug, Deserialize)]
struct Status {
    name: String,
    state: String,
    pending: Option<u64>,
    in_flight: Option<i64>,
    dead_letters: Option<u64>,
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
