//! A durable consumer that disappears (SPEC section 4): deleted by an
//! operator or a tool, or lost with its stream. The lag refresh looks the
//! consumer up every few seconds; when the server no longer knows it, the
//! subscription is `consumer_lost` until jetway has created it again,
//! starting after the last acknowledged stream sequence it saw, so nothing
//! stored is skipped and little is repeated.

use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer::DeliverPolicy;

use super::consumer::{consumer_config, recreated_description};
use super::subscription::Consumer;
use super::{Delivery, Subscription};
use crate::nats;

impl Delivery {
    /// Marks the subscription `consumer_lost` and tries to create its
    /// consumer again; on failure it stays lost and the next refresh tries
    /// again.
    pub(super) async fn recover(&self, sub: &Subscription) {
        let acked = sub.acked.load(Ordering::SeqCst);
        if !matches!(*sub.consumer.borrow(), Consumer::Lost) {
            tracing::error!(
                subscription = sub.name(),
                consumer = %sub.consumer_name,
                stream = sub.stream().unwrap_or("?"),
                acked,
                "the durable consumer is gone (deleted, or lost with its stream); creating it again after the last acknowledged stream sequence"
            );
            self.set_consumer(sub, Consumer::Lost);
        }
        let Some(stream_name) = sub.stream().map(str::to_string) else {
            return;
        };
        let stream_recreated = match self.recreate_stream(&stream_name).await {
            Ok(recreated) => recreated,
            Err(e) => {
                tracing::warn!(subscription = sub.name(), stream = %stream_name, error = %e, "cannot put the stream back yet; retrying");
                return;
            }
        };
        let stream = match self.js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::warn!(subscription = sub.name(), stream = %stream_name, error = %e, "cannot look the stream up yet; retrying");
                return;
            }
        };
        let info = stream.cached_info();
        // A stream created anew (here, or by an operator or another replica
        // between two lookups) starts over at sequence 1: the old ack floor
        // would skip its first events, so its consumer starts from `deliver`.
        let new_stream =
            stream_recreated || sub.is_new_stream(info.created, info.state.last_sequence);
        if new_stream && !stream_recreated {
            tracing::error!(
                subscription = sub.name(),
                stream = %stream_name,
                "stream {stream_name} was created anew by someone else; the events the old one held are gone; its consumer starts from `deliver`"
            );
        }
        sub.remember_stream(info.created);
        if new_stream {
            sub.acked.store(0, Ordering::SeqCst);
        }
        let acked = sub.acked.load(Ordering::SeqCst);
        let mut wanted = consumer_config(&sub.config, &sub.consumer_name);
        if acked > 0 {
            wanted.deliver_policy = DeliverPolicy::ByStartSequence {
                start_sequence: acked + 1,
            };
            wanted.description = Some(recreated_description(&sub.config));
        }
        let created = stream
            .create_consumer(wanted)
            .await
            .map_err(|e| e.to_string());
        match created {
            Ok(consumer) => {
                sub.metrics.recreated.inc();
                tracing::warn!(
                    subscription = sub.name(),
                    consumer = %sub.consumer_name,
                    start_after = acked,
                    "consumer created again"
                );
                self.set_consumer(sub, Consumer::Ready(Box::new(consumer)));
            }
            Err(e) => {
                tracing::warn!(subscription = sub.name(), error = %e, "cannot create the lost consumer yet; retrying");
            }
        }
    }

    /// Creates a configured stream that is gone (logged at ERROR); `true`
    /// when it did.
    async fn recreate_stream(&self, name: &str) -> Result<bool, nats::ProvisionError> {
        match self.configured_streams.iter().find(|s| s.name == name) {
            Some(config) => nats::restore_stream(&self.js, config).await,
            None => Ok(false),
        }
    }
}
