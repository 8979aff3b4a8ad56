//! The publish routes: `POST /v1/publish/{subject}` and the batch,
//! `POST /v1/publish`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::{batch, Publisher, BATCH_BODY_FACTOR};
use crate::error::ApiError;

/// `POST /v1/publish/{subject}`.
pub async fn publish_one(
    State(publisher): State<Arc<Publisher>>,
    Path(subject): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    crate::memory::touch();
    let admitted = async {
        let permit = publisher.admit(1)?;
        publisher.check_subject(&subject)?;
        let (payload, room) = publisher
            .read_body(&headers, body, publisher.max_body)
            .await?;
        let msg = publisher.prepare(subject.clone(), &headers, payload)?;
        Ok::<_, ApiError>((permit, room, msg))
    }
    .await;
    let (_permit, _room, msg) = match admitted {
        Ok(admitted) => admitted,
        Err(e) => {
            publisher.record(&subject, &Err(e.clone()), None);
            return e.into_response();
        }
    };
    match publisher.publish(msg).await {
        Ok(stored) => (StatusCode::OK, Json(stored)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Serialize)]
struct BatchAnswer {
    results: Vec<ItemAnswer>,
}

/// One item's answer, written out as it is: no JSON tree built per stored
/// item on the way to the body.
#[derive(Serialize)]
#[serde(untagged)]
enum ItemAnswer {
    Stored(super::Stored),
    Failed(serde_json::Value),
}

/// `POST /v1/publish`: a batch.
pub async fn publish_batch(
    State(publisher): State<Arc<Publisher>>,
    request: axum::extract::Request,
) -> Response {
    crate::memory::touch();
    // The request whole, not the `HeaderMap` extractor: that one clones.
    let (parts, body) = request.into_parts();
    let headers = parts.headers;
    let result = async {
        let ndjson = batch::is_ndjson(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if publisher.health.is_shutting_down() {
            return Err(ApiError::ShuttingDown);
        }
        let limit = publisher.max_body.saturating_mul(BATCH_BODY_FACTOR);
        let (body, _room) = publisher.read_body(&headers, body, limit).await?;
        // The items' payloads are parts of the body (the room reserved for
        // the body stands for them).
        let items = batch::parse_body(body, ndjson)?;
        let _permit = publisher.admit(items.len())?;
        publisher.publish_batch(items).await
    }
    .await;
    match result {
        Ok(results) => {
            let all_ok = results.iter().all(|r| r.is_ok());
            let results = results
                .into_iter()
                .map(|r| match r {
                    Ok(stored) => ItemAnswer::Stored(stored),
                    Err(e) => ItemAnswer::Failed(e.body()),
                })
                .collect();
            let status = if all_ok {
                StatusCode::OK
            } else {
                StatusCode::MULTI_STATUS
            };
            (status, Json(BatchAnswer { results })).into_response()
        }
        Err(e) => {
            if !matches!(e, ApiError::NatsUnavailable(_)) {
                // A refused batch has no subject yet; the connection error
                // was counted per item by publish_batch.
                publisher.record_refused(&e);
            }
            e.into_response()
        }
    }
}
