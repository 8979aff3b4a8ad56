//! A stored message as every read shows it, from a direct get or from a
//! consumer's delivery.

use async_nats::jetstream::{self, message::StreamMessage};
use base64::Engine;
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;

/// A stored message as the read routes show it (the shape of
/// `GET /v1/streams/{stream}/messages/{seq}`).
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub stream: String,
    pub seq: u64,
    pub subject: String,
    pub time: String,
    pub headers: std::collections::BTreeMap<String, Vec<String>>,
    pub data_base64: String,
}

impl StoredMessage {
    pub(super) fn from_direct(stream: &str, m: &StreamMessage) -> StoredMessage {
        StoredMessage {
            stream: stream.to_string(),
            seq: m.sequence,
            subject: m.subject.to_string(),
            time: m.time.format(&Rfc3339).unwrap_or_default(),
            headers: crate::dead_letter::header_map(&m.headers),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }
    }

    pub(super) fn from_consumer(
        stream: &str,
        seq: u64,
        time: time::OffsetDateTime,
        m: &jetstream::Message,
    ) -> Self {
        StoredMessage {
            stream: stream.to_string(),
            seq,
            subject: m.subject.to_string(),
            time: time.format(&Rfc3339).unwrap_or_default(),
            headers: m
                .headers
                .as_ref()
                .map(crate::dead_letter::header_map)
                .unwrap_or_default(),
            data_base64: base64::engine::general_purpose::STANDARD.encode(&m.payload),
        }
    }
}
