//! `metrics`: where `/metrics`, `/healthz` and `/readyz` listen (SPEC 2, 7).

use std::net::SocketAddr;

use super::values::{socket_addr, Section};
use super::Problem;

#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

const KEYS: [&str; 1] = ["listen"];

pub(super) fn parse(top: &Section<'_>, p: &mut Vec<Problem>) -> MetricsConfig {
    let metrics = top.child("metrics", &KEYS, p);
    let listen = metrics.or(
        "listen",
        SocketAddr::from(([0, 0, 0, 0], 4481)),
        socket_addr,
        p,
    );
    MetricsConfig { listen }
}
