//! The content types jetway tells apart on requests. Both the publish path
//! (header mapping) and the schema check of a typed publish ask whether a
//! body is a structured CloudEvent, so the answer lives below both.

/// Content type of a structured-mode CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// Whether a `Content-Type` value names a structured-mode CloudEvent
/// (case-insensitive, parameters such as `charset` aside).
pub fn is_structured_cloudevent(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .eq_ignore_ascii_case(CLOUDEVENTS_JSON)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn structured_cloudevents_are_told_by_their_media_type() {
        for ct in [
            CLOUDEVENTS_JSON,
            "application/cloudevents+json; charset=utf-8",
            " Application/CloudEvents+JSON ",
        ] {
            assert!(is_structured_cloudevent(ct), "{ct}");
        }
        for ct in ["application/json", "application/cloudevents-batch+json", ""] {
            assert!(!is_structured_cloudevent(ct), "{ct}");
        }
    }
}
