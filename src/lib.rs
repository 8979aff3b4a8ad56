//! jetway: an event sidecar. Services POST events on localhost; jetway
//! stores them in NATS JetStream and answers after the PubAck. It also
//! pushes each message of its subscriptions to the service's HTTP endpoint,
//! with retries, dead letters and replay. At least once, end to end.
//!
//! [`run`] takes bound listeners and a shutdown future, so a whole sidecar
//! can run inside a test on port 0.

// `deny`, not `forbid`: `memory.rs` holds the only `unsafe` blocks (calls
// to glibc's `malloc_trim` and `mallopt`), allowed there and nowhere else.
#![deny(unsafe_code)]

pub mod admin;
pub mod api;
pub mod config;
pub mod content_type;
pub mod dead_letter;
pub mod delivery;
pub mod dev;
pub mod durability;
pub mod envelope;
pub mod error;
pub mod health;
pub mod inject;
pub mod memory;
pub mod metrics;
pub mod nats;
pub mod permissions;
pub mod publish;
pub mod raw_target;
pub mod reads;
pub mod schemas;
pub mod server;
pub mod shutdown;
pub mod subject;
pub mod tail;
pub mod telemetry;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The sockets jetway serves on, bound by the caller.
pub struct Listeners {
    /// `/v1/*` (`api.listen`).
    pub api: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics` (`metrics.listen`).
    pub metrics: TcpListener,
}

impl Listeners {
    /// Binds the addresses of the config.
    pub async fn bind(config: &Config) -> std::io::Result<Listeners> {
        Ok(Listeners {
            api: TcpListener::bind(config.api.listen).await?,
            metrics: TcpListener::bind(config.metrics.listen).await?,
        })
    }
}

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Connect(#[from] nats::ConnectError),
    /// `schemas.register` could not be registered (exit 64).
    #[error("schemas.register refused:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Schemas(Vec<String>),
}

/// Runs the sidecar until `shutdown` completes, then drains (SPEC section 8)
/// and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    run_with_limits(config, listeners, server::Limits::BUILT_IN, shutdown).await
}

/// [`run`] with other HTTP limits than the built-in ones on the API
/// listener (tests that must not wait ten seconds for a timeout, embedders):
/// a value, so two sidecars in one process can have different limits.
pub async fn run_with_limits(
    config: Config,
    listeners: Listeners,
    limits: server::Limits,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = metrics::Metrics::new();
    let env = std::env::vars().collect();
    let (tracer, exporter) =
        telemetry::start_tracing(&config.tracing, &config.app_id, &env, &metrics);
    let health = Arc::new(health::Health::default());
    let client = nats::connect(
        &config.nats,
        &config.app_id,
        health.clone(),
        metrics.clone(),
    )
    .await?;
    let js = nats::jetstream(client.clone(), &config);
    let schemas = Arc::new(schemas::Schemas::new(
        config.schemas.clone().unwrap_or_default(),
        metrics.clone(),
        config.nats.request_timeout,
    ));
    let schemas_task = tokio::spawn(schemas.clone().run(js.clone()));
    if let Err(problems) = schemas.register_from_config().await {
        schemas_task.abort();
        return Err(RunError::Schemas(problems));
    }
    let publisher = Arc::new(
        publish::Publisher::new(
            js.clone(),
            client.clone(),
            &config,
            metrics.clone(),
            health.clone(),
            tracer.clone(),
        )
        .with_schemas(schemas.clone()),
    );
    let delivery =
        delivery::Delivery::new(&config, js.clone(), metrics.clone(), health.clone(), tracer);

    let durability = durability::Checker::new(
        js.clone(),
        client.clone(),
        config
            .streams
            .iter()
            .map(|s| s.name.clone())
            .chain(std::iter::once(config.dead_letter.stream.clone()))
            .chain(std::iter::once(
                config.schemas.clone().unwrap_or_default().stream(),
            ))
            .collect(),
        config.nats.request_timeout,
        metrics.clone(),
    );
    let provisioning = tokio::spawn(provision(
        config.clone(),
        js.clone(),
        delivery.clone(),
        health.clone(),
        durability.clone(),
    ));

    let stop_reads = CancellationToken::new();
    let reads = Arc::new(reads::Reads::new(
        js.clone(),
        &config.streams,
        &config.dead_letter.stream,
        config.api.max_live,
        metrics.clone(),
        stop_reads.clone(),
    ));
    let stop_http = CancellationToken::new();
    let api = tokio::spawn(server::serve(
        listeners.api,
        api::router(api::ApiState {
            publisher: publisher.clone(),
            delivery: delivery.clone(),
            js: js.clone(),
            durability,
            reads,
            token: config.api.token.clone(),
            schemas: schemas.clone(),
        }),
        limits,
        stop_http.clone(),
        Duration::from_secs(1),
    ));
    let health_server = tokio::spawn(server::serve(
        listeners.metrics,
        api::health_router(health.clone(), metrics.clone()),
        server::Limits {
            max_connections: 64,
            ..limits
        },
        stop_http.clone(),
        Duration::from_secs(1),
    ));
    tracing::info!(
        api = %config.api.listen,
        metrics = %config.metrics.listen,
        app_id = %config.app_id,
        "jetway started"
    );

    shutdown.await;
    tracing::info!("shutting down: no new publishes, draining deliveries");
    health.begin_shutdown();
    // Live reads end now (readers reconnect with Last-Event-ID elsewhere).
    stop_reads.cancel();
    provisioning.abort();
    schemas_task.abort();
    // Publishes already handed to NATS end within request_timeout; the
    // bound also covers a client stalling mid-body.
    let drain_publishes = async {
        let bound = config.nats.request_timeout + Duration::from_secs(1);
        if tokio::time::timeout(bound, publisher.drain())
            .await
            .is_err()
        {
            tracing::warn!("publishes still open after the request timeout; closing them");
        }
    };
    tokio::join!(drain_publishes, delivery.shutdown(config.shutdown_grace));
    stop_http.cancel();
    let _ = api.await;
    let _ = health_server.await;
    // drain() only queues the request: flush first so the last acks and
    // NAKs of the deliveries are with the server before the process exits
    // (else acknowledged messages would be delivered again, and handed-back
    // ones would wait out the ack wait).
    if tokio::time::timeout(Duration::from_secs(5), client.flush())
        .await
        .is_err()
    {
        tracing::warn!("flushing the NATS connection timed out");
    }
    match tokio::time::timeout(Duration::from_secs(5), client.drain()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "draining the NATS connection failed"),
        Err(_) => tracing::warn!("draining the NATS connection timed out"),
    }
    if let Some(exporter) = exporter {
        exporter.shutdown().await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Puts streams and consumers in place, retrying until it works (NATS may
/// come up after the sidecar), then starts delivery.
async fn provision(
    config: Config,
    js: async_nats::jetstream::Context,
    delivery: Arc<delivery::Delivery>,
    health: Arc<health::Health>,
    durability: Arc<durability::Checker>,
) {
    let mut delay = Duration::from_millis(200);
    let mut attempts = 0u32;
    loop {
        let result = async {
            nats::ensure_streams(&js, &config)
                .await
                .map_err(|e| e.to_string())?;
            delivery.provision().await.map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => break,
            Err(e) => {
                attempts += 1;
                // The first failures are usual while NATS starts.
                if attempts > 3 {
                    tracing::error!(error = %e, "cannot set up streams and consumers; retrying");
                } else {
                    tracing::info!(error = %e, "streams and consumers not ready yet; retrying");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    delivery.start().await;
    health.set_provisioned();
    tracing::info!("ready");
    // SPEC 11: at start, then every minute, until the sidecar stops.
    durability.watch().await;
}
