//! The history of an entity: `GET /v1/subjects/{subject}/messages`, page
//! by page, by an ephemeral consumer filtered on the subject (or, for the
//! benchmark that compares them, by direct gets).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, pull, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::Context;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::{DeleteOnDrop, ReadError, Reads, StoredMessage, Target, INACTIVE_THRESHOLD};
use crate::error::ApiError;

/// Default and largest `limit` of a history page.
pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// Most bytes of bodies one history page holds.
const PAGE_BYTES: usize = 16 << 20;

/// One page of a history.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<StoredMessage>,
    /// The `after` of the next page; `None` when this one reached the end.
    pub next: Option<u64>,
}

/// A history page by JetStream's direct get (`next_by_subj`): one request
/// per message, plus one to learn whether more follow. Needs
/// `allow_direct` on the stream.
pub async fn history_direct(
    js: &Context,
    target: &Target,
    after: u64,
    limit: usize,
) -> Result<Page, ReadError> {
    let direct = |source| ReadError::Direct {
        stream: target.stream.clone(),
        source,
    };
    let stream = js
        .get_stream_no_info(&target.stream)
        .await
        .map_err(|e| ReadError::Consumer {
            stream: target.stream.clone(),
            source: e.into(),
        })?;
    let mut items = Vec::with_capacity(limit.min(MAX_LIMIT));
    let mut from = after.saturating_add(1);
    // One more than the page, to tell a full last page from a middle one.
    while items.len() <= limit {
        let m = match stream
            .direct_get_next_for_subject(target.filter.as_str(), Some(from))
            .await
        {
            Ok(m) => m,
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => break,
            Err(e) => return Err(direct(e)),
        };
        from = m.sequence.saturating_add(1);
        if items.len() == limit {
            let next = items.last().map(|m: &StoredMessage| m.seq);
            return Ok(Page { items, next });
        }
        items.push(StoredMessage::from_direct(&target.stream, &m));
    }
    Ok(Page { items, next: None })
}

/// A history page by an ephemeral pull consumer filtered on the subject:
/// one request to create it (its `num_pending` says how many follow), one
/// pull for the page, and the deletion after it (not waited for).
pub async fn history_consumer(
    js: &Context,
    target: &Target,
    after: u64,
    limit: usize,
) -> Result<Page, ReadError> {
    let err = |source: async_nats::Error| ReadError::Consumer {
        stream: target.stream.clone(),
        source,
    };
    let consumer: consumer::Consumer<pull::Config> = js
        .create_consumer_on_stream(
            pull::Config {
                filter_subject: target.filter.clone(),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: after.saturating_add(1),
                },
                ack_policy: AckPolicy::None,
                inactive_threshold: INACTIVE_THRESHOLD,
                memory_storage: true,
                num_replicas: 1,
                ..Default::default()
            },
            &target.stream,
        )
        .await
        .map_err(|e| err(e.into()))?;
    let _delete = DeleteOnDrop::new(js.clone(), &target.stream, &consumer.cached_info().name);
    let pending = consumer.cached_info().num_pending;
    let want = usize::try_from(pending).unwrap_or(usize::MAX).min(limit);
    let mut items = Vec::with_capacity(want);
    if want == 0 {
        return Ok(Page { items, next: None });
    }
    // A page holds at most PAGE_BYTES of bodies (or one message, if the
    // server allows larger ones): `limit` large messages never pile up in
    // memory; the page is shorter and `next` says where to go on.
    let max_payload = js.client().server_info().max_payload;
    let mut batch = consumer
        .fetch()
        .max_messages(want)
        .max_bytes(PAGE_BYTES.max(max_payload))
        .expires(js_timeout())
        .messages()
        .await
        .map_err(|e| err(e.into()))?;
    let mut left = pending;
    while let Some(m) = batch.next().await {
        let m = match m {
            Ok(m) => m,
            // The byte budget ended the pull: the page is what came.
            Err(_) if !items.is_empty() => break,
            Err(e) => return Err(err(e)),
        };
        let info = m.info().map_err(err)?;
        left = info.pending;
        items.push(StoredMessage::from_consumer(
            &target.stream,
            info.stream_sequence,
            info.published,
            &m,
        ));
        if items.len() == want || left == 0 {
            break;
        }
    }
    let next = if left > 0 {
        items.last().map(|m| m.seq)
    } else {
        None
    };
    Ok(Page { items, next })
}

/// How long a pull for a page may wait for the messages the consumer said
/// it has.
fn js_timeout() -> Duration {
    Duration::from_secs(5)
}

/// The query of a history read; numbers parsed by hand so a bad one gets
/// a clear 400.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `after` and `limit` of a history read, checked.
pub fn page_bounds(after: Option<&str>, limit: Option<&str>) -> Result<(u64, usize), ApiError> {
    let after = match after {
        None => 0,
        Some(a) => a
            .parse::<u64>()
            .map_err(|_| ApiError::BadRequest(format!("after `{a}` is not a sequence number")))?,
    };
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| {
                ApiError::BadRequest(format!("limit `{l}` is not a number from 1 to {MAX_LIMIT}"))
            })?,
    };
    Ok((after, limit))
}

/// `GET /v1/subjects/{subject}/messages?after=SEQ&limit=N`.
pub async fn history(
    State(reads): State<Arc<Reads>>,
    Path(subject): Path<String>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::BadRequest(format!("bad query: {e}")))?;
    let (after, limit) = page_bounds(query.after.as_deref(), query.limit.as_deref())?;
    let target = reads.target(&subject)?;
    let page = history_consumer(&reads.js, &target, after, limit).await?;
    Ok(Json(page).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_bounds_are_checked() {
        assert_eq!(page_bounds(None, None).ok(), Some((0, DEFAULT_LIMIT)));
        assert_eq!(page_bounds(Some("7"), Some("1000")).ok(), Some((7, 1000)));
        for (a, l) in [
            (Some("x"), None),
            (Some("-1"), None),
            (None, Some("0")),
            (None, Some("1001")),
            (None, Some("ten")),
        ] {
            assert_eq!(
                page_bounds(a, l).map_err(|e| e.code()).err(),
                Some("bad_request"),
                "{a:?} {l:?}"
            );
        }
    }
}
