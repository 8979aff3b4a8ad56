//! Telemetry: logging (text or JSON lines, level from `log.level` or
//! `RUST_LOG`) and span export over OTLP (SPEC section 10).
//!
//! - `span`: the span model and W3C trace context parsing;
//! - `sampler`: parent-based sampling with a ratio for roots;
//! - `config`: the `tracing:` section and the `OTEL_*` variables;
//! - `export`: the bounded queue and the OTLP/HTTP exporter task;
//! - `tracer`: the calls the publish and delivery paths make;
//! - `throttle`: one WARN line per interval for failures an outage repeats.

pub mod config;
pub mod export;
mod otlp;
pub mod sampler;
pub mod span;
pub mod throttle;
pub mod tracer;

use std::collections::BTreeMap;

use tracing_subscriber::EnvFilter;

pub use crate::config::TracingConfig;
use crate::config::{LogConfig, LogFormat};
use crate::metrics::Metrics;
pub use export::Exporter;
pub use tracer::Tracer;

/// Installs the global subscriber; `RUST_LOG` wins over `log.level`.
pub fn init(log: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match log.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// Starts span export when an endpoint is configured (file or `OTEL_*`
/// in `env`); else a disabled tracer and no exporter. Call inside tokio.
pub fn start_tracing(
    file: &TracingConfig,
    app_id: &str,
    env: &BTreeMap<String, String>,
    metrics: &Metrics,
) -> (Tracer, Option<Exporter>) {
    let (settings, warnings) = config::resolve(file, app_id, env);
    for warning in warnings {
        tracing::warn!("tracing: {warning}");
    }
    match settings {
        None => (Tracer::disabled(), None),
        Some(settings) => {
            tracing::info!(
                url = %settings.url,
                service_name = %settings.service_name,
                ratio = settings.sampler.ratio,
                queue = settings.queue,
                "exporting spans over OTLP/HTTP"
            );
            let sampler = settings.sampler;
            let (queue, exporter) = export::start(settings, metrics);
            (Tracer::new(queue, sampler), Some(exporter))
        }
    }
}
