//! The durable consumer of a subscription (SPEC section 4): the config
//! jetway wants for it, the stream it reads, and putting it in place.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};

use super::{Delivery, Subscription};
use crate::config::{Deliver, SubscriptionConfig};
use crate::subject;

/// JetStream's ack wait for a subscription: short, so a crashed sidecar's
/// messages come back soon; in-progress acks cover slower endpoints.
pub fn ack_wait(sub: &SubscriptionConfig) -> Duration {
    (sub.timeout / 2).clamp(Duration::from_secs(2), Duration::from_secs(30))
}

/// Unacknowledged messages the consumer allows across all replicas. Each
/// sidecar bounds its own deliveries by fetching only `concurrency`; this
/// leaves room for replicas and for messages waiting out a retry backoff.
/// Ordered subscriptions allow one, which is what keeps them in order.
pub fn max_ack_pending(sub: &SubscriptionConfig) -> i64 {
    if sub.ordered {
        1
    } else {
        (sub.concurrency as i64 * 64).max(1000)
    }
}

pub(super) fn deliver_policy(d: &Deliver) -> DeliverPolicy {
    match d {
        Deliver::All => DeliverPolicy::All,
        Deliver::New => DeliverPolicy::New,
        Deliver::Last => DeliverPolicy::Last,
        Deliver::LastPerSubject => DeliverPolicy::LastPerSubject,
        Deliver::StartSequence(n) => DeliverPolicy::ByStartSequence { start_sequence: *n },
        Deliver::StartTime(t) => DeliverPolicy::ByStartTime { start_time: *t },
    }
}

/// The consumer jetway wants for a subscription.
pub fn consumer_config(sub: &SubscriptionConfig, name: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(format!("jetway subscription {}", sub.name)),
        filter_subject: sub.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ack_wait(sub),
        // jetway counts attempts itself and dead-letters; JetStream must
        // never drop a message silently after max_deliver.
        max_deliver: -1,
        max_ack_pending: max_ack_pending(sub),
        deliver_policy: deliver_policy(&sub.deliver),
        ..Default::default()
    }
}

/// Failure to put a subscription's consumer in place.
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("subscription {subscription}: no stream captures subject {subject}; add it to `streams` or set `stream`")]
    NoStream {
        subscription: String,
        subject: String,
    },
    #[error("subscription {subscription}: {message}")]
    Consumer {
        subscription: String,
        message: String,
    },
}

impl Delivery {
    /// The stream a subscription reads: configured, else the configured
    /// stream whose subjects overlap its filter, else asked of the server.
    pub(super) async fn resolve_stream(
        &self,
        sub: &Subscription,
    ) -> Result<String, ProvisionError> {
        if let Some(s) = &sub.config.stream {
            return Ok(s.clone());
        }
        if let Some(s) = self.configured_streams.iter().find(|s| {
            s.subjects
                .iter()
                .any(|p| subject::overlaps(p, &sub.config.subject))
        }) {
            return Ok(s.name.clone());
        }
        self.js
            .stream_by_subject(sub.config.subject.clone())
            .await
            .map_err(|_| ProvisionError::NoStream {
                subscription: sub.name().to_string(),
                subject: sub.config.subject.clone(),
            })
    }

    /// Creates every missing consumer; reuses existing ones (replicas of
    /// the app share them). Safe to call again after a failure.
    pub async fn provision(&self) -> Result<(), ProvisionError> {
        for sub in &self.subscriptions {
            if sub.consumer.get().is_some() {
                continue;
            }
            let stream_name = self.resolve_stream(sub).await?;
            let err = |message: String| ProvisionError::Consumer {
                subscription: sub.name().to_string(),
                message,
            };
            let stream = self
                .js
                .get_stream_no_info(&stream_name)
                .await
                .map_err(|e| err(format!("stream {stream_name}: {e}")))?;
            let wanted = consumer_config(&sub.config, &sub.consumer_name);
            let consumer = match stream
                .get_consumer::<pull::Config>(&sub.consumer_name)
                .await
            {
                Ok(mut existing) => {
                    let info = existing
                        .info()
                        .await
                        .map_err(|e| err(format!("consumer info: {e}")))?
                        .clone();
                    if info.config.filter_subject != wanted.filter_subject {
                        tracing::warn!(
                            subscription = sub.name(),
                            consumer = %sub.consumer_name,
                            server = %info.config.filter_subject,
                            config = %wanted.filter_subject,
                            "consumer exists with another filter subject; jetway uses it as it is"
                        );
                    }
                    if info.config.ack_wait != wanted.ack_wait
                        || info.config.max_ack_pending != wanted.max_ack_pending
                        || info.config.max_deliver != wanted.max_deliver
                    {
                        // Only updatable fields change; where it starts stays.
                        let update = pull::Config {
                            deliver_policy: info.config.deliver_policy,
                            filter_subject: info.config.filter_subject.clone(),
                            ..wanted.clone()
                        };
                        match stream.create_consumer(update).await {
                            Ok(updated) => updated,
                            Err(e) => {
                                tracing::warn!(subscription = sub.name(), error = %e, "cannot update the consumer's ack settings; using it as it is");
                                existing
                            }
                        }
                    } else {
                        existing
                    }
                }
                Err(_) => stream.create_consumer(wanted).await.map_err(|e| {
                    err(format!("cannot create consumer {}: {e}", sub.consumer_name))
                })?,
            };
            let _ = sub.stream.set(stream_name);
            let _ = sub.consumer.set(consumer);
            tracing::info!(subscription = sub.name(), consumer = %sub.consumer_name, "consumer ready");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(ordered: bool, concurrency: usize, timeout: Duration) -> SubscriptionConfig {
        SubscriptionConfig {
            name: "s".into(),
            subject: "a.>".into(),
            stream: None,
            endpoint: "http://127.0.0.1:1/".parse().expect("uri"),
            concurrency,
            ordered,
            timeout,
            deliver: Deliver::All,
            retry: Default::default(),
            signing_secret: None,
        }
    }

    #[test]
    pub(super) fn consumer_limits_follow_from_the_subscription() {
        assert_eq!(max_ack_pending(&sub(true, 16, Duration::from_secs(10))), 1);
        assert_eq!(
            max_ack_pending(&sub(false, 16, Duration::from_secs(10))),
            1024
        );
        assert_eq!(
            max_ack_pending(&sub(false, 1, Duration::from_secs(10))),
            1000
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(10))),
            Duration::from_secs(5)
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(1))),
            Duration::from_secs(2)
        );
        assert_eq!(
            ack_wait(&sub(false, 1, Duration::from_secs(600))),
            Duration::from_secs(30)
        );
        let c = consumer_config(&sub(false, 4, Duration::from_secs(10)), "app-s");
        assert_eq!(c.durable_name.as_deref(), Some("app-s"));
        assert_eq!(c.max_deliver, -1);
        assert_eq!(c.filter_subject, "a.>");
    }
}
