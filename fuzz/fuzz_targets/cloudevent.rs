//! Structured-mode CloudEvents: any body is either refused with
//! `cloudevent_invalid` or yields the event's non-empty source and id, and
//! the message id derived from them is storable as a NATS header.
#![no_main]

use jetway::publish::headers::{cloudevent_msg_id, validate_structured_cloudevent};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| {
    match validate_structured_cloudevent(body) {
        Ok((source, id)) => {
            assert!(!source.is_empty() && !id.is_empty());
            let v: serde_json::Value =
                serde_json::from_slice(body).expect("accepted bodies are JSON");
            assert_eq!(v["specversion"], "1.0");
            assert_eq!(v["source"].as_str(), Some(source.as_str()));
            assert_eq!(v["id"].as_str(), Some(id.as_str()));
            let msg_id = cloudevent_msg_id(&source, &id);
            assert!(msg_id.starts_with("ce-") && msg_id.len() == 35);
            assert!(msg_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-'));
        }
        Err(e) => {
            assert_eq!(e.code(), "cloudevent_invalid");
            assert_eq!(e.status().as_u16(), 400);
        }
    }
});
