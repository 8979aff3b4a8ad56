//! `publish`: what this app may publish and what is stored with it
//! (SPEC 2, 3).

use super::values::{boolean, string_list, Section};
use super::Problem;
use crate::subject;

#[derive(Debug, Clone)]
pub struct PublishConfig {
    /// `None`: any subject a stream captures.
    pub allow: Option<Vec<String>>,
    /// Lower-case header names stored with the message.
    pub forward_headers: Vec<String>,
    pub generate_ids: bool,
}

const KEYS: [&str; 3] = ["allow", "forward_headers", "generate_ids"];

/// Hop-by-hop and framing headers: they describe one HTTP connection or
/// the publish request's own body, not the event (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "host",
    "content-length",
];

/// Why `name` (lower case) must not be in `publish.forward_headers`, or
/// `None` if it may be. A forwarded header is stored in the stream and sent
/// to every consumer, so it must neither steer JetStream or jetway nor carry
/// credentials nor describe the request it came in on.
fn refused_forward_header(name: &str) -> Option<String> {
    if name.starts_with("nats-") {
        return Some(
            "Nats-* headers are JetStream's own instructions (Nats-Msg-Id deduplicates, \
             Nats-Rollup purges, Nats-Expected-* fence); a publisher must not set them \
             around jetway's checks"
                .into(),
        );
    }
    if name.starts_with("jetway-") {
        return Some(
            "Jetway-* headers are jetway's own (the expected-sequence headers, \
             Jetway-Event-Type, and those set on delivery); stored, they would let a \
             publisher forge them for every consumer"
                .into(),
        );
    }
    let credential = match name {
        "authorization" => Some("Authorization would store the app's jetway API token"),
        "proxy-authorization" => Some("Proxy-Authorization would store proxy credentials"),
        "cookie" => Some("Cookie would store the caller's session"),
        "set-cookie" => Some("Set-Cookie would store a session"),
        _ => None,
    };
    if let Some(what) = credential {
        return Some(format!(
            "{what} in the stream and hand it to every consumer"
        ));
    }
    if HOP_BY_HOP.contains(&name) {
        return Some(
            "a hop-by-hop or framing header describes the one HTTP request it came in \
             on, not the event; delivery sets its own"
                .into(),
        );
    }
    None
}

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> PublishConfig {
    let publish = top.child("publish", &KEYS, p);
    let allow = publish.opt("allow", string_list, p);
    if let Some(allow) = &allow {
        for (i, pattern) in allow.iter().enumerate() {
            if let Err(e) = subject::validate_pattern(pattern) {
                p.push(Problem {
                    path: format!("publish.allow[{i}]"),
                    message: e.to_string(),
                });
            }
        }
    }
    let written = publish.or("forward_headers", Vec::new(), string_list, p);
    let forward_headers: Vec<String> = written.iter().map(|h| h.to_ascii_lowercase()).collect();
    for (i, (h, as_written)) in forward_headers.iter().zip(&written).enumerate() {
        let message = if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            format!("`{h}` is not a valid header name")
        } else if let Some(why) = refused_forward_header(h) {
            format!("`{as_written}` is refused: {why}")
        } else {
            continue;
        };
        p.push(Problem {
            path: format!("publish.forward_headers[{i}]"),
            message,
        });
    }
    let generate_ids = publish.or("generate_ids", false, boolean, p);
    PublishConfig {
        allow,
        forward_headers,
        generate_ids,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_support::{load, paths};

    #[test]
    fn forward_headers_refuse_what_must_not_be_stored() {
        // (name as written, refused, a word the reason must contain)
        let table = [
            ("Nats-Msg-Id", true, "JetStream"),
            ("nats-rollup", true, "JetStream"),
            ("NATS-Expected-Stream", true, "JetStream"),
            ("Jetway-Expected-Stream", true, "jetway's own"),
            ("jetway-subscription", true, "jetway's own"),
            ("Authorization", true, "API token"),
            ("proxy-authorization", true, "proxy credentials"),
            ("Cookie", true, "session"),
            ("Set-Cookie", true, "session"),
            ("Connection", true, "hop-by-hop"),
            ("Keep-Alive", true, "hop-by-hop"),
            ("Proxy-Connection", true, "hop-by-hop"),
            ("Transfer-Encoding", true, "hop-by-hop"),
            ("TE", true, "hop-by-hop"),
            ("Trailer", true, "hop-by-hop"),
            ("Upgrade", true, "hop-by-hop"),
            ("Host", true, "hop-by-hop"),
            ("Content-Length", true, "hop-by-hop"),
            ("x-tenant", false, ""),
            ("X-Request-Id", false, ""),
            ("natsy", false, ""),
            ("x-nats-msg-id", false, ""),
            ("jetwayx", false, ""),
            ("x-authorization", false, ""),
            ("cookies", false, ""),
            ("tenant", false, ""),
            ("hosts", false, ""),
        ];
        for (name, refused, why) in table {
            let got = refused_forward_header(&name.to_ascii_lowercase());
            assert_eq!(got.is_some(), refused, "{name}: {got:?}");
            if let Some(message) = got {
                assert!(message.contains(why), "{name}: {message}");
            }
        }
    }

    #[test]
    fn refused_forward_headers_are_problems_at_their_index() {
        let yaml = "app_id: a\npublish: { forward_headers: [x-tenant, Nats-Msg-Id, x-ok, AUTHORIZATION, Host] }\n";
        assert_eq!(
            paths(yaml),
            vec![
                "publish.forward_headers[1]",
                "publish.forward_headers[3]",
                "publish.forward_headers[4]",
            ]
        );
        let problems = load(yaml).err().unwrap_or_default();
        assert!(
            problems[0].message.contains("`Nats-Msg-Id` is refused"),
            "{problems:?}"
        );
        assert!(
            problems[1]
                .message
                .contains("Authorization would store the app's jetway API token in the stream and hand it to every consumer"),
            "{problems:?}"
        );
        let c = load("app_id: a\npublish: { forward_headers: [X-Tenant, x-request-id] }\n")
            .expect("ordinary headers are fine");
        assert_eq!(c.publish.forward_headers, vec!["x-tenant", "x-request-id"]);
    }
}
