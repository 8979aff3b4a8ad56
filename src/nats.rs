//! The NATS side: connecting (auth, TLS, reconnect forever, connection
//! metrics) and provisioning the configured streams and the dead-letter
//! stream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event, ServerAddr};

use crate::config::{Config, DeadLetterConfig, NatsAuth, NatsConfig, Storage, StreamConfig};
use crate::health::Health;
use crate::metrics::Metrics;

/// Subjects of the dead-letter stream.
pub const DLQ_SUBJECTS: &str = "jetway.dlq.>";
/// The dead letters of app `a`, subscription `s` are `{DLQ_PREFIX}.a.s`.
pub const DLQ_PREFIX: &str = "jetway.dlq";

/// The inbox prefix of a sidecar's connection: replies to its requests
/// come here, so its NATS user needs to subscribe to this and no other
/// inbox (`crate::permissions`).
pub fn inbox_prefix(app_id: &str) -> String {
    format!("_INBOX_{app_id}")
}

/// Failure to set up the NATS client (before any network I/O).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot read NATS credentials {path}: {source}")]
    Credentials {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid NATS server URL (position {0} in nats.url)")]
    Url(usize),
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
}

/// Failure to put a stream in place.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("cannot look up stream {stream}: {source}")]
    Lookup {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    #[error("cannot create stream {stream}: {source}")]
    Create {
        stream: String,
        #[source]
        source: jetstream::context::CreateStreamError,
    },
}

/// Connects with the configured servers and credentials. The client keeps
/// reconnecting forever; connection state flows into `health` and metrics.
/// Returns at once even when no server is reachable yet.
pub async fn connect(
    config: &NatsConfig,
    app_id: &str,
    health: Arc<Health>,
    metrics: Metrics,
) -> Result<Client, ConnectError> {
    let addrs: Vec<ServerAddr> = config
        .urls
        .iter()
        .enumerate()
        .map(|(i, u)| u.parse().map_err(|_| ConnectError::Url(i + 1)))
        .collect::<Result<_, _>>()?;

    let mut options = match &config.auth {
        NatsAuth::None => ConnectOptions::new(),
        NatsAuth::CredentialsFile(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                path: path.display().to_string(),
                source,
            })?,
        NatsAuth::NkeySeedFile(path) => {
            let seed = tokio::fs::read_to_string(path).await.map_err(|source| {
                ConnectError::Credentials {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            ConnectOptions::with_nkey(seed.trim().to_string())
        }
        NatsAuth::Token(token) => ConnectOptions::new().token(token.expose().to_string()),
        NatsAuth::UserPassword { user, password } => {
            ConnectOptions::new().user_and_password(user.clone(), password.expose().to_string())
        }
    };
    if let Some(ca) = &config.tls.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&config.tls.cert_file, &config.tls.key_file) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if config.tls.is_enabled() {
        options = options.require_tls(true);
    }

    let ever_connected = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let options = options
        .name(format!("jetway-{app_id}"))
        // Its own inboxes, so a least-privilege user can be kept from
        // reading the replies of other apps' sidecars.
        .custom_inbox_prefix(inbox_prefix(app_id))
        .connection_timeout(config.connect_timeout)
        .request_timeout(Some(config.request_timeout))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(reconnect_delay)
        .event_callback(move |event| {
            let health = health.clone();
            let metrics = metrics.clone();
            let ever_connected = ever_connected.clone();
            async move {
                match event {
                    Event::Connected => {
                        health.set_connected(true);
                        metrics.nats_connected.set(1);
                        if ever_connected.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            metrics.nats_reconnects_total.inc();
                            tracing::info!("reconnected to NATS");
                        } else {
                            tracing::info!("connected to NATS");
                        }
                    }
                    Event::Disconnected => {
                        health.set_connected(false);
                        metrics.nats_connected.set(0);
                        tracing::warn!("disconnected from NATS; reconnecting");
                    }
                    Event::Closed => {
                        health.set_connected(false);
                        metrics.nats_connected.set(0);
                    }
                    Event::LameDuckMode => {
                        tracing::info!("NATS server entered lame duck mode")
                    }
                    Event::SlowConsumer(sid) => {
                        tracing::warn!(sid, "NATS reports a slow consumer")
                    }
                    Event::ServerError(e) => tracing::warn!(error = %e, "NATS server error"),
                    Event::ClientError(e) => tracing::warn!(error = %e, "NATS client error"),
                    Event::Draining => tracing::debug!("draining NATS connection"),
                }
            }
        });
    Ok(options.connect(addrs).await?)
}

/// Backoff between reconnect attempts: fast first, then at most 2 s, so an
/// outage of the server costs little more than the outage itself.
fn reconnect_delay(attempts: usize) -> Duration {
    let millis = 50u64.saturating_mul(1u64 << attempts.min(6));
    Duration::from_millis(millis.min(2_000))
}

/// A JetStream context whose API calls and PubAck waits are bounded by
/// `request_timeout`, with backpressure instead of errors when many
/// publishes await their acks.
pub fn jetstream(client: Client, config: &Config) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(config.nats.request_timeout)
        .max_ack_inflight(config.api.max_in_flight.max(1024))
        .backpressure_on_inflight(true)
        .build(client)
}

pub fn wanted_stream(s: &StreamConfig) -> stream::Config {
    stream::Config {
        name: s.name.clone(),
        subjects: s.subjects.clone(),
        storage: match s.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: s.replicas,
        max_age: s.max_age,
        duplicate_window: s.duplicate_window,
        allow_direct: true,
        ..Default::default()
    }
}

/// The dead-letter stream: every app's dead letters under `jetway.dlq.>`.
pub fn dead_letter_stream(d: &DeadLetterConfig) -> stream::Config {
    stream::Config {
        name: d.stream.clone(),
        subjects: vec![DLQ_SUBJECTS.to_string()],
        storage: stream::StorageType::File,
        num_replicas: 1,
        max_age: d.max_age,
        duplicate_window: dlq_duplicate_window(d.max_age),
        allow_direct: true,
        ..Default::default()
    }
}

/// The dead-letter stream's duplicate window: 2 minutes, but never longer
/// than its `max_age` (the server refuses that).
fn dlq_duplicate_window(max_age: Duration) -> Duration {
    let window = Duration::from_secs(120);
    if max_age.is_zero() {
        window
    } else {
        window.min(max_age)
    }
}

/// What differs between the config we want and the one on the server, in
/// words for the operator.
pub fn stream_differences(wanted: &stream::Config, existing: &stream::Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut want_subjects = wanted.subjects.clone();
    let mut have_subjects = existing.subjects.clone();
    want_subjects.sort();
    have_subjects.sort();
    if want_subjects != have_subjects {
        out.push(format!(
            "subjects: config {:?}, server {:?}",
            wanted.subjects, existing.subjects
        ));
    }
    if wanted.storage != existing.storage {
        out.push(format!(
            "storage: config {:?}, server {:?}",
            wanted.storage, existing.storage
        ));
    }
    if wanted.num_replicas != existing.num_replicas {
        out.push(format!(
            "replicas: config {}, server {}",
            wanted.num_replicas, existing.num_replicas
        ));
    }
    if wanted.max_age != existing.max_age {
        out.push(format!(
            "max_age: config {:?}, server {:?}",
            wanted.max_age, existing.max_age
        ));
    }
    if wanted.duplicate_window != existing.duplicate_window {
        out.push(format!(
            "duplicate_window: config {:?}, server {:?}",
            wanted.duplicate_window, existing.duplicate_window
        ));
    }
    out
}

/// Creates a stream when missing; an existing one is never changed, only
/// reported when it differs.
pub async fn ensure_stream(
    js: &jetstream::Context,
    wanted: stream::Config,
) -> Result<(), ProvisionError> {
    let name = wanted.name.clone();
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing.info().await.map_err(|e| ProvisionError::Lookup {
                stream: name.clone(),
                source: jetstream::context::GetStreamError::with_source(
                    jetstream::context::GetStreamErrorKind::Request,
                    e,
                ),
            })?;
            let diffs = stream_differences(&wanted, &info.config);
            if !diffs.is_empty() {
                tracing::warn!(
                    stream = %name,
                    differences = %diffs.join("; "),
                    "stream exists with a different config; jetway leaves it as it is"
                );
            }
            Ok(())
        }
        Err(e) if is_stream_not_found(&e) => {
            js.create_stream(wanted)
                .await
                .map_err(|source| ProvisionError::Create {
                    stream: name.clone(),
                    source,
                })?;
            tracing::info!(stream = %name, "created stream");
            Ok(())
        }
        Err(source) => Err(ProvisionError::Lookup {
            stream: name,
            source,
        }),
    }
}

/// How long a stream or consumer the server said it does not know must
/// stay unknown before jetway creates it again: a server restoring its
/// state after a restart answers "not found" for a moment.
pub const CONFIRM_GONE: Duration = Duration::from_secs(2);

/// Creates a configured stream again if the server no longer has it
/// (deleted by an operator or a tool; SPEC 4), asked twice
/// [`CONFIRM_GONE`] apart: `true` when it did. Logged at ERROR: the events
/// it held are gone with it.
pub async fn restore_stream(
    js: &jetstream::Context,
    config: &StreamConfig,
) -> Result<bool, ProvisionError> {
    let gone = |r: &Result<_, jetstream::context::GetStreamError>| matches!(r, Err(e) if is_stream_not_found(e));
    if !gone(&js.get_stream(&config.name).await) {
        return Ok(false);
    }
    tokio::time::sleep(CONFIRM_GONE).await;
    match js.get_stream(&config.name).await {
        Ok(_) => Ok(false),
        Err(e) if is_stream_not_found(&e) => {
            tracing::error!(
                stream = %config.name,
                "stream {} is gone, and the events it held with it; creating it again",
                config.name
            );
            ensure_stream(js, wanted_stream(config)).await?;
            Ok(true)
        }
        // Not known to be gone: the caller tries again later.
        Err(source) => Err(ProvisionError::Lookup {
            stream: config.name.clone(),
            source,
        }),
    }
}

fn is_stream_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(ref js)
            if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Puts every configured stream and the dead-letter stream in place.
pub async fn ensure_streams(
    js: &jetstream::Context,
    config: &Config,
) -> Result<(), ProvisionError> {
    for s in &config.streams {
        ensure_stream(js, wanted_stream(s)).await?;
    }
    ensure_stream(js, dead_letter_stream(&config.dead_letter)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named() {
        let cfg = StreamConfig {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            storage: Storage::File,
            replicas: 1,
            max_age: Duration::from_secs(60),
            duplicate_window: Duration::from_secs(120),
        };
        let wanted = wanted_stream(&cfg);
        assert!(stream_differences(&wanted, &wanted).is_empty());
        let mut other = wanted.clone();
        other.subjects = vec!["orders.*".into()];
        other.num_replicas = 3;
        let diffs = stream_differences(&wanted, &other);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs[0].starts_with("subjects"));
        assert!(diffs[1].starts_with("replicas"));
    }

    #[test]
    fn a_fresh_dead_letter_stream_matches_what_jetway_creates() {
        let d = DeadLetterConfig {
            stream: "JETWAY_DLQ".into(),
            max_age: Duration::from_secs(60),
        };
        let wanted = dead_letter_stream(&d);
        assert_eq!(wanted.num_replicas, 1);
        assert_eq!(wanted.duplicate_window, Duration::from_secs(60));
        // What the server reports back for it.
        let mut server = wanted.clone();
        server.num_replicas = 1;
        assert!(stream_differences(&wanted, &server).is_empty());
    }

    #[test]
    fn reconnect_delay_is_bounded() {
        assert_eq!(reconnect_delay(0), Duration::from_millis(50));
        assert_eq!(reconnect_delay(100), Duration::from_secs(2));
    }
}
