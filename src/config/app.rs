//! `app`: the local service jetway sits beside: where its health is asked
//! and the token it gets on every delivery (SPEC 2, 4).

use hyper::Uri;

use super::values::{http_uri, secret, string, Secret, Section};
use super::Problem;

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub health_url: Option<Uri>,
    pub callback_token: Option<Secret>,
}

const KEYS: [&str; 2] = ["health_url", "callback_token"];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> AppConfig {
    let app = top.child("app", &KEYS, p);
    let health_url = app.opt("health_url", |v| http_uri(&string(v)?), p);
    let callback_token = app.opt("callback_token", secret, p);
    AppConfig {
        health_url,
        callback_token,
    }
}
