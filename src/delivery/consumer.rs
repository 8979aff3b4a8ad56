//! The durable consumer of a subscription (SPEC section 4): the config
//! jetway wants for it, the stream it reads, and putting it in place.

use std::time::Duration;

use async_nats::jetstream::{
    self,
    consumer::{self, pull, AckPolicy, DeliverPolicy},
    context::ConsumerInfoErrorKind,
    stream::ConsumerErrorKind,
    ErrorCode,
};

use super::subscription::Consumer;
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

/// The description of a consumer jetway created again after it was lost:
/// it starts where the old one was, not at `deliver`, and is not a conflict.
pub(super) fn recreated_description(sub: &SubscriptionConfig) -> String {
    format!("{}; created again after it was lost", description(sub))
}

fn description(sub: &SubscriptionConfig) -> String {
    format!("jetway subscription {}", sub.name)
}

/// The consumer jetway wants for a subscription.
pub fn consumer_config(sub: &SubscriptionConfig, name: &str) -> pull::Config {
    pull::Config {
        durable_name: Some(name.to_string()),
        description: Some(description(sub)),
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

    /// Puts every subscription's consumer in place: creates a missing one,
    /// updates an existing one in place where the server allows it, and
    /// marks a subscription `config_conflict` where it does not (nothing is
    /// delivered for it until the conflict is resolved). Replicas of the app
    /// share the consumer. Safe to call again after a failure.
    pub async fn provision(&self) -> Result<(), ProvisionError> {
        for sub in &self.subscriptions {
            if matches!(*sub.consumer.borrow(), Consumer::Ready(_)) {
                continue;
            }
            let stream = self.stream_of(sub).await?;
            // Which stream the ack floor will belong to (see `recover`).
            if let Ok(info) = stream.get_info().await {
                sub.remember_stream(info.created);
            }
            let state = self.reconcile(sub, &stream).await?;
            self.set_consumer(sub, state);
        }
        Ok(())
    }

    /// The subscription's stream, resolved once.
    async fn stream_of(
        &self,
        sub: &Subscription,
    ) -> Result<jetstream::stream::Stream<()>, ProvisionError> {
        let name = match sub.stream() {
            Some(name) => name.to_string(),
            None => {
                let name = self.resolve_stream(sub).await?;
                sub.set_stream(name.clone());
                name
            }
        };
        self.js
            .get_stream_no_info(&name)
            .await
            .map_err(|e| consumer_error(sub, format!("stream {name}: {e}")))
    }

    /// Compares the consumer on the server with the one the subscription
    /// asks for and acts on the difference.
    async fn reconcile(
        &self,
        sub: &Subscription,
        stream: &jetstream::stream::Stream<()>,
    ) -> Result<Consumer, ProvisionError> {
        let wanted = consumer_config(&sub.config, &sub.consumer_name);
        let existing = match stream.consumer_info(&sub.consumer_name).await {
            Ok(info) => info.config,
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => {
                let created = stream.create_consumer(wanted).await.map_err(|e| {
                    consumer_error(
                        sub,
                        format!("cannot create consumer {}: {e}", sub.consumer_name),
                    )
                })?;
                tracing::info!(subscription = sub.name(), consumer = %sub.consumer_name, "consumer created");
                return Ok(Consumer::Ready(Box::new(created)));
            }
            Err(e) => {
                return Err(consumer_error(
                    sub,
                    format!("consumer {}: {e}", sub.consumer_name),
                ))
            }
        };
        match compare(&existing, &wanted) {
            Comparison::Same => {
                let consumer = stream
                    .get_consumer::<pull::Config>(&sub.consumer_name)
                    .await
                    .map_err(|e| consumer_error(sub, format!("consumer: {e}")))?;
                tracing::info!(subscription = sub.name(), consumer = %sub.consumer_name, "consumer ready");
                Ok(Consumer::Ready(Box::new(consumer)))
            }
            Comparison::Conflict(differences) => {
                Ok(self.conflict(sub, describe(&differences, "cannot be changed in place")))
            }
            Comparison::Update(changes) => match stream.create_consumer(wanted).await {
                Ok(updated) => {
                    for c in &changes {
                        tracing::info!(
                            subscription = sub.name(),
                            consumer = %sub.consumer_name,
                            field = c.field,
                            old = %c.old,
                            new = %c.new,
                            "consumer updated in place"
                        );
                    }
                    Ok(Consumer::Ready(Box::new(updated)))
                }
                // The server refused the change (a filter on a server that
                // cannot change one): a conflict, never used silently.
                Err(e) if matches!(e.kind(), ConsumerErrorKind::JetStream(_)) => Ok(self.conflict(
                    sub,
                    format!(
                        "{} (the server refused the update: {e})",
                        describe(&changes, "differ")
                    ),
                )),
                Err(e) => Err(consumer_error(
                    sub,
                    format!("cannot update consumer {}: {e}", sub.consumer_name),
                )),
            },
        }
    }

    /// Logs a conflict with what resolves it and returns the state.
    fn conflict(&self, sub: &Subscription, what: String) -> Consumer {
        let stream = sub.stream().unwrap_or("?");
        tracing::error!(
            subscription = sub.name(),
            stream,
            consumer = %sub.consumer_name,
            "consumer {} on stream {stream}: {what}; nothing is delivered for subscription {} \
             until this is resolved: delete the consumer to start it anew from `deliver` \
             (`nats consumer rm {stream} {}` or `POST /v1/subscriptions/{}/reset`), \
             or restore the subscription's old config",
            sub.consumer_name,
            sub.name(),
            sub.consumer_name,
            sub.name(),
        );
        Consumer::Conflict(what)
    }

    /// Records the consumer state and what `/readyz` says of it.
    pub(super) fn set_consumer(&self, sub: &Subscription, state: Consumer) {
        let blocked = match &state {
            Consumer::Conflict(what) => Some(format!(
                "subscription {}: consumer config conflict: {what}",
                sub.name()
            )),
            _ => None,
        };
        self.health.set_blocked(sub.name(), blocked);
        sub.consumer.send_replace(state);
    }

    /// Deletes the subscription's consumer and creates it anew from the
    /// subscription (so from `deliver`): resolves a `config_conflict`.
    pub async fn reset(&self, sub: &Subscription) -> Result<(), ProvisionError> {
        let stream = self.stream_of(sub).await?;
        match stream.delete_consumer(&sub.consumer_name).await {
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ConsumerErrorKind::JetStream(ref j) if j.error_code() == ErrorCode::CONSUMER_NOT_FOUND) =>
                {}
            Err(e) => {
                return Err(consumer_error(
                    sub,
                    format!("cannot delete consumer {}: {e}", sub.consumer_name),
                ))
            }
        }
        let wanted = consumer_config(&sub.config, &sub.consumer_name);
        match stream.create_consumer(wanted).await {
            Ok(created) => {
                tracing::warn!(subscription = sub.name(), consumer = %sub.consumer_name, "consumer reset: deleted and created anew from `deliver`");
                self.set_consumer(sub, Consumer::Ready(Box::new(created)));
                Ok(())
            }
            Err(e) => {
                self.set_consumer(sub, Consumer::Missing);
                Err(consumer_error(
                    sub,
                    format!("cannot create consumer {}: {e}", sub.consumer_name),
                ))
            }
        }
    }
}

fn consumer_error(sub: &Subscription, message: String) -> ProvisionError {
    ProvisionError::Consumer {
        subscription: sub.name().to_string(),
        message,
    }
}

/// One field that differs between the consumer on the server and the one
/// the subscription asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub field: &'static str,
    pub old: String,
    pub new: String,
}

/// What to do with an existing consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Comparison {
    Same,
    /// Every difference can be updated in place.
    Update(Vec<Difference>),
    /// These differences cannot be; nothing is changed.
    Conflict(Vec<Difference>),
}

/// Compares the consumer on the server with the wanted one. Where it
/// starts (deliver policy) and its ack policy are never changed in place;
/// the rest is asked of the server, whose refusal is then a conflict (a
/// filter on a server that cannot change one). nats-server 2.9.10 and 2.15.1
/// both change a filter in place, so the server is asked rather than its
/// version read.
pub fn compare(existing: &consumer::Config, wanted: &pull::Config) -> Comparison {
    let mut fixed = Vec::new();
    let mut updatable = Vec::new();
    let mut differ = |field, old: String, new: String, can_update: bool| {
        if old != new {
            let d = Difference { field, old, new };
            if can_update {
                updatable.push(d);
            } else {
                fixed.push(d);
            }
        }
    };
    // A consumer jetway created again after a loss starts where the lost
    // one was: its start and description are jetway's, not a change.
    let recreated = match (&existing.description, &wanted.description) {
        (Some(old), Some(new)) => *old == format!("{new}; created again after it was lost"),
        _ => false,
    };
    if !recreated {
        differ(
            "deliver_policy",
            format!("{:?}", existing.deliver_policy),
            format!("{:?}", wanted.deliver_policy),
            false,
        );
    }
    differ(
        "ack_policy",
        format!("{:?}", existing.ack_policy),
        format!("{:?}", wanted.ack_policy),
        false,
    );
    differ(
        "filter_subject",
        existing.filter_subject.clone(),
        wanted.filter_subject.clone(),
        true,
    );
    differ(
        "max_ack_pending",
        existing.max_ack_pending.to_string(),
        wanted.max_ack_pending.to_string(),
        true,
    );
    differ(
        "ack_wait",
        format!("{:?}", existing.ack_wait),
        format!("{:?}", wanted.ack_wait),
        true,
    );
    differ(
        "max_deliver",
        existing.max_deliver.to_string(),
        wanted.max_deliver.to_string(),
        true,
    );
    if !recreated {
        differ(
            "description",
            existing.description.clone().unwrap_or_default(),
            wanted.description.clone().unwrap_or_default(),
            true,
        );
    }
    if !fixed.is_empty() {
        Comparison::Conflict(fixed)
    } else if !updatable.is_empty() {
        Comparison::Update(updatable)
    } else {
        Comparison::Same
    }
}

fn describe(differences: &[Difference], verdict: &str) -> String {
    let list: Vec<String> = differences
        .iter()
        .map(|d| {
            format!(
                "{} is {} on the server, {} in the subscription",
                d.field, d.old, d.new
            )
        })
        .collect();
    format!("{} ({verdict})", list.join("; "))
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
    fn consumer_limits_follow_from_the_subscription() {
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

    fn existing(sub: &SubscriptionConfig) -> consumer::Config {
        let wanted = consumer_config(sub, "app-s");
        consumer::Config {
            durable_name: wanted.durable_name.clone(),
            description: wanted.description.clone(),
            filter_subject: wanted.filter_subject.clone(),
            ack_policy: wanted.ack_policy,
            ack_wait: wanted.ack_wait,
            max_deliver: wanted.max_deliver,
            max_ack_pending: wanted.max_ack_pending,
            deliver_policy: wanted.deliver_policy,
            ..Default::default()
        }
    }

    #[test]
    fn what_differs_is_updated_or_a_conflict() {
        let ten = Duration::from_secs(10);
        let base = sub(false, 4, ten);
        let same = existing(&base);
        let wanted = |s: &SubscriptionConfig| consumer_config(s, "app-s");
        assert_eq!(compare(&same, &wanted(&base)), Comparison::Same);

        let mut more = base.clone();
        more.concurrency = 32;
        match compare(&same, &wanted(&more)) {
            Comparison::Update(d) => {
                assert_eq!(d.len(), 1);
                assert_eq!(
                    (d[0].field, d[0].old.as_str(), d[0].new.as_str()),
                    ("max_ack_pending", "1000", "2048")
                );
            }
            other => panic!("{other:?}"),
        }

        let mut ordered = base.clone();
        ordered.ordered = true;
        assert!(matches!(
            compare(&same, &wanted(&ordered)),
            Comparison::Update(d) if d[0].field == "max_ack_pending" && d[0].new == "1"
        ));

        let mut slower = base.clone();
        slower.timeout = Duration::from_secs(40);
        assert!(matches!(
            compare(&same, &wanted(&slower)),
            Comparison::Update(d) if d[0].field == "ack_wait"
        ));

        let mut other_subject = base.clone();
        other_subject.subject = "b.>".into();
        assert!(matches!(
            compare(&same, &wanted(&other_subject)),
            Comparison::Update(d) if d[0].field == "filter_subject" && d[0].old == "a.>"
        ));

        let mut recreated = existing(&base);
        recreated.deliver_policy = DeliverPolicy::ByStartSequence { start_sequence: 42 };
        recreated.description = Some(recreated_description(&base));
        assert_eq!(compare(&recreated, &wanted(&base)), Comparison::Same);
        recreated.description = Some("someone else's".into());
        assert!(matches!(
            compare(&recreated, &wanted(&base)),
            Comparison::Conflict(d) if d[0].field == "deliver_policy"
        ));

        let mut new_only = more.clone();
        new_only.deliver = Deliver::New;
        match compare(&same, &wanted(&new_only)) {
            Comparison::Conflict(d) => {
                assert_eq!(d.len(), 1, "only what cannot be updated: {d:?}");
                assert_eq!(d[0].field, "deliver_policy");
            }
            other => panic!("{other:?}"),
        }
    }
}
