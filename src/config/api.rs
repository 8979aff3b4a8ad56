//! `api`: the publish, read and admin listener (SPEC 2, 3, 6): its address,
//! token and limits.

use std::net::SocketAddr;

use super::values::{boolean, secret, size, socket_addr, uint, Secret, Section};
use super::Problem;

/// Largest `api.max_in_flight` (each one may hold a request body).
const MAX_IN_FLIGHT_LIMIT: u64 = 1_000_000;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub insecure_listen: bool,
    pub max_body: usize,
    pub max_in_flight: usize,
    /// Live reads open at once before 429 (SPEC section 6).
    pub max_live: usize,
}

const KEYS: [&str; 6] = [
    "listen",
    "token",
    "insecure_listen",
    "max_body",
    "max_in_flight",
    "max_live",
];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> ApiConfig {
    let api = top.child("api", &KEYS, p);
    let listen = api.or(
        "listen",
        SocketAddr::from(([127, 0, 0, 1], 4480)),
        socket_addr,
        p,
    );
    let token = api.opt("token", secret, p);
    if matches!(&token, Some(t) if t.expose().is_empty()) {
        p.push(Problem {
            path: "api.token".into(),
            message: "must not be empty (leave it unset to disable)".into(),
        });
    }
    let insecure_listen = api.or("insecure_listen", false, boolean, p);
    if !listen.ip().is_loopback() && token.is_none() && !insecure_listen {
        p.push(Problem {
            path: "api.listen".into(),
            message: format!(
                "{listen} is reachable from outside the pod but api.token is not set; \
                 set api.token, listen on 127.0.0.1, or set api.insecure_listen: true"
            ),
        });
    }
    let max_body = api.or("max_body", 1 << 20, size, p);
    if max_body == 0 {
        p.push(Problem {
            path: "api.max_body".into(),
            message: "must be more than 0".into(),
        });
    }
    let max_in_flight = api.or("max_in_flight", 10_000, uint, p);
    if !(1..=MAX_IN_FLIGHT_LIMIT).contains(&max_in_flight) {
        p.push(Problem {
            path: "api.max_in_flight".into(),
            message: format!("must be between 1 and {MAX_IN_FLIGHT_LIMIT}"),
        });
    }
    let max_live = api.or("max_live", 64, uint, p);
    if max_live == 0 {
        p.push(Problem {
            path: "api.max_live".into(),
            message: "must be more than 0".into(),
        });
    }
    ApiConfig {
        listen,
        token,
        insecure_listen,
        max_body,
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(usize::MAX),
        max_live: usize::try_from(max_live).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::test_support::{load, paths};

    #[test]
    fn public_listen_needs_token_or_explicit_opt_in() {
        assert_eq!(
            paths("app_id: a\napi: { listen: '0.0.0.0:1' }\n"),
            vec!["api.listen"]
        );
        assert!(load("app_id: a\napi: { listen: '0.0.0.0:1', token: t }\n").is_ok());
        assert!(load("app_id: a\napi: { listen: '0.0.0.0:1', insecure_listen: true }\n").is_ok());
    }

    #[test]
    fn max_live_is_more_than_zero() {
        assert_eq!(
            paths("app_id: a\napi: { max_live: 0 }\n"),
            vec!["api.max_live"]
        );
        assert_eq!(load("app_id: a\n").map(|c| c.api.max_live).ok(), Some(64));
    }

    #[test]
    fn max_in_flight_is_bounded() {
        // Moved from the nats.url credentials test, where it used to sit.
        assert_eq!(
            paths("app_id: a\napi: { max_in_flight: 99999999999 }\n"),
            vec!["api.max_in_flight"]
        );
    }
}
