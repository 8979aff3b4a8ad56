//! What delivery and the dead-letter stream both speak of: a message on its
//! way to an endpoint, and why one was given up on. Both depend on this
//! module; neither depends on the other for it.

use bytes::Bytes;
use time::OffsetDateTime;

/// A message on its way to an endpoint, from a consumer or a dead letter.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub subject: String,
    pub stream: String,
    pub sequence: u64,
    /// 1 on the first attempt.
    pub attempt: u64,
    pub published: OffsetDateTime,
    pub headers: async_nats::HeaderMap,
    pub payload: Bytes,
}

impl Envelope {
    /// The stored message id, else `<stream>:<seq>`: the same on every
    /// attempt and on replay, so receivers can drop repeats.
    pub fn idempotency_key(&self) -> String {
        match self.headers.get("Nats-Msg-Id") {
            Some(id) if !id.as_str().is_empty() => id.as_str().to_string(),
            _ => format!("{}:{}", self.stream, self.sequence),
        }
    }
}

/// Why a message went to the dead-letter stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The endpoint answered a status outside `retry_on`.
    Rejected,
    /// `max_attempts` attempts failed.
    Exhausted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Exhausted => "exhausted",
        }
    }
}
