//! Durability checks (SPEC section 11): each stream jetway uses compared
//! with what at-least-once needs, at start, every minute and on every
//! `GET /v1/streams`. What falls short is a warning in the answer, in the
//! log (once per change) and in `jetway_stream_warnings`; jetway never
//! changes a stream, and warnings never fail `/readyz`.
//!
//! [`warnings`] is the decision, a pure function of what the server said;
//! [`Checker`] asks the server.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// The oldest release without the stream-loss bugs of nats-server#6888.
pub const SAFE_SERVER: (u64, u64, u64) = (2, 10, 23);
/// How often the streams are checked besides start and `GET /v1/streams`.
pub const EVERY: Duration = Duration::from_secs(60);

/// One warning: a stable code and what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Warning {
    pub code: &'static str,
    pub message: String,
}

/// A peer of a replicated stream, not the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Replica {
    pub name: String,
    pub current: bool,
    pub lag: Option<u64>,
}

/// Where a replicated stream lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub leader: Option<String>,
    pub replicas: Vec<Replica>,
}

/// A stream as `GET /v1/streams` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub subjects: Vec<String>,
    pub storage: &'static str,
    pub replicas: usize,
    pub messages: u64,
    pub bytes: u64,
    pub cluster: Option<Cluster>,
    pub warnings: Vec<Warning>,
    #[serde(skip)]
    pub duplicate_window: Duration,
}

/// What the connection knows of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFacts {
    pub version: String,
    /// Servers known in the cluster (1 when alone or unknown).
    pub servers: usize,
}

/// `"2.10.23"` (and `"v2.9.10"`, `"2.11.0-beta.1"`) as numbers.
pub fn parse_version(v: &str) -> Option<(u64, u64, u64)> {
    let v = v.trim().trim_start_matches('v');
    let core = v.split(['-', '+']).next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// The warnings of one stream (SPEC 11).
pub fn warnings(
    stream: &StreamReport,
    server: &ServerFacts,
    request_timeout: Duration,
) -> Vec<Warning> {
    let mut out = Vec::new();
    let name = &stream.name;
    if stream.replicas == 1 && server.servers >= 3 {
        out.push(Warning {
            code: "single_replica",
            message: format!(
                "stream {name} has 1 replica in a cluster of {} servers: losing the server that holds it loses acknowledged events; set replicas: 3",
                server.servers
            ),
        });
    }
    if stream.storage == "memory" {
        out.push(Warning {
            code: "memory_storage",
            message: format!(
                "stream {name} is stored in memory: a server restart loses it; use storage: file"
            ),
        });
    }
    if let Some(cluster) = &stream.cluster {
        let behind: Vec<&str> = cluster
            .replicas
            .iter()
            .filter(|r| !r.current)
            .map(|r| r.name.as_str())
            .collect();
        if !behind.is_empty() {
            out.push(Warning {
                code: "replica_lagging",
                message: format!(
                    "stream {name}: replica {} is not current; until it catches up, losing the leader can lose recent events",
                    behind.join(", ")
                ),
            });
        }
        if cluster.leader.as_deref().is_none_or(str::is_empty) {
            out.push(Warning {
                code: "no_leader",
                message: format!(
                    "stream {name} has no leader: publishes wait or fail until one is elected; check that a majority of its replicas are up"
                ),
            });
        }
    }
    if stream.duplicate_window < request_timeout * 2 {
        out.push(Warning {
            code: "duplicate_window_short",
            message: format!(
                "stream {name} keeps message ids for {:?}, less than twice nats.request_timeout ({:?}): a resend with the same Idempotency-Key could be stored twice; raise duplicate_window",
                stream.duplicate_window, request_timeout
            ),
        });
    }
    if parse_version(&server.version).is_some_and(|v| v < SAFE_SERVER) {
        out.push(Warning {
            code: "server_outdated",
            message: format!(
                "nats-server {} is older than 2.10.23: releases before it can lose a whole stream after a few hard kills (nats-server#6888); upgrade the servers",
                server.version
            ),
        });
    }
    out
}

fn report(info: &stream::Info) -> StreamReport {
    let cluster = info
        .cluster
        .as_ref()
        .filter(|c| c.name.is_some())
        .map(|c| Cluster {
            leader: c.leader.clone(),
            replicas: c
                .replicas
                .iter()
                .map(|p| Replica {
                    name: p.name.clone(),
                    current: p.current,
                    lag: p.lag,
                })
                .collect(),
        });
    StreamReport {
        name: info.config.name.clone(),
        subjects: info.config.subjects.clone(),
        storage: match info.config.storage {
            stream::StorageType::Memory => "memory",
            stream::StorageType::File => "file",
        },
        replicas: info.config.num_replicas.max(1),
        messages: info.state.messages,
        bytes: info.state.bytes,
        cluster,
        warnings: Vec::new(),
        duplicate_window: info.config.duplicate_window,
    }
}

/// Asks the server about the streams jetway uses.
pub struct Checker {
    js: jetstream::Context,
    client: async_nats::Client,
    streams: Vec<String>,
    request_timeout: Duration,
    metrics: Metrics,
    /// The codes last logged per stream, so a warning is logged once per
    /// change, not every minute.
    logged: Mutex<HashMap<String, Vec<&'static str>>>,
}

impl Checker {
    pub fn new(
        js: jetstream::Context,
        client: async_nats::Client,
        streams: Vec<String>,
        request_timeout: Duration,
        metrics: Metrics,
    ) -> Arc<Checker> {
        Arc::new(Checker {
            js,
            client,
            streams,
            request_timeout,
            metrics,
            logged: Mutex::default(),
        })
    }

    fn server(&self, reports: &[StreamReport]) -> ServerFacts {
        let info = self.client.server_info();
        // The server's INFO lists the client URLs of the cluster's servers;
        // a replicated stream names its peers. Either may be missing
        // (no_advertise, R1): take what is known.
        let peers = reports
            .iter()
            .filter_map(|r| r.cluster.as_ref())
            .map(|c| c.replicas.len() + 1)
            .max()
            .unwrap_or(1);
        ServerFacts {
            version: info.version,
            servers: info.connect_urls.len().max(peers).max(1),
        }
    }

    /// Every stream with its warnings; a stream that cannot be read is an
    /// error (the answer would hide it).
    pub async fn check(&self) -> Result<Vec<StreamReport>, ApiError> {
        let mut reports = Vec::with_capacity(self.streams.len());
        for name in &self.streams {
            let mut stream = self.js.get_stream(name).await.map_err(|e| {
                ApiError::NatsUnavailable(format!("cannot read stream {name}: {e}"))
            })?;
            let info = stream.info().await.map_err(|e| {
                ApiError::NatsUnavailable(format!("cannot read stream {name}: {e}"))
            })?;
            reports.push(report(info));
        }
        let server = self.server(&reports);
        for r in &mut reports {
            r.warnings = warnings(r, &server, self.request_timeout);
            self.publish(r);
        }
        Ok(reports)
    }

    /// The metric, and the log when the warnings of a stream changed.
    fn publish(&self, r: &StreamReport) {
        self.metrics
            .stream_warnings
            .with_label_values(&[r.name.as_str()])
            .set(r.warnings.len() as i64);
        let codes: Vec<&'static str> = r.warnings.iter().map(|w| w.code).collect();
        let mut logged = self.logged.lock().unwrap_or_else(|e| e.into_inner());
        if logged.get(&r.name) == Some(&codes) {
            return;
        }
        if codes.is_empty() {
            tracing::info!(stream = %r.name, "stream meets jetway's durability checks");
        }
        for w in &r.warnings {
            tracing::warn!(stream = %r.name, code = w.code, "{}", w.message);
        }
        logged.insert(r.name.clone(), codes);
    }

    /// Checks now and every [`EVERY`], until dropped with its task.
    pub async fn watch(self: Arc<Self>) {
        loop {
            if let Err(e) = self.check().await {
                tracing::debug!(error = %e, "durability check skipped");
            }
            tokio::time::sleep(EVERY).await;
        }
    }
}

/// `GET /v1/streams`: asks the server on each call.
pub async fn list_streams(State(checker): State<Arc<Checker>>) -> Response {
    match checker.check().await {
        Ok(streams) => Json(serde_json::json!({ "streams": streams })).into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> StreamReport {
        StreamReport {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            storage: "file",
            replicas: 3,
            messages: 0,
            bytes: 0,
            cluster: Some(Cluster {
                leader: Some("n1".into()),
                replicas: vec![
                    Replica {
                        name: "n2".into(),
                        current: true,
                        lag: Some(0),
                    },
                    Replica {
                        name: "n3".into(),
                        current: true,
                        lag: Some(0),
                    },
                ],
            }),
            warnings: Vec::new(),
            duplicate_window: Duration::from_secs(120),
        }
    }

    fn server(version: &str, servers: usize) -> ServerFacts {
        ServerFacts {
            version: version.into(),
            servers,
        }
    }

    fn codes(s: &StreamReport, srv: &ServerFacts) -> Vec<&'static str> {
        warnings(s, srv, Duration::from_secs(5))
            .into_iter()
            .map(|w| w.code)
            .collect()
    }

    #[test]
    fn a_sound_stream_has_no_warning() {
        assert!(codes(&stream(), &server("2.15.1", 3)).is_empty());
    }

    #[test]
    fn each_shortfall_has_its_warning() {
        let srv = server("2.15.1", 3);
        let mut s = stream();
        s.replicas = 1;
        s.cluster = None;
        assert_eq!(codes(&s, &srv), ["single_replica"]);
        // Alone, one replica is all there is.
        assert!(codes(&s, &server("2.15.1", 1)).is_empty());

        let mut s = stream();
        s.storage = "memory";
        assert_eq!(codes(&s, &srv), ["memory_storage"]);

        let mut s = stream();
        if let Some(c) = &mut s.cluster {
            c.replicas[1].current = false;
        }
        assert_eq!(codes(&s, &srv), ["replica_lagging"]);

        let mut s = stream();
        if let Some(c) = &mut s.cluster {
            c.leader = None;
        }
        assert_eq!(codes(&s, &srv), ["no_leader"]);

        let mut s = stream();
        s.duplicate_window = Duration::from_secs(9);
        assert_eq!(codes(&s, &srv), ["duplicate_window_short"]);
        s.duplicate_window = Duration::from_secs(10);
        assert!(codes(&s, &srv).is_empty());

        assert_eq!(codes(&stream(), &server("2.9.10", 3)), ["server_outdated"]);
        assert_eq!(codes(&stream(), &server("2.10.22", 3)), ["server_outdated"]);
        assert!(codes(&stream(), &server("2.10.23", 3)).is_empty());
    }

    #[test]
    fn every_warning_says_what_to_change() {
        let mut s = stream();
        s.replicas = 1;
        s.storage = "memory";
        s.duplicate_window = Duration::from_secs(1);
        for w in warnings(&s, &server("2.9.10", 3), Duration::from_secs(5)) {
            assert!(w.message.contains("ORDERS") || w.code == "server_outdated");
            assert!(
                ["set ", "use ", "raise ", "upgrade ", "check "]
                    .iter()
                    .any(|verb| w.message.contains(verb)),
                "{}: {}",
                w.code,
                w.message
            );
        }
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.9.10"), Some((2, 9, 10)));
        assert_eq!(parse_version("v2.10.23"), Some((2, 10, 23)));
        assert_eq!(parse_version("2.11.0-beta.1"), Some((2, 11, 0)));
        assert_eq!(parse_version("2.12"), Some((2, 12, 0)));
        assert_eq!(parse_version("x"), None);
        assert_eq!(parse_version(""), None);
    }
}
