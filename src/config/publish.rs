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
    let forward_headers: Vec<String> = publish
        .or("forward_headers", Vec::new(), string_list, p)
        .into_iter()
        .map(|h| h.to_ascii_lowercase())
        .collect();
    for (i, h) in forward_headers.iter().enumerate() {
        if axum::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.push(Problem {
                path: format!("publish.forward_headers[{i}]"),
                message: format!("`{h}` is not a valid header name"),
            });
        }
    }
    let generate_ids = publish.or("generate_ids", false, boolean, p);
    PublishConfig {
        allow,
        forward_headers,
        generate_ids,
    }
}
