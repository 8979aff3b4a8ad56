//! Admin and read routes (SPEC sections 5 and 6): subscriptions, pause and
//! resume, dead letters, and stored messages.

use std::sync::Arc;

use async_nats::jetstream::message::StreamMessage;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

use crate::dead_letter::{self, DlqError};
use crate::delivery::{Delivery, ProvisionError, Selection, Subscription};
use crate::error::ApiError;
use crate::publish::Publisher;
use crate::subject;

fn find<'a>(delivery: &'a Delivery, name: &str) -> Result<&'a Arc<Subscription>, ApiError> {
    delivery
        .subscription(name)
        .ok_or_else(|| ApiError::NotFound(format!("no subscription named {name}")))
}

impl From<DlqError> for ApiError {
    fn from(e: DlqError) -> Self {
        match e {
            DlqError::NotFound(_) => ApiError::NotFound(e.to_string()),
            DlqError::Publish(_) | DlqError::Stream(_) => ApiError::NatsUnavailable(e.to_string()),
        }
    }
}

/// `GET /v1/subscriptions`.
pub async fn list_subscriptions(State(delivery): State<Arc<Delivery>>) -> Response {
    let statuses =
        futures::future::join_all(delivery.subscriptions().iter().map(|s| delivery.status(s)))
            .await;
    Json(serde_json::json!({ "subscriptions": statuses })).into_response()
}

/// `POST /v1/subscriptions/{name}/pause`.
pub async fn pause(
    State(delivery): State<Arc<Delivery>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&delivery, &name)?;
    delivery.pause(sub);
    Ok(Json(delivery.status(sub).await).into_response())
}

/// `POST /v1/subscriptions/{name}/resume`.
pub async fn resume(
    State(delivery): State<Arc<Delivery>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&delivery, &name)?;
    delivery.resume(sub);
    Ok(Json(delivery.status(sub).await).into_response())
}

/// `POST /v1/subscriptions/{name}/reset`: deletes the subscription's
/// consumer and creates it anew from the subscription (so from `deliver`),
/// which resolves a `config_conflict`.
pub async fn reset(
    State(delivery): State<Arc<Delivery>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let sub = find(&delivery, &name)?;
    delivery.reset(sub).await.map_err(|e| match e {
        ProvisionError::NoStream { subject, .. } => ApiError::NoStream(subject),
        ProvisionError::Consumer { .. } => ApiError::NatsUnavailable(e.to_string()),
    })?;
    Ok(Json(delivery.status(sub).await).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    after: u64,
}

fn default_limit() -> usize {
    100
}

/// Most dead letters one page holds.
pub const MAX_PAGE: usize = 1000;

#[derive(Serialize)]
struct DeadLetterPage {
    items: Vec<dead_letter::Item>,
    next: Option<u64>,
}

/// `GET /v1/dead-letters/{subscription}?limit=100&after=SEQ`.
pub async fn list_dead_letters(
    State(delivery): State<Arc<Delivery>>,
    Path(name): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(page) = page.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    if page.limit == 0 || page.limit > MAX_PAGE {
        return Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    let sub = find(&delivery, &name)?;
    let (messages, next) = delivery
        .dead_letters
        .list(sub.name(), page.after, page.limit)
        .await?;
    Ok(Json(DeadLetterPage {
        items: messages.iter().map(dead_letter::item).collect(),
        next,
    })
    .into_response())
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    sequences: Option<Vec<u64>>,
    limit: Option<usize>,
}

/// `POST /v1/dead-letters/{subscription}/replay`.
pub async fn replay_dead_letters(
    State(delivery): State<Arc<Delivery>>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let request: ReplayRequest = if body.iter().all(|b| b.is_ascii_whitespace()) {
        ReplayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::BadRequest(format!(
                "expected {{\"sequences\":[...]}} or {{\"limit\":N}}: {e}"
            ))
        })?
    };
    let selection = match (request.sequences, request.limit) {
        (Some(_), Some(_)) => {
            return Err(ApiError::BadRequest(
                "give `sequences` or `limit`, not both".into(),
            ))
        }
        (Some(sequences), None) => Selection::Sequences(sequences),
        (None, Some(0)) => return Err(ApiError::BadRequest("`limit` must be at least 1".into())),
        (None, Some(n)) => Selection::Limit(n),
        (None, None) => Selection::All,
    };
    let sub = find(&delivery, &name)?;
    let result = delivery.replay(sub, selection).await?;
    Ok(Json(result).into_response())
}

/// `DELETE /v1/dead-letters/{subscription}/{dlq_sequence}`.
pub async fn delete_dead_letter(
    State(delivery): State<Arc<Delivery>>,
    Path((name, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{seq}` is not a sequence number")))?;
    let sub = find(&delivery, &name)?;
    delivery.dead_letters.delete(sub.name(), seq).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A stored message as the read routes show it.
#[derive(Serialize)]
pub struct Message {
    stream: String,
    seq: u64,
    subject: String,
    time: String,
    headers: std::collections::BTreeMap<String, Vec<String>>,
    data_base64: String,
}

fn message(stream: &str, m: &StreamMessage) -> Message {
    Message {
        stream: stream.to_string(),
        seq: m.sequence,
        subject: m.subject.to_string(),
        time: m.time.format(&Rfc3339).unwrap_or_default(),
        headers: dead_letter::header_map(&m.headers),
        data_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
    }
}

/// `GET /v1/streams/{stream}/messages/{seq}`: configured streams only.
pub async fn get_message(
    State(publisher): State<Arc<Publisher>>,
    Path((stream_name, seq)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("`{seq}` is not a sequence number")))?;
    if !crate::config::is_valid_stream_name(&stream_name) {
        return Err(ApiError::BadRequest(format!(
            "`{stream_name}` is not a stream name"
        )));
    }
    if !publisher.is_configured_stream(&stream_name) {
        return Err(ApiError::NotFound(format!(
            "stream {stream_name} is not one of this sidecar's streams (its config's `streams`)"
        )));
    }
    let stream = publisher
        .jetstream()
        .get_stream_no_info(&stream_name)
        .await
        .map_err(|_| ApiError::NotFound(format!("no stream {stream_name}")))?;
    let m = stream
        .get_raw_message(seq)
        .await
        .map_err(|_| ApiError::NotFound(format!("no message {seq} in {stream_name}")))?;
    Ok(Json(message(&stream_name, &m)).into_response())
}

/// `GET /v1/subjects/{subject}/last`: the current state of an entity, from
/// the configured stream that captures the subject.
pub async fn last_message(
    State(publisher): State<Arc<Publisher>>,
    Path(subject_name): Path<String>,
) -> Result<Response, ApiError> {
    subject::validate(&subject_name)?;
    if subject::is_reserved(&subject_name) {
        return Err(ApiError::SubjectReserved(subject_name));
    }
    let stream_name = publisher
        .configured_stream(&subject_name)
        .ok_or_else(|| ApiError::NoStream(subject_name.clone()))?
        .to_string();
    let mut stream = publisher
        .jetstream()
        .get_stream(&stream_name)
        .await
        .map_err(|e| ApiError::NatsUnavailable(format!("stream {stream_name}: {e}")))?;
    let direct = stream
        .info()
        .await
        .map(|i| i.config.allow_direct)
        .unwrap_or(false);
    let not_found = || ApiError::NotFound(format!("no message on {subject_name}"));
    let m = if direct {
        stream
            .direct_get_last_for_subject(subject_name.clone())
            .await
            .map_err(|_| not_found())?
    } else {
        stream
            .get_last_raw_message_by_subject(&subject_name)
            .await
            .map_err(|_| not_found())?
    };
    Ok(Json(message(&stream_name, &m)).into_response())
}
