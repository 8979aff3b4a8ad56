//! Test configs: the one-stream base and `subscriptions` entries.

use super::{Endpoint, Nats};

/// A config with one stream (`ORDERS`, subjects `orders.>`) for `nats`,
/// plus `extra` YAML appended (subscriptions and the like).
pub fn config_yaml(nats: &Nats, extra: &str) -> String {
    format!(
        "app_id: test\n\
         shutdown_grace: 5s\n\
         nats: {{ url: \"{}\", request_timeout: 2s, connect_timeout: 2s }}\n\
         streams:\n  - {{ name: ORDERS, subjects: [\"orders.>\"], duplicate_window: 2m }}\n\
         {extra}",
        nats.url()
    )
}

/// Small backoffs so retries take milliseconds, without jitter.
pub const FAST_RETRY: &str = "retry: { initial_backoff: 100ms, max_backoff: 2s, jitter: 0 }";

/// One entry of the `subscriptions` list; `extra` is more flow-map keys.
pub fn sub(name: &str, subject: &str, endpoint: &str, extra: &str) -> String {
    let extra = if extra.is_empty() {
        String::new()
    } else {
        format!(", {extra}")
    };
    format!("  - {{ name: {name}, subject: \"{subject}\", endpoint: \"{endpoint}\"{extra} }}\n")
}

/// The `subscriptions` list of `entries` (each from [`sub`]).
pub fn subscriptions(entries: &[String]) -> String {
    format!("subscriptions:\n{}", entries.concat())
}

/// [`config_yaml`] with one subscription `s1` of `orders.>` to `endpoint`.
pub fn one_subscription_yaml(nats: &Nats, endpoint: &str) -> String {
    config_yaml(nats, &subscriptions(&[sub("s1", "orders.>", endpoint, "")]))
}

/// [`config_yaml`] with the one subscription `s1` of `orders.>` to
/// `endpoint` (path `/e`); `extra` is more keys of that entry.
pub fn s1_yaml(nats: &Nats, endpoint: &Endpoint, extra: &str) -> String {
    config_yaml(
        nats,
        &subscriptions(&[sub("s1", "orders.>", &endpoint.url("/e"), extra)]),
    )
}
