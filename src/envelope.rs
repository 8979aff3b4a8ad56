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
    /// attempt and on replay, so receivers can drop repeats. A `Display`,
    /// so a log line or a header writes it without a `String` in between.
    pub fn idempotency_key(&self) -> IdempotencyKey<'_> {
        match stored_header(&self.headers, "Nats-Msg-Id") {
            Some(id) if !id.is_empty() => IdempotencyKey::Id(id),
            _ => IdempotencyKey::Position(&self.stream, self.sequence),
        }
    }
}

/// What [`Envelope::idempotency_key`] is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdempotencyKey<'a> {
    /// The stored `Nats-Msg-Id`.
    Id(&'a str),
    /// `<stream>:<seq>`.
    Position(&'a str, u64),
}

impl std::fmt::Display for IdempotencyKey<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdempotencyKey::Id(id) => f.write_str(id),
            IdempotencyKey::Position(stream, seq) => write!(f, "{stream}:{seq}"),
        }
    }
}

/// The first value of a stored header, by its exact name (NATS header
/// names are case-sensitive). A walk over the few headers a message has:
/// `HeaderMap::get` with a `&str` allocates the name and hashes it, which
/// the delivery path did three times per message.
pub fn stored_header<'a>(headers: &'a async_nats::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| AsRef::<str>::as_ref(*n) == name)
        .and_then(|(_, values)| values.first())
        .map(|v| v.as_str())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(headers: async_nats::HeaderMap) -> Envelope {
        Envelope {
            subject: "orders.created".into(),
            stream: "ORDERS".into(),
            sequence: 42,
            attempt: 1,
            published: OffsetDateTime::UNIX_EPOCH,
            headers,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn the_key_is_the_message_id_else_the_position() {
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(
            envelope(headers.clone()).idempotency_key().to_string(),
            "ORDERS:42"
        );
        headers.insert("Nats-Msg-Id", "");
        assert_eq!(
            envelope(headers.clone()).idempotency_key().to_string(),
            "ORDERS:42"
        );
        headers.insert("Nats-Msg-Id", "order-1");
        assert_eq!(envelope(headers).idempotency_key().to_string(), "order-1");
    }

    #[test]
    fn stored_headers_are_found_by_their_exact_name() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("traceparent", "a");
        headers.insert("Nats-Msg-Id", "b");
        headers.append("x-two", "first");
        headers.append("x-two", "second");
        for name in [
            "traceparent",
            "Nats-Msg-Id",
            "x-two",
            "nats-msg-id",
            "missing",
        ] {
            assert_eq!(
                stored_header(&headers, name),
                headers.get(name).map(|v| v.as_str()),
                "{name}"
            );
        }
    }
}
