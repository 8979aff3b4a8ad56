//! Request bodies: read up to a limit, within a memory budget shared by
//! every request (a request waits, unread, for room), and a refused body
//! drained for a moment so the client sees its 413.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::Publisher;
use crate::error::ApiError;

/// How much of a refused body is still read and thrown away, and for how
/// long, so the client sees the 413 before the connection closes.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Bytes of request bodies in memory at once. Beyond it a request waits,
/// unread (TCP pushes back on its client), up to `nats.request_timeout`,
/// then gets a 429; a batch larger than the whole budget (up to 16 x
/// `max_body`) waits until it can have all of it. Without it 64 connections
/// of 16 MiB batches would need 1 GiB. 8 x `max_body` measured best: at 16 x
/// the allocator's peak under 64 connections of 2 MB batches was 52 MB, at 8 x
/// 37 MB with the same throughput, at 4 x 24 MB but a third slower.
pub fn body_budget(max_body: usize) -> usize {
    max_body.saturating_mul(BODY_BUDGET_FACTOR)
}

/// See [`body_budget`].
pub const BODY_BUDGET_FACTOR: usize = 8;

pub(super) fn body_budget_kib(max_body: usize) -> u32 {
    u32::try_from(kib(body_budget(max_body))).unwrap_or(u32::MAX >> 3)
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).max(1)
}

/// A body that came in one piece of at least this many bytes is kept as
/// it came instead of copied (a 16 KiB copy was a fifth of a publish's
/// instructions); a smaller one is copied rather than hold on to the
/// connection's read buffer.
const KEEP_AS_IS: usize = 4096;

/// What is reserved for a body of unknown length before its first bytes.
const FIRST_RESERVE: usize = 64 * 1024;

impl Publisher {
    /// Reserves `kib` more KiB of request bodies, waiting until `until` at
    /// most. Never more than the whole budget, which could never be had.
    async fn reserve(
        &self,
        kib: usize,
        until: tokio::time::Instant,
    ) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(kib).unwrap_or(u32::MAX).min(self.bodies_kib);
        if let Ok(permit) = self.bodies.clone().try_acquire_many_owned(n) {
            return Ok(permit);
        }
        match tokio::time::timeout_at(until, self.bodies.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::BodiesOverloaded(body_budget(self.max_body))),
        }
    }

    /// Reads a request body up to `limit` bytes; a larger one (declared or
    /// streamed, e.g. chunked) is refused as soon as it crosses the limit.
    /// The permit holds the body's room in the budget: keep it until the
    /// request is answered.
    pub async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
        limit: usize,
    ) -> Result<(Bytes, OwnedSemaphorePermit), ApiError> {
        let too_large = || ApiError::PayloadTooLarge(format!("body is larger than {limit} bytes"));
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            if !expects_continue(headers) {
                linger(body);
            }
            return Err(too_large());
        }
        let until = tokio::time::Instant::now() + self.request_timeout;
        let budget = self.bodies_kib as usize;
        let first = declared.map_or(FIRST_RESERVE.min(limit), |len| len as usize);
        let mut reserved = kib(first).min(budget);
        let mut permit = match self.reserve(reserved, until).await {
            Ok(permit) => permit,
            Err(e) => {
                if !expects_continue(headers) {
                    linger(body);
                }
                return Err(e);
            }
        };
        let mut body = body;
        // A body that comes in one piece is kept as it came; one in several
        // is put together in `buf`.
        let mut first: Option<Bytes> = None;
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|_| ApiError::BadRequest("the request body could not be read".into()))?;
            if let Ok(data) = frame.into_data() {
                let len = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
                if len > limit {
                    linger(body);
                    return Err(too_large());
                }
                let needed = kib(len);
                // Streamed without a length: room grows in doublings, up to
                // the whole budget (then this body is alone in it).
                if needed > reserved && reserved < budget {
                    let more = (needed - reserved).max(reserved).min(budget - reserved);
                    match self.reserve(more, until).await {
                        Ok(extra) => {
                            reserved += more;
                            permit.merge(extra);
                        }
                        Err(e) => {
                            linger(body);
                            return Err(e);
                        }
                    }
                }
                if buf.is_empty() && first.is_none() {
                    first = Some(data);
                } else {
                    if let Some(first) = first.take() {
                        buf.reserve(declared.map_or(len, |d| d as usize).max(len));
                        buf.extend_from_slice(&first);
                    }
                    buf.extend_from_slice(&data);
                }
            }
        }
        let body = match first {
            // A small piece is a slice of the connection's read buffer:
            // copied, so that buffer is not held for as long as the
            // publish takes.
            Some(piece) if piece.len() < KEEP_AS_IS => Bytes::copy_from_slice(&piece),
            Some(piece) => piece,
            None => buf.freeze(),
        };
        Ok((body, permit))
    }
}

/// A client waiting for `100 Continue` sends no body once refused.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Reads and discards what follows a refused body, up to `LINGER_BYTES` or
/// `LINGER_TIME`, while the 413 is sent. Closing a connection with unread
/// data makes the kernel reset it, and a client still sending would then
/// see a broken pipe instead of the 413 (and likely retry); web servers'
/// "lingering close" for the same reason. Never buffered.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let mut left = LINGER_BYTES;
        let drain = async {
            while let Some(Ok(frame)) = body.frame().await {
                let n = frame.data_ref().map_or(0, |d| d.len());
                if n >= left {
                    break;
                }
                left -= n;
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}
